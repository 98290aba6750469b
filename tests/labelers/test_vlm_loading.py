"""Loading: presets, device/dtype choice, local folders through from_pretrained, clear failures."""
import shutil

import pytest
import torch

from labelers.vlm.labeler import VLMLabeler
from labelers.vlm.loading import VLMLoadError, load_vlm, pick_device, pick_dtype, resolve_model
from labelers.vlm.settings import load_settings


def test_presets_resolve_to_hub_names_and_other_names_pass_through():
    settings = load_settings()
    assert resolve_model("llava-next", settings) == "llava-hf/llava-v1.6-mistral-7b-hf"
    assert resolve_model("qwen2-vl", settings) == "Qwen/Qwen2-VL-7B-Instruct"
    assert resolve_model(None, settings) == "llava-hf/llava-v1.6-mistral-7b-hf"
    assert resolve_model("org/some-vlm", settings) == "org/some-vlm"


def test_dtype_and_device_choice():
    cpu = torch.device("cpu")
    assert pick_dtype(cpu) == torch.float32
    assert pick_dtype(cpu, "bf16") == torch.bfloat16 and pick_dtype(cpu, "fp16") == torch.float16
    assert pick_dtype(torch.device("mps")) == torch.float16
    with pytest.raises(VLMLoadError, match="unknown dtype"):
        pick_dtype(cpu, "int3")
    assert pick_device("cpu") == cpu
    assert pick_device("auto").type in ("cuda", "mps", "cpu")


@pytest.mark.parametrize("model, model_class", [("qwen2-vl", "Qwen2VLForConditionalGeneration"),
                                                ("llava-next", "LlavaNextForConditionalGeneration")])
def test_local_folder_loads_the_model_specific_class(tiny_vlm_dirs, model, model_class):
    vlm = load_vlm(str(tiny_vlm_dirs[model]), load_settings(), device="cpu")
    assert type(vlm.model).__name__ == model_class
    assert vlm.tokenizer.padding_side == "left" and not vlm.model.training
    assert vlm.model_type == model.replace("-", "_")
    labeler = VLMLabeler(vlm)
    assert labeler.answer_prefix == (" " if model == "llava-next" else "")


def test_folder_without_chat_template_is_refused(tiny_vlm_dirs, tmp_path):
    folder = tmp_path / "no-template"
    shutil.copytree(tiny_vlm_dirs["qwen2-vl"], folder)
    (folder / "chat_template.jinja").unlink()
    with pytest.raises(VLMLoadError, match="no chat template"):
        load_vlm(str(folder), load_settings(), device="cpu")


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(VLMLoadError, match="does not exist"):
        load_vlm(str(tmp_path / "missing"), load_settings(), device="cpu")
