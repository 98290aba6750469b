"""Classifiers trained by the CLL module: Linear, MLP (one 500-unit hidden layer), small-image ResNet18/34."""
from __future__ import annotations

import math

from torch import nn

MODEL_NAMES = ("linear", "mlp", "resnet18", "resnet34")


def _small_image_resnet(depth: int, in_channels: int, num_classes: int) -> nn.Module:
    """Return a torchvision ResNet with a 3x3 stride-1 stem and no max-pool (for 32x32-ish images)."""
    from torchvision.models import resnet18, resnet34

    model = {18: resnet18, 34: resnet34}[depth](weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, hidden: int = 500) -> nn.Module:
    """Return a fresh model for inputs of ``input_shape`` (C, H, W) or (D,) and ``num_classes`` outputs.

    Linear and MLP flatten their input. ResNets need image input (C, H, W). Raises ValueError for an
    unknown name or a ResNet on feature vectors.
    """
    key = name.strip().lower()
    flat = int(math.prod(input_shape))
    if key == "linear":
        return nn.Sequential(nn.Flatten(), nn.Linear(flat, num_classes))
    if key == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
    if key in ("resnet18", "resnet34"):
        if len(input_shape) != 3:
            raise ValueError(f"{name} needs images (C, H, W); these inputs have shape {tuple(input_shape)} "
                             "(use --model linear or mlp on frozen embeddings)")
        return _small_image_resnet(int(key[6:]), input_shape[0], num_classes)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
