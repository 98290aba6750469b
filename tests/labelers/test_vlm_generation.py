"""Generate-and-parse: bounded, batched re-asks with reshuffled options; the real tiny models too."""
import numpy as np
import pytest

from labelers.sample_data import CIFAR10_CLASSES
from labelers.vlm.labeler import VLMLabeler, answers_to_class_probs
from labelers.vlm.settings import load_settings


class ScriptedModel:
    """Stands in for generate_answers: answers from a script and logs every batch it was asked."""

    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def __call__(self, vlm, images, prompts, max_new_tokens, batch_size, first_ids):
        self.calls.append(list(prompts))
        return [self.answer(len(self.calls), p) for p in prompts], [None] * len(prompts)


def _labeler(tiny_labelers, max_retries):
    base = tiny_labelers["qwen2-vl"]
    return VLMLabeler(base.vlm, load_settings(max_retries=max_retries, method="generate"))


@pytest.mark.parametrize("max_retries", [0, 2, 5])
def test_never_valid_answers_stop_after_max_retries(tiny_labelers, cifar_images, max_retries):
    images, _ = cifar_images
    labeler = _labeler(tiny_labelers, max_retries)
    labeler.generate = ScriptedModel(lambda call, prompt: "I think it is maybe a cat-like thing")
    answers = labeler.ordinary(images[:5], CIFAR10_CLASSES)
    calls = labeler.generate.calls
    assert len(calls) == max_retries + 1                 # bounded
    assert all(len(batch) == 5 for batch in calls)       # every re-ask of the 5 images in one batch
    for per_image in answers:
        answer = per_image[0]
        assert answer.status == "unparseable" and answer.choice is None
        assert answer.attempts == max_retries + 1
    assert np.isnan(answers_to_class_probs([a[0] for a in answers], 10)).all()
    if max_retries:
        assert calls[0][0] != calls[1][0]                # options reshuffled on the re-ask


def test_reask_shows_the_same_classes_in_a_new_order(tiny_labelers, cifar_images):
    images, _ = cifar_images
    labeler = _labeler(tiny_labelers, 2)
    labeler.generate = ScriptedModel(lambda call, prompt: "no idea")
    answers = labeler.complementary(images[:1], CIFAR10_CLASSES, keys=["x"])
    prompts = [batch[0] for batch in labeler.generate.calls[:3]]   # round 0: three attempts
    options = [sorted(line.split(". ", 1)[1] for line in p.splitlines() if line[:3] in ("A. ", "B. ", "C. ", "D. "))
               for p in prompts]
    assert options[0] == options[1] == options[2]
    assert len(set(prompts)) > 1
    assert all(a.status == "unparseable" for a in answers[0])


def test_only_unparsed_images_are_reasked(tiny_labelers, cifar_images):
    images, _ = cifar_images
    labeler = _labeler(tiny_labelers, 3)

    def script(call, prompt):
        if call == 1:
            return "A"          # round 0, in class order: everyone answers airplane
        if call == 2:           # round 1, options shuffled per image: only some answer validly
            return "C" if any(f"A. {name}" in prompt for name in ("airplane", "bird", "cat", "deer", "dog")) else "??"
        return "B"

    labeler.generate = ScriptedModel(script)
    answers = labeler.ordinary(images[:6], CIFAR10_CLASSES, rounds=2)
    calls = labeler.generate.calls
    unparsed = sum(r == "??" for r in (script(2, p) for p in calls[1]))
    assert 0 < unparsed < 6, "the fixture should split the images"
    assert [len(c) for c in calls] == [6, 6, unparsed]    # one batched re-ask of just those
    for per_image in answers:
        first, second = per_image
        assert (first.choice, first.attempts, first.raw) == (0, 1, ["A"])
        if second.attempts == 2:
            assert second.raw == ["??", "B"] and second.choice == second.question.shown[1]
        else:
            assert second.raw == ["C"] and second.choice == second.question.shown[2]


@pytest.mark.parametrize("model", ["qwen2-vl", "llava-next"])
def test_real_tiny_model_generation_is_bounded_and_recorded(tiny_labelers, cifar_images, model):
    images, _ = cifar_images
    base = tiny_labelers[model]
    labeler = VLMLabeler(base.vlm, load_settings(max_retries=1, method="generate", max_new_tokens=4))
    answers = [r[0] for r in labeler.ordinary(images[:4], CIFAR10_CLASSES)]
    for answer in answers:
        assert 1 <= answer.attempts <= 2
        assert all(isinstance(text, str) for text in answer.raw)
        assert (answer.choice is None) == (answer.status == "unparseable")
        # first-token letter distribution is recorded alongside the text
        assert len(answer.option_probs) == 10 and abs(sum(answer.option_probs) - 1) < 1e-9


def test_options_sharing_a_first_token_still_get_probabilities(tiny_labelers, cifar_images):
    """An answer prefix that tokenizes alone ("option A", "option B", ...) gives every option the same first token."""
    from labelers.vlm.prompting import chat_prompt
    from labelers.vlm.scoring import score_options, softmax

    images, _ = cifar_images
    base = tiny_labelers["qwen2-vl"]
    labeler = VLMLabeler(base.vlm, load_settings(max_retries=0, method="generate", max_new_tokens=2,
                                                 answer_prefix={"default": "option "}))
    answer = labeler.ordinary(images[:1], CIFAR10_CLASSES[:4])[0][0]
    prompt = chat_prompt(base.vlm.processor, answer.question, labeler.settings.prompts)
    assert labeler._first_letter_ids(prompt, answer.question) is None  # the case under test
    expected = score_options(base.vlm, images[:1], [prompt], [labeler._answers(answer.question)])[0]
    np.testing.assert_allclose(answer.option_probs, softmax(expected), rtol=1e-5)
