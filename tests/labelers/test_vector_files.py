"""The embedding cache's streaming sidecar (labelers/vector_files.py) behind EmbeddingCache.iter_blocks."""
import logging
import sqlite3
import zlib

import numpy as np
import pytest

from labelers.cache import EmbeddingCache, content_key


def vectors(n, dim=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def filled(tmp_path, n=50, dim=8):
    cache = EmbeddingCache(tmp_path / "c.sqlite3")
    keys = [content_key(str(i).encode()) for i in range(n)]
    x = vectors(n, dim)
    cache.put_many("e", dict(zip(keys, x)))
    return cache, keys, x


def streamed(cache, keys, block_rows=16, embedder="e"):
    return np.concatenate(list(cache.iter_blocks(embedder, keys, block_rows=block_rows)))


def sidecar_rows(cache, embedder="e"):
    with sqlite3.connect(cache.path) as db:
        row = db.execute("SELECT rows FROM vector_files WHERE embedder=?", (embedder,)).fetchone()
    return row[0] if row else None


def is_file_view(cache, block, embedder="e"):
    """True when `block` is memory of the embedder's mapped sidecar file, not a copy."""
    return not block.flags.owndata and np.shares_memory(block, cache._vector_files._open[embedder].vectors)


def test_blocks_equal_the_stored_vectors_in_any_order_and_in_order_are_views_of_the_file(tmp_path):
    cache, keys, x = filled(tmp_path)
    blocks = list(cache.iter_blocks("e", keys, block_rows=16))
    assert [len(b) for b in blocks] == [16, 16, 16, 2]
    np.testing.assert_array_equal(np.concatenate(blocks), x)
    assert all(is_file_view(cache, b) for b in blocks)  # no copy: the stored order is the asked order
    assert cache._vector_files._open["e"]._index is None  # the stored-order shortcut: no key index built
    assert sidecar_rows(cache) == 50
    order = np.random.default_rng(1).permutation(50)
    np.testing.assert_array_equal(streamed(cache, [keys[i] for i in order]), x[order])
    np.testing.assert_array_equal(streamed(cache, keys[10:13] + keys[:2]), x[[10, 11, 12, 0, 1]])


def test_a_missing_key_is_named_and_keys_the_sidecar_cannot_hold_come_from_sqlite(tmp_path):
    cache, keys, x = filled(tmp_path)
    with pytest.raises(KeyError, match="no vector for key nope"):
        streamed(cache, keys[:3] + ["nope"])
    long_key, odd_key = "k" * 100, "clé-" + "é" * 40  # wider than the sidecar's 64 bytes
    extra = vectors(2, seed=5)
    cache.put_many("e", {long_key: extra[0], odd_key: extra[1]})
    np.testing.assert_array_equal(streamed(cache, [keys[0], long_key, odd_key, keys[1]]),
                                  np.stack([x[0], extra[0], extra[1], x[1]]))
    assert sidecar_rows(cache) == 50


def test_rows_added_later_by_any_writer_are_mirrored_on_the_next_read(tmp_path):
    cache, keys, x = filled(tmp_path)
    streamed(cache, keys)
    more_keys, more = [content_key(b"more%d" % i) for i in range(5)], vectors(5, seed=2)
    with sqlite3.connect(cache.path) as db:  # as code that knows nothing of the sidecar writes
        db.executemany("INSERT INTO embeddings VALUES ('e', ?, 8, ?, ?)",
                       [(k, v.tobytes(), zlib.crc32(v.tobytes())) for k, v in zip(more_keys, more)])
    np.testing.assert_array_equal(streamed(cache, keys + more_keys), np.concatenate([x, more]))
    assert sidecar_rows(cache) == 55
    cache.put_many("other", {keys[0]: more[0]})  # another embedder: its own sidecar, this one unchanged
    np.testing.assert_array_equal(streamed(cache, keys[:1], embedder="other"), more[:1])
    np.testing.assert_array_equal(streamed(cache, keys[:1]), x[:1])


def test_a_cache_from_before_the_sidecar_streams_and_gains_one(tmp_path):
    path = tmp_path / "old.sqlite3"
    keys, x = [content_key(b"%d" % i) for i in range(20)], vectors(20)
    with sqlite3.connect(path) as db:  # the schema and rows as the previous version wrote them
        db.execute("CREATE TABLE embeddings (embedder TEXT NOT NULL, key TEXT NOT NULL, dim INTEGER NOT NULL, "
                   "vector BLOB NOT NULL, crc INTEGER NOT NULL, PRIMARY KEY (embedder, key))")
        db.executemany("INSERT INTO embeddings VALUES ('e', ?, 8, ?, ?)",
                       [(k, v.tobytes(), zlib.crc32(v.tobytes())) for k, v in zip(keys, x)])
    cache = EmbeddingCache(path)
    np.testing.assert_array_equal(streamed(cache, keys), x)
    assert sidecar_rows(cache) == 20 and len(list((tmp_path / "old.sqlite3-vectors").glob("*.f32"))) == 1
    assert cache.get_many("e", keys[:2]).keys() == set(keys[:2])  # the store itself unchanged


def test_a_half_written_tail_is_never_served_and_is_overwritten(tmp_path):
    cache, keys, x = filled(tmp_path)
    streamed(cache, keys)
    (vec_file,), (key_file,) = (list((tmp_path / "c.sqlite3-vectors").glob(f"*{s}")) for s in (".f32", ".keys"))
    with open(vec_file, "ab") as f:  # a writer that died after writing rows and before committing them
        f.write(np.full((3, 8), 7.0, np.float32).tobytes()[:50])
    with open(key_file, "ab") as f:
        f.write(keys[0].encode() * 2)
    fresh = EmbeddingCache(cache.path)
    np.testing.assert_array_equal(streamed(fresh, keys), x)
    more_key, more = content_key(b"after"), vectors(1, seed=3)
    fresh.put_many("e", {more_key: more[0]})
    np.testing.assert_array_equal(streamed(fresh, [more_key, keys[0]]), np.stack([more[0], x[0]]))
    assert vec_file.stat().st_size == 51 * 8 * 4  # the dead tail was overwritten, not appended after


def test_a_cut_sidecar_is_detected_and_rebuilt_from_sqlite(tmp_path, caplog):
    cache, keys, x = filled(tmp_path)
    streamed(cache, keys)
    (vec_file,) = (tmp_path / "c.sqlite3-vectors").glob("*.f32")
    with open(vec_file, "r+b") as f:
        f.truncate(10 * 8 * 4)  # 10 of the 50 committed rows left
    fresh = EmbeddingCache(cache.path)
    with caplog.at_level(logging.WARNING, logger="labelers.cache"):
        np.testing.assert_array_equal(streamed(fresh, keys), x)
    assert "written half or cut" in caplog.text and "rebuilding" in caplog.text
    assert not vec_file.exists() and sidecar_rows(fresh) == 50


def test_a_damaged_sqlite_row_drops_the_sidecar_so_it_is_rebuilt(tmp_path):
    cache, keys, x = filled(tmp_path)
    streamed(cache, keys)
    with sqlite3.connect(cache.path) as db:
        db.execute("UPDATE embeddings SET crc = crc + 1 WHERE key=?", (keys[3],))
    assert keys[3] not in cache.get_many("e", keys[:5])  # dropped from SQLite, to be recomputed
    assert sidecar_rows(cache) is None
    with pytest.raises(KeyError, match=keys[3]):
        streamed(cache, keys)  # not served from the old copy either
    np.testing.assert_array_equal(streamed(cache, keys[4:]), x[4:])
    assert sidecar_rows(cache) == 49


def test_a_sidecar_that_cannot_be_written_is_said_and_the_vectors_come_from_sqlite(tmp_path, monkeypatch, caplog):
    import os

    cache, keys, x = filled(tmp_path)

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full_disk)
    with caplog.at_level(logging.WARNING, logger="labelers.cache"):
        np.testing.assert_array_equal(streamed(cache, keys), x)
    assert "No space left on device" in caplog.text and "from SQLite instead" in caplog.text
    assert sidecar_rows(cache) is None  # nothing half-committed
    monkeypatch.undo()
    np.testing.assert_array_equal(streamed(cache, keys), x)
    assert sidecar_rows(cache) == 50


