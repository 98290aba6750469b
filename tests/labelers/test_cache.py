import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from labelers.cache import CacheCorruptError, EmbeddingCache, content_key, embed_blobs, embed_files
from labelers.images import ImageLoadError, load_image


class CountingEmbedder:
    """A deterministic stand-in that counts how many images reach the model."""

    id, dim, seen = "counting@1", 4, 0

    def preprocess(self, image):
        import torch

        return torch.tensor(np.asarray(image.resize((2, 2)), np.float32).reshape(-1)[:4])

    def encode_batch(self, batch):
        CountingEmbedder.seen += len(batch)
        return (batch.numpy() + 1.0).astype(np.float32)


@pytest.fixture
def images(tmp_path):
    paths = []
    for i, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (8, 8), color).save(path)
        paths.append(path)
    return paths


def test_second_pass_is_served_from_cache(tmp_path, images):
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    CountingEmbedder.seen = 0
    first = embed_files(CountingEmbedder(), cache, images)
    assert first.computed == 3 and CountingEmbedder.seen == 3
    again = embed_files(CountingEmbedder(), EmbeddingCache(tmp_path / "cache.sqlite"), images)  # a "restart"
    assert again.computed == 0 and CountingEmbedder.seen == 3
    np.testing.assert_array_equal(first.features, again.features)


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
def test_same_bytes_in_one_batch_reach_the_model_once(tmp_path, images, use_cache):
    twin = tmp_path / "twin.png"
    twin.write_bytes(images[0].read_bytes())
    cache = EmbeddingCache(tmp_path / "c.sqlite") if use_cache else None
    CountingEmbedder.seen = 0
    result = embed_files(CountingEmbedder(), cache, [images[0], images[1], twin, images[0]])
    assert CountingEmbedder.seen == 2 and result.computed == 2
    assert list(result.ok) == [True] * 4
    np.testing.assert_array_equal(result.features[2], result.features[0])
    np.testing.assert_array_equal(result.features[3], result.features[0])
    assert result.keys[0] == result.keys[2] == content_key(images[0].read_bytes())


def test_unreadable_duplicate_fails_on_every_row(tmp_path):
    result = embed_blobs(CountingEmbedder(), None, [b"junk", b"junk"], names=["a", "b"])
    assert set(result.errors) == {0, 1} and result.computed == 0


def test_keys_are_per_embedder(tmp_path, images):
    cache = EmbeddingCache(tmp_path / "c.sqlite")
    embed_files(CountingEmbedder(), cache, images)
    assert cache.count("counting@1") == 3 and cache.count("other@1") == 0


def _embed_in_subprocess(cache_path, images, wait=True):
    """Run embed_files in a fresh Python process; returns the process (stdout = images computed)."""
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from tests.labelers.test_cache import CountingEmbedder;"
        "from labelers.cache import EmbeddingCache, embed_files;"
        "print(embed_files(CountingEmbedder(), EmbeddingCache(sys.argv[2]), sys.argv[3:]).computed)"
    )
    root = str(__import__("pathlib").Path(__file__).resolve().parents[2])
    return subprocess.Popen([sys.executable, "-c", script, root, str(cache_path), *map(str, images)],
                            stdout=subprocess.PIPE, text=True)


def test_hit_across_processes(tmp_path, images):
    assert _embed_in_subprocess(tmp_path / "c.sqlite", images).communicate()[0].strip() == "3"
    assert _embed_in_subprocess(tmp_path / "c.sqlite", images).communicate()[0].strip() == "0"


def test_concurrent_writers_do_not_lose_or_duplicate(tmp_path, images):
    procs = [_embed_in_subprocess(tmp_path / "c.sqlite", images) for _ in range(3)]
    assert all(p.wait() == 0 for p in procs)
    assert EmbeddingCache(tmp_path / "c.sqlite").count() == 3


def test_corrupt_cache_file_is_detected(tmp_path):
    path = tmp_path / "c.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CacheCorruptError, match="delete it to rebuild"):
        EmbeddingCache(path)


def test_damaged_row_is_recomputed(tmp_path, images):
    import sqlite3

    cache = EmbeddingCache(tmp_path / "c.sqlite")
    embed_files(CountingEmbedder(), cache, images[:1])
    with sqlite3.connect(tmp_path / "c.sqlite") as db:
        db.execute("UPDATE embeddings SET vector = zeroblob(16)")
    CountingEmbedder.seen = 0
    result = embed_files(CountingEmbedder(), cache, images[:1])
    assert result.computed == 1 and CountingEmbedder.seen == 1 and result.features[0, 0] != 0


def test_broken_image_is_named_and_the_rest_proceeds(tmp_path, images):
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(images[0].read_bytes()[:40])
    missing = tmp_path / "missing.png"
    result = embed_files(CountingEmbedder(), EmbeddingCache(tmp_path / "c.sqlite"),
                         [images[1], truncated, missing, images[2]])
    assert set(result.errors) == {1, 2}
    assert "truncated.png" in result.errors[1] and "missing.png" in result.errors[2]
    assert list(result.ok) == [True, False, False, True]


def test_embed_blobs_and_load_image_errors():
    good = __import__("io").BytesIO()
    Image.new("RGB", (4, 4)).save(good, format="PNG")
    result = embed_blobs(CountingEmbedder(), None, [good.getvalue(), b"junk"], names=["ok.png", "task 7"])
    assert list(result.ok) == [True, False] and "task 7" in result.errors[1]
    with pytest.raises(ImageLoadError, match="exceeds"):
        load_image(good.getvalue(), name="big", max_pixels=10)


def test_a_file_that_is_no_image_is_named_without_python_internals(tmp_path, images):
    junk = tmp_path / "notes.jpg"
    junk.write_text("not an image")
    result = embed_files(CountingEmbedder(), None, [junk, images[0]])
    message = result.errors[0]
    assert message.startswith(f"{junk}: not a readable image") and "BytesIO" not in message
