"""A tiny randomly initialised SAM checkpoint (about 56 k parameters) for tests and offline demos.

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
