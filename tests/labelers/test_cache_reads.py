"""The embedding cache's kept read connections: what another connection writes or damages is seen at once."""
import sqlite3
import threading

import numpy as np

from labelers.cache import EmbeddingCache


def test_a_kept_read_connection_sees_later_writes_and_damage_from_other_connections(tmp_path):
    path = tmp_path / "cache.sqlite3"
    reader = EmbeddingCache(path)
    assert reader.get_many("emb", ["a", "b"]) == {}  # opens this thread's read connection
    EmbeddingCache(path).put_many("emb", {"a": np.ones(4, np.float32), "b": np.full(4, 2.0, np.float32)})
    got = reader.get_many("emb", ["a", "b"])
    np.testing.assert_array_equal(got["b"], np.full(4, 2.0, np.float32))
    with sqlite3.connect(path) as db:  # damaged behind the reader's back: dropped, and deleted for a recompute
        db.execute("UPDATE embeddings SET crc = crc + 1 WHERE key = 'a'")
    assert sorted(reader.get_many("emb", ["a", "b"])) == ["b"]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM embeddings WHERE key = 'a'").fetchone()[0] == 0


def test_each_thread_reads_through_its_own_connection(tmp_path):
    cache = EmbeddingCache(tmp_path / "cache.sqlite3")
    cache.put_many("emb", {"a": np.ones(3, np.float32)})
    seen, errors = [], []

    def read():
        try:
            seen.append((cache._reader(), float(cache.get_many("emb", ["a"])["a"].sum())))
        except Exception as exc:  # sqlite3 refuses a connection used from two threads at once
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [total for _, total in seen] == [3.0] * 4
    assert len({id(db) for db, _ in seen}) == 4