def test_a_pool_in_another_order_is_served_in_order_and_its_stored_runs_are_still_views(tmp_path):
    cache, keys, x = filled(tmp_path)
    order = list(range(20, 50)) + list(range(20))  # starts mid-file, wraps to the start
    blocks = list(cache.iter_blocks("e", [keys[i] for i in order], block_rows=16))
    np.testing.assert_array_equal(np.concatenate(blocks), x[order])
    # rows 20-35, 2-17 and 18-19 are runs of the file (a view each); 36-49 + 0-1 is gathered (a copy)
    assert [is_file_view(cache, b) for b in blocks] == [True, False, True, True]
    reverse = keys[::-1]
    np.testing.assert_array_equal(streamed(cache, reverse), x[::-1])
    np.testing.assert_array_equal(streamed(cache, keys[5:7] * 3), x[[5, 6] * 3])  # repeats, too


def test_a_key_missing_from_the_cache_is_named_in_any_block_and_nothing_short_is_served(tmp_path):
    cache, keys, x = filled(tmp_path)
    gone = content_key(b"never stored")
    wanted = keys[:40] + [gone] + keys[40:]  # stored order around it: the hole is in the third block
    got = []
    with pytest.raises(KeyError, match=f"no vector for key {gone} under e"):
        for block in cache.iter_blocks("e", wanted, block_rows=16):
            got.append(block)
    assert sum(map(len, got)) == 32  # the blocks before the hole, then the error: never a short pool
    with pytest.raises(KeyError, match="no vector for key short"):
        streamed(cache, keys[:3] + ["short"] + keys[3:])


