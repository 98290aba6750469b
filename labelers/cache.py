"""Persistent embedding cache: an image is embedded once per embedder, across processes and restarts.

Keys are SHA-256 digests of the image bytes, so the same picture under two names or URLs is one entry.
Storage is one SQLite file in WAL mode (many concurrent readers, one writer at a time); each vector
carries a CRC32 so a damaged row is detected and recomputed rather than served.

Streaming (`iter_blocks`) reads from a sidecar beside the SQLite file: per embedder, a float32 matrix file and
a file of its row keys (`<cache>-vectors/`), mirrored from SQLite on first use and extended whenever SQLite
holds newer rows (`labelers.vector_files`). Reading it is a memory map, not one blob per row, so a pool
streamed from the cache scores close to the in-memory speed (benchmarks/bench_speed.py). SQLite stays the store:
`put_many`/`get_many` and old caches are unchanged, and a sidecar is only a copy that can be rebuilt.
"""
from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .embedders import Embedder
from .images import ImageLoadError, load_image

log = logging.getLogger(__name__)
T = TypeVar("T")
READ_AHEAD_BLOCKS = 3  # blocks iter_blocks holds ready beyond the caller's (8192 x 512 float32: 16 MB each)

SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    embedder TEXT NOT NULL, key TEXT NOT NULL, dim INTEGER NOT NULL, vector BLOB NOT NULL, crc INTEGER NOT NULL,
    PRIMARY KEY (embedder, key)
)"""


# One row per embedder whose vectors are mirrored in a sidecar matrix (labelers/vector_files.py): its files'
# stem, width, how many rows are committed, and the last SQLite rowid mirrored. A table of its own, so a cache
# written by this version still reads and writes with older code (which only knows `embeddings`).
VECTOR_FILES_SCHEMA = """
CREATE TABLE IF NOT EXISTS vector_files (
    embedder TEXT PRIMARY KEY, stem TEXT NOT NULL, dim INTEGER NOT NULL, rows INTEGER NOT NULL,
    last_rowid INTEGER NOT NULL
)"""


class CacheCorruptError(RuntimeError):
    """The cache file is not a readable SQLite database."""


def content_key(data: bytes) -> str:
    """Return the cache key of an image's raw bytes (hex SHA-256)."""
    return hashlib.sha256(data).hexdigest()


