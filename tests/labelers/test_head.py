import numpy as np
import pytest
import torch

from labelers.head import ClassifierHead
from labelers.priors import ClassifierPrior


def blobs(n_per_class=60, k=3, d=16, seed=0, spread=0.6):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (k, d))
    x = np.vstack([c + rng.normal(0, spread, (n_per_class, d)) for c in centers])
    y = np.repeat(np.arange(k), n_per_class)
    return x.astype(np.float32), y


def test_fit_learns_separable_blobs():
    x, y = blobs()
    head = ClassifierHead(["a", "b", "c"]).fit(x[::2], y[::2])
    assert (head.predict(x[1::2]) == y[1::2]).mean() > 0.95
    np.testing.assert_allclose(head.predict_proba(x).sum(axis=1), 1.0, atol=1e-5)


def test_probabilities_are_calibrated_on_overlapping_classes():
    x, y = blobs(n_per_class=400, k=3, d=4, spread=1.5, seed=1)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    train, test = order[:600], order[600:]
    probs = ClassifierHead(["a", "b", "c"]).fit(x[train], y[train]).predict_proba(x[test])
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == y[test]
    bins = np.clip((confidence * 10).astype(int), 0, 9)
    ece = sum(abs(correct[bins == b].mean() - confidence[bins == b].mean()) * (bins == b).mean()
              for b in range(10) if (bins == b).any())
    assert 0.5 < correct.mean() < 0.98  # really overlapping, so calibration matters
    assert ece < 0.06


def test_zero_shot_prior_serves_classes_without_examples():
    # Text prior points class c at the c-th axis; train only on class 0 and 1 examples.
    k, d = 3, 3
    head = ClassifierHead(["a", "b", "c"]).init_from_text(np.eye(k, d), logit_scale=20)
    x = np.eye(3, dtype=np.float32)
    before = head.predict(x)
    assert list(before) == [0, 1, 2]
    head.fit(np.repeat(x[:2], 5, axis=0), np.repeat([0, 1], 5))
    assert head.predict(x)[2] == 2  # the unseen class keeps its prior


def test_untrained_head_without_prior_is_uniform():
    head = ClassifierHead(["a", "b"])
    np.testing.assert_allclose(head.predict_proba(np.ones((2, 5))), 0.5)


