"""Fixtures shared by every room's tests: tiny random models built locally (never downloaded)."""
from __future__ import annotations

import json
import os

import pytest

# Tests never need the network: tiny models are built locally and loaded from folders. Without this
# a mistyped model name would retry the Hugging Face hub for minutes before failing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"layers": 2, "width": 64, "patch_size": 8, "image_size": 32, "head_width": 32},
    # open_clip's packaged BPE tokenizer emits ids up to 49407, so the text vocab keeps that size.
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def build_tiny_clip(folder) -> str:
    """Save a randomly initialised open_clip CLIP as an open_clip local-dir; return its embedder spec."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP_CFG)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": TINY_CLIP_CFG,
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return f"open_clip:local-dir:{folder}"


@pytest.fixture(scope="session")
def tiny_clip_spec(tmp_path_factory) -> str:
    """Embedder spec of a tiny random CLIP saved to a temp folder (loaded through the real local-dir path)."""
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def tiny_vlm_dirs(tmp_path_factory):
    """Return {"qwen2-vl": folder, "llava-next": folder} of freshly built tiny random checkpoints."""
    from labelers.vlm.tiny import BUILDERS

    root = tmp_path_factory.mktemp("tiny_vlms")
    return {name: build(root / name) for name, build in BUILDERS.items()}


@pytest.fixture
def one_torch_thread():
    """Run the test with torch on one thread (the 2-core machine is shared), then restore the setting."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