class EmbeddingCache:
    """SQLite-backed map (embedder id, content key) -> float32 vector. Safe to share between processes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._connect() as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(SCHEMA)
                db.execute(VECTOR_FILES_SCHEMA)
                status = db.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise CacheCorruptError(f"embedding cache {self.path} is damaged ({exc}); delete it to rebuild") from None
        if status != "ok":
            raise CacheCorruptError(f"embedding cache {self.path} failed its integrity check ({status}); "
                                    "delete it to rebuild")
        # Held open for the cache's life: SQLite deletes the -wal/-shm files when its last connection closes,
        # and every read would then recreate them, which fails on a full disk ("disk I/O error") and would stop
        # even cached embeddings from being read.
        self._keeper = self._connect()
        self._keeper.execute("SELECT COUNT(*) FROM embeddings WHERE 0").fetchone()  # opens the -wal/-shm
        self._readers = threading.local()
        self._sidecar = None  # the streaming matrices (labelers.vector_files), opened on first iter_blocks

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60)
        db.execute("PRAGMA busy_timeout=60000")
        return db

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection, kept open: a new connection starts with an empty page cache, and
        reading 100 vectors through one cost 3x what it costs through a kept one (a /predict reads 100)."""
        db = getattr(self._readers, "db", None)
        if db is None:
            db = self._readers.db = self._connect()
        return db

    def get_many(self, embedder_id: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """Return the cached vectors among `keys`; damaged rows are dropped (and so recomputed by callers)."""
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        damaged = []
        db = self._reader()
        for start in range(0, len(unique), 500):  # stay under SQLite's bound-variable limit
            chunk = unique[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = db.execute(f"SELECT key, dim, vector, crc FROM embeddings WHERE embedder=? AND key IN ({marks})",
                              [embedder_id, *chunk]).fetchall()
            for key, dim, blob, crc in rows:
                if zlib.crc32(blob) != crc or len(blob) != 4 * dim:
                    log.warning("embedding cache: damaged entry %s for %s, recomputing", key[:12], embedder_id)
                    damaged.append(key)
                    continue
                found[key] = np.frombuffer(blob, dtype=np.float32).copy()
        if damaged:
            with self._connect() as writer:
                writer.executemany("DELETE FROM embeddings WHERE embedder=? AND key=?",
                                   [(embedder_id, key) for key in damaged])
                # the sidecar is rebuilt: its row numbers assume SQLite's rows are only ever added
                writer.execute("DELETE FROM vector_files WHERE embedder=?", (embedder_id,))
        return found

    def put_many(self, embedder_id: str, vectors: dict[str, np.ndarray]) -> None:
        """Store vectors under `embedder_id` (idempotent: an existing entry is kept)."""
        rows = []
        for key, vector in vectors.items():
            blob = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
            rows.append((embedder_id, key, len(blob) // 4, blob, zlib.crc32(blob)))
        with self._connect() as db:
            db.executemany("INSERT OR IGNORE INTO embeddings VALUES (?, ?, ?, ?, ?)", rows)

    def iter_blocks(self, embedder_id: str, keys: Sequence[str], block_rows: int = 8192) -> Iterator[np.ndarray]:
        """Yield the vectors of `keys`, in order, as float32 blocks of up to `block_rows` rows: a pool larger
        than memory is read one block at a time (`labelers.pool_scoring.score_blocks`).

        Blocks come from the embedder's sidecar matrix (brought up to date with SQLite first): a block whose
        keys are stored in that order is a view of the memory-mapped file (no copy; treat blocks as read-only,
        writes stay in this process), other blocks are gathered from it, and keys the sidecar cannot hold are
        read from SQLite. Each block is looked up and read in a background thread, READ_AHEAD_BLOCKS ahead of
        the caller (so `keys` must not change while the blocks are read). Raises KeyError naming the first key
        that is missing or damaged, at its block (a pool with a hole is refused, not scored short).
        """
        from .vector_files import VectorFileError

        keys = keys if isinstance(keys, (list, tuple)) else list(keys)
        try:
            try:
                matrix = self._vector_files.current(embedder_id)
            except VectorFileError as exc:  # unreadable sidecar: rebuilt from SQLite, never served
                log.warning("embedding cache %s: %s; rebuilding it from SQLite", self.path, exc)
                self._vector_files.drop(embedder_id)
                matrix = self._vector_files.current(embedder_id)
        except (OSError, sqlite3.OperationalError) as exc:  # e.g. a full disk: the sidecar cannot be written
            log.warning("embedding cache %s: cannot bring the streaming sidecar up to date (%s); reading the "
                        "vectors from SQLite instead (slower)", self.path, exc)
            matrix = None

        def blocks() -> Iterator[np.ndarray]:
            expected = 0  # the stored row the next block likely starts at
            for start in range(0, len(keys), block_rows):
                chunk = keys[start:start + block_rows]
                # looked up block by block, here in the read-ahead thread: the caller scores meanwhile
                rows = matrix.rows_of(chunk, expected) if matrix is not None else np.full(len(chunk), -1, np.int64)
                expected = int(rows[-1]) + 1 if rows[-1] >= 0 else 0
                if rows[0] >= 0 and rows[-1] - rows[0] == len(rows) - 1 and bool((np.diff(rows) == 1).all()):
                    yield matrix.block(int(rows[0]), int(rows[-1]) + 1)  # stored in this order: a view, no copy
                else:
                    yield self._gather(embedder_id, matrix, chunk, rows)

        # each block is looked up, and its pages mapped or its rows gathered, in a background thread while the
        # caller scores the ones before. READ_AHEAD_BLOCKS ahead, not one: on a busy machine the thread, woken
        # once per block, may wait a time slice to run, and the caller would wait with it at every block.
        yield from read_ahead(blocks(), READ_AHEAD_BLOCKS)

    def _gather(self, embedder_id: str, matrix, keys: Sequence[str], rows: np.ndarray) -> np.ndarray:
        """Return the vectors of `keys` as one block: from the sidecar where `rows` >= 0, else from SQLite."""
        absent = np.flatnonzero(rows < 0)
        if matrix is not None and not len(absent):
            return matrix.vectors[rows]  # one fancy-indexed copy: through a mask it is two (2x the time)
        found = self.get_many(embedder_id, [keys[i] for i in absent]) if len(absent) else {}
        missing = next((keys[i] for i in absent if keys[i] not in found), None)
        if missing is not None:
            raise KeyError(f"embedding cache {self.path}: no vector for key {missing} under {embedder_id}")
        if matrix is None:
            return np.stack([found[key] for key in keys])
        block = np.empty((len(keys), matrix.dim), np.float32)
        present = rows >= 0
        block[present] = matrix.vectors[rows[present]]
        for i in absent:
            block[i] = found[keys[i]]
        return block

    @property
    def _vector_files(self):
        if self._sidecar is None:
            from .vector_files import VectorFiles

            self._sidecar = VectorFiles(self.path, self._connect)
        return self._sidecar

    def count(self, embedder_id: str | None = None) -> int:
        """Return the number of cached vectors (for one embedder, or in total)."""
        with self._connect() as db:
            if embedder_id is None:
                return db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
            return db.execute("SELECT COUNT(*) FROM embeddings WHERE embedder=?", (embedder_id,)).fetchone()[0]


@dataclass
class EmbedResult:
    """Features for a list of images: rows of NaN where the image could not be read (see `errors`)."""

    features: np.ndarray
    keys: list[str | None]
    errors: dict[int, str] = field(default_factory=dict)
    computed: int = 0  # distinct images actually run through the model (cache misses, duplicates once)

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of rows that hold a real embedding."""
        return ~np.isnan(self.features).any(axis=1) if len(self.features) else np.zeros(0, bool)


class _Images(Dataset):
    """Decodes and preprocesses images in DataLoader workers; unreadable ones come back as errors."""

    def __init__(self, blobs: Sequence[Callable[[], bytes]], names: Sequence[str], embedder: Embedder):
        self.blobs, self.names, self.embedder = blobs, names, embedder

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, i: int):
        try:
            return i, self.embedder.preprocess(load_image(self.blobs[i](), name=self.names[i])), None
        except ImageLoadError as exc:
            return i, None, str(exc)


def _collate(items):
    good = [(i, x) for i, x, _ in items if x is not None]
    bad = [(i, e) for i, _, e in items if e is not None]
    batch = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], batch, bad


def fill_from_cache(embedder: Embedder, cache: EmbeddingCache | None, keys: Sequence[str | None],
                    features: np.ndarray) -> tuple[dict[str, list[int]], list[int]]:
    """Fill the rows of ``features`` whose content key ``cache`` holds; return (rows of each key, one
    representative row per image still to embed). Rows with the same bytes share a key, so a picture listed
    twice reaches the model once; a None key (unreadable file) is left out."""
    rows_of: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        if key:
            rows_of.setdefault(key, []).append(i)
    known = cache.get_many(embedder.id, list(rows_of)) if cache else {}
    for key, vector in known.items():
        features[rows_of[key]] = vector
    return rows_of, [rows[0] for key, rows in rows_of.items() if key not in known]


def read_ahead(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """Yield `items` in order, produced in a background thread up to `depth` items ahead of the caller, who
    works on the one before meanwhile: decoding and resizing the next batch (PIL and NumPy release the GIL)
    overlaps the model's forward pass. An exception raised while producing an item is raised here, at that
    item. Raises ValueError for depth < 1."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    if depth < 1:
        raise ValueError(f"read_ahead needs depth >= 1, got {depth}")
    source, done = iter(items), object()
    with ThreadPoolExecutor(1, thread_name_prefix="read-ahead") as worker:  # one thread: items stay in order
        ahead = deque(worker.submit(next, source, done) for _ in range(depth))
        while (item := ahead.popleft().result()) is not done:
            ahead.append(worker.submit(next, source, done))
            yield item


def _embed(embedder: Embedder, cache: EmbeddingCache | None, readers: Sequence[Callable[[], bytes]],
           names: Sequence[str], batch_size: int, num_workers: int | None, progress: bool) -> EmbedResult:
    from tqdm.auto import tqdm

    n = len(readers)
    features = np.full((n, embedder.dim), np.nan, dtype=np.float32)
    keys: list[str | None] = [None] * n
    errors: dict[int, str] = {}
    for i, read in enumerate(readers):
        try:
            keys[i] = content_key(read())
        except OSError as exc:
            errors[i] = f"{names[i]}: cannot read ({exc.strerror or exc})"
    rows_of, todo = fill_from_cache(embedder, cache, keys, features)
    failed = 0
    if todo:
        workers = num_workers if num_workers is not None else (0 if len(todo) < 512 else 2)
        loader = DataLoader(_Images([readers[i] for i in todo], [names[i] for i in todo], embedder),
                            batch_size=batch_size, num_workers=workers, collate_fn=_collate)
        # Small jobs decode in one thread beside the forward pass (worker processes cost more to start than
        # they save); num_workers=0 asked for explicitly keeps everything in this thread.
        batches = read_ahead(loader) if num_workers is None and workers == 0 else loader
        bar = tqdm(total=len(todo), desc=f"embed {embedder.id}", unit="img", disable=not progress)
        for local_ids, batch, bad in batches:
            failed += len(bad)
            for j, message in bad:
                errors.update(dict.fromkeys(rows_of[keys[todo[j]]], message))
            if batch is not None:
                vectors = embedder.encode_batch(batch)
                for j, vector in zip(local_ids, vectors):
                    features[rows_of[keys[todo[j]]]] = vector
                if cache:
                    cache.put_many(embedder.id, {keys[todo[j]]: v for j, v in zip(local_ids, vectors)})
            bar.update(len(local_ids) + len(bad))
        bar.close()
    for i, message in errors.items():
        log.warning("unreadable image: %s", message)
    return EmbedResult(features, keys, errors, computed=len(todo) - failed)


def embed_files(embedder: Embedder, cache: EmbeddingCache | None, paths: Sequence[str | Path],
                batch_size: int = 128, num_workers: int | None = None, progress: bool = False) -> EmbedResult:
    """Embed image files through the cache; unreadable files get NaN rows and an entry in `errors`.

    Batches of 128: on CPU a larger batch keeps the convolutions' threads busy (measured against 64 and one
    image at a time in benchmarks/bench_speed.py)."""
    readers = [lambda p=Path(p): p.read_bytes() for p in paths]
    return _embed(embedder, cache, readers, [str(p) for p in paths], batch_size, num_workers, progress)


def embed_blobs(embedder: Embedder, cache: EmbeddingCache | None, blobs: Sequence[bytes],
                names: Sequence[str] | None = None, batch_size: int = 64, progress: bool = False) -> EmbedResult:
    """Embed in-memory image bytes through the cache (as `embed_files`)."""
    names = list(names) if names is not None else [f"image {i}" for i in range(len(blobs))]
    readers = [lambda b=b: b for b in blobs]
    return _embed(embedder, cache, readers, names, batch_size, 0, progress)
