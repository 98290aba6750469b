"""A tiny randomly initialised SAM checkpoint (about 56 k parameters) for tests and offline demos, and
``python -m labelers.pseudo.tiny FOLDER``, which writes it, the tiny Qwen2-VL and a demo config for both.

Its masks are random; it exercises the real mask-generation pipeline (point grid, crops, filters,
NMS) loaded back through ``from_pretrained`` like a real checkpoint. Nothing touches the network.
"""
from __future__ import annotations

from pathlib import Path


def build_tiny_sam(folder: str | Path, seed: int = 0) -> Path:
    """Save a random SamModel (64 px input, 16 px patches) and its SamProcessor in ``folder``; return it."""
    import torch
    from transformers import (SamConfig, SamImageProcessor, SamMaskDecoderConfig, SamModel, SamProcessor,
                              SamPromptEncoderConfig, SamVisionConfig)

    torch.manual_seed(seed)
    folder = Path(folder)
    vision = SamVisionConfig(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                             image_size=64, patch_size=16, mlp_dim=64, global_attn_indexes=[1], window_size=2,
                             num_pos_feats=8)
    prompt = SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=16, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_dim=32,
                                   iou_head_hidden_dim=16)
    model = SamModel(SamConfig(vision_config=vision, prompt_encoder_config=prompt,
                               mask_decoder_config=decoder)).eval()
    processor = SamProcessor(image_processor=SamImageProcessor(
        size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
        mask_size={"longest_edge": 16}, mask_pad_size={"height": 16, "width": 16}))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# Settings that make the random models' output reach every step of the chain on real photos: coarse
# Felzenszwalb regions (few questions per image) and every region kept by step 1 (a random model's
# "yes" means nothing). For demos and tests only; configs/pseudo.yaml stays CoT-PL's.
DEMO_CONFIG = """\
# labelloop pseudo-label --config for the tiny random models (labelers/pseudo/tiny.py): mechanics only
felzenszwalb:
  scale: 2000
  min_size: 2000
questions:
  min_object_prob: 0.0
"""


def build_tiny_models(folder: str | Path) -> dict[str, Path]:
    """Write a tiny random SAM (``sam/``), a tiny random Qwen2-VL (``qwen2-vl/``) and ``demo.yaml`` (settings
    that suit them) into ``folder``; return their paths by name."""
    from labelers.vlm.tiny import build_tiny_qwen2_vl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "demo.yaml").write_text(DEMO_CONFIG, encoding="utf-8")
    return {"sam": build_tiny_sam(folder / "sam"), "qwen2-vl": build_tiny_qwen2_vl(folder / "qwen2-vl"),
            "config": folder / "demo.yaml"}


def main(argv: list[str] | None = None) -> None:
    """``python -m labelers.pseudo.tiny FOLDER``: build the tiny models and demo config into FOLDER."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m labelers.pseudo.tiny FOLDER")
    for name, path in build_tiny_models(args[0]).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
