"""Region embeddings through the embedding cache: crops are encoded as PNG bytes and embedded with
`labelers.cache.embed_blobs`, so a second round (or `--resume`) re-reads them instead of re-running the model."""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from PIL import Image

from ..cache import EmbeddingCache, embed_blobs
from ..embedders import Embedder
from ..images import load_image
from .regions import Box, crop_regions, propose


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def embed_crops(embedder: Embedder, cache: EmbeddingCache | None, crops: Sequence[Image.Image],
                names: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Return (N, D) embeddings of PIL crops; raises RuntimeError naming the first crop that failed."""
    result = embed_blobs(embedder, cache, [png_bytes(c) for c in crops], list(names), batch_size=batch_size)
    if result.errors:
        first = min(result.errors)
        raise RuntimeError(f"cannot embed {len(result.errors)} crops, first: {result.errors[first]}")
    return result.features


def embed_regions(embedder: Embedder, cache: EmbeddingCache | None, images: Sequence[Image.Image],
                  boxes: Sequence[Sequence[Box]], names: Sequence[str], batch_size: int = 64,
                  progress: bool = False) -> list[np.ndarray]:
    """Return one (R_i, D) array per image: the embeddings of its regions, in box order."""
    from tqdm.auto import tqdm

    crops, crop_names, sizes = [], [], []
    for image, image_boxes, name in zip(images, boxes, names):
        crops += crop_regions(image, image_boxes)
        crop_names += [f"{name} region {j} {b.as_tuple()}" for j, b in enumerate(image_boxes)]
        sizes.append(len(image_boxes))
    features = []
    step = max(batch_size * 4, 1)
    for start in tqdm(range(0, len(crops), step), desc="embed regions", unit="batch", disable=not progress):
        features.append(embed_crops(embedder, cache, crops[start:start + step], crop_names[start:start + step],
                                    batch_size))
    flat = np.concatenate(features) if features else np.zeros((0, embedder.dim), np.float32)
    return np.split(flat, np.cumsum(sizes)[:-1])


def embed_chunk(paths, start: int, embedder, cache, options, seed, boxes_of=None):
    """Return (region embeddings per image, boxes per image) of the images ``paths`` that start at position
    ``start`` of the set (it seeds their random regions). ``boxes_of(images)`` replaces the proposals of
    ``options["regions"]`` (--regions cam passes its CAM boxes). The per-batch step, in one process or on Ray."""
    size = int(options["crop_size"]) if str(options["crop_size"]).isdigit() else options["crop_size"]
    images = [load_image(p) for p in paths]
    if boxes_of is not None:
        boxes = boxes_of(images)
    else:
        boxes = [propose(image, options["regions"], options["num_crops"], size, seed=seed + start + j,
                         name=str(path)) for j, (image, path) in enumerate(zip(images, paths))]
    return embed_regions(embedder, cache, images, boxes, [str(p) for p in paths]), boxes


def feature_maps(embedder: Embedder, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
    """Return the backbone's last spatial feature maps (N, D, h, w) (EfficientNet-Lite0: the map the pooled
    embedding averages, so map.mean((2, 3)) is the image's embedding).

    Raises ValueError for an embedder without a spatial map (only EfficientNet-Lite0 exposes one here)."""
    import torch

    model = getattr(embedder, "model", None)
    if not hasattr(model, "extract_features"):
        raise ValueError(f"embedder {embedder.id} has no spatial feature map; use efficientnet-lite0 for CAM regions")
    maps = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = torch.stack([embedder.preprocess(im) for im in images[start:start + batch_size]])
            maps.append(model.extract_features(batch.to(embedder.device, embedder.dtype)).float().cpu().numpy())
    return np.concatenate(maps) if maps else np.zeros((0, embedder.dim, 1, 1), np.float32)


def map_windows(maps: np.ndarray, sizes: Sequence[int] = (1, 2)) -> list[np.ndarray]:
    """Return one (R, D) array per image: the whole map's mean first (= the pooled embedding), then the mean
    over every `s` x `s` window of cells for each s in `sizes`, row-major (regions for the price of one pass,
    as ReLabel pools its label map over a crop box)."""
    maps = np.asarray(maps, np.float32)
    _, _, h, w = maps.shape
    regions = [maps.mean(axis=(2, 3))]
    for s in sizes:
        if s > min(h, w):
            raise ValueError(f"window of {s} cells does not fit a {h}x{w} feature map")
        for y in range(h - s + 1):
            for x in range(w - s + 1):
                regions.append(maps[:, :, y:y + s, x:x + s].mean(axis=(2, 3)))
    return list(np.stack(regions, axis=1))
