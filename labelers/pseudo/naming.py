"""Open-vocabulary naming: the category question asked without options, the answer generated freely,
read by a strict parser, and re-asked a bounded number of times when it is not a category name.

Generation is labelers.vlm.generation's (batched, greedy, only new tokens decoded); each re-ask round
is one batch of the still-unnamed regions, as the VLM labeler does for its lettered questions. The
accepted answer's probability (its tokens' log-likelihood after the prompt that produced it) becomes
the box's ``p_category``, so open-vocabulary boxes carry a confidence too.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from labelers.pseudo.chat import chat
from labelers.pseudo.settings import QuestionSettings

# Answers that parse as words but name nothing; asking again is the honest move.
NON_NAMES = frozenset({"unknown", "unsure", "none", "nothing", "no", "yes", "n/a", "na", "object", "thing",
                       "something", "i don't know", "not sure", "background", "foreground"})
_ARTICLE = re.compile(r"^(a|an|the)\s+")
_WORD = re.compile(r"^[a-z][a-z\-']+$")  # two letters at least: a lone "B" is an option letter


def parse_category_name(text: str, max_words: int = 2) -> str | None:
    """Return the category name ``text`` states (lower case, single spaces, no article or final full stop),
    or None when it is not one: empty, more than one line, more than ``max_words`` words, anything but
    letters, hyphens and apostrophes (digits, commas, quotes, "dog/cat"), or a non-name like "unknown"."""
    answer = str(text).strip()
    if not answer or "\n" in answer:
        return None
    answer = " ".join(answer.lower().split()).rstrip(".!")
    answer = _ARTICLE.sub("", answer)
    words = answer.split(" ")
    if not answer or len(words) > max_words or not all(_WORD.match(word) for word in words):
        return None
    return None if answer in NON_NAMES else answer


@dataclass
class NameAnswer:
    """What the model called one region: ``name`` (None when every attempt was unparseable), every raw
    answer in order, and the probability of the accepted answer (0 when there is none)."""
    name: str | None
    raw: list[str] = field(default_factory=list)
    probability: float = 0.0

    @property
    def attempts(self) -> int:
        return len(self.raw)


def ask_names(vlm, prompt_images: Sequence, settings: QuestionSettings, answer_prefix: str = "",
              generate: Callable | None = None) -> list[NameAnswer]:
    """Return one NameAnswer per visual-prompt image.

    Asks ``settings.open_category``; an answer ``parse_category_name`` refuses is re-asked with
    ``settings.open_retry`` (quoting it), all pending regions in one batch per round, at most
    ``settings.open_max_retries`` times. ``generate`` defaults to labelers.vlm.generation.generate_answers
    (a test passes a scripted one).
    """
    from labelers.vlm.generation import generate_answers

    generate = generate or generate_answers
    answers = [NameAnswer(None) for _ in prompt_images]
    prompts = [chat(vlm.processor, settings.open_category) for _ in prompt_images]
    accepted_prompts: dict[int, str] = {}
    pending = list(range(len(prompt_images)))
    for _ in range(settings.open_max_retries + 1):
        if not pending:
            break
        texts, _ = generate(vlm, [prompt_images[i] for i in pending], [prompts[i] for i in pending],
                            settings.open_max_new_tokens, settings.batch_size, None)
        still = []
        for i, text in zip(pending, texts):
            answers[i].raw.append(text)
            name = parse_category_name(text, settings.open_max_words)
            if name is None:
                still.append(i)
                retry = settings.open_retry.format(question=settings.open_category,
                                                   previous=" ".join(str(text).split())[:60])
                prompts[i] = chat(vlm.processor, retry)
            else:
                answers[i].name, accepted_prompts[i] = name, prompts[i]
        pending = still
    _fill_probabilities(vlm, prompt_images, answers, accepted_prompts, answer_prefix, settings.batch_size)
    return answers


def _fill_probabilities(vlm, images, answers, accepted_prompts, answer_prefix, batch_size) -> None:
    """Set each named answer's probability: exp(log-likelihood of its raw text after its prompt)."""
    from labelers.vlm.scoring import score_options

    named = sorted(accepted_prompts)
    if not named:
        return
    rows = score_options(vlm, [images[i] for i in named], [accepted_prompts[i] for i in named],
                         [[answer_prefix + answers[i].raw[-1].strip()] for i in named], batch_size)
    for i, row in zip(named, rows):
        answers[i].probability = float(np.exp(row[0]))
