"""Chat-template prompts, settings and the strict answer parser."""
import pytest

from labelers.vlm.generation import parse_answer
from labelers.vlm.prompting import make_question, option_letters, prompt_hash, question_text
from labelers.vlm.settings import SettingsError, load_settings

NAMES = ["airplane", "automobile", "bird", "cat", "deer"]


@pytest.mark.parametrize("model", ["qwen2-vl", "llava-next"])
def test_chat_template_prompt_has_one_image_and_lettered_options(tiny_labelers, model):
    from labelers.vlm.prompting import chat_prompt

    labeler = tiny_labelers[model]
    question = make_question("complementary", [3, 0, 4, 1], NAMES)
    prompt = chat_prompt(labeler.vlm.processor, question, labeler.settings.prompts)
    image_token = "<|image_pad|>" if model == "qwen2-vl" else "<image>"
    assert prompt.count(image_token) == 1
    assert "A. cat\nB. airplane\nC. deer\nD. automobile" in prompt
    assert "does NOT belong" in prompt
    # the generation prompt closes the user turn, so the answer starts right after it
    assert prompt.rstrip().endswith("assistant") if model == "qwen2-vl" else prompt.endswith("[/INST]")
    # the processor expands the single placeholder into the image's patch tokens
    enc = labeler.vlm.processor(text=[prompt], images=[_image()], return_tensors="pt")
    token_id = labeler.vlm.tokenizer.convert_tokens_to_ids(image_token)
    assert int((enc["input_ids"] == token_id).sum()) > 1


def _image():
    from PIL import Image
    return Image.new("RGB", (64, 64), (200, 30, 30))


def test_ordinary_question_lists_every_class_in_order():
    settings = load_settings()
    text = question_text(make_question("ordinary", list(range(5)), NAMES), settings.prompts)
    assert text.splitlines()[1:6] == [f"{l}. {n}" for l, n in zip("ABCDE", NAMES)]
    assert "best describes" in text


def test_option_letters_switch_to_numbers_beyond_26():
    assert option_letters(3) == ["A", "B", "C"]
    assert option_letters(30)[:2] == ["1", "2"] and option_letters(30)[-1] == "30"


def test_prompt_hash_changes_with_the_prompt_only():
    a, b = load_settings(), load_settings()
    assert prompt_hash(a.prompts, "score", "") == prompt_hash(b.prompts, "score", "")
    b.prompts.complementary = "Pick the wrong one: {options}"
    assert prompt_hash(a.prompts, "score", "") != prompt_hash(b.prompts, "score", "")
    assert prompt_hash(a.prompts, "score", "") != prompt_hash(a.prompts, "generate", "")


def test_settings_override_file_and_errors(tmp_path):
    path = tmp_path / "vlm.yaml"
    path.write_text("complementary:\n  num_options: 3\nmax_retries: 5\n")
    settings = load_settings(path, batch_size=2)
    assert (settings.complementary.num_options, settings.complementary.rounds) == (3, 3)
    assert (settings.max_retries, settings.batch_size) == (5, 2)
    assert settings.presets["qwen2-vl"]["model"] == "Qwen/Qwen2-VL-7B-Instruct"
    assert settings.presets["llava-next"]["model"] == "llava-hf/llava-v1.6-mistral-7b-hf"
    path.write_text("methd: score\n")
    with pytest.raises(SettingsError, match="vlm.yaml.*methd"):
        load_settings(path)
    path.write_text("method: vote\n")
    with pytest.raises(SettingsError, match="method must be"):
        load_settings(path)


@pytest.mark.parametrize("text, expected", [
    ("B", 1), (" b ", 1), ("(C)", 2), ("C.", 2), ("D)", 3), ("cat", 0), ("Cat.", 0),
    ("A. cat", 0), ("(B) dog", 1),
    # loose answers the seed accepted are refused
    ("cats", None), ("ca", None), ("a cat", None), ("A. dog", None), ("A or B", None),
    ("E", None), ("", None), ("The answer is B", None), ("cat dog", None), ("B B", None),
])
def test_parser_is_strict(text, expected):
    assert parse_answer(text, ["A", "B", "C", "D"], ["cat", "dog", "sea lion", "ship"]) == expected


def test_parser_exact_multiword_name_only():
    letters, names = ["A", "B"], ["sea lion", "lion"]
    assert parse_answer("sea lion", letters, names) == 0
    assert parse_answer("lion", letters, names) == 1
    assert parse_answer("sea", letters, names) is None
