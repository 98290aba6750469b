"""The visual prompt (pixels inside vs outside a hand-made mask) and the three-question chain on the
tiny random Qwen2-VL / LLaVA-NeXT (mechanics only)."""
import numpy as np
import pytest
from PIL import Image

from labelers.pseudo.questions import ask_chain, foreground_question, option_probabilities
from labelers.pseudo.settings import VisualPromptSettings, load_pseudo_settings
from labelers.pseudo.visual_prompt import render_visual_prompt


def scene():
    array = np.zeros((60, 80, 3), dtype=np.uint8)
    array[..., 0] = 200           # a reddish image: (200, 100, 50)
    array[..., 1] = 100
    array[..., 2] = 50
    mask = np.zeros((60, 80), dtype=bool)
    mask[20:40, 30:50] = True
    return Image.fromarray(array), mask, mask


def test_visual_prompt_black_outside_grey_context_boosted_mask():
    image, _, mask = scene()
    out = np.asarray(render_visual_prompt(image, mask, VisualPromptSettings(box_width=0)))
    assert (out[:10] == 0).all() and (out[:, :25] == 0).all()       # outside the box: black canvas
    inside = out[25, 40]
    assert inside[0] > 200 and inside[1] < 100                      # saturation and value boosted
    hsv_in = np.asarray(Image.fromarray(out).convert("HSV"))[25, 40]
    hsv_orig = np.asarray(image.convert("HSV"))[25, 40]
    assert hsv_in[1] > hsv_orig[1] and hsv_in[2] > hsv_orig[2]


def test_visual_prompt_context_in_the_box_is_grey_and_outline_is_drawn():
    image, square, _ = scene()
    mask = square.copy()
    mask[15, 30:50] = True        # one row higher: the box spans rows 15..39, rows 16..19 are context
    out = np.asarray(render_visual_prompt(image, mask, VisualPromptSettings(box_width=0)))
    grey = out[17, 40]
    assert grey[0] == grey[1] == grey[2] and grey[0] > 0              # grey, not black, not colour
    outlined = np.asarray(render_visual_prompt(image, mask))
    assert tuple(outlined[15, 30]) == (0, 255, 0) and tuple(outlined[39, 49]) == (0, 255, 0)


def test_visual_prompt_refuses_an_empty_or_mismatched_mask():
    image, mask, _ = scene()
    with pytest.raises(ValueError, match="empty mask"):
        render_visual_prompt(image, np.zeros_like(mask))
    with pytest.raises(ValueError, match="does not match"):
        render_visual_prompt(image, mask[:10])


def test_third_prompt_contains_the_category():
    settings = load_pseudo_settings().questions
    text = foreground_question("fire hydrant", settings)
    assert "fire hydrant" in text and "{category}" not in text
    assert "A. foreground" in text and "B. background" in text


def test_foreground_prompt_without_placeholder_is_refused(tmp_path):
    from labelers.pseudo.settings import PseudoSettingsError

    config = tmp_path / "p.yaml"
    config.write_text('questions:\n  foreground: "Is the object foreground or background? {options}"\n')
    with pytest.raises(PseudoSettingsError, match="category"):
        load_pseudo_settings(config)


@pytest.fixture(scope="module")
def tiny_vlms(tiny_vlm_dirs):
    from labelers.vlm.loading import load_vlm
    from labelers.vlm.settings import load_settings

    settings = load_settings()
    return {name: load_vlm(str(folder), settings, device="cpu") for name, folder in tiny_vlm_dirs.items()}


@pytest.mark.parametrize("name", ["qwen2-vl", "llava-next"])
def test_option_probabilities_sum_to_one(tiny_vlms, name, one_torch_thread):
    image, mask, _ = scene()
    prompt = render_visual_prompt(image, mask)
    probs = option_probabilities(tiny_vlms[name], [prompt, prompt], ["Pick one.\nA. x\nB. y\nC. z"] * 2, 3,
                                 " " if name == "llava-next" else "", batch_size=2)
    assert len(probs) == 2 and probs[0].shape == (3,)
    assert probs[0].sum() == pytest.approx(1.0) and probs[1] == pytest.approx(probs[0], abs=1e-5)
    assert len(set(np.round(probs[0], 8))) > 1   # real letters scored, not one [UNK] id thrice


def test_chain_asks_step_3_with_the_chosen_category(tiny_vlms, one_torch_thread, monkeypatch):
    import labelers.pseudo.questions as questions

    asked = []
    real = questions.option_probabilities

    def spy(vlm, images, texts, n, prefix, batch_size):
        asked.append(list(texts))
        return real(vlm, images, texts, n, prefix, batch_size)
    monkeypatch.setattr(questions, "option_probabilities", spy)
    settings = load_pseudo_settings(overrides={"questions": {"min_object_prob": 0.0}}).questions
    image, mask, _ = scene()
    prompts = [render_visual_prompt(image, mask)] * 3
    answers = ask_chain(tiny_vlms["qwen2-vl"], prompts, ["dog", "cat", "bus"], settings)
    assert len(answers) == 3 and all(a.category in ("dog", "cat", "bus") for a in answers)
    third = asked[2]
    assert [a.category in text for a, text in zip(answers, third)] == [True] * 3
    for a in answers:
        assert 0 < a.p_category <= 1 and 0 < a.p_object < 1 and a.score == pytest.approx(a.p_object * a.p_category)
        assert a.foreground == (a.p_foreground > 0.5)


def test_chain_drops_regions_that_are_not_clear_objects(tiny_vlms, one_torch_thread):
    settings = load_pseudo_settings(overrides={"questions": {"min_object_prob": 1.01}}).questions
    image, mask, _ = scene()
    answers = ask_chain(tiny_vlms["qwen2-vl"], [render_visual_prompt(image, mask)], ["dog"], settings)
    assert answers[0].category is None and answers[0].score == 0.0