def overlapping_multi_label(n=300, k=3, d=6, seed=0):
    """Features and multi-hot targets drawn from independent logistic models: overlapping, not separable."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, d)).astype(np.float32)
    true_logits = x @ rng.normal(0, 1.5, (d, k)) + rng.normal(0, 0.5, k)
    y = (rng.random((n, k)) < 1 / (1 + np.exp(-true_logits))).astype(int)
    return x, y


@pytest.mark.parametrize("multi_label", [False, True], ids=["softmax", "sigmoid"])
def test_gradient_matches_the_loss_lbfgs_minimises(multi_label):
    from scipy.optimize import check_grad

    x, y = overlapping_multi_label()
    if not multi_label:
        y = y.argmax(axis=1)
    head = ClassifierHead(["a", "b", "c"], multi_label=multi_label, l2=5.0)
    head.init_from_text(np.random.default_rng(1).normal(size=(3, x.shape[1])), logit_scale=2.0)
    objective, start, _ = head._training_problem(x, y)
    rng = np.random.default_rng(2)
    for theta in (start, start + rng.normal(0, 1, start.shape)):
        gradient_norm = np.linalg.norm(objective(theta)[1])
        error = check_grad(lambda t: objective(t)[0], lambda t: objective(t)[1], theta, epsilon=1e-6)
        assert error < 1e-5 * max(gradient_norm, 1.0)


def axis_prior(names, d, scale=4.0, matched=None):
    """A source classifier with one class per axis; source class c belongs to label c (if in `matched`)."""
    k = len(names)
    aggregation = np.zeros((k, d))
    for c in (range(k) if matched is None else matched):
        aggregation[c, c] = 1.0
    return ClassifierPrior(names, np.eye(d), np.zeros(d), aggregation, feature_scale=scale)


def head_with_an_axis_prior(multi_label: bool):
    """Return (head, x, y): an untrained head whose prior matches 2 of its 3 classes, on unit-norm overlapping
    data (class indices, or multi-hot when `multi_label`)."""
    x, y = overlapping_multi_label()
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    if not multi_label:
        y = y.argmax(axis=1)
    head = ClassifierHead(["a", "b", "c"], multi_label=multi_label, l2=5.0)
    head.init_from_prior(axis_prior(["a", "b", "c"], x.shape[1], matched=[0, 1]))
    return head, x, y


@pytest.mark.parametrize("multi_label", [False, True], ids=["softmax", "sigmoid"])
def test_gradient_with_a_probability_prior_matches_the_loss(multi_label):
    from scipy.optimize import check_grad

    head, x, y = head_with_an_axis_prior(multi_label)
    objective, start, _ = head._training_problem(x, y)
    assert len(start) == 3 * x.shape[1] + 3 + 1  # W, b and the prior's gain
    for theta in (start, start + np.random.default_rng(3).normal(0, 1, start.shape)):
        gradient_norm = np.linalg.norm(objective(theta)[1])
        error = check_grad(lambda t: objective(t)[0], lambda t: objective(t)[1], theta, epsilon=1e-6)
        assert error < 1e-5 * max(gradient_norm, 1.0)


def test_untrained_head_with_a_probability_prior_predicts_the_prior():
    prior = axis_prior(["a", "b", "c"], 4, matched=[0, 1])
    head = ClassifierHead(["a", "b", "c"]).init_from_prior(prior)
    x = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(head.predict_proba(x), prior.proba(x), rtol=1e-4)


def test_probability_prior_keeps_an_unseen_class_and_survives_save_load(tmp_path):
    # The prior knows all three classes; labels exist only for the first two.
    head = ClassifierHead(["a", "b", "c"]).init_from_prior(axis_prior(["a", "b", "c"], 3))
    x = np.eye(3, dtype=np.float32)
    head.fit(np.repeat(x[:2], 5, axis=0), np.repeat([0, 1], 5))
    assert list(head.predict(x)) == [0, 1, 2]
    again = ClassifierHead.load(head.save(tmp_path / "head"))
    np.testing.assert_allclose(again.predict_proba(x), head.predict_proba(x), rtol=1e-5)
    assert again.prior.matched == ["a", "b", "c"] and again.prior_gain == head.prior_gain


def test_labels_turn_down_a_wrong_prior():
    # The prior swaps a and b; 400 labels say otherwise, so the learned gain of the prior drops well below 1.
    names = ["a", "b"]
    wrong = ClassifierPrior(names, np.eye(2), np.zeros(2), [[0, 1], [1, 0]], feature_scale=4.0)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    x = np.eye(2)[y] + rng.normal(0, 0.3, (400, 2))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    head = ClassifierHead(names, calibrate=False).init_from_prior(wrong).fit(x, y)
    assert head.prior_gain < 0.5 and (head.predict(x) == y).mean() > 0.9


def test_prior_for_other_labels_is_refused():
    with pytest.raises(ValueError, match="the prior is for labels"):
        ClassifierHead(["b", "a", "c"]).init_from_prior(axis_prior(["a", "b", "c"], 3))


def test_multi_label_head_equals_independent_per_class_heads():
    # With sigmoid outputs the objective separates over classes, so fitting K classes jointly must give the
    # same weights as K one-class fits. A gradient K times too large for the joint fit breaks this.
    x, y = overlapping_multi_label()
    names = ["a", "b", "c"]
    joint = ClassifierHead(names, multi_label=True, calibrate=False, max_iter=500).fit(x, y)
    for c, name in enumerate(names):
        alone = ClassifierHead([name], multi_label=True, calibrate=False, max_iter=500).fit(x, y[:, [c]])
        np.testing.assert_allclose(joint.weight[c].numpy(), alone.weight[0].numpy(), atol=1e-4)
        np.testing.assert_allclose(joint.bias[c].numpy(), alone.bias[0].numpy(), atol=1e-4)
    probs = joint.predict_proba(x)
    assert not np.allclose(probs.sum(axis=1), 1.0)  # independent outputs, not a softmax


def test_save_load_round_trip_without_pickle(tmp_path):
    x, y = blobs()
    head = ClassifierHead(["a", "b", "c"]).fit(x, y)
    head.save(tmp_path / "head")
    assert {p.name for p in (tmp_path / "head").iterdir()} == {"head.safetensors", "head.json"}
    again = ClassifierHead.load(tmp_path / "head")
    np.testing.assert_allclose(again.predict_proba(x), head.predict_proba(x), rtol=1e-5)
    assert again.class_names == ["a", "b", "c"] and again.n_trained == len(x)


def test_bad_inputs_fail_clearly():
    head = ClassifierHead(["a", "b"])
    with pytest.raises(ValueError, match="class indices"):
        head.fit(np.ones((2, 3)), [0, 5])
    with pytest.raises(ValueError, match="2 feature rows but 3 labels"):
        head.fit(np.ones((2, 3)), [0, 1, 1])
    with pytest.raises(ValueError, match="NaN"):
        head.fit(np.array([[np.nan, 1.0], [0.0, 1.0]]), [0, 1])
    with pytest.raises(ValueError, match="duplicate"):
        ClassifierHead(["a", "a"])


def test_warm_started_fit_reaches_the_same_head_as_a_fit_from_the_prior():
    x, y = blobs(n_per_class=200, k=3, d=8, spread=1.2, seed=4)
    previous = ClassifierHead(["a", "b", "c"]).fit(x[:500], y[:500])
    cold = ClassifierHead(["a", "b", "c"]).fit(x, y)
    warm = ClassifierHead(["a", "b", "c"]).fit(x, y, warm_start=previous)
    np.testing.assert_allclose(warm.predict_proba(x), cold.predict_proba(x), atol=2e-3)
    np.testing.assert_allclose(warm.weight.numpy(), cold.weight.numpy(), atol=2e-2 * np.abs(cold.weight.numpy()).max())
    with pytest.raises(ValueError, match="cannot warm-start"):
        ClassifierHead(["a", "b", "x"]).fit(x, y, warm_start=previous)


def test_temperature_from_folds_started_at_the_full_fit_equals_folds_from_the_prior():
    # The cheap calibration (float32 folds warm-started from the full fit, looser tolerance) must give the
    # temperature of the reference path (each fold solved from the prior in float64, as before).
    x, y = blobs(n_per_class=400, k=3, d=4, spread=1.5, seed=1)
    head = ClassifierHead(["a", "b", "c"]).fit(x, y)
    fitted = (head.weight.numpy(), head.bias.numpy(), head.prior_gain)
    reference = head._cross_validated_temperature(x, y)
    assert abs(reference - 1.0) > 0.05  # the data needs a temperature, so the comparison means something
    np.testing.assert_allclose(head._cross_validated_temperature(x, y, fitted), reference, rtol=1e-2)
    assert head.temperature == pytest.approx(head._cross_validated_temperature(x, y, fitted))


def test_with_many_labels_one_held_out_third_gives_the_folds_temperature():
    from labelers.head import HELD_OUT_ONLY_FROM

    x, y = blobs(n_per_class=HELD_OUT_ONLY_FROM // 3 + 100, k=3, d=4, spread=1.5, seed=2)
    head = ClassifierHead(["a", "b", "c"]).fit(x, y)
    reference = head._cross_validated_temperature(x, y)  # 3 folds, each from the prior, float64
    assert abs(reference - 1.0) > 0.05
    np.testing.assert_allclose(head.temperature, reference, rtol=0.03)


@pytest.mark.parametrize("multi_label", [False, True], ids=["softmax", "sigmoid"])
def test_the_float32_problem_is_the_float64_problem_to_float32_precision(multi_label):
    # Warm starts are solved in float32: the same loss and gradient, only the products with the features rounded.
    head, x, y = head_with_an_axis_prior(multi_label)
    objective, start, _ = head._training_problem(x, y)
    objective32, start32, _ = head._training_problem(x, y, dtype=np.float32)
    np.testing.assert_allclose(start32, start, rtol=1e-6)
    theta = start + np.random.default_rng(4).normal(0, 1, start.shape)
    (loss, gradient), (loss32, gradient32) = objective(theta), objective32(theta)
    assert loss32 == pytest.approx(loss, rel=1e-6)
    np.testing.assert_allclose(gradient32, gradient, atol=1e-5 * np.abs(gradient).max())


def test_a_warm_start_stops_relative_to_how_far_the_previous_head_was():
    # 1 % more labels: the previous head is near the new optimum. The warm start stops once its gradient is
    # WARM_GTOL_RELATIVE of the starting one (looser than the cold fit's 1e-6 here), in no more evaluations
    # than to 1e-6 from the same start, and lands on the probabilities of a fit solved to 1e-10.
    from labelers.head import WARM_GTOL_MAX, WARM_GTOL_RELATIVE

    x, y = blobs(n_per_class=1000, k=3, d=128, spread=6.0, seed=5)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    names = ["a", "b", "c"]
    previous = ClassifierHead(names, calibrate=False).fit(x[:-30], y[:-30])
    init = (previous.weight.numpy(), previous.bias.numpy(), previous.prior_gain)
    head = ClassifierHead(names, calibrate=False, max_iter=1000)
    objective, start, _ = head._training_problem(x, y, init)
    stop = min(max(1e-6, WARM_GTOL_RELATIVE * np.abs(objective(start)[1]).max()), WARM_GTOL_MAX)
    assert stop > 2e-6  # the relative stop is really looser than the fixed one
    warm = ClassifierHead(names, calibrate=False).fit(x, y, warm_start=previous)
    head._solve(x, y, init, gtol=1e-6)  # the same start, to the fixed 1e-6
    exact = head._solve(x, y, gtol=1e-10)
    assert len(warm.solver_evaluations) == 1  # uncalibrated: one solve
    assert warm.solver_evaluations[0] <= head.solver_evaluations[0], (warm.solver_evaluations, head.solver_evaluations)
    at_warm, reached, _ = head._training_problem(x, y, (warm.weight.numpy(), warm.bias.numpy(), warm.prior_gain))
    assert 1e-6 < np.abs(at_warm(reached)[1]).max() <= 2 * stop  # stopped at the relative tolerance (float32 weights)
    exact_head = ClassifierHead(names, calibrate=False)
    exact_head.weight, exact_head.bias = (torch.from_numpy(v) for v in exact[:2])
    np.testing.assert_allclose(warm.predict_proba(x), exact_head.predict_proba(x), atol=1e-3)


def test_the_warm_start_evaluates_its_starting_point_once(monkeypatch):
    x, y = blobs(n_per_class=100, k=3, d=8, seed=6)
    previous = ClassifierHead(["a", "b", "c"], calibrate=False).fit(x[:-3], y[:-3])
    head = ClassifierHead(["a", "b", "c"], calibrate=False)
    problem = head._training_problem
    points = []

    def recording(*args, **kwargs):
        objective, start, to_raw = problem(*args, **kwargs)

        def recorded(theta):
            points.append(np.array(theta))
            return objective(theta)

        return recorded, start, to_raw

    monkeypatch.setattr(head, "_training_problem", recording)
    head.fit(x, y, warm_start=previous)
    assert len(points) >= 2 and not any(np.array_equal(points[0], p) for p in points[1:])
