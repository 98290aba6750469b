"""Option scoring with the tiny random VLMs: probabilities, batching, the multi-token path."""
import numpy as np
import pytest

from labelers.sample_data import CIFAR10_CLASSES
from labelers.vlm.prompting import chat_prompt, make_question
from labelers.vlm.scoring import _score_sequences, answer_token_ids, score_options

MODELS = ["qwen2-vl", "llava-next"]


@pytest.mark.parametrize("model", MODELS)
def test_class_probabilities_sum_to_one(tiny_labelers, cifar_images, model):
    images, _ = cifar_images
    probs = tiny_labelers[model].classify(images[:6], CIFAR10_CLASSES, batch_size=3)
    assert probs.shape == (6, 10)
    assert np.all(probs > 0)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
    # a random model still tells images apart: rows are not all the same
    assert np.abs(probs - probs[0]).max() > 1e-6


@pytest.mark.parametrize("model", MODELS)
def test_batched_scores_equal_one_by_one(tiny_labelers, cifar_images, model):
    images, _ = cifar_images
    labeler = tiny_labelers[model]
    batched = labeler.classify(images[:8], CIFAR10_CLASSES, batch_size=8)
    single = np.vstack([labeler.classify([image], CIFAR10_CLASSES, batch_size=1) for image in images[:8]])
    np.testing.assert_allclose(batched, single, atol=1e-5)


@pytest.mark.parametrize("model", MODELS)
def test_complementary_option_probabilities_are_over_shown_candidates(tiny_labelers, cifar_images, model):
    images, _ = cifar_images
    rounds = tiny_labelers[model].complementary(images[:4], CIFAR10_CLASSES, keys=list("abcd"))
    for per_image in rounds:
        assert len(per_image) == 3
        for answer in per_image:
            assert len(answer.option_probs) == 4 == len(answer.question.shown)
            assert abs(sum(answer.option_probs) - 1) < 1e-9
            best = int(np.argmax(answer.option_logprobs))
            assert answer.choice == answer.question.shown[best]


@pytest.mark.parametrize("model", MODELS)
def test_multi_token_answers_match_single_token_path_and_batching(tiny_labelers, cifar_images, model):
    images, _ = cifar_images
    labeler = tiny_labelers[model]
    vlm, prompts_cfg = labeler.vlm, labeler.settings.prompts
    questions = [make_question("ordinary", [0, 1, 2, 3], CIFAR10_CLASSES)] * 3
    prompts = [chat_prompt(vlm.processor, q, prompts_cfg) for q in questions]
    letters = [[" A", " B", " C", " D"]] * 3
    fast = score_options(vlm, images[:3], prompts, letters, batch_size=3)
    ids = [[answer_token_ids(vlm.tokenizer, p, a) for a in row] for p, row in zip(prompts, letters)]
    slow = _score_sequences(vlm, images[:3], prompts, letters, ids, batch_size=5)
    np.testing.assert_allclose(np.vstack(fast), np.vstack(slow), atol=1e-5)
    # two-token answers ("A ." etc.) of different lengths, batched vs one at a time
    longer = [[" A .", " B", " C . .", " D ."]] * 3
    batched = score_options(vlm, images[:3], prompts, longer, batch_size=4)
    single = [score_options(vlm, [im], [p], [row], batch_size=1)[0] for im, p, row in zip(images, prompts, longer)]
    np.testing.assert_allclose(np.vstack(batched), np.vstack(single), atol=1e-5)
    # an answer's log-likelihood is at most that of its first token
    assert np.all(np.vstack(batched)[:, 0] < np.vstack(fast)[:, 0])


def test_answer_token_ids_follow_the_prompt(tiny_labelers):
    tokenizer = tiny_labelers["qwen2-vl"].vlm.tokenizer
    ids = answer_token_ids(tokenizer, "<|im_start|>assistant\n", "B")
    assert tokenizer.convert_ids_to_tokens(ids) == ["B"]
    with pytest.raises(ValueError, match="adds no tokens"):
        answer_token_ids(tokenizer, "x", " ")


def test_shared_labeler_loads_once_per_process(tiny_vlm_dirs, cifar_images):
    from labelers.vlm.labeler import shared_labeler

    images, _ = cifar_images
    first = shared_labeler(str(tiny_vlm_dirs["qwen2-vl"]), device="cpu")
    assert shared_labeler(str(tiny_vlm_dirs["qwen2-vl"]), device="cpu") is first
    assert shared_labeler(str(tiny_vlm_dirs["llava-next"]), device="cpu") is not first
    assert first.classify(images[:2], ["cat", "dog", "ship"]).shape == (2, 3)


@pytest.mark.parametrize("model", MODELS)
def test_shared_prefix_scoring_equals_one_sequence_per_option(tiny_labelers, cifar_images, model):
    # One prefill per image, its KV cache reused by every option, must give the log-likelihoods of scoring
    # prompt + answer as one full sequence per option (the previous path).
    from labelers.vlm.scoring import _score_shared_prefix

    images, _ = cifar_images
    labeler = tiny_labelers[model]
    vlm, prompts_cfg = labeler.vlm, labeler.settings.prompts
    prompts = [chat_prompt(vlm.processor, make_question("ordinary", [0, 1, 2, 3], CIFAR10_CLASSES), prompts_cfg)] * 3
    answers = [[" A .", " B", " C . .", " D ."], [" cat", " dog .", " A", " bird , ship"], [" B . .", " C", " D", " A"]]
    ids = [[answer_token_ids(vlm.tokenizer, p, a) for a in row] for p, row in zip(prompts, answers)]
    reference = _score_sequences(vlm, images[:3], prompts, answers, ids, batch_size=5)
    for batch_size in (1, 3, 8):  # options continued from the cache in groups of batch_size
        shared = _score_shared_prefix(vlm, images[:3], prompts, ids, batch_size=batch_size)
        np.testing.assert_allclose(np.vstack(shared), np.vstack(reference), atol=1e-4)
    assert np.vstack(reference).std() > 0.1  # the options really differ
