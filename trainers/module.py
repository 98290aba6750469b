"""The LightningModule that learns a classifier from complementary (or ordinary) labels."""
from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from trainers import losses, metrics
from trainers.collate import expand_pairs, multi_hot
from trainers.matrices import uniform

# CPE-T initialises W = log(T + delta): exact zeros of T would otherwise be -inf and never learn.
CPE_T_DELTA = 1e-3


class CLLModule(pl.LightningModule):
    """Trains ``model`` with one strategy's loss; validates with Accuracy / URE / SCEL; tests on Accuracy.

    Batches are (inputs, cl, true) with ``cl`` (B, R) padded with -1 and ``true`` (B,) with -1 unknown.
    ``T`` is the run's transition matrix (K, K); ``prior`` the training CL class frequencies (URE).
    Logged: ``train_loss``, ``valid_Accuracy`` (when the validation split has true labels),
    ``valid_URE``/``valid_SCEL`` (when it has CLs), ``test_Accuracy``.
    """

    def __init__(self, model: nn.Module, strategy: str, kind: str | None, T: np.ndarray,
                 prior: np.ndarray | None = None, lr: float = 1e-3, valid_type: str = "SCEL",
                 weight_decay: float = 0.0, ordinary_weight: float = 0.0):
        super().__init__()
        self.model = model
        self.spec = losses.get(strategy, kind)
        self.strategy_name = "-".join(x for x in losses.strategy_key(strategy, kind) if x)
        self.valid_type = metrics.canonical_valid_type(valid_type)
        if self.spec.decode == "nearest_row" and self.valid_type == "URE":
            raise ValueError("CPE strategies validate with SCEL or Accuracy, not URE")
        self.lr, self.weight_decay, self.ordinary_weight = lr, weight_decay, ordinary_weight
        K = T.shape[0]
        # Buffers follow the module to whatever device Lightning picks (no hard-coded .cuda()).
        self.register_buffer("T_given", torch.tensor(T, dtype=torch.float32))
        self.register_buffer("T_uniform", torch.tensor(uniform(K), dtype=torch.float32))
        self.register_buffer("prior", None if prior is None else torch.tensor(prior, dtype=torch.float32))
        self.W = nn.Parameter(torch.log(torch.tensor(T, dtype=torch.float32) + CPE_T_DELTA)) \
            if self.spec.matrix == "learned" else None
        self._outputs: dict[str, list] = {"valid": [], "test": []}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def loss_matrix(self) -> torch.Tensor:
        """Return the T the loss uses: uniform (URE-NN/GA), the run's T, or CPE-T's row-softmax(W)."""
        if self.spec.matrix == "learned":
            return self.W.softmax(dim=1)
        if self.spec.matrix == "uniform":
            return self.T_uniform
        return self.T_given

    def metric_matrix(self) -> torch.Tensor:
        """Return the T used by SCEL/URE and CPE decoding: learned for CPE-T, else the run's T."""
        return self.W.softmax(dim=1) if self.spec.matrix == "learned" else self.T_given

    def compute_loss(self, logits: torch.Tensor, cl: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        """Return the strategy's loss on one batch."""
        if self.spec.ordinary:
            keep = true >= 0
            return self.spec.loss(logits[keep], true[keep])
        if self.spec.multi_hot:
            keep = (cl >= 0).any(dim=1)
            return self.spec.loss(logits[keep], multi_hot(cl[keep], logits.shape[1])) + self.ordinary_loss(logits, true)
        if self.spec.cl_sets:
            keep = (cl >= 0).any(dim=1)
            return self.spec.loss(logits[keep], cl[keep], self.loss_matrix()) + self.ordinary_loss(logits, true)
        rows, targets = expand_pairs(cl)
        loss = self.spec.loss(logits[rows], targets, self.loss_matrix(), self.prior)
        return loss + self.ordinary_loss(logits, true)

    def ordinary_loss(self, logits: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        """Return ``ordinary_weight`` times the cross-entropy on the batch rows with an ordinary label (else 0).

        Training batches carry ordinary labels only where the run has them (the gold images of
        ``--gold-count``, the VLM's ``--ordinary-labels``), so a CL run also learns from them.
        """
        known = true >= 0
        if not self.ordinary_weight or not bool(known.any()):
            return logits.new_zeros(())
        return self.ordinary_weight * losses.ordinary_ce(logits[known], true[known])

    def training_step(self, batch, batch_idx):
        x, cl, true = batch
        loss = self.compute_loss(self(x), cl, true)
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(x))
        return loss

    def _collect(self, stage: str, batch) -> None:
        x, cl, true = batch
        self._outputs[stage].append((self(x).detach().float(), cl, true))

    def validation_step(self, batch, batch_idx):
        self._collect("valid", batch)

    def test_step(self, batch, batch_idx):
        self._collect("test", batch)

    def _epoch_metrics(self, stage: str) -> dict[str, torch.Tensor]:
        outputs, self._outputs[stage] = self._outputs[stage], []
        if not outputs:
            return {}
        logits = torch.cat([o[0] for o in outputs])
        cl = torch.cat([o[1] for o in outputs])
        true = torch.cat([o[2] for o in outputs])
        T = self.metric_matrix().float()
        out = {}
        known = true >= 0
        if known.any():
            out["Accuracy"] = metrics.accuracy(logits[known], true[known], self.spec, T)
        rows, targets = expand_pairs(cl)
        if len(rows):
            out["SCEL"] = metrics.scel(logits[rows], targets, self.spec, T)
            if self.spec.decode != "nearest_row":
                out["URE"] = metrics.ure(logits[rows], targets, T)
        return out

    def on_validation_epoch_end(self):
        values = self._epoch_metrics("valid")
        if self.valid_type not in values:
            raise ValueError(f"validation type {self.valid_type} cannot be computed: the validation split has "
                             + ("no true labels (use --valid-type SCEL)" if self.valid_type == "Accuracy"
                                else "no complementary labels (use --valid-type Accuracy)"))
        for name, value in values.items():
            self.log(f"valid_{name}", value, prog_bar=name == self.valid_type)

    def on_test_epoch_end(self):
        for name, value in self._epoch_metrics("test").items():
            self.log(f"test_{name}", value)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
