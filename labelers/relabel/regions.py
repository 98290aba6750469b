"""Regions of an image to score: the whole image (always), random crops, a grid, Felzenszwalb proposals,
SAM masks' boxes (`sam_regions`, given a SAM proposer from labelers.pseudo.proposals).

A region is a box (left, top, right, bottom) in pixels, right/bottom exclusive, always inside the image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

SEED_CROP_SIZE = 224  # the seed's `fixed` crop side (ImageNet input size)
SMALL_IMAGE_FRACTION = 0.9  # the seed's `fixed` on an image smaller than 224: 90 % of the short side
# cam: labelers.relabel.cam (needs a head). sam is not listed: it needs SAM weights, which only
# `labelloop relabel --regions sam --sam-model` loads (the backend refuses it as an unknown method).
METHODS = ("random", "grid", "felzenszwalb", "cam")
MIN_REGION_FRACTION = 0.04  # proposals' boxes under 4 % of the image are dropped: too few pixels to classify


class RegionError(ValueError):
    """Regions cannot be made for an image; the message names the image."""


@dataclass(frozen=True)
class Box:
    left: int
    top: int
    right: int
    bottom: int

    @property
    def area(self) -> int:
        return (self.right - self.left) * (self.bottom - self.top)

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.left, self.top, self.right, self.bottom)


def whole_image(width: int, height: int) -> Box:
    return Box(0, 0, width, height)


def crop_side(width: int, height: int, size_method: str | int, rng: np.random.Generator, name: str) -> int:
    """Return one crop side in pixels.

    `fixed`: 224, or 90 % of the short side when the image is smaller (the seed); `range`: uniform in
    [50 %, 100 %] of the short side; an integer: exactly that many pixels. Raises RegionError naming the
    image when an integer size does not fit, or the method is unknown.
    """
    short = min(width, height)
    if isinstance(size_method, (int, np.integer)) or str(size_method).isdigit():
        side = int(size_method)
        if side > short or side < 1:
            raise RegionError(f"{name}: image is {width}x{height}, too small for {side}-pixel crops "
                              f"(use --crop-size fixed or a size <= {short})")
        return side
    if size_method == "fixed":
        return SEED_CROP_SIZE if short >= SEED_CROP_SIZE else max(1, int(SMALL_IMAGE_FRACTION * short))
    if size_method == "range":
        return int(rng.integers(max(1, short // 2), short + 1))
    raise RegionError(f"{name}: unknown crop size method {size_method!r} (fixed, range or a pixel count)")


def random_crops(width: int, height: int, num_crops: int, size_method: str | int = "fixed",
                 seed: int = 0, name: str = "image") -> list[Box]:
    """Return `num_crops` square boxes at uniform random positions inside the image (seeded)."""
    rng = np.random.default_rng(seed)
    boxes = []
    for _ in range(num_crops):
        side = crop_side(width, height, size_method, rng, name)
        left = int(rng.integers(0, width - side + 1))
        top = int(rng.integers(0, height - side + 1))
        boxes.append(Box(left, top, left + side, top + side))
    return boxes


def grid(width: int, height: int, rows: int = 2, cols: int | None = None, name: str = "image") -> list[Box]:
    """Return a rows x cols tiling of the image; the tiles cover every pixel exactly once.

    Raises RegionError naming the image when it has fewer pixels than tiles along a side."""
    cols = cols or rows
    if width < cols or height < rows:
        raise RegionError(f"{name}: image is {width}x{height}, too small for a {rows}x{cols} grid")
    xs = np.linspace(0, width, cols + 1).round().astype(int)
    ys = np.linspace(0, height, rows + 1).round().astype(int)
    return [Box(int(xs[c]), int(ys[r]), int(xs[c + 1]), int(ys[r + 1])) for r in range(rows) for c in range(cols)]


def felzenszwalb_boxes(image: Image.Image, max_regions: int = 6, min_fraction: float = MIN_REGION_FRACTION,
                       scale: float | None = None) -> list[Box]:
    """Return the bounding boxes of the largest Felzenszwalb segments (at least `min_fraction` of the image),
    largest first, at most `max_regions`. Looks at the image: segments follow colour and texture edges."""
    from skimage.segmentation import felzenszwalb

    pixels = np.asarray(image.convert("RGB"))
    height, width = pixels.shape[:2]
    # scale grows with the image so a 32 px CIFAR tile and a 500 px photo both split into a few objects
    segments = felzenszwalb(pixels, scale=scale or max(width, height) * 2.0, sigma=0.8,
                            min_size=max(4, int(min_fraction * width * height)))
    ids, counts = np.unique(segments, return_counts=True)
    boxes = []
    for segment in ids[np.argsort(-counts)]:
        ys, xs = np.nonzero(segments == segment)
        box = Box(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        if box.area >= min_fraction * width * height and box not in boxes:
            boxes.append(box)
        if len(boxes) >= max_regions:
            break
    return boxes


def propose(image: Image.Image, method: str = "random", num_crops: int = 5, size_method: str | int = "fixed",
            grid_rows: int = 2, seed: int = 0, name: str = "image") -> list[Box]:
    """Return the regions to score for one image: the whole image first, then the method's boxes.

    Raises RegionError naming the image for an unknown method or an image too small for the crops."""
    width, height = image.size
    if method == "random":
        boxes = random_crops(width, height, num_crops, size_method, seed, name)
    elif method == "grid":
        boxes = grid(width, height, grid_rows, name=name)
    elif method == "felzenszwalb":
        boxes = felzenszwalb_boxes(image, max_regions=num_crops)
    elif method == "cam":
        raise RegionError(f"{name}: cam regions need a trained head and the backbone's feature map; "
                          f"use labelers.relabel.cam.cam_proposals")
    elif method == "sam":
        raise RegionError(f"{name}: sam regions need a SAM model; use labelers.relabel.regions.sam_regions "
                          f"(labelloop relabel --regions sam --sam-model FOLDER)")
    else:
        raise RegionError(f"{name}: unknown region method {method!r}; choose from {', '.join(METHODS)}")
    whole = whole_image(width, height)
    return [whole] + [b for b in boxes if b != whole]


def sam_boxes(proposals: Sequence, width: int, height: int, max_regions: int,
              min_fraction: float = MIN_REGION_FRACTION) -> list[Box]:
    """Return the boxes of the highest-scoring `proposals` (labelers.pseudo.proposals.Proposal: ``.box``
    (x0, y0, x1, y1) and ``.score``), best first, at most `max_regions`. Boxes under `min_fraction` of the
    image, repeats and the whole image itself (always region 0 anyway) are dropped, as in felzenszwalb_boxes."""
    whole, boxes = whole_image(width, height), []
    for proposal in sorted(proposals, key=lambda p: -p.score):
        if len(boxes) >= max_regions:
            break
        box = Box(*proposal.box)
        if box.area >= min_fraction * width * height and box != whole and box not in boxes:
            boxes.append(box)
    return boxes


def sam_regions(proposer, images: Sequence[Image.Image], max_regions: int,
                min_fraction: float = MIN_REGION_FRACTION) -> list[list[Box]]:
    """Return per image the whole image, then the `sam_boxes` of its masks from `proposer` (a SamProposer of
    labelers.pseudo.proposals, built once per run: anything with ``propose(images) -> [[Proposal]]``)."""
    return [[whole_image(*image.size)] + sam_boxes(found, *image.size, max_regions, min_fraction)
            for image, found in zip(images, proposer.propose(images))]


def crop_regions(image: Image.Image, boxes: Sequence[Box]) -> list[Image.Image]:
    """Return the image cut to each box (the embedder resizes each crop to its input size)."""
    return [image.crop(box.as_tuple()) for box in boxes]
