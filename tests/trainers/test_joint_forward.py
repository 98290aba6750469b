"""FWD-JOINT: the likelihood of all of an image's CLs at once, and the options around it."""
import numpy as np
import pytest
import torch

from trainers import losses, matrices
from trainers.module import CLLModule


def test_joint_forward_with_one_cl_equals_forward_correction():
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    T = torch.tensor(matrices.uniform(4) * 0.5 + np.eye(4)[[1, 2, 3, 0]] * 0.5, dtype=torch.float32)
    cl = torch.tensor([1, 2, 3, 0, 1, 2])
    joint = losses.forward_joint(logits, cl[:, None], T)
    assert torch.allclose(joint, losses.forward_correction(logits, cl, T), atol=1e-6)


def test_joint_forward_by_hand_with_a_repeat_and_padding():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    T = torch.tensor([[0.0, 0.8, 0.2], [0.5, 0.0, 0.5], [0.3, 0.7, 0.0]])
    eps = losses.EPS
    cl = torch.tensor([[1, 1, -1]])  # the same answer twice: two answers, both class 1
    likelihood = 0.5 * (0.8 + eps) ** 2 + 0.25 * eps ** 2 + 0.25 * (0.7 + eps) ** 2
    expected = -np.log(likelihood) / 2
    assert losses.forward_joint(logits, cl, T).item() == pytest.approx(expected, rel=1e-5)


def test_joint_forward_gradient_matches_finite_differences():
    torch.manual_seed(1)
    logits = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    T = torch.tensor(matrices.strong(10)[:4, :4] + 0.05, dtype=torch.float64)
    T = T / T.sum(1, keepdim=True)
    cl = torch.tensor([[1, 2, -1], [0, 0, 3], [2, -1, -1]])
    assert torch.autograd.gradcheck(lambda z: losses.forward_joint(z, cl, T), (logits,))


def test_fwd_joint_is_a_type_of_fwd_and_other_types_are_still_ignored():
    assert losses.strategy_key("FWD", "JOINT") == ("FWD", "JOINT") == losses.strategy_key("fwd-joint")
    assert losses.strategy_key("FWD", "NL") == ("FWD", None)  # the seed passes any --type for FWD


def test_module_adds_the_weighted_cross_entropy_of_the_rows_with_an_ordinary_label():
    torch.manual_seed(2)
    T = matrices.uniform(3)
    module = CLLModule(torch.nn.Identity(), "FWD", None, T, ordinary_weight=0.5)
    logits = torch.randn(4, 3)
    cl = torch.tensor([[1, -1], [2, 0], [0, -1], [1, 2]])
    true = torch.tensor([0, -1, 2, -1])
    rows, targets = torch.tensor([0, 1, 1, 2, 3, 3]), torch.tensor([1, 2, 0, 0, 1, 2])
    expected = losses.forward_correction(logits[rows], targets, torch.tensor(T, dtype=torch.float32)) \
        + 0.5 * torch.nn.functional.cross_entropy(logits[[0, 2]], true[[0, 2]])
    assert torch.allclose(module.compute_loss(logits, cl, true), expected, atol=1e-6)
    assert torch.allclose(CLLModule(torch.nn.Identity(), "FWD", None, T).compute_loss(logits, cl, true),
                          expected - 0.5 * torch.nn.functional.cross_entropy(logits[[0, 2]], true[[0, 2]]))
