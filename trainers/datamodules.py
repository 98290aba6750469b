"""Lightning DataModules: images (arrays or files) and frozen embeddings, split train/valid seeded.

Every batch is (inputs, cl, true): ``cl`` (B, R) long padded with -1, ``true`` (B,) long, -1 unknown.
Datasets serve whole batches at once (``__getitems__``) because per-item Python calls dominate the
cost of small CPU models.

Under DDP (``labelloop train --devices N --distributed ddp``) each process draws its share of the training
batches (a seeded DistributedSampler, ``batch_size / N`` rows each, so the step sees as many rows as one
process would); validation and test run whole on every process, so every process computes the same metrics
over every row (no padding duplicates, and the checkpoint and early stopping agree across processes).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from trainers.cached_features import CachedFeatures
from trainers.labelset import LabelSet, split_indices  # noqa: F401  (re-exported)


class BatchDataset(Dataset):
    """Tensors indexed together; ``transform`` is applied to each gathered input batch (training only)."""

    def __init__(self, inputs: torch.Tensor, cl: np.ndarray, true: np.ndarray, transform=None, scale=None):
        self.inputs, self.transform, self.scale = inputs, transform, scale
        self.cl = torch.as_tensor(cl, dtype=torch.long)
        self.true = torch.as_tensor(true, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitems__(self, index: list[int]):
        index = torch.as_tensor(index, dtype=torch.long)
        x = self.inputs[index]
        if self.scale is not None:
            x = self.scale(x)
        if self.transform is not None:
            x = self.transform(x)
        return x, self.cl[index], self.true[index]

    def __getitem__(self, i: int):
        x, cl, true = self.__getitems__([i])
        return x[0], cl[0], true[0]


def _keep_batch(batch):
    return batch


def scale_uint8(x: torch.Tensor) -> torch.Tensor:
    """Return uint8 images (B, C, H, W) as floats in [-1, 1]."""
    return x.float().div(127.5).sub(1.0)


def crop_flip(x: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """Return a random crop (zero padding) and horizontal flip of each image in (B, C, H, W)."""
    B, _, H, W = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (B,))
    dx = torch.randint(0, 2 * padding + 1, (B,))
    out = torch.stack([padded[i, :, dy[i]:dy[i] + H, dx[i]:dx[i] + W] for i in range(B)])
    flip = torch.rand(B) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


class CLDataModule(pl.LightningDataModule):
    """Train/valid (from ``train``) and optional test LabelSets over input tensors (N, ...).

    Training batches carry ``train.ord_labels`` (what Ord learns from); validation batches carry
    ``valid_truth`` (default ``train.truth``), so an Ord run on a label file validates on the truth.
    ``train_targets`` (default ``train.ord_labels``) replaces the training batches' labels: what a CL
    strategy's ordinary term trains on (gold and ``--ordinary-labels``, see ``train.ordinary_targets``).
    """

    def __init__(self, train: LabelSet, train_inputs: torch.Tensor, valid_index: np.ndarray,
                 test: LabelSet | None = None, test_inputs: torch.Tensor | None = None, batch_size: int = 256,
                 augment=None, scale=None, seed: int = 0, valid_truth: np.ndarray | None = None,
                 train_targets: np.ndarray | None = None):
        super().__init__()
        self.train_set, self.test_set = train, test
        self.batch_size, self.seed = batch_size, seed
        train_index = np.setdiff1d(np.arange(len(train)), valid_index)
        self.train_index, self.valid_index = train_index, valid_index
        targets = train.ord_labels if train_targets is None else train_targets
        self.train_data = BatchDataset(_rows(train_inputs, train_index), train.cl_labels[train_index],
                                       targets[train_index], transform=augment, scale=scale)
        valid_truth = train.truth if valid_truth is None else valid_truth
        self.valid_data = BatchDataset(_rows(train_inputs, valid_index), train.cl_labels[valid_index],
                                       valid_truth[valid_index], scale=scale)
        self.test_data = None if test is None else BatchDataset(test_inputs, test.cl_labels, test.truth,
                                                                scale=scale)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_data.inputs.shape[1:])

    def _loader(self, data: Dataset, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(data, batch_size=self.batch_size, shuffle=shuffle, collate_fn=_keep_batch,
                          generator=generator, num_workers=0)

    def _world(self) -> tuple[int, int]:
        """Return (processes, this process's rank) of the attached Trainer; (1, 0) without one."""
        trainer = getattr(self, "trainer", None)
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def train_dataloader(self):
        world, rank = self._world()
        if world == 1:
            return self._loader(self.train_data, shuffle=True)
        # Lightning calls set_epoch on this sampler every epoch, so each epoch is a new seeded shuffle.
        sampler = DistributedSampler(self.train_data, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
        return DataLoader(self.train_data, batch_size=max(1, self.batch_size // world), sampler=sampler,
                          collate_fn=_keep_batch, num_workers=0)

    def val_dataloader(self):
        return self._loader(self.valid_data, shuffle=False)

    def test_dataloader(self):
        if self.test_data is None:
            return []
        return self._loader(self.test_data, shuffle=False)


def _rows(inputs, index: np.ndarray):
    """Return the rows ``index`` of ``inputs``: a tensor's rows, or a lazy view of cached features
    (trainers.cached_features.CachedFeatures.take), so selecting the split reads nothing."""
    return inputs.take(index) if isinstance(inputs, CachedFeatures) else inputs[index]


def image_tensor(labelset: LabelSet, image_size: int | None = None, channels: int | None = None,
                 progress: bool = False) -> torch.Tensor:
    """Return the LabelSet's images as a uint8 tensor (N, C, H, W).

    Uses ``labelset.images`` when present, else decodes ``labelset.paths`` (resized to ``image_size``,
    default 32). Raises labelers.images.ImageLoadError naming the first unreadable file.
    """
    if labelset.images is not None:
        array = np.asarray(labelset.images)
        if array.ndim == 3:
            array = array[:, :, :, None]
        tensor = torch.from_numpy(np.array(array, copy=True)).permute(0, 3, 1, 2).contiguous()
        if image_size and tensor.shape[-1] != image_size:
            tensor = torch.nn.functional.interpolate(tensor.float(), size=(image_size, image_size),
                                                     mode="bilinear", antialias=True).round().clamp(0, 255).byte()
        return tensor
    if labelset.paths is None:
        raise ValueError("the label set has neither image arrays nor image paths")
    from tqdm.auto import tqdm

    from labelers.images import load_image

    size = image_size or 32
    grey = channels == 1
    out = np.empty((len(labelset.paths), size, size, 1 if grey else 3), dtype=np.uint8)
    for i, path in enumerate(tqdm(labelset.paths, desc="decode images", unit="img", disable=not progress)):
        image = load_image(Path(path)).resize((size, size))
        out[i] = np.asarray(image.convert("L"))[:, :, None] if grey else np.asarray(image)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


class ImageDataModule(CLDataModule):
    """Images from arrays (MNIST, CIFAR-style) or files (ImageFolder trees), scaled to [-1, 1].

    ``augment`` turns on random crop + horizontal flip for training batches (natural images).
    """

    def __init__(self, train: LabelSet, valid_index: np.ndarray, test: LabelSet | None = None,
                 batch_size: int = 256, image_size: int | None = None, augment: bool = False, seed: int = 0,
                 progress: bool = False, valid_truth: np.ndarray | None = None,
                 train_targets: np.ndarray | None = None):
        train_x = image_tensor(train, image_size, progress=progress)
        test_x = None if test is None else image_tensor(test, image_size or train_x.shape[-1],
                                                        channels=train_x.shape[1], progress=progress)
        super().__init__(train, train_x, valid_index, test, test_x, batch_size,
                         augment=crop_flip if augment else None, scale=scale_uint8, seed=seed, valid_truth=valid_truth,
                         train_targets=train_targets)


class EmbeddingDataModule(CLDataModule):
    """Frozen embeddings (``labelset.features``, float32 (N, D)) for a linear or MLP head.

    Features are standardised with the mean and standard deviation of the training rows (not the
    validation or test rows): L2-normalised embeddings have tiny per-dimension scales otherwise.
    ``features`` may be a trainers.cached_features.CachedFeatures (``--stream-features``): rows are then
    read from the embedding cache a batch at a time and the statistics computed over blocks, never the
    whole pool in memory.
    """

    def __init__(self, train: LabelSet, valid_index: np.ndarray, test: LabelSet | None = None,
                 batch_size: int = 256, seed: int = 0, standardize: bool = True,
                 valid_truth: np.ndarray | None = None, train_targets: np.ndarray | None = None):
        if train.features is None or (test is not None and test.features is None):
            raise ValueError("EmbeddingDataModule needs features on every label set")
        if isinstance(train.features, CachedFeatures):  # cached features: standardised as they are read
            x, test_x = train.features, None if test is None else test.features
            if standardize:
                mean, std = x.take(np.setdiff1d(np.arange(len(x)), valid_index)).mean_std()
                x = x.standardized(mean, std)
                test_x = None if test_x is None else test_x.standardized(mean, std)
            super().__init__(train, x, valid_index, test, test_x, batch_size, seed=seed, valid_truth=valid_truth,
                             train_targets=train_targets)
            return
        x = torch.as_tensor(np.asarray(train.features), dtype=torch.float32)
        test_x = None if test is None else torch.as_tensor(np.asarray(test.features), dtype=torch.float32)
        if standardize:
            fit = torch.as_tensor(np.setdiff1d(np.arange(len(x)), valid_index))
            mean, std = x[fit].mean(0), x[fit].std(0).clamp(min=1e-6)
            x = (x - mean) / std
            test_x = None if test_x is None else (test_x - mean) / std
        super().__init__(train, x, valid_index, test, test_x, batch_size, seed=seed, valid_truth=valid_truth,
                         train_targets=train_targets)
