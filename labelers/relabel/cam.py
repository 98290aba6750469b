"""Class-activation-map proposals: where in the image does the head see class k?

For a linear head on mean-pooled features, logit_k(image) = w_k . mean(F) + b_k = mean over cells of
(w_k . F[:, y, x] + b_k), so the per-cell term is the class-activation map (Zhou et al. 2016) of the
backbone's last conv map F (EfficientNet-Lite0: 1280 x h x w) and the head's weights. A class's box is the
bounding box of the connected high-activation area around the CAM's peak, upsampled to the image.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from .regions import Box


def class_activation_maps(feature_map: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """Return (K, h, w) per-cell logits from a feature map (D, h, w), head weights (K, D) and biases (K,).

    Their mean over cells is the head's logit on the pooled embedding. Raises ValueError on a shape mismatch."""
    feature_map, weight = np.asarray(feature_map, np.float64), np.asarray(weight, np.float64)
    if feature_map.ndim != 3 or weight.ndim != 2 or weight.shape[1] != feature_map.shape[0]:
        raise ValueError(f"feature map {feature_map.shape} (D, h, w) and weights {weight.shape} (K, D) do not fit")
    cams = np.einsum("kd,dhw->khw", weight, feature_map)
    return cams if bias is None else cams + np.asarray(bias, np.float64)[:, None, None]


def cam_box(cam: np.ndarray, width: int, height: int, fraction: float = 0.7) -> Box:
    """Return the box (pixels of a width x height image) around the CAM's peak: the bounding box of the
    connected area whose activation is >= min + fraction * (max - min), after bilinear upsampling.

    0.7 by default: on CIFAR-10 objects pasted on a 128 px canvas (EfficientNet-Lite0, 4 x 4 map) 0.5 often
    spread the box over both objects of a two-object scene (6 of 9 right vs 9 of 9 at 0.7).

    A flat CAM (no peak) gives the whole image."""
    from scipy import ndimage

    cam = np.asarray(cam, np.float32)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    low, high = float(cam.min()), float(cam.max())
    if high - low < 1e-9:
        return Box(0, 0, width, height)
    unit = (cam - low) / (high - low)
    # PIL's float image resize is bilinear over cell centres, as the map's cells are centred on their receptive fields
    up = np.asarray(Image.fromarray(unit, mode="F").resize((width, height), Image.BILINEAR))
    components, _ = ndimage.label(up >= fraction)
    peak = np.unravel_index(int(np.argmax(up)), up.shape)
    ys, xs = np.nonzero(components == components[peak])
    return Box(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def cam_boxes(feature_map: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, width: int, height: int,
              classes: Sequence[int], fraction: float = 0.7, contrastive: bool = True) -> list[Box]:
    """Return one CAM box per class in `classes` (duplicates removed, order kept).

    `contrastive`: each class's map minus the mean map over classes, i.e. where the head sees class k *more*
    than the others. Raw CAMs of a sigmoid head share a large common part (how much "object" a cell holds),
    which puts every class's peak on the most salient object (measured: on a two-object CIFAR scene both
    classes' raw boxes were the same)."""
    cams = class_activation_maps(feature_map, weight, bias)
    if contrastive and len(cams) > 1:
        cams = cams - cams.mean(axis=0, keepdims=True)
    boxes: list[Box] = []
    for k in classes:
        box = cam_box(cams[int(k)], width, height, fraction)
        if box not in boxes:
            boxes.append(box)
    return boxes


def top_classes(whole_probabilities: np.ndarray, top_k: int) -> list[int]:
    """Return the `top_k` most probable classes of one image (its whole-image head probabilities)."""
    return np.argsort(-np.asarray(whole_probabilities))[:top_k].tolist()


def cam_proposals(embedder, head, images: Sequence[Image.Image], top_k: int = 3,
                  fraction: float = 0.7, contrastive: bool = True) -> list[list[Box]]:
    """Return per image the whole image then the CAM boxes of the head's `top_k` classes on it.

    `head` is a fitted ClassifierHead on this embedder's pooled features (its weight/bias are the CAM's
    class weights); one backbone pass per image gives both the map and, by its mean, the pooled embedding."""
    from .region_features import feature_maps
    from .regions import whole_image

    maps = feature_maps(embedder, images)
    weight, bias = head.weight.numpy(), head.bias.numpy()
    probabilities = head.predict_proba(maps.mean(axis=(2, 3)))
    out = []
    for image, fmap, proba in zip(images, maps, probabilities):
        whole = whole_image(*image.size)
        boxes = cam_boxes(fmap, weight, bias, image.width, image.height, top_classes(proba, top_k), fraction,
                          contrastive)
        out.append([whole] + [b for b in boxes if b != whole])
    return out
