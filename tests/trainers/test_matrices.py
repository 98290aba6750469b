"""Transition-matrix generators, the empirical estimate, file round trips and bad shapes."""
import numpy as np
import pytest

from trainers import matrices, matrix_options
from trainers.synthetic import draw_complementary_labels


@pytest.mark.parametrize("make", [lambda: matrices.uniform(10), lambda: matrices.weak(10, 1),
                                  lambda: matrices.strong(10, 2), lambda: matrices.noisy(10, 0.2, 3)])
def test_rows_sum_to_one(make):
    T = make()
    assert T.shape == (10, 10)
    assert np.allclose(T.sum(axis=1), 1)
    assert (T >= 0).all()


@pytest.mark.parametrize("make", [lambda: matrices.uniform(4), lambda: matrices.weak(10, 5),
                                  lambda: matrices.strong(10, 5)])
def test_noise_free_matrices_have_zero_diagonal(make):
    assert np.all(np.diag(make()) == 0)


def test_weak_rows_are_permutations_of_the_stated_values():
    T = matrices.weak(10, seed=7)
    for row in range(10):
        off = np.delete(T[row], row)
        assert np.allclose(sorted(off), sorted(matrices.WEAK_VALUES))
    assert not np.allclose(T, matrices.weak(10, seed=8))  # the seed matters
    assert np.allclose(T, matrices.weak(10, seed=7))


@pytest.mark.parametrize("noise", [0.1, 0.2, 0.5])
def test_noisy_puts_the_stated_mass_on_the_diagonal(noise):
    T = matrices.noisy(10, noise, seed=0)
    assert np.allclose(np.diag(T), noise / 10)


def test_biased_matrices_need_ten_classes():
    with pytest.raises(matrices.TransitionMatrixError, match="10 classes"):
        matrices.weak(5)


def test_empirical_counts_only_gold_rows_and_reports_them():
    y = np.array([0, 0, 1, -1, 2])
    cl = np.array([[1, 2], [1, -1], [0, 2], [0, 1], [0, 0]])
    T, used = matrices.empirical(y, cl, 3)
    assert used == 4
    assert np.allclose(T[0], [0, 2 / 3, 1 / 3])
    assert np.allclose(T[1], [0.5, 0, 0.5])
    assert np.allclose(T[2], [1, 0, 0])


def test_empirical_recovers_the_generating_matrix():
    T = matrices.strong(10, seed=4)
    y = np.random.default_rng(0).integers(0, 10, 20000)
    cl = draw_complementary_labels(y, T, num_cl=1, seed=9)
    estimate, used = matrices.empirical(y, cl, 10)
    assert used == 20000
    assert np.abs(estimate - T).max() < 0.03


def test_empirical_without_gold_is_an_error():
    with pytest.raises(matrices.TransitionMatrixError, match="gold"):
        matrices.empirical(np.array([-1, -1]), np.array([[0], [1]]), 3)


def test_resolve_flags_oracle_only_when_all_true_labels_used():
    y, cl = np.array([0, 1, 2]), np.array([[1], [2], [0]])
    _, info = matrix_options.resolve("empirical", 3, true_labels=y, cl_labels=cl, all_true=True)
    assert info.oracle and info.gold_labels == 3 and "ORACLE" in info.describe()
    _, info = matrix_options.resolve("empirical", 3, true_labels=y, cl_labels=cl, all_true=False)
    assert not info.oracle


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_save_load_round_trip(tmp_path, suffix):
    T = matrices.weak(10, 3)
    path = matrices.save(T, tmp_path / f"T{suffix}")
    assert np.allclose(matrices.load(path, 10), T)
    again, info = matrix_options.resolve(str(path), 10)
    assert np.allclose(again, T) and str(path) in info.source


def test_wrong_shape_names_the_file(tmp_path):
    path = matrices.save(matrices.uniform(4), tmp_path / "T.csv")
    with pytest.raises(matrices.TransitionMatrixError, match=r"T\.csv.*\(4, 4\).*\(10, 10\)"):
        matrices.load(path, 10)


def test_rows_not_summing_to_one_are_rejected(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("0,0.5\n0.5,0\n")
    with pytest.raises(matrices.TransitionMatrixError, match="row 0"):
        matrices.load(path, 2)


def test_unknown_spec_is_rejected():
    with pytest.raises(matrices.TransitionMatrixError, match="unknown transition matrix"):
        matrix_options.resolve("sideways", 10)


def test_draw_cls_distinct_per_row_and_multi_count():
    y = np.arange(10).repeat(50)
    cl = draw_complementary_labels(y, matrices.uniform(10), num_cl=3, seed=0)
    assert cl.shape == (500, 3)
    assert all(len(set(row)) == 3 for row in cl)
    assert not (cl == y[:, None]).any()
    varied = draw_complementary_labels(y, matrices.uniform(10), num_cl=0, seed=0)
    counts = (varied >= 0).sum(1)
    assert counts.min() >= 1 and counts.max() <= 9 and len(set(counts)) > 3
