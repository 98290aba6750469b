"""The three chained questions per region (clear object? which category? foreground or background?),
each a closed set of lettered options answered by option scoring, so every answer has a probability.

Unlike CoT-PL, the category chosen in step 2 is written into the step-3 prompt.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from labelers.pseudo.chat import chat
from labelers.pseudo.settings import QuestionSettings
from labelers.vlm.prompting import option_letters
from labelers.vlm.scoring import score_options, softmax


@dataclass
class RegionAnswer:
    """The chain's answers for one region. ``category`` is None when step 1 dropped the region or, in
    open vocabulary, when no answer parsed as a name (then ``unnamed`` is True and ``name_raw`` holds
    every raw answer)."""
    p_object: float
    category: str | None = None
    p_category: float = 0.0
    foreground: bool | None = None
    p_foreground: float = 0.0
    name_raw: list | None = None
    unnamed: bool = False

    @property
    def score(self) -> float:
        """Return the box confidence: P(clear object) x P(chosen category)."""
        return self.p_object * self.p_category


def options_text(names: Sequence[str], settings: QuestionSettings) -> str:
    """Return the lettered option lines ("A. yes", ...) for ``names``."""
    return settings.option_separator.join(settings.option.format(letter=letter, name=name)
                                          for letter, name in zip(option_letters(len(names)), names))


def object_question(settings: QuestionSettings) -> str:
    """Return the step-1 text (is there a clear object?)."""
    return settings.object.format(options=options_text(settings.object_options, settings))


def category_question(categories: Sequence[str], settings: QuestionSettings) -> str:
    """Return the step-2 text listing ``categories`` as lettered options."""
    return settings.category.format(options=options_text(categories, settings))


def foreground_question(category: str, settings: QuestionSettings) -> str:
    """Return the step-3 text with ``category`` filled in."""
    return settings.foreground.format(category=category,
                                      options=options_text(settings.foreground_options, settings))


def option_probabilities(vlm, images: Sequence, texts: Sequence[str], n_options: int, answer_prefix: str,
                         batch_size: int) -> list[np.ndarray]:
    """Return, per (image, text), the softmax over the ``n_options`` letters' log-likelihoods (sums to 1)."""
    if not images:
        return []
    prompts = [chat(vlm.processor, text) for text in texts]
    answers = [[answer_prefix + letter for letter in option_letters(n_options)]] * len(prompts)
    return [softmax(row) for row in score_options(vlm, list(images), prompts, answers, batch_size)]


def ask_chain(vlm, prompt_images: Sequence, categories: Sequence[str] | None, settings: QuestionSettings,
              answer_prefix: str = "", generate=None) -> list[RegionAnswer]:
    """Return one RegionAnswer per visual-prompt image, asking steps 2 and 3 only of regions step 1 keeps.

    Step 1 keeps a region when "yes" (the first object option) is the most likely answer, or, with
    ``min_object_prob`` set, when P(yes) >= it. ``categories`` None means open vocabulary: step 2 is
    generated and parsed (labelers.pseudo.naming; ``generate`` swaps the generator in tests), and
    step 3 is asked only of the regions that got a name. Raises ValueError for an empty category list.
    """
    if categories is not None and not categories:
        raise ValueError("the category question needs at least one category (or None for open vocabulary)")
    n = settings.batch_size
    p_obj = option_probabilities(vlm, prompt_images, [object_question(settings)] * len(prompt_images),
                                 len(settings.object_options), answer_prefix, n)
    answers = [RegionAnswer(p_object=float(p[0])) for p in p_obj]
    if settings.min_object_prob is None:
        kept = [i for i, p in enumerate(p_obj) if int(np.argmax(p)) == 0]
    else:
        kept = [i for i, p in enumerate(p_obj) if p[0] >= settings.min_object_prob]
    if categories is None:
        return _open_vocabulary_steps(vlm, prompt_images, kept, answers, settings, answer_prefix, generate)
    images = [prompt_images[i] for i in kept]
    p_cat = option_probabilities(vlm, images, [category_question(categories, settings)] * len(images),
                                 len(categories), answer_prefix, n)
    chosen = [categories[int(np.argmax(p))] for p in p_cat]
    p_fg = option_probabilities(vlm, images, [foreground_question(c, settings) for c in chosen],
                                len(settings.foreground_options), answer_prefix, n)
    for i, pc, cat, pf in zip(kept, p_cat, chosen, p_fg):
        fg = int(np.argmax(pf)) == 0
        answers[i].category, answers[i].p_category = cat, float(np.max(pc))
        answers[i].foreground, answers[i].p_foreground = fg, float(pf[0])
    return answers


def _open_vocabulary_steps(vlm, prompt_images, kept, answers, settings, answer_prefix, generate):
    """Steps 2 (generated name) and 3 (foreground, with that name) for the ``kept`` regions."""
    from labelers.pseudo.naming import ask_names

    names = ask_names(vlm, [prompt_images[i] for i in kept], settings, answer_prefix, generate)
    for i, name in zip(kept, names):
        answers[i].name_raw, answers[i].unnamed = name.raw, name.name is None
    named = [(i, name) for i, name in zip(kept, names) if name.name is not None]
    p_fg = option_probabilities(vlm, [prompt_images[i] for i, _ in named],
                                [foreground_question(name.name, settings) for _, name in named],
                                len(settings.foreground_options), answer_prefix, settings.batch_size)
    for (i, name), pf in zip(named, p_fg):
        answers[i].category, answers[i].p_category = name.name, name.probability
        answers[i].foreground, answers[i].p_foreground = int(np.argmax(pf)) == 0, float(pf[0])
    return answers
