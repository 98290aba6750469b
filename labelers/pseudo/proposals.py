"""Region proposers: one interface, SAM (transformers mask-generation pipeline) or Felzenszwalb.

A proposer turns an RGB image into ``Proposal`` objects: a boolean mask and a score in [0, 1]. For
SAM the score is CoT-PL's stability x predicted IoU; the classical proposer has no confidence and
gives every region 1.0 (so the score filter keeps them; say so in results).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from labelers.pseudo.settings import FelzenszwalbSettings, SamSettings


class ProposerError(RuntimeError):
    """A proposer could not be built (weights missing, wrong folder)."""


@dataclass
class Proposal:
    """One region: ``mask`` is a bool (H, W) array, ``score`` its confidence in [0, 1]."""
    mask: np.ndarray
    score: float

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Return the tight box (x0, y0, x1, y1), x1/y1 exclusive; (0, 0, 0, 0) for an empty mask."""
        return mask_box(self.mask)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Return the tight box (x0, y0, x1, y1) of a bool mask, x1/y1 exclusive; zeros when it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return (0, 0, 0, 0)
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


class Proposer(Protocol):
    """Anything with ``name`` and ``propose(images) -> one list of Proposal per image``."""
    name: str

    def propose(self, images: Sequence) -> list[list[Proposal]]:
        ...


def remove_small_regions(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Return ``mask`` without islands and holes smaller than ``min_area`` px (SAM's min_mask_region_area)."""
    if min_area <= 0:
        return mask
    from skimage.morphology import remove_small_holes, remove_small_objects

    # max_size is "largest object removed": areas < min_area go, as in SAM.
    cleaned = remove_small_objects(mask.astype(bool), max_size=min_area - 1)
    return remove_small_holes(cleaned, max_size=min_area - 1)


class FelzenszwalbProposer:
    """Classical graph-based segmentation (scikit-image): one proposal per segment, score 1.0."""
    name = "felzenszwalb"

    def __init__(self, settings: FelzenszwalbSettings | None = None):
        self.settings = settings or FelzenszwalbSettings()

    def propose(self, images: Sequence) -> list[list[Proposal]]:
        from skimage.segmentation import felzenszwalb

        s = self.settings
        out = []
        for image in images:
            labels = felzenszwalb(np.asarray(image.convert("RGB")), scale=s.scale, sigma=s.sigma,
                                  min_size=s.min_size)
            out.append([Proposal(labels == value, 1.0) for value in np.unique(labels)])
        return out


class SamProposer:
    """SAM automatic masks through transformers' "mask-generation" pipeline with CoT-PL's settings.

    ``settings.model`` is a hub name (facebook/sam-vit-huge) or a local folder holding a SamModel and
    its SamProcessor. Raises ProposerError naming the model when it cannot be loaded.
    """
    name = "sam"

    def __init__(self, settings: SamSettings | None = None, device: str = "cpu"):
        from transformers import pipeline

        self.settings = settings or SamSettings()
        try:
            self.pipe = pipeline("mask-generation", model=self.settings.model, device=device)
        except (OSError, ValueError) as exc:
            raise ProposerError(f"cannot load SAM {self.settings.model!r}: {exc}") from None
        # The pipeline returns predicted IoU only; CoT-PL ranks by stability x IoU. We wrap this
        # instance's filter so the score it carries forward is that product (see _combined_filter).
        self._filter = self.pipe.image_processor.filter_masks
        self.pipe.image_processor.filter_masks = self._combined_filter

    def _combined_filter(self, masks, iou_scores, original_size, cropped_box_image, pred_iou_thresh,
                         stability_score_thresh, mask_threshold=0, stability_score_offset=1):
        """Apply SAM's IoU and stability thresholds here, then hand stability x IoU on as the score."""
        import torch

        # masks arrive as (points, masks per point, H, W); the wrapped filter flattens the first two.
        masks = masks.flatten(0, 1)
        iou_scores = iou_scores.flatten(0, 1).to(masks.device)
        if pred_iou_thresh > 0:  # a threshold of 0 means "off", as in the wrapped filter
            passed = iou_scores > pred_iou_thresh  # cut first: stability at full resolution is the cost
            masks, iou_scores = masks[passed], iou_scores[passed]

        def pixels_above(threshold):  # int16 row sums, then int32: SAM's way of keeping this cheap
            return (masks > threshold).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32).float()
        stability = pixels_above(mask_threshold + stability_score_offset) / \
            pixels_above(mask_threshold - stability_score_offset).clamp(min=1)
        keep = torch.ones_like(iou_scores, dtype=torch.bool)
        if stability_score_thresh > 0:
            keep &= stability > stability_score_thresh
        return self._filter(masks[keep][None], (iou_scores * stability)[keep][None], original_size,
                            cropped_box_image, 0.0, 0.0, mask_threshold, stability_score_offset)

    def propose(self, images: Sequence) -> list[list[Proposal]]:
        s = self.settings
        out = []
        # The pipeline batches prompt points (points_per_batch) within an image.
        for image in images:
            result = self.pipe(image.convert("RGB"), points_per_batch=s.points_per_batch,
                               points_per_crop=s.points_per_side, crops_n_layers=s.crop_n_layers,
                               crop_n_points_downscale_factor=s.crop_n_points_downscale_factor,
                               pred_iou_thresh=s.pred_iou_thresh, stability_score_thresh=s.stability_score_thresh,
                               stability_score_offset=s.stability_score_offset, crops_nms_thresh=s.box_nms_thresh)
            proposals = []
            for mask, score in zip(result["masks"], result["scores"]):
                cleaned = remove_small_regions(np.asarray(mask, dtype=bool), s.min_mask_region_area)
                if cleaned.any():
                    proposals.append(Proposal(cleaned, float(score)))
            out.append(proposals)
        return out


def make_proposer(kind: str, sam: SamSettings | None = None, felzenszwalb: FelzenszwalbSettings | None = None,
                  device: str = "cpu") -> Proposer:
    """Return the proposer named ``kind`` (sam or felzenszwalb); ValueError for anything else."""
    if kind == "sam":
        return SamProposer(sam, device=device)
    if kind == "felzenszwalb":
        return FelzenszwalbProposer(felzenszwalb)
    raise ValueError(f"unknown proposer {kind!r}; use sam or felzenszwalb")