def test_a_sidecar_extended_while_reading_serves_the_rows_it_had_and_the_new_ones(tmp_path):
    cache, keys, x = filled(tmp_path)
    more_keys, more = [content_key(b"new%d" % i) for i in range(30)], vectors(30, seed=7)
    from labelers.cache import READ_AHEAD_BLOCKS

    pool = keys * 4 + more_keys  # the new keys past the blocks already read ahead when they are added
    assert 16 * (READ_AHEAD_BLOCKS + 2) <= 200
    blocks = cache.iter_blocks("e", pool, block_rows=16)
    first = next(blocks)  # the sidecar is open at 50 rows; another process now adds 30 and extends the files
    other = EmbeddingCache(cache.path)
    other.put_many("e", dict(zip(more_keys, more)))
    np.testing.assert_array_equal(streamed(other, more_keys), more)
    assert sidecar_rows(cache) == 80
    rest = list(blocks)  # the new keys: not in the rows this read opened, so read from SQLite
    np.testing.assert_array_equal(np.concatenate([first, *rest]), np.concatenate([x] * 4 + [more]))
    np.testing.assert_array_equal(first, x[:16])  # a view taken before the files grew still holds its rows
    fresh = list(cache.iter_blocks("e", keys + more_keys, block_rows=16))  # a new read sees the 80 rows
    np.testing.assert_array_equal(np.concatenate(fresh), np.concatenate([x, more]))
    assert all(is_file_view(cache, b) for b in fresh)


def test_content_keys_are_converted_at_once_and_other_keys_as_before():
    from labelers.vector_files import _content_keys, _fixed_keys

    keys = [content_key(b"%d" % i) for i in range(100)]
    np.testing.assert_array_equal(_content_keys(keys), np.array(keys, "S64"))
    # lengths 63 and 65 sum to 2 x 64; a newline inside a key; non-ASCII; empty: not content keys
    for odd in (["a" * 63, "b" * 65], ["a" * 63 + "\n", "b" * 64], ["é" * 64], []):
        assert _content_keys(odd) is None
        fixed, fits = _fixed_keys(odd)
        assert fits.tolist() == [len(k.encode()) <= 64 for k in odd]
        assert [f.decode() for f, ok in zip(fixed, fits) if ok] == [k for k in odd if len(k.encode()) <= 64]


def test_blocks_are_mapped_in_by_touching_pages_where_the_kernel_cannot_populate(tmp_path, monkeypatch):
    import labelers.vector_files as vector_files

    cache, keys, x = filled(tmp_path, n=3000, dim=64)  # 750 KB: many pages
    monkeypatch.setattr(vector_files, "MADV_POPULATE_READ", 10_000)  # an advice no kernel knows: EINVAL
    blocks = list(cache.iter_blocks("e", keys, block_rows=1000))
    np.testing.assert_array_equal(np.concatenate(blocks), x)
    assert all(is_file_view(cache, b) for b in blocks)


@pytest.mark.parametrize("depth", [1, 3])
def test_read_ahead_keeps_order_runs_at_most_depth_ahead_and_raises_at_the_failing_item(depth):
    import threading

    from labelers.cache import read_ahead

    produced, go = [], threading.Event()

    def items():
        for i in range(6):
            if i == 4:
                raise RuntimeError("item 4 broke")
            produced.append(i)
            yield i

    got = []
    with pytest.raises(RuntimeError, match="item 4 broke"):
        for item in read_ahead(items(), depth):
            if not got:  # the first item in hand: the thread produces up to `depth` more, then waits
                for _ in range(200):
                    if len(produced) >= min(1 + depth, 4):
                        break
                    go.wait(0.01)
                assert len(produced) == min(1 + depth, 4)
            got.append(item)
    assert got == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="depth >= 1"):
        list(read_ahead([1], 0))
