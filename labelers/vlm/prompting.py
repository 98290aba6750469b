"""Questions with lettered options, wrapped in the model's chat template, and the prompt hash."""
from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass

from labelers.vlm.settings import Prompts

MODES = ("ordinary", "complementary")


def option_letters(count: int) -> list[str]:
    """Return answer keys for ``count`` options: A, B, C, ... up to 26, numbers 1..count beyond that."""
    if count <= 26:
        return list(string.ascii_uppercase[:count])
    return [str(i) for i in range(1, count + 1)]


@dataclass(frozen=True)
class Question:
    """One multiple-choice question: the classes shown (in shown order), their names and letters."""
    mode: str
    shown: tuple[int, ...]
    names: tuple[str, ...]

    @property
    def letters(self) -> list[str]:
        return option_letters(len(self.shown))


def make_question(mode: str, shown: list[int], display_names: list[str]) -> Question:
    """Return the Question showing classes ``shown`` (indices into ``display_names``) in that order."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return Question(mode, tuple(int(i) for i in shown), tuple(display_names[int(i)] for i in shown))


def question_text(question: Question, prompts: Prompts) -> str:
    """Return the user text of ``question``: the mode's template with its lettered options filled in."""
    lines = [prompts.option.format(letter=letter, name=name)
             for letter, name in zip(question.letters, question.names)]
    template = prompts.ordinary if question.mode == "ordinary" else prompts.complementary
    return template.format(options=prompts.option_separator.join(lines))


def chat_prompt(processor, question: Question, prompts: Prompts) -> str:
    """Return the full prompt text (one image placeholder + question) in the processor's chat template."""
    messages = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": question_text(question, prompts)}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def prompt_hash(prompts: Prompts, method: str, answer_prefix: str, chat_template: str | None = None) -> str:
    """Return a short stable hash of everything that shapes the prompt, recorded with every answer.

    Two runs with the same hash asked the model the same way, so their answers may be mixed on resume.
    """
    payload = json.dumps({"prompts": vars(prompts), "method": method, "answer_prefix": answer_prefix,
                          "chat_template": chat_template}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]
