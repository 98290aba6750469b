"""CoT-PL's mask filters, one named function each, defaults from configs/pseudo.yaml (CoT-PL's values).

Every function takes and returns a list of Proposal, highest score first where order matters.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from labelers.pseudo.proposals import Proposal, mask_box
from labelers.pseudo.settings import FilterSettings


def combined_score(stability: float, predicted_iou: float) -> float:
    """Return CoT-PL's mask score: stability score x predicted IoU."""
    return float(stability) * float(predicted_iou)


def _flat(proposals: Sequence[Proposal]) -> np.ndarray:
    return np.stack([p.mask.reshape(-1) for p in proposals]).astype(np.float32)


def mask_iou_matrix(proposals: Sequence[Proposal]) -> np.ndarray:
    """Return the (n, n) pairwise mask IoU; an empty pair has IoU 0."""
    flat = _flat(proposals)
    inter = flat @ flat.T
    area = flat.sum(1)
    union = area[:, None] + area[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def drop_low_scores(proposals: Sequence[Proposal], min_score: float = 0.7) -> list[Proposal]:
    """Return the proposals whose score is > ``min_score`` (CoT-PL drops score <= 0.7), best first."""
    return sorted((p for p in proposals if p.score > min_score), key=lambda p: -p.score)


def mask_nms(proposals: Sequence[Proposal], iou_threshold: float = 0.8) -> list[Proposal]:
    """Return the proposals left after greedy mask NMS: a mask whose IoU with a higher-scored kept
    mask is > ``iou_threshold`` is dropped. Output is best first."""
    ranked = sorted(proposals, key=lambda p: -p.score)
    if not ranked:
        return []
    iou = mask_iou_matrix(ranked)
    kept: list[int] = []
    for i in range(len(ranked)):
        if all(iou[i, j] <= iou_threshold for j in kept):
            kept.append(i)
    return [ranked[i] for i in kept]


def suppress_inner(proposals: Sequence[Proposal], inner_cover: float = 0.85, outer_cover: float = 0.5,
                   inner_score: float = 0.5) -> list[Proposal]:
    """Return the proposals without masks lying inside another (CoT-PL's inner-containment suppression).

    For a pair (a, b), cover_a = |a & b| / |a|. When cover_a >= ``inner_cover`` and cover_b < ``outer_cover``
    (a sits inside b), a's inner score 1 - cover_a * cover_b is computed; a is dropped when it is above
    ``inner_score`` (under the default covers it always is: the product is < 0.5). Order is kept.
    """
    if len(proposals) < 2:
        return list(proposals)
    flat = _flat(proposals)
    inter = flat @ flat.T
    area = np.maximum(flat.sum(1), 1.0)
    cover = inter / area[:, None]  # cover[a, b] = share of a inside b
    drop = set()
    for a in range(len(proposals)):
        for b in range(len(proposals)):
            if a != b and cover[a, b] >= inner_cover and cover[b, a] < outer_cover:
                if 1.0 - cover[a, b] * cover[b, a] > inner_score:
                    drop.add(a)
    return [p for i, p in enumerate(proposals) if i not in drop]


def drop_small_boxes(proposals: Sequence[Proposal], min_box_area: float = 10000) -> list[Proposal]:
    """Return the proposals whose tight box covers at least ``min_box_area`` px^2 (CoT-PL: 10 000)."""
    out = []
    for p in proposals:
        x0, y0, x1, y1 = mask_box(p.mask)
        if (x1 - x0) * (y1 - y0) >= min_box_area:
            out.append(p)
    return out


def top_k_fallback(kept: Sequence[Proposal], candidates: Sequence[Proposal], k: int = 3) -> list[Proposal]:
    """Return ``kept`` when it is not empty, else the ``k`` best-scored ``candidates`` (CoT-PL: top 3)."""
    if kept:
        return list(kept)
    return sorted(candidates, key=lambda p: -p.score)[:k]


def filter_proposals(proposals: Sequence[Proposal], settings: FilterSettings | None = None) -> list[Proposal]:
    """Return the proposals CoT-PL would ask about: score cut, mask NMS, inner suppression, top-k
    fallback, then the box-area cut (which CoT-PL applies after the fallback, so it can empty the list)."""
    s = settings or FilterSettings()
    non_empty = [p for p in proposals if p.mask.any()]
    kept = suppress_inner(mask_nms(drop_low_scores(non_empty, s.min_score), s.mask_nms_iou),
                          s.inner_cover, s.outer_cover, s.inner_score)
    kept = top_k_fallback(kept, non_empty, s.fallback_top_k)
    return drop_small_boxes(kept, s.min_box_area)
