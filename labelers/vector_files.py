"""The embedding cache's sidecar for streaming: per embedder, its vectors as one float32 matrix file and its keys
as one fixed-width file, row i of one being key i of the other, mirrored from the SQLite store.

Why: reading 200,000 vectors as SQLite blobs (one B-tree lookup and one overflow-page read per row) took ~7x a
float32 GEMM over them; a memory-mapped matrix is read at memory speed, so streaming scores within ~0.1x the
GEMM of the in-memory ratio: what is left is looking the pool's keys up, ~10 ms per 200k keys, done in the
read-ahead thread (benchmarks/bench_speed.py). SQLite stays the store of record; the sidecar is a copy that can be rebuilt.

Files: `<cache file>-vectors/<stem>.f32` (rows x dim float32, C order) and `<stem>.keys` (rows x KEY_BYTES,
UTF-8, NUL-padded). The `vector_files` table of the cache (labelers/cache.py) names the stem and how many rows
are committed. Both files are append-only, and appending happens under SQLite's write lock:
  1. BEGIN IMMEDIATE (one writer at a time, across processes), read the committed row count R;
  2. write the new rows at row R onward (over any tail a crashed writer left), fsync both files;
  3. set the committed count to R + n and COMMIT.
A crash before 3 leaves rows past R that no reader looks at and the next writer overwrites: a half-written
sidecar is never served. A file shorter than its committed rows (truncated, replaced) raises VectorFileError,
and the caller rebuilds it from SQLite. Rows SQLite adds later (by this code, older code or another process)
are appended on the next read: the table remembers the last SQLite rowid mirrored.
"""
from __future__ import annotations

import hashlib
import mmap
import os
import sqlite3
import uuid
import zlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

KEY_BYTES = 64  # a content key is 64 hex digits (SHA-256); longer keys are served from SQLite instead
MIRROR_CHUNK = 8192  # rows read from SQLite per step while mirroring
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux >= 5.14; Python names it from 3.13 on
# Odd 64-bit multipliers folding a key's 8 words into one hash (collisions only cost a SQLite read).
_MIX = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
                 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53, 0x94D049BB133111EB, 0xBF58476D1CE4E5B9], np.uint64)


class VectorFileError(RuntimeError):
    """A sidecar file does not hold the rows the cache says were committed to it."""


