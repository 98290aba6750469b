"""Class probabilities of regions: one pass, MC dropout, or MC perturbation (test-time augmentation).

Every method returns an array (passes, regions, classes) of probabilities, and `aggregate` turns it into
(regions, classes) once: probabilities are averaged (or votes counted) and never squashed again. The seed's
two defects are avoided by construction: its dropout stayed off (model left in eval mode) and its vote
frequencies were softmaxed a second time.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

MEASURES = ("naive", "mc-dropout", "mc-perturbation")
AGGREGATIONS = ("mean", "vote")

# features (N, D) -> probabilities (N, K); e.g. ClassifierHead(multi_label=True).predict_proba
ProbaFn = Callable[[np.ndarray], np.ndarray]
# images -> features (N, D); e.g. lambda ims: embedder.encode_images(ims)
EmbedFn = Callable[[Sequence], np.ndarray]


def naive(features: np.ndarray, proba: ProbaFn) -> np.ndarray:
    """Return one pass, shape (1, N, K)."""
    return proba(np.asarray(features, np.float32))[None]


def mc_dropout(features: np.ndarray, proba: ProbaFn, passes: int = 20, rate: float = 0.05,
               seed: int = 0) -> np.ndarray:
    """Return `passes` passes (T, N, K), each with a fresh dropout mask on the features before the head.

    The dropout module is put in training mode explicitly, so it really drops (the seed's was in eval mode,
    making all its passes identical); kept units are scaled by 1/(1-rate) so the mean feature is unchanged.
    Raises ValueError for a rate outside [0, 1) or passes < 1."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    dropout = torch.nn.Dropout(rate).train()  # active at inference: that is the point of MC dropout
    generator = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(np.asarray(features, np.float32))
    out = []
    for _ in range(passes):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            dropped = dropout(x)
        out.append(proba(dropped.numpy()))
    return np.stack(out)


def autoaugment_views(images: Sequence, passes: int = 25, seed: int = 0) -> list[list]:
    """Return `passes` augmented copies of each image (list over passes of lists over images), drawn from
    torchvision's AutoAugment ImageNet policy (the seed's perturbation), seeded."""
    from torchvision.transforms import AutoAugment, AutoAugmentPolicy

    augment = AutoAugment(AutoAugmentPolicy.IMAGENET)
    views = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(passes):
            views.append([augment(image) for image in images])
    return views


def mc_perturbation(images: Sequence, embed: EmbedFn, proba: ProbaFn, passes: int = 25,
                    seed: int = 0) -> np.ndarray:
    """Return (T, N, K): each pass embeds one AutoAugment view of every region image and scores it."""
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    return np.stack([proba(np.asarray(embed(view), np.float32)) for view in autoaugment_views(images, passes, seed)])


def aggregate(pass_probs: np.ndarray, method: str = "mean", multi_label: bool = True) -> np.ndarray:
    """Return (N, K) confidences from (T, N, K) pass probabilities.

    `mean`: the average probability. `vote`: the fraction of passes voting for the class: probability > 0.5
    for a multi-label (sigmoid) head, the argmax for a softmax head. Both stay in [0, 1] and are not
    normalised again (the seed's softmax over vote counts flattened every vote to ~1/K)."""
    pass_probs = np.asarray(pass_probs, np.float64)
    if pass_probs.ndim != 3:
        raise ValueError(f"pass probabilities must be (passes, regions, classes), got shape {pass_probs.shape}")
    if method == "mean":
        return pass_probs.mean(axis=0)
    if method == "vote":
        if multi_label:
            return (pass_probs > 0.5).mean(axis=0)
        k = pass_probs.shape[2]
        return np.eye(k)[pass_probs.argmax(axis=2)].mean(axis=0)
    raise ValueError(f"unknown aggregation {method!r}; choose from {', '.join(AGGREGATIONS)}")
