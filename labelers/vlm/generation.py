"""Free generation, batched, and a strict answer parser.

The parser accepts only an option's letter (optionally wrapped as "(B)", "B.", "B)", "B:"), an
option's exact name, or the letter followed by that same option's exact name ("B. dog"). Anything
else, including substrings, plurals and two different options, is unparseable: the caller re-asks.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

_LETTER = re.compile(r"^\(?\s*([A-Za-z]|\d{1,3})\s*[\).:]?$")
_LETTER_AND_NAME = re.compile(r"^\(?\s*([A-Za-z]|\d{1,3})\s*[\).:-]\s*(.+)$")


def _normalise(text: str) -> str:
    return " ".join(text.strip().strip(".").split()).lower()


def parse_answer(text: str, letters: Sequence[str], names: Sequence[str]) -> int | None:
    """Return the option position (0-based) that ``text`` names, or None when it is not exactly one option.

    Letters match case-sensitively for upper-case keys only when the answer is a single letter; a
    lower-case single letter is accepted too because chat models often lower-case it.
    """
    answer = " ".join(str(text).strip().split())
    if not answer:
        return None
    keys = {letter.lower(): i for i, letter in enumerate(letters)}
    by_name = {_normalise(name): i for i, name in enumerate(names)}
    match = _LETTER.match(answer)
    if match:
        key = match.group(1).lower()
        if key in keys:
            return keys[key]
        # a one-letter class name ("a") falls through to the name check below
    name_hit = by_name.get(_normalise(answer))
    if name_hit is not None:
        return name_hit
    match = _LETTER_AND_NAME.match(answer)
    if match:
        key, name = match.group(1).lower(), _normalise(match.group(2))
        if key in keys and by_name.get(name) == keys[key]:
            return keys[key]
    return None


def generate_answers(vlm, images: Sequence, prompts: Sequence[str], max_new_tokens: int = 10,
                     batch_size: int = 8, first_token_ids: Sequence[Sequence[int]] | None = None
                     ) -> tuple[list[str], list[np.ndarray | None]]:
    """Return (decoded answers, first-step log-probs of ``first_token_ids[i]`` or None) per prompt.

    Greedy decoding of at most ``max_new_tokens`` new tokens; only new tokens are decoded.
    """
    import torch

    from labelers.vlm.scoring import _encode

    texts, firsts = [], []
    for start in range(0, len(prompts), batch_size):
        stop = start + batch_size
        enc = _encode(vlm, prompts[start:stop], images[start:stop])
        with torch.inference_mode():
            out = vlm.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     return_dict_in_generate=True, output_logits=True)
        new_tokens = out.sequences[:, enc["input_ids"].shape[1]:]
        texts += vlm.processor.batch_decode(new_tokens, skip_special_tokens=True)
        first = out.logits[0].float().log_softmax(-1)
        for row, index in zip(first, range(start, min(stop, len(prompts)))):
            ids = first_token_ids[index] if first_token_ids is not None else None
            firsts.append(row[list(ids)].double().cpu().numpy() if ids is not None else None)
    return texts, firsts