def _fixed_keys(keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Return (keys as a KEY_BYTES-wide bytes array, mask of keys that fit in it)."""
    fixed = _content_keys(keys)
    if fixed is not None:
        return fixed, np.ones(len(fixed), bool)
    try:
        fixed = np.array(keys, dtype=f"S{KEY_BYTES}") if len(keys) else np.zeros(0, f"S{KEY_BYTES}")
        if max(map(len, keys), default=0) <= KEY_BYTES:  # ASCII: chars = bytes; one C loop
            return fixed, np.ones(len(keys), bool)
        fits = np.fromiter((len(k) <= KEY_BYTES for k in keys), bool, len(keys))
    except UnicodeEncodeError:
        encoded = [k.encode() for k in keys]
        fixed = np.array(encoded, dtype=f"S{KEY_BYTES}")
        fits = np.fromiter((len(k) <= KEY_BYTES for k in encoded), bool, len(encoded))
    return fixed, fits  # numpy truncates silently: `fits` says which rows may be trusted


def _content_keys(keys: Sequence[str]) -> np.ndarray | None:
    """Return the keys as a KEY_BYTES-wide bytes array when every one is exactly KEY_BYTES ASCII characters
    (content keys: 64 hex digits), else None.

    Why: one join and one encode of the whole list, checked with NumPy, cost ~half of NumPy converting each
    string (and of the per-key length check that conversion needs). Joined with newlines, the keys are all
    KEY_BYTES long exactly when the total length fits, every separator sits where it should, and no other
    newline exists."""
    n, width = len(keys), KEY_BYTES + 1
    if n == 0:
        return None
    try:
        joined = "\n".join(keys).encode("ascii")
    except (UnicodeEncodeError, TypeError):
        return None
    if len(joined) != n * width - 1:
        return None
    flat = np.frombuffer(joined, np.uint8)
    if not (flat[KEY_BYTES::width] == 10).all():
        return None
    rows = np.ascontiguousarray(np.lib.stride_tricks.as_strided(flat, (n, KEY_BYTES), (width, 1)))
    if (rows == 10).any():  # a newline inside a key: the separators found are not the boundaries
        return None
    return rows.view(f"S{KEY_BYTES}").reshape(n)


def _words(fixed: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(fixed).view(np.uint64).reshape(len(fixed), KEY_BYTES // 8)


def _hash(fixed: np.ndarray) -> np.ndarray:
    return (_words(fixed) * _MIX).sum(axis=1, dtype=np.uint64)  # wraps modulo 2^64, as meant


class VectorMatrix:
    """The committed rows of one embedder's sidecar, memory-mapped: `vectors` (rows, dim) and `keys` (rows,)."""

    def __init__(self, folder: Path, stem: str, dim: int, rows: int):
        self.stem, self.dim, self.rows = stem, dim, rows
        vectors, keys = folder / f"{stem}.f32", folder / f"{stem}.keys"
        for path, size in ((vectors, rows * dim * 4), (keys, rows * KEY_BYTES)):
            held = path.stat().st_size if path.exists() else 0
            if held < size:
                raise VectorFileError(f"sidecar {path} holds {held} bytes, {size} committed (written half or cut)")
        # copy-on-write: the blocks are writable numpy arrays (torch.from_numpy takes them without a warning)
        # and nothing a caller writes ever reaches the file. Our own mmap (not np.memmap) to madvise it.
        with open(vectors, "rb") as f:
            self._map = mmap.mmap(f.fileno(), rows * dim * 4, access=mmap.ACCESS_COPY) if rows * dim else None
        self.vectors = (np.frombuffer(self._map, np.float32, rows * dim).reshape(rows, dim) if self._map is not None
                        else np.zeros((rows, dim), np.float32))
        self.keys = np.memmap(keys, f"S{KEY_BYTES}", "r", shape=(rows,))
        self._index: tuple[np.ndarray, np.ndarray] | None = None

    def rows_of(self, keys: Sequence[str], expected: int = 0) -> np.ndarray:
        """Return each key's row in the matrix, -1 for keys it does not hold. `expected`: the row the first key
        is likely at (the row after the previous block's); keys stored from there in order need no index."""
        fixed, fits = _fixed_keys(keys)
        n = len(fixed)
        # compared as 64-bit words in place: bytes copies of both sides cost half of streaming's overhead
        if 0 < n and 0 <= expected and expected + n <= self.rows and fits.all() \
                and bool((_words(fixed) == _words(self.keys[expected:expected + n])).all()):
            return np.arange(expected, expected + n, dtype=np.int64)  # stored in this order: no index needed
        if self._index is None:  # sorted hashes of the stored keys, built once per opened matrix
            hashes = _hash(np.asarray(self.keys))
            order = np.argsort(hashes, kind="stable")
            self._index = order, hashes[order]
        order, sorted_hashes = self._index
        wanted = _hash(fixed)
        at = np.minimum(np.searchsorted(sorted_hashes, wanted), len(order) - 1)
        rows = order[at]
        # the hash finds a candidate, the full key confirms it (a rare collision falls back to SQLite)
        found = fits & (sorted_hashes[at] == wanted) & (_words(self.keys[rows]) == _words(fixed)).all(axis=1)
        return np.where(found, rows, -1).astype(np.int64)

    def block(self, first: int, end: int) -> np.ndarray:
        """Return rows first..end-1 as a view of the file (no copy), its pages mapped now: called in the
        read-ahead thread, so page faults (and, for a pool past memory, the disk reads) happen there, beside
        the scoring of the block before, instead of one by one inside the GEMM."""
        if self._map is not None and end > first:
            page = mmap.PAGESIZE
            low, high = first * self.dim * 4 // page * page, end * self.dim * 4
            try:
                self._map.madvise(MADV_POPULATE_READ, low, high - low)
            except (OSError, ValueError):  # kernel before 5.14: touch one float per page instead
                self.vectors.reshape(-1)[low // 4:high // 4:page // 4].sum()
        return self.vectors[first:end]


class VectorFiles:
    """The sidecars of one cache file: `current(embedder)` brings one up to date with SQLite and opens it."""

    def __init__(self, cache_path: Path, connect: Callable[[], sqlite3.Connection]):
        self.folder = Path(f"{cache_path}-vectors")
        self.connect = connect
        self._open: dict[str, VectorMatrix] = {}

    def current(self, embedder_id: str) -> VectorMatrix | None:
        """Return the embedder's sidecar holding every valid row SQLite has for it (None: SQLite has none).
        Raises VectorFileError when its files hold fewer rows than were committed."""
        with self.connect() as db:
            meta = db.execute("SELECT stem, dim, rows, last_rowid FROM vector_files WHERE embedder=?",
                              (embedder_id,)).fetchone()
            newest = db.execute("SELECT MAX(rowid) FROM embeddings").fetchone()[0] or 0
        if meta is None or newest > meta[3]:
            meta = self._mirror(embedder_id)
        if meta is None:
            return None
        stem, dim, rows, _ = meta
        known = self._open.get(embedder_id)
        if known is None or known.rows != rows or known.stem != stem:
            known = VectorMatrix(self.folder, stem, dim, rows)
            self._open[embedder_id] = known
        return known

    def drop(self, embedder_id: str) -> None:
        """Forget the embedder's sidecar (its files are deleted); the next `current` mirrors SQLite afresh."""
        with self.connect() as db:
            meta = db.execute("SELECT stem FROM vector_files WHERE embedder=?", (embedder_id,)).fetchone()
            db.execute("DELETE FROM vector_files WHERE embedder=?", (embedder_id,))
        self._open.pop(embedder_id, None)
        if meta:
            for suffix in (".f32", ".keys"):
                (self.folder / f"{meta[0]}{suffix}").unlink(missing_ok=True)

    def _mirror(self, embedder_id: str) -> tuple | None:
        """Append the embedder's SQLite rows newer than the last mirrored one; return the committed
        (stem, dim, rows, last_rowid), or None when SQLite has no valid row for it."""
        db = self.connect()
        db.isolation_level = None  # explicit transactions: BEGIN IMMEDIATE takes the write lock now
        files: list[int] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            meta = db.execute("SELECT stem, dim, rows, last_rowid FROM vector_files WHERE embedder=?",
                              (embedder_id,)).fetchone()  # again, under the lock: another process may have run
            stem, dim, rows, last = meta or (None, None, 0, 0)
            newest = db.execute("SELECT MAX(rowid) FROM embeddings").fetchone()[0] or 0
            if meta is not None and newest <= last:
                db.execute("COMMIT")
                return meta
            # `+embedder`: walk the rowid range (the new rows), not every row of the embedder's index
            cursor = db.execute("SELECT rowid, key, dim, vector, crc FROM embeddings WHERE rowid>? AND +embedder=? "
                                "ORDER BY rowid", (last, embedder_id))
            self.folder.mkdir(parents=True, exist_ok=True)
            while batch := cursor.fetchmany(MIRROR_CHUNK):
                last = max(last, batch[-1][0])
                if dim is None:
                    dim = batch[0][2]
                good = [(key.encode(), blob) for _, key, width, blob, crc in batch
                        if width == dim and len(blob) == 4 * dim and zlib.crc32(blob) == crc
                        and len(key.encode()) <= KEY_BYTES]  # others stay served from SQLite
                if not good:
                    continue
                if not files:
                    stem = stem or self._new_stem(embedder_id)
                    files = [self._open_for_append(stem, ".f32", rows * dim * 4),
                             self._open_for_append(stem, ".keys", rows * KEY_BYTES)]
                os.pwrite(files[0], b"".join(blob for _, blob in good), rows * dim * 4)
                os.pwrite(files[1], np.array([k for k, _ in good], f"S{KEY_BYTES}").tobytes(), rows * KEY_BYTES)
                rows += len(good)
            for fd in files:
                os.fsync(fd)  # the rows are on disk before the count that makes them visible
            if stem is None:  # nothing to mirror yet
                db.execute("COMMIT")
                return None
            db.execute("INSERT OR REPLACE INTO vector_files VALUES (?, ?, ?, ?, ?)", (embedder_id, stem, dim, rows, last))
            db.execute("COMMIT")
            return stem, dim, rows, last
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            for fd in files:
                os.close(fd)
            db.close()

    def _new_stem(self, embedder_id: str) -> str:
        """Return a fresh file stem for the embedder, deleting its earlier sidecars (dropped ones: a process
        still reading one keeps its mapping, the files are gone only for new readers)."""
        prefix = hashlib.sha1(embedder_id.encode()).hexdigest()[:12]
        for old in self.folder.glob(f"{prefix}-*"):
            old.unlink(missing_ok=True)
        return f"{prefix}-{uuid.uuid4().hex[:8]}"

    def _open_for_append(self, stem: str, suffix: str, committed: int) -> int:
        """Open one sidecar file for writing, cut to its committed bytes (a crashed writer's tail goes)."""
        fd = os.open(self.folder / f"{stem}{suffix}", os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(fd, committed)
        return fd
