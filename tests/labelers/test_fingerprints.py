import os

import pytest

from labelers import fingerprints
from labelers.embedders import _weights_fingerprint
from labelers.fingerprints import file_digest


@pytest.fixture(autouse=True)
def own_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LABELLOOP_CACHE", str(tmp_path / "cache"))


def _rewrite_byte(path, offset, value):
    stat = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(bytes([value]))
    # Same size; a new mtime as any real rewrite has (set explicitly so the test does not depend on clock
    # resolution).
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_a_byte_beyond_8_mb_changes_the_weights_fingerprint(tmp_path):
    weights = tmp_path / "vit.safetensors"
    weights.write_bytes(bytes(9 << 20))
    before = _weights_fingerprint("ViT-B-32", str(weights))
    _rewrite_byte(weights, (8 << 20) + 123, 1)
    assert _weights_fingerprint("ViT-B-32", str(weights)) != before


def test_digest_is_the_whole_file_sha256(tmp_path):
    import hashlib

    data = os.urandom(3 * fingerprints.CHUNK + 17)  # several chunks and a partial one
    (tmp_path / "w.bin").write_bytes(data)
    assert file_digest(tmp_path / "w.bin") == hashlib.sha256(data).hexdigest()


def test_unchanged_file_is_hashed_once_across_restarts(tmp_path, monkeypatch):
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"weights" * 1000)
    reads = []
    real = fingerprints._stream_digest
    monkeypatch.setattr(fingerprints, "_stream_digest", lambda p: reads.append(p) or real(p))
    first = file_digest(weights)
    assert file_digest(weights) == first and len(reads) == 1  # served from the memo file
    _rewrite_byte(weights, 3, 0)
    assert file_digest(weights) != first and len(reads) == 2  # a rewrite is hashed again


def test_damaged_memo_is_ignored(tmp_path):
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"abc")
    file_digest(weights)
    fingerprints._memo_path().write_text("{not json")
    import hashlib

    assert file_digest(weights) == hashlib.sha256(b"abc").hexdigest()
