"""Every loss against values computed by hand (numpy, from the formulas), plus the textbook identities."""
import math

import numpy as np
import pytest
import torch

from trainers import losses, matrices
from trainers.collate import expand_pairs, multi_hot

P = np.array([0.5, 0.3, 0.2])


def logits_of(*probs):
    return torch.log(torch.tensor(np.array(probs), dtype=torch.float64))


def T_uniform(K):
    return torch.tensor(matrices.uniform(K))


def test_scl_nl_and_exp_by_hand():
    z, cl = logits_of(P), torch.tensor([0])
    assert losses.scl_nl(z, cl).item() == pytest.approx(-math.log(0.5 + 1e-6))
    assert losses.scl_exp(z, cl).item() == pytest.approx(math.exp(0.5))


def test_forward_and_cpe_by_hand():
    z, cl = logits_of(P), torch.tensor([0])
    # (p^T T)_0 with uniform T over 3 classes = (0.3 + 0.2) / 2
    assert losses.forward_correction(z, cl, T_uniform(3)).item() == pytest.approx(-math.log(0.25 + 1e-6))
    assert losses.cpe_identity(z, cl).item() == pytest.approx(-math.log(0.5))
    T = torch.tensor([[0.0, 0.9, 0.1], [0.5, 0.0, 0.5], [0.2, 0.8, 0.0]], dtype=torch.float64)
    # CL 1: 0.5*0.9 + 0.3*0 + 0.2*0.8 = 0.61
    assert losses.forward_correction(z, torch.tensor([1]), T).item() == pytest.approx(-math.log(0.61 + 1e-6))


def test_ordinary_by_hand():
    assert losses.ordinary_ce(logits_of(P), torch.tensor([2])).item() == pytest.approx(-math.log(0.2))


def test_dm_by_hand():
    q = np.exp(1 - P) / np.exp(1 - P).sum()
    expected = -(1 + 0.5 / 2) * math.log(q[0] + 1e-6)
    assert losses.dm(logits_of(P), torch.tensor([0])).item() == pytest.approx(expected)


def test_dm_weight_is_detached():
    z = logits_of(P).clone().requires_grad_(True)
    losses.dm(z, torch.tensor([0])).backward()
    # With the weight detached, the gradient equals weight * d(-log q_0)/dz.
    z2 = logits_of(P).clone().requires_grad_(True)
    q = (1 - z2.softmax(1)).softmax(1) + 1e-6
    (-(1.25) * torch.log(q[0, 0])).backward()
    assert torch.allclose(z.grad, z2.grad)


def test_pc_by_hand():
    expected = (0.5 / 0.3) / (1 + 0.5 / 0.3) + (0.5 / 0.2) / (1 + 0.5 / 0.2)  # sigmoid(log ratio)
    assert losses.pc(logits_of(P), torch.tensor([0])).item() == pytest.approx(expected)


def test_op_by_hand():
    neg = (1 / P) / (1 / P).sum()  # softmax(-log p) is proportional to 1/p
    s = np.exp(1 + 1 / neg) / np.exp(1 + 1 / neg).sum()
    w = P * s + 1e-6
    assert losses.op(logits_of(P), torch.tensor([0])).item() == pytest.approx(-w[0] * math.log(neg[0]))


@pytest.mark.parametrize("name,error", [("mcl_mae", lambda s: 1 - s), ("mcl_exp", lambda s: math.exp(-s)),
                                        ("mcl_log", lambda s: -math.log(s + 1e-6))])
def test_mcl_by_hand(name, error):
    # CL set {0, 1}: s = p_2 = 0.2; weight (2K-2)/|set| = 4/2
    targets = torch.tensor([[1.0, 1.0, 0.0]])
    assert getattr(losses, name)(logits_of(P), targets).item() == pytest.approx(2 * error(0.2))


def test_mcl_is_a_batch_mean_not_a_sum():
    one = losses.mcl_log(logits_of(P), torch.tensor([[1.0, 0, 0]]))
    four = losses.mcl_log(logits_of(P, P, P, P), torch.tensor([[1.0, 0, 0]] * 4))
    assert four.item() == pytest.approx(one.item())


def test_mcl_rejects_empty_set():
    with pytest.raises(ValueError, match="at least one"):
        losses.mcl_mae(logits_of(P), torch.tensor([[0.0, 0.0, 0.0]]))


