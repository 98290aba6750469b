"""Turning padded CL rows into loss targets.

Batches carry CLs as a (B, R) long tensor padded with -1. Non-MCL losses see one (image, CL)
pair per valid entry: ``expand_pairs`` repeats an image's logits once per CL, which gives the same
per-pair mean as libcll's duplicating every image once per CL, at one forward pass per image.
MCL sees the set as a multi-hot row (``multi_hot``).
"""
from __future__ import annotations

import torch


def expand_pairs(cl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (rows, targets): for every CL >= 0 in ``cl`` (B, R), its batch row and its class."""
    rows, cols = (cl >= 0).nonzero(as_tuple=True)
    return rows, cl[rows, cols]


def multi_hot(cl: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Return (B, K) float: 1 where class k is among the row's CLs (repeats count once)."""
    out = torch.zeros(cl.shape[0], num_classes, dtype=torch.float32, device=cl.device)
    rows, targets = expand_pairs(cl)
    out[rows, targets] = 1.0
    return out
