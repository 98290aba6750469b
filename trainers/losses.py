"""Complementary-label losses as plain functions on tensors, and the one registry of strategies.

Every loss has the signature ``loss(logits, targets, T=None, prior=None) -> scalar tensor``:

- ``logits``: (B, K) model outputs;
- ``targets``: (B,) long complementary labels (one CL per row; images with several CLs are
  duplicated by the collator), or (B, K) float multi-hot CL sets for MCL, or (B,) true labels for Ord;
- ``T``: (K, K) transition matrix on the logits' device, T[y, j] = P(CL j | true y);
- ``prior``: (K,) CL class prior of the training split (URE only; defaults to the batch frequencies).

All losses are batch means. Choices that differ from libcll (see docs/trainers.md):

- MCL is a mean over the batch, not a sum, so the learning rate does not depend on the batch size.
- DM and OP weights are computed from the model's own predictions and DETACHED: they act as
  per-example importance weights. Without detaching, the gradient through the DM weight
  1 + (1 - p_cl)/(K - 1) rewards raising p_cl, i.e. pushes towards the complementary label.
- URE's class prior is normalised to sum to 1 (libcll uses raw counts, a constant scale), so the
  URE loss value is an unbiased estimate of the ordinary cross-entropy risk.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

EPS = 1e-6


def _picked(values: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return values.gather(1, targets.long().unsqueeze(1)).squeeze(1)


def ordinary_ce(logits, targets, T=None, prior=None):
    """Return the cross-entropy on ordinary (true) labels: the Ord reference."""
    return F.cross_entropy(logits, targets.long())


def scl_nl(logits, targets, T=None, prior=None):
    """Return mean -log(1 - p_cl + eps) (SCL with the negative-log loss)."""
    p = logits.softmax(dim=1)
    return -torch.log(1 - _picked(p, targets) + EPS).mean()


def scl_exp(logits, targets, T=None, prior=None):
    """Return mean exp(p_cl) (SCL with the exponential loss)."""
    return torch.exp(_picked(logits.softmax(dim=1), targets)).mean()


def forward_correction(logits, targets, T=None, prior=None):
    """Return mean -log((p^T T)_cl + eps): FWD, also CPE-F, and CPE-T when given the learned matrix."""
    if T is None:
        raise ValueError("forward correction needs a transition matrix T")
    cl_probs = logits.softmax(dim=1) @ T.to(logits.dtype)
    return -torch.log(_picked(cl_probs, targets) + EPS).mean()


def forward_joint(logits, cl_sets, T=None, prior=None):
    """Return mean over images of -log(sum_y p_y prod_r T[y, cl_r]) / R_i: FWD on all of an image's CLs at once.

    ``cl_sets`` is (B, R) padded with -1 (rows need at least one CL). This is the likelihood of an
    image's R answers when each round is an independent answer drawn from T[y]: the answers rule out
    the classes together (far from truck AND far from ship), which the per-pair FWD loss cannot see.
    Dividing by the image's CL count R_i keeps the scale of per-pair FWD.
    """
    if T is None:
        raise ValueError("forward correction needs a transition matrix T")
    cl = cl_sets.long()
    valid = cl >= 0
    if bool((~valid.any(dim=1)).any()):
        raise ValueError("joint forward correction needs at least one complementary label per row")
    log_T = torch.log(T.to(logits.dtype) + EPS)  # (K, K)
    per_answer = log_T[:, cl.clamp(min=0)].permute(1, 2, 0)  # (B, R, K): log T[y, cl_r]
    joint = F.log_softmax(logits, dim=1) + (per_answer * valid.unsqueeze(2)).sum(dim=1)
    return (-torch.logsumexp(joint, dim=1) / valid.sum(dim=1)).mean()


def cpe_identity(logits, targets, T=None, prior=None):
    """Return mean -log p_cl: CPE-I, where the softmax directly estimates the CL distribution."""
    return F.cross_entropy(logits, targets.long())


def ure_example_losses(logits, targets, T):
    """Return (B,) unbiased per-example losses sum_k (T^-1)[cl, k] * (-log p_k).

    T^-1 is the pseudo-inverse when T is singular. Their expectation over CLs drawn from T[y]
    equals the ordinary cross-entropy -log p_y.
    """
    inverse = torch.linalg.pinv(T.to(torch.float64)).to(logits.dtype)
    return (inverse[targets.long()] * -F.log_softmax(logits, dim=1)).sum(dim=1)


def ure_partial_risks(logits, targets, T, prior=None):
    """Return (K,) partial risks R_j = prior_j * mean_{i: cl_i = j} l(x_i, j); 0 for classes absent here.

    ``prior`` is normalised to sum 1; without it the batch CL frequencies are used, making
    sum_j R_j the plain batch mean of the per-example losses.
    """
    K = logits.shape[1]
    per_example = ure_example_losses(logits, targets, T)
    onehot = F.one_hot(targets.long(), K).to(logits.dtype)
    counts = onehot.sum(dim=0)
    sums = onehot.t() @ per_example
    means = sums / counts.clamp(min=1)
    if prior is None:
        weights = counts / counts.sum()
    else:
        weights = prior.to(logits.dtype) / prior.sum()
    return torch.where(counts > 0, weights * means, torch.zeros_like(means))


def ure_nn(logits, targets, T=None, prior=None):
    """Return the non-negative URE loss: the sum of the positive partial risks (URE-NN / URE-TNN)."""
    risks = ure_partial_risks(logits, targets, T, prior)
    return torch.where(risks > 0, risks, torch.zeros_like(risks)).sum()


def ure_ga(logits, targets, T=None, prior=None):
    """Return the URE gradient-ascent loss: -sum of the negative partial risks if any, else their sum."""
    risks = ure_partial_risks(logits, targets, T, prior)
    negative = risks < 0
    if bool(negative.any()):
        return -(risks[negative]).sum()
    return risks.sum()


def dm(logits, targets, T=None, prior=None):
    """Return the DM loss -(1 + (1 - p_cl)/(K - 1)) * log softmax(1 - p)_cl with a detached weight."""
    K = logits.shape[1]
    p = logits.softmax(dim=1)
    q = (1 - p).softmax(dim=1) + EPS
    weight = (1 + (1 - _picked(p, targets)) / (K - 1)).detach()
    return -(weight * torch.log(_picked(q, targets))).mean()


def pc(logits, targets, T=None, prior=None):
    """Return the pairwise-comparison loss sum_{k != cl} sigmoid(f_cl - f_k), batch mean."""
    picked = _picked(logits, targets).unsqueeze(1)
    terms = torch.sigmoid(picked - logits)
    mask = 1 - F.one_hot(targets.long(), logits.shape[1]).to(logits.dtype)
    return (terms * mask).sum(dim=1).mean()


def op(logits, targets, T=None, prior=None):
    """Return the OP loss -w_cl * log softmax(-f)_cl, w = p * softmax(1 + 1/softmax(-f)) (+eps), detached."""
    p = logits.softmax(dim=1)
    neg = (-logits).softmax(dim=1)
    weight = (p * (1 + 1 / neg).softmax(dim=1) + EPS).detach()
    return -(_picked(weight, targets) * torch.log(_picked(neg, targets))).mean()


def _mcl(error: Callable[[torch.Tensor], torch.Tensor]):
    def loss(logits, targets, T=None, prior=None):
        K = logits.shape[1]
        cl_sets = targets.to(logits.dtype)
        sizes = cl_sets.sum(dim=1)
        if bool((sizes < 1).any()):
            raise ValueError("MCL needs at least one complementary label per row")
        s = ((1 - cl_sets) * logits.softmax(dim=1)).sum(dim=1)
        return ((2 * K - 2) / sizes * error(s)).mean()
    return loss


mcl_mae = _mcl(lambda s: 1 - s)
mcl_exp = _mcl(lambda s: torch.exp(-s))
mcl_log = _mcl(lambda s: -torch.log(s + EPS))
mcl_mae.__doc__ = "Return the MCL loss with error 1 - s, s = sum of p outside the CL set, weight (2K-2)/|set|."
mcl_exp.__doc__ = "Return the MCL loss with error exp(-s)."
mcl_log.__doc__ = "Return the MCL loss with error -log(s + eps)."


@dataclass(frozen=True)
class LossSpec:
    """How a strategy trains and predicts.

    ``matrix``: which T the loss and SCEL see: "none" (the loss ignores T), "uniform" (always uniform),
    "given" (the run's transition matrix) or "learned" (CPE-T's row-softmax(W)).
    ``multi_hot``: targets are CL sets (MCL) instead of one CL per row.
    ``ordinary``: trains on true labels (Ord).
    ``decode``: "argmax", or "nearest_row" (CPE: argmin_k ||v - T[k]||_1).
    ``cl_output``: the softmax itself estimates the CL distribution (CPE-I).
    ``cl_sets``: the loss takes each image's padded CL row (B, R) at once instead of (image, CL) pairs.
    """

    loss: Callable
    matrix: str = "none"
    multi_hot: bool = False
    ordinary: bool = False
    decode: str = "argmax"
    cl_output: bool = False
    cl_sets: bool = False


LOSSES: dict[tuple[str, str | None], LossSpec] = {
    ("ORD", None): LossSpec(ordinary_ce, ordinary=True),
    ("SCL", "NL"): LossSpec(scl_nl),
    ("SCL", "EXP"): LossSpec(scl_exp),
    ("SCL", "FWD"): LossSpec(forward_correction, matrix="given"),
    ("FWD", None): LossSpec(forward_correction, matrix="given"),
    ("FWD", "JOINT"): LossSpec(forward_joint, matrix="given", cl_sets=True),
    ("URE", "NN"): LossSpec(ure_nn, matrix="uniform"),
    ("URE", "GA"): LossSpec(ure_ga, matrix="uniform"),
    ("URE", "TNN"): LossSpec(ure_nn, matrix="given"),
    ("URE", "TGA"): LossSpec(ure_ga, matrix="given"),
    ("DM", None): LossSpec(dm),
    ("PC", None): LossSpec(pc),
    ("OP", None): LossSpec(op),
    ("CPE", "I"): LossSpec(cpe_identity, matrix="given", decode="nearest_row", cl_output=True),
    ("CPE", "F"): LossSpec(forward_correction, matrix="given", decode="nearest_row"),
    ("CPE", "T"): LossSpec(forward_correction, matrix="learned", decode="nearest_row"),
    ("MCL", "MAE"): LossSpec(mcl_mae, multi_hot=True),
    ("MCL", "EXP"): LossSpec(mcl_exp, multi_hot=True),
    ("MCL", "LOG"): LossSpec(mcl_log, multi_hot=True),
}

# Strategies without a type: the seed passes `--type None` (or anything) for them.
_UNTYPED = {strategy for strategy, kind in LOSSES if kind is None}


def strategy_key(strategy: str, kind: str | None = None) -> tuple[str, str | None]:
    """Return the registry key for (strategy, type), case-insensitive; raise ValueError listing choices.

    ``strategy`` may carry its type as listed by ``choices()`` ("CPE-F"); a different ``kind`` then conflicts.
    """
    name = strategy.strip().upper()
    given = kind.strip().upper() if kind and kind.strip().upper() != "NONE" else None
    if name in _UNTYPED:
        # the seed passes any --type for untyped strategies; only a type this strategy has is used
        return (name, given) if (name, given) in LOSSES else (name, None)
    named, _, named_kind = name.partition("-")
    if named_kind:
        if given and given != named_kind:
            raise ValueError(f"--strategy {strategy} names type {named_kind} but --type is {kind}; give one")
        name, given = named, named_kind
    key = (name, given)
    if key not in LOSSES:
        raise ValueError(f"unknown strategy/type {strategy}/{kind}; choose one of: {', '.join(choices())}")
    return key


def get(strategy: str, kind: str | None = None) -> LossSpec:
    """Return the LossSpec for (strategy, type); raise ValueError listing the choices when unknown."""
    return LOSSES[strategy_key(strategy, kind)]


def choices() -> list[str]:
    """Return every strategy as ``STRATEGY`` or ``STRATEGY-TYPE`` strings, e.g. ``SCL-NL``, ``FWD``."""
    return [s if t is None else f"{s}-{t}" for s, t in LOSSES]


def cl_distribution(logits: torch.Tensor, spec: LossSpec, T: torch.Tensor) -> torch.Tensor:
    """Return (B, K) the model's predicted distribution over complementary labels (used by SCEL, CPE decoding)."""
    p = logits.softmax(dim=1)
    return p if spec.cl_output else p @ T.to(p.dtype)


def predict(logits: torch.Tensor, spec: LossSpec, T: torch.Tensor | None = None) -> torch.Tensor:
    """Return (B,) predicted true classes: argmax, or CPE's nearest transition-matrix row in L1."""
    if spec.decode == "nearest_row":
        v = cl_distribution(logits, spec, T)
        return torch.cdist(v, T.to(v.dtype), p=1).argmin(dim=1)
    return logits.argmax(dim=1)
