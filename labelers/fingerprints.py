"""Content fingerprints of large files (model weights), memoised per (path, size, mtime).

A fingerprint is the SHA-256 of the whole file, read in chunks so a multi-gigabyte checkpoint never sits in
memory. Reading 600 MB takes about a second, a slow disk much longer, so the digest is remembered in
``<labelloop cache>/file-digests.json`` under the file's resolved path, size and modification time: a
restart with unchanged weights does not read them again, and any rewrite of the file (which moves its
mtime) is hashed afresh.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path

from .sample_data import cache_dir

log = logging.getLogger(__name__)

MEMO_NAME = "file-digests.json"
CHUNK = 1 << 20
_lock = threading.Lock()


def _stream_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _memo_path() -> Path:
    return cache_dir() / MEMO_NAME


def _read_memo() -> dict[str, dict]:
    try:
        memo = json.loads(_memo_path().read_text())
        return memo if isinstance(memo, dict) else {}
    except (OSError, ValueError):  # missing or damaged memo: it is only a speed-up, start afresh
        return {}


def _write_memo(memo: dict[str, dict]) -> None:
    path = _memo_path()
    scratch = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        scratch.write_text(json.dumps(memo, indent=0))
        os.replace(scratch, path)  # atomic: a concurrent reader sees the old or the new memo, never half
    except OSError as exc:
        log.warning("could not save file digests to %s (%s); weights will be hashed again next start", path, exc)


def file_digest(path: str | Path) -> str:
    """Return the hex SHA-256 of the whole file at `path`; raises OSError when it cannot be read.

    Remembered per (resolved path, size, mtime in ns), so an unchanged file is hashed once across restarts.
    """
    path = Path(path).resolve()
    stat = path.stat()
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    with _lock:
        known = _read_memo().get(str(path))
        if known and {k: known.get(k) for k in stamp} == stamp and isinstance(known.get("sha256"), str):
            return known["sha256"]
    digest = _stream_digest(path)
    with _lock:
        memo = _read_memo()
        memo[str(path)] = {**stamp, "sha256": digest}  # one entry per path: an old stamp is replaced
        _write_memo(memo)
    return digest
