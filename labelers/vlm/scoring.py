"""Option scoring: the log-likelihood of each option's answer tokens after the prompt, batched.

When every option's answer is a single token (letters A, B, ... in practice) one forward pass per
image gives all options at once: the next-token distribution at the prompt's last position. Longer
answers share one prefill of image + prompt per image: its KV cache serves every option, and only the
answer tokens run per option (`_score_shared_prefix`; `_score_sequences`, one full sequence per option,
is kept as its reference). Rows are left-padded so the last position is always the real end of the prompt.
"""
from __future__ import annotations

import copy
from functools import lru_cache
from typing import Sequence

import numpy as np

# Only the end of the prompt can merge with the answer; this much context settles every tokenizer
# we know of, and lets prompts that share an ending (all of them: the chat template's assistant
# header) share one tokenization instead of paying two tokenizer calls per option.
_TAIL_CHARS = 64


def answer_token_ids(tokenizer, prompt: str, answer: str) -> list[int]:
    """Return the token ids ``answer`` adds after ``prompt`` (tokenized together, so merges are right).

    Raises ValueError when the answer adds no tokens.
    """
    return list(_answer_ids(tokenizer, prompt[-_TAIL_CHARS:], answer))


@lru_cache(maxsize=4096)
def _answer_ids(tokenizer, prompt: str, answer: str) -> tuple[int, ...]:
    full = tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
    head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if full[:len(head)] == head:
        ids = full[len(head):]
    else:  # the boundary merged; tokenizing the answer alone is the closest honest reading
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"answer {answer!r} adds no tokens after the prompt")
    return tuple(ids)


def _encode(vlm, texts: Sequence[str], images: Sequence):
    enc = vlm.processor(text=list(texts), images=list(images), padding=True, return_tensors="pt")
    return {key: (value.to(vlm.device, dtype=vlm.dtype) if value.is_floating_point() else value.to(vlm.device))
            for key, value in enc.items()}


def _forward_last_logprobs(vlm, texts: Sequence[str], images: Sequence, keep: int):
    """Return log-softmax logits of the last ``keep`` positions, shape (rows, keep, vocab), float32."""
    import torch

    with torch.inference_mode():
        out = vlm.model(**_encode(vlm, texts, images), logits_to_keep=keep)
    return out.logits[:, -keep:].float().log_softmax(-1)


def score_options(vlm, images: Sequence, prompts: Sequence[str], answers: Sequence[Sequence[str]],
                  batch_size: int = 8) -> list[np.ndarray]:
    """Return, per image, the log-likelihood of each answer string in ``answers[i]`` after ``prompts[i]``.

    ``images[i]`` goes with ``prompts[i]`` (one image placeholder each). Results are float64 arrays
    aligned with ``answers[i]``; rows are processed ``batch_size`` at a time.
    """
    ids = [[answer_token_ids(vlm.tokenizer, prompt, answer) for answer in row]
           for prompt, row in zip(prompts, answers)]
    if all(len(option) == 1 for row in ids for option in row):
        return _score_single_tokens(vlm, images, prompts, ids, batch_size)
    return _score_shared_prefix(vlm, images, prompts, ids, batch_size)


def _score_single_tokens(vlm, images, prompts, ids, batch_size) -> list[np.ndarray]:
    out = []
    for start in range(0, len(prompts), batch_size):
        stop = start + batch_size
        logprobs = _forward_last_logprobs(vlm, prompts[start:stop], images[start:stop], keep=1)[:, -1]
        for row, option_ids in zip(logprobs, ids[start:stop]):
            out.append(row[[option[0] for option in option_ids]].double().cpu().numpy())
    return out


def _cache_argument(model) -> str:
    """The name under which `model.forward` takes a KV cache: `cache` (transformers >= 5.x), else
    `past_key_values`."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _score_shared_prefix(vlm, images, prompts, ids, batch_size) -> list[np.ndarray]:
    """Return per image the log-likelihood of each option's tokens ``ids[i][j]`` after ``prompts[i]``.

    One prefill of image + prompt per image; its KV cache is shared by all the options: copied once per
    option in the batch dimension, and only the answer tokens (all but the last, right-padded to the
    longest: causal attention keeps the padding out of the real positions) run through the model. Equal to
    `_score_sequences` (one full sequence per option), at the cost of one prefix instead of one per option.
    """
    import torch

    model, out = vlm.model, []
    cache_arg = _cache_argument(model)
    pad = vlm.tokenizer.pad_token_id if vlm.tokenizer.pad_token_id is not None else 0
    for image, prompt, options in zip(images, prompts, ids):
        with torch.inference_mode():
            first = model(**_encode(vlm, [prompt], [image]), use_cache=True, logits_to_keep=1)
            opening = first.logits[0, -1].float().log_softmax(-1)  # predicts every option's first token
            totals = np.array([float(opening[option[0]]) for option in options])
            longer = [j for j, option in enumerate(options) if len(option) > 1]
            for start in range(0, len(longer), batch_size):
                rows = longer[start:start + batch_size]
                width = max(len(options[j]) for j in rows) - 1
                cache = copy.deepcopy(getattr(first, cache_arg))  # the output field has the argument's name
                cache.batch_repeat_interleave(len(rows))
                tokens = torch.tensor([list(options[j][:-1]) + [pad] * (width - len(options[j]) + 1) for j in rows],
                                      device=vlm.device)
                logprobs = model(input_ids=tokens, use_cache=True, **{cache_arg: cache}).logits.float().log_softmax(-1)
                for row, j in enumerate(rows):  # position t - 1 predicts answer token t
                    totals[j] += float(sum(logprobs[row, t - 1, token] for t, token in enumerate(options[j]) if t))
        out.append(totals)
    return out


def _score_sequences(vlm, images, prompts, answers, ids, batch_size) -> list[np.ndarray]:
    """The reference for `_score_shared_prefix`: one sequence per (image, option), prompt + answer, scored on
    the answer's own tokens (the whole prefix is recomputed for every option)."""
    flat = [(i, j) for i, row in enumerate(ids) for j in range(len(row))]
    totals = [np.zeros(len(row)) for row in ids]
    for start in range(0, len(flat), batch_size):
        chunk = flat[start:start + batch_size]
        longest = max(len(ids[i][j]) for i, j in chunk)
        logprobs = _forward_last_logprobs(vlm, [prompts[i] + answers[i][j] for i, j in chunk],
                                          [images[i] for i, _ in chunk], keep=longest + 1)
        for row, (i, j) in zip(logprobs, chunk):
            tokens = ids[i][j]
            n = len(tokens)
            # position -n-1+t predicts answer token t (the sequence ends with the answer).
            steps = row[longest - n: longest]
            totals[i][j] = float(sum(steps[t, token] for t, token in enumerate(tokens)))
    return totals


def softmax(logits: np.ndarray) -> np.ndarray:
    """Return the softmax of a 1-D array of log-likelihoods (sums to 1)."""
    shifted = np.exp(logits - np.max(logits))
    return shifted / shifted.sum()
