"""Metrics by hand; rounds on synthetic region embeddings: gain over keep-original, files per round, resume."""
import json

import numpy as np
import pytest

from labelers.relabel.metrics import multi_hot, real_top1, set_metrics
from labelers.relabel.rounds import Holdout, RelabelSettings, best_round, run_rounds


def test_set_metrics_by_hand_and_empty_truth_is_unscored():
    predicted = multi_hot([[0, 1], [2], [0], [1]], 3)
    truth = multi_hot([[0], [1, 2], [], [1]], 3)
    m = set_metrics(predicted, truth)
    # image 0: J 1/2 P 1/2 R 1 F1 2/3; image 1: J 1/2 P 1 R 1/2 F1 2/3; image 2 unscored; image 3: all 1
    assert m["jaccard"] == pytest.approx((0.5 + 0.5 + 1) / 3)
    assert m["precision"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert m["recall"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert m["f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert m["cardinality"] == pytest.approx(4 / 3) and m["unscored"] == 1
    assert real_top1(np.array([[0.9, 0.1, 0], [0.9, 0.1, 0], [1, 0, 0], [0, 1, 0]]), truth) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match=r"row 0: label 5"):
        multi_hot([[5]], 3)


def _scenes(n, rng, k=4, dim=16, two_share=0.5, prototypes=None, noise=2.0):
    """Images of 1 or 2 objects: whole-image embedding = the objects' mean prototype + noise; regions 1..2
    are the objects alone. The original label is the first object."""
    prototypes = rng.normal(size=(k, dim)) * 3 if prototypes is None else prototypes
    regions, truth, original = [], [], []
    for _ in range(n):
        objects = rng.choice(k, 2 if rng.random() < two_share else 1, replace=False)
        parts = [prototypes[o] + rng.normal(size=dim) * noise for o in objects]
        regions.append(np.stack([np.mean(parts, axis=0)] + parts + [parts[0]]).astype(np.float32))
        truth.append(sorted(objects.tolist()))
        original.append(int(objects[0]))
    return regions, multi_hot(truth, k), np.array(original), prototypes


def test_rounds_beat_keep_original_write_every_round_and_resume(tmp_path):
    rng = np.random.default_rng(0)
    regions, truth, original, prototypes = _scenes(300, rng)
    held_regions, held_truth, _, _ = _scenes(120, rng, prototypes=prototypes)
    names = [f"c{i}" for i in range(4)]
    settings = RelabelSettings(confidence="mc-dropout", passes=8, rule="per-class", target_precision=0.9)
    history = run_rounds(regions, original, names, settings, rounds=3, holdout=Holdout(held_regions, held_truth),
                         output_dir=tmp_path)
    keep = set_metrics(multi_hot([[o] for o in original], 4), truth)
    ours = set_metrics(multi_hot(best_round(history).labels, 4), truth)
    assert ours["f1"] > keep["f1"] + 0.05 and ours["precision"] >= 0.88, (ours, keep)
    assert history[0].labels == [[int(o)] for o in original]
    summary = json.loads((tmp_path / "rounds.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [h.round for h in history]
    for h in history:  # every round's labels and metrics on disk
        saved = json.loads((tmp_path / f"round_{h.round}.json").read_text())
        assert [row["labels"] for row in saved["data"]] == h.labels and "cardinality" in saved["metrics"]
    assert not list(tmp_path.glob(".*.tmp"))
    resumed = run_rounds(regions, original, names, settings, rounds=3, holdout=Holdout(held_regions, held_truth),
                         output_dir=tmp_path, resume=True)
    assert [h.labels for h in resumed] == [h.labels for h in history]


def test_rounds_stop_when_the_held_out_metric_stops_improving():
    rng = np.random.default_rng(1)
    regions, truth, original, prototypes = _scenes(200, rng, two_share=0.0)  # nothing to add: cannot improve
    held_regions, held_truth, _, _ = _scenes(80, rng, two_share=0.0, prototypes=prototypes)
    history = run_rounds(regions, original, [f"c{i}" for i in range(4)], RelabelSettings(confidence="naive"),
                         rounds=5, holdout=Holdout(held_regions, held_truth))
    assert len(history) < 6 and history[-1].metrics["stopped"]
    assert best_round(history).round in (history[-1].round if history[-1].metrics["accepted"] else history[-2].round,)


def test_mc_perturbation_rounds_use_the_views_the_perturb_function_gives():
    from labelers.relabel.rounds import region_confidences

    class Head:  # scores = sigmoid of the first two feature coordinates
        def predict_proba(self, x):
            return 1 / (1 + np.exp(-np.asarray(x)[:, :2]))

    regions = [np.zeros((2, 3)), np.zeros((3, 3))]
    calls = []

    def perturb(i, passes, seed):
        calls.append((i, passes, seed))
        views = np.zeros((passes, len(regions[i]), 3))
        views[0, :, 0] = 10.0  # one of the passes sees class 0 strongly
        return views

    settings = RelabelSettings(confidence="mc-perturbation", passes=4, seed=5)
    confidences = region_confidences(Head(), regions, settings, perturb)
    assert calls == [(0, 4, 5), (1, 4, 5)]
    expected = (1 / (1 + np.exp(-10)) + 3 * 0.5) / 4  # mean of one strong and three neutral passes
    assert confidences[1][:, 0] == pytest.approx([expected] * 3) and confidences[1][:, 1] == pytest.approx([0.5] * 3)
    with pytest.raises(ValueError, match="needs the images"):
        region_confidences(Head(), regions, settings)


def test_resume_refuses_when_the_settings_differ_and_names_the_keys(tmp_path):
    rng = np.random.default_rng(2)
    regions, _, original, _ = _scenes(60, rng)
    names = [f"c{i}" for i in range(4)]
    inputs = {"regions": "random", "num_crops": "4"}
    run_rounds(regions, original, names, RelabelSettings(confidence="naive"), rounds=1, output_dir=tmp_path,
               inputs=inputs)
    expected = r"cannot --resume.*num_crops: saved '4', now '6'.*threshold: saved 0.5, now 0.7"
    with pytest.raises(ValueError, match=expected):
        run_rounds(regions, original, names, RelabelSettings(confidence="naive", threshold=0.7), rounds=2,
                   output_dir=tmp_path, resume=True, inputs={**inputs, "num_crops": "6"})
    resumed = run_rounds(regions, original, names, RelabelSettings(confidence="naive"), rounds=2,
                         output_dir=tmp_path, resume=True, inputs=inputs)  # the same: continues
    assert [h.round for h in resumed] == [0, 1, 2]


def test_rounds_without_a_holdout_are_marked_unvalidated_in_the_log_and_the_round_file(tmp_path, caplog):
    rng = np.random.default_rng(3)
    regions, _, original, _ = _scenes(60, rng)
    history = run_rounds(regions, original, [f"c{i}" for i in range(4)], RelabelSettings(confidence="naive"),
                         rounds=1, output_dir=tmp_path)
    assert history[1].metrics["validated"] is False and history[1].metrics["accepted"]
    saved = json.loads((tmp_path / "round_1.json").read_text())["metrics"]
    assert saved["validated"] is False and "WITHOUT validation" in saved["warning"]
    assert any("round 1" in r.getMessage() and "WITHOUT validation" in r.getMessage() for r in caplog.records)
    assert "validated" not in history[0].metrics  # round 0 is the original labels: nothing to validate


def test_keep_original_is_estimated_with_the_holdouts_own_noisy_labels():
    from labelers.relabel.rounds import fit_head, keep_original_estimate

    rng = np.random.default_rng(4)
    regions, truth, original, prototypes = _scenes(120, rng, two_share=0.0)
    held_regions, held_truth, held_original, _ = _scenes(40, rng, two_share=0.0, prototypes=prototypes)
    noisy = held_original.copy()
    noisy[:10] = (noisy[:10] + 1) % 4  # a quarter of the given labels wrong
    head = fit_head(np.stack([r[0] for r in regions]), multi_hot([[o] for o in original], 4),
                    [f"c{i}" for i in range(4)], RelabelSettings())
    with_noise = keep_original_estimate(head, Holdout(held_regions, held_truth, noisy))
    assert with_noise["val_precision"] == pytest.approx(30 / 40)  # single-object scenes: 1 if right, else 0
    stand_in = keep_original_estimate(head, Holdout(held_regions, held_truth))
    assert stand_in["val_precision"] == 1.0  # the noise-free stand-in: why the original labels are needed
    calibration, validation = Holdout(held_regions, held_truth, noisy).halves()
    assert validation.original.tolist() == noisy[1::2].tolist() and len(calibration.regions) == 20


def test_out_of_fold_scores_come_from_heads_that_never_saw_the_image():
    from labelers.relabel.rounds import fit_head, out_of_fold_confidences, region_confidences

    rng = np.random.default_rng(5)
    regions, _, original, _ = _scenes(40, rng)
    names = [f"c{i}" for i in range(4)]
    labels = multi_hot([[o] for o in original], 4)
    whole = np.stack([r[0] for r in regions])
    settings = RelabelSettings(confidence="naive", folds=2)
    got = out_of_fold_confidences(whole, labels, regions, names, settings)
    # image 0 is in fold 0 (even rows): scored by the head fitted on the odd rows only
    odd_head = fit_head(whole[1::2], labels[1::2], names, settings)
    expected = region_confidences(odd_head, [regions[0]], settings)[0]
    assert np.allclose(got[0], expected)
    in_sample = region_confidences(fit_head(whole, labels, names, settings), [regions[0]], settings)[0]
    assert not np.allclose(got[0], in_sample)  # not the head that trained on image 0


def _noisy(n, rng, prototypes, noise=0.25):
    """Single-object scenes whose given label is flipped to another class at `noise`."""
    regions, truth, _, _ = _scenes(n, rng, two_share=0.0, prototypes=prototypes, noise=1.0)
    true = truth.argmax(1)
    given = np.where(rng.random(n) < noise, (true + rng.integers(1, 4, n)) % 4, true)
    return regions, truth, given


def test_the_replace_rule_fixes_wrong_originals_and_needs_given_held_out_labels():
    rng = np.random.default_rng(7)
    prototypes = rng.normal(size=(4, 16)) * 3
    regions, truth, given = _noisy(400, rng, prototypes)
    held_regions, held_truth, held_given = _noisy(400, rng, prototypes)
    names = [f"c{i}" for i in range(4)]
    settings = RelabelSettings(confidence="naive", rule="per-class", replace_precision=0.9, seed=1)
    history = run_rounds(regions, given, names, settings, rounds=2,
                         holdout=Holdout(held_regions, held_truth, held_given))
    only_added = run_rounds(regions, given, names, RelabelSettings(confidence="naive", rule="per-class", seed=1),
                            rounds=2, holdout=Holdout(held_regions, held_truth, held_given))
    keep = set_metrics(multi_hot([[o] for o in given], 4), truth)
    ours = set_metrics(multi_hot(best_round(history).labels, 4), truth)
    added = set_metrics(multi_hot(best_round(only_added).labels, 4), truth)
    # adding the right class beside a wrong original helps; replacing the wrong original helps more
    assert best_round(history).round >= 1 and ours["f1"] > keep["f1"] + 0.1, (ours, keep)
    assert ours["precision"] > added["precision"] + 0.05 and ours["cardinality"] < added["cardinality"], (ours, added)
    with pytest.raises(ValueError, match="--replace-precision needs held-out images with their given labels"):
        run_rounds(regions, given, names, settings, rounds=1, holdout=Holdout(held_regions, held_truth))


def test_a_holdout_smaller_than_the_folds_is_scored_by_the_fold_heads():
    from labelers.relabel.rounds import fold_heads, held_out_scorer

    rng = np.random.default_rng(5)
    regions, truth, original, prototypes = _scenes(60, rng)
    held_regions, held_truth, _, _ = _scenes(3, rng, prototypes=prototypes)  # 3 images, 5 fold heads
    settings = RelabelSettings(confidence="naive", folds=5)
    whole = np.stack([r[0] for r in regions])
    heads = fold_heads(whole, multi_hot([[o] for o in original], 4), [f"c{i}" for i in range(4)], settings)
    scored = held_out_scorer(heads[0], heads, settings)(Holdout(held_regions, held_truth))
    # held-out image j is scored by fold head j
    for j in range(3):
        np.testing.assert_allclose(scored[j], heads[j].predict_proba(held_regions[j]), rtol=1e-6)
