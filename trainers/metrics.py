"""Validation metrics: Accuracy (needs true labels), URE and SCEL (need only complementary labels)."""
from __future__ import annotations

import torch

from trainers.losses import EPS, LossSpec, cl_distribution, predict, ure_example_losses

# Metric name -> direction of "better", used for best-checkpoint selection.
VALID_TYPES = {"Accuracy": "max", "URE": "min", "SCEL": "min"}


def canonical_valid_type(name: str) -> str:
    """Return the canonical spelling (Accuracy, URE, SCEL) of ``name``; raise ValueError if unknown."""
    for known in VALID_TYPES:
        if name.strip().lower() == known.lower():
            return known
    raise ValueError(f"unknown validation type {name!r}; choose one of {', '.join(VALID_TYPES)}")


def accuracy(logits: torch.Tensor, true_labels: torch.Tensor, spec: LossSpec,
             T: torch.Tensor | None = None) -> torch.Tensor:
    """Return the fraction of rows whose decoded prediction equals the true label (0-d tensor)."""
    return (predict(logits, spec, T) == true_labels).float().mean()


def ure(logits: torch.Tensor, cl_targets: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """Return the mean unbiased risk estimate over (example, CL) pairs; lower is better."""
    return ure_example_losses(logits, cl_targets, T).mean()


def scel(logits: torch.Tensor, cl_targets: torch.Tensor, spec: LossSpec, T: torch.Tensor) -> torch.Tensor:
    """Return the mean -log(P_model(CL = cl | x) + eps) over (example, CL) pairs; lower is better."""
    probs = cl_distribution(logits, spec, T)
    return -torch.log(probs.gather(1, cl_targets.long().unsqueeze(1)).squeeze(1) + EPS).mean()