def test_ure_example_loss_closed_form_uniform():
    z = logits_of(P, [0.1, 0.6, 0.3])
    cl = torch.tensor([0, 2])
    ce = -np.log(np.array([P, [0.1, 0.6, 0.3]]))
    closed = ce.sum(1) - 2 * ce[[0, 1], [0, 2]]  # sum_k(-log p_k) - (K-1)(-log p_cl)
    got = losses.ure_example_losses(z, cl, T_uniform(3)).numpy()
    assert np.allclose(got, closed)


def test_ure_nn_and_ga_partial_risks_by_hand():
    # Example 0 has CL 0 (positive loss 2.1203); example 1 puts little mass on its CL 1 (negative loss).
    z = logits_of(P, [0.45, 0.1, 0.45])
    cl = torch.tensor([0, 1])
    ce = -np.log(np.array([P, [0.45, 0.1, 0.45]]))
    per = ce.sum(1) - 2 * ce[[0, 1], [0, 1]]
    assert per[0] > 0 > per[1]
    prior = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    risks = 0.5 * per
    assert losses.ure_nn(z, cl, T_uniform(3), prior).item() == pytest.approx(risks[0])
    assert losses.ure_ga(z, cl, T_uniform(3), prior).item() == pytest.approx(-risks[1])
    both_positive = logits_of(P, P)
    assert losses.ure_ga(both_positive, torch.tensor([0, 1]), T_uniform(3), prior).item() == pytest.approx(
        losses.ure_nn(both_positive, torch.tensor([0, 1]), T_uniform(3), prior).item())


def test_identity_fwd_equals_scl_nl_plus_log_k_minus_1():
    torch.manual_seed(0)
    K = 7
    z = torch.randn(64, K, dtype=torch.float64)
    cl = torch.randint(0, K, (64,))
    fwd = losses.forward_correction(z, cl, T_uniform(K)).item()
    assert fwd == pytest.approx(losses.scl_nl(z, cl).item() + math.log(K - 1), abs=1e-4)


def test_identity_cpe_f_is_fwd():
    spec = losses.get("CPE", "F")
    assert spec.loss is losses.get("FWD").loss
    z, cl = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 4, (8,))
    assert spec.loss(z, cl, T_uniform(4)).item() == losses.forward_correction(z, cl, T_uniform(4)).item()


def test_identity_mcl_log_single_cl_is_scaled_scl_nl():
    torch.manual_seed(1)
    K = 5
    z, cl = torch.randn(32, K, dtype=torch.float64), torch.randint(0, K, (32,))
    mcl = losses.mcl_log(z, multi_hot(cl[:, None], K).double()).item()
    assert mcl == pytest.approx((2 * K - 2) * losses.scl_nl(z, cl).item(), rel=1e-6)


@pytest.mark.parametrize("kind", ["uniform", "weak"])
def test_ure_expectation_over_cls_is_the_ordinary_loss_exactly(kind):
    """sum_j T[y, j] * l(x, j) = -log p_y for every example: the estimator is unbiased by construction."""
    K = 10
    T = matrices.uniform(K) if kind == "uniform" else matrices.weak(K, seed=3)
    z = torch.randn(50, K, dtype=torch.float64)
    y = torch.randint(0, K, (50,))
    per_cl = torch.stack([losses.ure_example_losses(z, torch.full((50,), j), torch.tensor(T))
                          for j in range(K)], dim=1)
    expected = (torch.tensor(T)[y] * per_cl).sum(1)
    assert torch.allclose(expected, -torch.log_softmax(z, 1)[torch.arange(50), y])


@pytest.mark.parametrize("kind", ["uniform", "weak"])
def test_ure_is_unbiased_on_synthetic_data(kind):
    """Monte Carlo: the mean URE over sampled CLs lands within 4 standard errors of the true risk."""
    from trainers.synthetic import draw_complementary_labels
    rng = np.random.default_rng(0)
    K, N, draws = 10, 2000, 100
    T = matrices.uniform(K) if kind == "uniform" else matrices.weak(K, seed=3)
    z = torch.tensor(rng.normal(size=(N, K)))
    y = rng.integers(0, K, N)
    cl = torch.tensor(draw_complementary_labels(np.repeat(y, draws), T, num_cl=1, seed=1)[:, 0])
    per = losses.ure_example_losses(z.repeat_interleave(draws, 0), cl, torch.tensor(T))
    truth = losses.ordinary_ce(z, torch.tensor(y)).item()
    stderr = per.std().item() / np.sqrt(len(per))
    assert abs(per.mean().item() - truth) < 4 * stderr
    # a biased loss (SCL-NL) is nowhere near the ordinary risk
    assert abs(losses.scl_nl(z.repeat_interleave(draws, 0), cl).item() - truth) > 40 * stderr


