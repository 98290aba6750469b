"""Load a VLM (processor + image-text-to-text model) from a preset, hub name or local folder."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labelers.vlm.settings import VLMSettings


class VLMLoadError(RuntimeError):
    """The model or processor could not be loaded or cannot be used for chat-style labeling."""


@dataclass
class LoadedVLM:
    """A ready-to-use model: ``model`` in eval mode on ``device``, ``processor`` padding on the left."""
    model: Any
    processor: Any
    model_id: str
    model_type: str
    device: Any
    dtype: Any

    @property
    def tokenizer(self):
        return self.processor.tokenizer


def resolve_model(spec: str | None, settings: VLMSettings) -> str:
    """Return the hub name or folder for ``spec``: a preset key maps to its model, anything else is kept."""
    spec = spec or settings.default_model
    preset = settings.presets.get(spec)
    return str(preset["model"]) if preset else spec


def pick_device(device: str = "auto"):
    """Return the torch device: ``auto`` prefers cuda, then mps, then cpu."""
    import torch

    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device, dtype: str = "auto"):
    """Return the torch dtype: ``auto`` is bf16 on cuda with bf16 support, else fp16 on GPUs, fp32 on CPU."""
    import torch

    if dtype != "auto":
        try:
            return {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                    "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}[dtype]
        except KeyError:
            raise VLMLoadError(f"unknown dtype {dtype!r}; use auto, bf16, fp16 or fp32") from None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def _weight_kwargs(torch_dtype, torch_device) -> dict:
    """from_pretrained arguments: the dtype under its 5.x name (``torch_dtype`` before 4.56), and
    with accelerate installed, weights placed straight on the GPU instead of staged in CPU memory."""
    import importlib.util

    import transformers

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    kwargs = {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": torch_dtype}
    if torch_device.type == "cuda" and importlib.util.find_spec("accelerate") is not None:
        kwargs["device_map"] = {"": str(torch_device)}
    return kwargs


def load_vlm(spec: str | None, settings: VLMSettings, device: str = "auto", dtype: str = "auto") -> LoadedVLM:
    """Return the loaded VLM for a preset key, hub name or local folder.

    Uses ``AutoProcessor`` and ``AutoModelForImageTextToText`` (``from_pretrained``). Raises
    VLMLoadError naming the model when loading fails or the processor has no chat template.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    name = resolve_model(str(spec) if spec is not None else None, settings)
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(torch_device, dtype)
    local = Path(name).expanduser()
    if (name.startswith((".", "/", "~")) or local.exists()) and not local.is_dir():
        raise VLMLoadError(f"model folder {name} does not exist")
    try:
        processor = AutoProcessor.from_pretrained(name)
        model = AutoModelForImageTextToText.from_pretrained(name, **_weight_kwargs(torch_dtype, torch_device))
    except (OSError, ValueError, KeyError) as exc:
        raise VLMLoadError(f"cannot load VLM {name!r}: {exc}") from None
    if not getattr(processor, "chat_template", None):
        raise VLMLoadError(f"{name}: the processor has no chat template; labelloop needs one to build prompts")
    if not hasattr(processor, "tokenizer"):
        raise VLMLoadError(f"{name}: the processor has no tokenizer")
    # Decoder-only batching: pad on the left so every row's last position is its real last token.
    processor.tokenizer.padding_side = "left"
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    model = model.to(torch_device).eval()
    return LoadedVLM(model=model, processor=processor, model_id=name,
                     model_type=getattr(model.config, "model_type", "unknown"),
                     device=torch_device, dtype=torch_dtype)
