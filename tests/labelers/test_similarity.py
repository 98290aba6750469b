"""The nearest-neighbour index, reference-image seeding and sampling_nn on hand-made embeddings."""
import numpy as np
import pytest

from labelers.similarity import SimilarityError, SimilarityIndex, nearest, rank_by_similarity
from labelers.strategies import seed_from_reference, select_batch, with_neighbours


def circle(degrees):
    """Unit vectors at the given angles: cosine similarity is the cosine of the angle between them."""
    radians = np.deg2rad(np.asarray(degrees, float))
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


# rows 0..7 at these angles; the reference sits at 0 degrees
ANGLES = [90, 5, 180, -12, 30, 3, -60, 200]


def test_reference_neighbours_are_picked_first():
    features = circle(ANGLES)
    picks = seed_from_reference(features, circle([0])[0], 4)
    assert picks.tolist() == [5, 1, 3, 4]  # 3, 5, -12 and 30 degrees away, closest first
    mixed = seed_from_reference(features, circle([0])[0], 5, n_neighbours=2, seed=1)
    assert mixed[:2].tolist() == [5, 1]
    assert len(set(mixed.tolist())) == 5 and not {5, 1} & set(mixed[2:].tolist())
    with pytest.raises(ValueError, match="between 0 and the initial count 3"):
        seed_from_reference(features, circle([0])[0], 3, n_neighbours=4)


def test_sampling_nn_brings_exactly_n_closest_new_neighbours():
    # rows 0..7; row 1 (5 deg) is a pick and also row 5's nearest: it must not come twice.
    features = circle(ANGLES)
    out = with_neighbours(features, np.array([5, 1, 2]), n_closest=2)
    # 5 (3 deg): nearest is 1 (2 deg away, but a pick), then 3 (15) and 4 (27).
    # 1 (5 deg): 3, 4 are taken; then 6 (65 away) and 0 (85). 2 (180 deg): only 7 (20 away) is left.
    assert out.tolist() == [5, 3, 4, 1, 6, 0, 2, 7]
    assert len(set(out.tolist())) == len(out)
    excluded = with_neighbours(features, np.array([5]), n_closest=2, excluded=np.array([3]))
    assert excluded.tolist() == [5, 1, 4]


def test_select_batch_with_n_closest_fills_the_batch_from_neighbours():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 8)).astype(np.float32)
    probs = rng.dirichlet(np.ones(3), size=200)
    batch = select_batch(probs, 9, "margin", features=features, n_closest=2, seed=0)
    picks = select_batch(probs, 3, "margin", seed=0)
    assert len(batch) == 9 and len(set(batch.tolist())) == 9
    assert batch[::3].tolist() == picks.tolist()  # the strategy's own picks, each then its 2 neighbours
    taken = set(picks.tolist())
    for j, pick in enumerate(picks):  # each brings its 2 nearest rows not picked or brought before
        _, idx = SimilarityIndex(features).search(features[pick], 200)
        expected = [i for i in idx[0].tolist() if i not in taken][:2]
        assert batch[3 * j + 1:3 * j + 3].tolist() == expected
        taken.update(expected)


def clustered(n_clusters=20, per_cluster=150, dim=32, seed=0):
    """Points near random centres, each cluster spread along a few directions of its own."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim))
    rows = [c + rng.normal(size=(per_cluster, 3)) @ rng.normal(size=(3, dim)) * 0.3 for c in centres]
    return np.concatenate(rows).astype(np.float32)


def recall_at(found, truth):
    return np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)])


def test_index_recall_against_exact_on_clustered_embeddings():
    x = clustered()
    queries = x[::30] + 0.05 * np.random.default_rng(1).normal(size=x[::30].shape).astype(np.float32)
    exact = SimilarityIndex(x)
    assert not exact.approximate
    _, truth = exact.search(queries, 10)
    brute = np.argsort(-(queries / np.linalg.norm(queries, axis=1, keepdims=True))
                       @ (x / np.linalg.norm(x, axis=1, keepdims=True)).T, axis=1)[:, :10]
    assert recall_at(truth, brute) == 1.0
    approx = SimilarityIndex(x, exact_below=0, nprobe=4)
    assert approx.approximate and approx.index.nlist == int(np.sqrt(len(x)))
    _, found = approx.search(queries, 10)
    assert recall_at(found, truth) >= 0.9
    # Probing every list is an exhaustive scan: exact again.
    _, every = SimilarityIndex(x, exact_below=0, nprobe=10_000).search(queries, 10)
    assert recall_at(every, truth) == 1.0


def test_rank_by_similarity_and_bad_input():
    features = circle(ANGLES)
    order, sim = rank_by_similarity(features, circle([0])[0])
    assert order.tolist() == [5, 1, 3, 4, 6, 0, 7, 2]  # 200 deg is 160 away, 180 is 180
    np.testing.assert_allclose(sim, np.cos(np.deg2rad(ANGLES)), atol=1e-6)
    # Two references: their mean direction (0 and 60 degrees -> 30).
    order, _ = rank_by_similarity(features, circle([0, 60]))
    assert order[0] == 4
    with pytest.raises(SimilarityError, match="3 dimensions, the embeddings have 2"):
        nearest(features, np.ones(3), 2)
    with pytest.raises(SimilarityError, match="all-zero rows \\[1\\]"):
        SimilarityIndex(np.array([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(SimilarityError, match="non-finite"):
        rank_by_similarity(np.array([[np.nan, 1.0]]), np.ones(2))


def test_huge_but_finite_embeddings_are_not_called_non_finite():
    features = np.array([[3e20, 4e20], [1.0, 0.0]], np.float32)  # float32 squares overflow here
    order, sim = rank_by_similarity(features, np.array([0.6, 0.8]))
    assert order.tolist() == [0, 1]
    np.testing.assert_allclose(sim, [1.0, 0.6], rtol=1e-6)
