"""EfficientNet-Lite0 on CIFAR-10 images: un-normalised pooled features, kept so ImageNet logits can be recomputed.

    python -m benchmarks.imagenet_logits --split test --per-class 1000 --px 224

Output: benchmarks/.work/cifar10_<split>_effnet<px>_<per_class>_raw.npz with `pooled` (N, 1280 float32, before
L2 normalisation), `labels` (N) and `class_names`. The classifier logits are `pooled @ W.T + b` with the
packaged `_fc` layer; the embedder's cached features are `pooled / ||pooled||`. Re-runs read the file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import typer

from labelers.embedders import EfficientNetLite0Embedder
from labelers.images import load_image
from labelers.sample_data import CIFAR10_CLASSES, cifar10_subset

WORK = Path(__file__).resolve().parent / ".work"


class _Files(torch.utils.data.Dataset):
    def __init__(self, paths, embedder):
        self.paths, self.embedder = paths, embedder

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.embedder.preprocess(load_image(self.paths[i].read_bytes(), name=str(self.paths[i])))


def pooled_features(split: str = "test", per_class: int = 1000, px: int = 224) -> Path:
    """Return the .npz path of raw pooled features for the first `per_class` images of each class."""
    out = WORK / f"cifar10_{split}_effnet{px}_{per_class}_raw.npz"
    if out.exists():
        return out
    from tqdm.auto import tqdm

    embedder = EfficientNetLite0Embedder(px, device="cpu")
    paths, labels = cifar10_subset(split, per_class)
    loader = torch.utils.data.DataLoader(_Files(paths, embedder), batch_size=50, num_workers=0)
    chunks = []
    with torch.inference_mode():
        for batch in tqdm(loader, desc=f"pooled features {split} @{px}", mininterval=30):
            chunks.append(embedder._forward(batch).float().numpy())
    WORK.mkdir(parents=True, exist_ok=True)
    np.savez(out, pooled=np.concatenate(chunks), labels=labels, class_names=np.asarray(CIFAR10_CLASSES))
    return out


def main(split: str = "test", per_class: int = 1000, px: int = 224) -> None:
    print(pooled_features(split, per_class, px))


if __name__ == "__main__":
    typer.run(main)