REGISTRY = {  # name as listed by choices() -> (loss, which T it sees, decoding)
    "ORD": (losses.ordinary_ce, "none", "argmax"), "SCL-NL": (losses.scl_nl, "none", "argmax"),
    "SCL-EXP": (losses.scl_exp, "none", "argmax"), "SCL-FWD": (losses.forward_correction, "given", "argmax"),
    "FWD": (losses.forward_correction, "given", "argmax"),
    "FWD-JOINT": (losses.forward_joint, "given", "argmax"), "URE-NN": (losses.ure_nn, "uniform", "argmax"),
    "URE-GA": (losses.ure_ga, "uniform", "argmax"), "URE-TNN": (losses.ure_nn, "given", "argmax"),
    "URE-TGA": (losses.ure_ga, "given", "argmax"), "DM": (losses.dm, "none", "argmax"),
    "PC": (losses.pc, "none", "argmax"), "OP": (losses.op, "none", "argmax"),
    "CPE-I": (losses.cpe_identity, "given", "nearest_row"),
    "CPE-F": (losses.forward_correction, "given", "nearest_row"),
    "CPE-T": (losses.forward_correction, "learned", "nearest_row"),
    "MCL-MAE": (losses.mcl_mae, "none", "argmax"), "MCL-EXP": (losses.mcl_exp, "none", "argmax"),
    "MCL-LOG": (losses.mcl_log, "none", "argmax"),
}


def test_registry_wires_each_strategy_to_its_loss_matrix_and_decoding():
    assert sorted(losses.choices()) == sorted(REGISTRY)
    for name, (loss, matrix, decode) in REGISTRY.items():
        strategy, _, kind = name.partition("-")
        spec = losses.get(strategy, kind or None)
        assert (spec.loss, spec.matrix, spec.decode) == (loss, matrix, decode), name
        assert spec.ordinary == (name == "ORD") and spec.multi_hot == name.startswith("MCL"), name
    assert losses.get("fwd", "None") is losses.get("FWD")  # the seed passes --type for untyped strategies
    with pytest.raises(ValueError, match="SCL-NL"):
        losses.get("SCL", "XYZ")


def test_every_name_the_error_lists_is_accepted_as_a_strategy():
    """`--strategy CPE-F` was listed by the unknown-strategy message and then rejected."""
    with pytest.raises(ValueError, match="choose one of: (.*)") as err:
        losses.get("NOPE")
    listed = err.value.args[0].split("choose one of: ")[1].split(", ")
    for name in listed:
        strategy, _, kind = name.partition("-")
        assert losses.get(name) is losses.get(strategy, kind or None), name
    assert losses.get("cpe-f") is losses.get("CPE", "F")
    with pytest.raises(ValueError, match="names type F but --type is T"):
        losses.get("CPE-F", "T")


def test_cpe_decodes_to_nearest_row():
    T = torch.tensor(matrices.uniform(3))
    # p = [0.5, 0.25, 0.25] as a CL distribution is nearest to row 0 = [0, .5, .5]? no: row 0 is the
    # class whose CL distribution has 0 mass on class 0; v = [0.02, 0.49, 0.49] is closest to row 0.
    z = logits_of([0.02, 0.49, 0.49])
    assert losses.predict(z, losses.get("CPE", "I"), T).item() == 0
    assert losses.predict(z, losses.get("SCL", "NL"), T).item() in (1, 2)


def test_expand_pairs_and_multi_hot_collation():
    cl = torch.tensor([[2, 0, -1], [1, -1, -1], [3, 3, 1]])
    rows, targets = expand_pairs(cl)
    assert rows.tolist() == [0, 0, 1, 2, 2, 2]
    assert targets.tolist() == [2, 0, 1, 3, 3, 1]
    hot = multi_hot(cl, 4)
    assert hot.tolist() == [[1, 0, 1, 0], [0, 1, 0, 0], [0, 1, 0, 1]]
