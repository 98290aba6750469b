"""VLMLabeler: ordinary and complementary labels from one loaded VLM, in batches.

Load once per process (``VLMLabeler.from_pretrained``) and call ``classify`` for a probability per
class, ``ordinary`` / ``complementary`` for full per-round answers, or ``ask`` for arbitrary
multiple-choice questions.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from labelers.formats.class_names import display_names
from labelers.vlm.generation import generate_answers, parse_answer
from labelers.vlm.prompting import Question, chat_prompt, make_question, prompt_hash
from labelers.vlm.sampling import CandidateSampler, stable_key
from labelers.vlm.scoring import answer_token_ids, score_options, softmax
from labelers.vlm.settings import VLMSettings, load_settings


@dataclass
class Answer:
    """The outcome of one question: the options finally shown, every raw answer, the parsed class.

    ``choice`` is a class index, or None when every attempt was unparseable. ``option_probs`` are
    aligned with ``question.shown`` (None when the method could not give them).
    """
    question: Question
    choice: int | None
    raw: list[str] = field(default_factory=list)
    option_logprobs: list[float] | None = None
    option_probs: list[float] | None = None
    method: str = "score"

    @property
    def attempts(self) -> int:
        return max(1, len(self.raw))

    @property
    def status(self) -> str:
        return "ok" if self.choice is not None else "unparseable"


class VLMLabeler:
    """Asks a VLM multiple-choice questions about images; see module docstring."""

    def __init__(self, vlm, settings: VLMSettings | None = None):
        self.vlm = vlm
        self.settings = settings or load_settings()
        self.answer_prefix = self.settings.prefix_for(vlm.model_type)
        # The generation step is an attribute so a test can swap in a model that never answers.
        self.generate: Callable = generate_answers

    @classmethod
    def from_pretrained(cls, model: str | None = None, settings: VLMSettings | None = None,
                        device: str = "auto", dtype: str = "auto") -> "VLMLabeler":
        """Return a labeler over a preset key, hub name or local folder; raises VLMLoadError on failure."""
        from labelers.vlm.loading import load_vlm

        settings = settings or load_settings()
        return cls(load_vlm(model, settings, device=device, dtype=dtype), settings)

    @property
    def model_id(self) -> str:
        return self.vlm.model_id

    def prompt_hash(self, method: str | None = None) -> str:
        """Return the hash of prompts, method, answer prefix and chat template used for answers."""
        return prompt_hash(self.settings.prompts, method or self.settings.method, self.answer_prefix,
                           getattr(self.vlm.processor, "chat_template", None))

    # -- asking ---------------------------------------------------------------------------------

    def ask(self, images: Sequence, questions: Sequence[Question], method: str | None = None,
            keys: Sequence[str] | None = None, batch_size: int | None = None) -> list[Answer]:
        """Return one Answer per (image, question).

        ``score`` never fails to answer. ``generate`` re-asks unparseable answers, all of them in
        one batch per attempt, with the options reshuffled (seeded by ``keys``), at most
        ``settings.max_retries`` times, then records the answer as unparseable.
        """
        method = method or self.settings.method
        batch_size = batch_size or self.settings.batch_size
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        if method == "score":
            return self._ask_by_scoring(images, questions, batch_size)
        if method == "generate":
            keys = list(keys) if keys is not None else [str(i) for i in range(len(images))]
            return self._ask_by_generation(images, questions, keys, batch_size)
        raise ValueError(f"method must be 'score' or 'generate', got {method!r}")

    def _answers(self, question: Question) -> list[str]:
        return [self.answer_prefix + letter for letter in question.letters]

    def _ask_by_scoring(self, images, questions, batch_size) -> list[Answer]:
        prompts = [chat_prompt(self.vlm.processor, q, self.settings.prompts) for q in questions]
        scores = score_options(self.vlm, images, prompts, [self._answers(q) for q in questions], batch_size)
        answers = []
        for question, logprobs in zip(questions, scores):
            best = int(np.argmax(logprobs))
            answers.append(Answer(question, question.shown[best], [question.letters[best]],
                                  logprobs.tolist(), softmax(logprobs).tolist(), "score"))
        return answers

    def _first_letter_ids(self, prompt: str, question: Question) -> list[int] | None:
        firsts = [answer_token_ids(self.vlm.tokenizer, prompt, a)[0] for a in self._answers(question)]
        return firsts if len(set(firsts)) == len(firsts) else None

    def _ask_by_generation(self, images, questions, keys, batch_size) -> list[Answer]:
        answers = [Answer(q, None, method="generate") for q in questions]
        pending = list(range(len(questions)))
        current = list(questions)
        for attempt in range(self.settings.max_retries + 1):
            prompts = [chat_prompt(self.vlm.processor, current[i], self.settings.prompts) for i in pending]
            firsts = [self._first_letter_ids(p, current[i]) for p, i in zip(prompts, pending)]
            texts, first_logprobs = self.generate(self.vlm, [images[i] for i in pending], prompts,
                                                  self.settings.max_new_tokens, batch_size, firsts)
            first_logprobs = self._fill_shared_first_tokens(images, pending, prompts, current, firsts,
                                                            first_logprobs, batch_size)
            still = []
            for i, text, logprobs in zip(pending, texts, first_logprobs):
                answer, question = answers[i], current[i]
                answer.question, answer.raw = question, answer.raw + [text]
                if logprobs is not None:
                    answer.option_logprobs = np.asarray(logprobs).tolist()
                    answer.option_probs = softmax(np.asarray(logprobs)).tolist()
                parsed = parse_answer(text, question.letters, question.names)
                if parsed is None:
                    still.append(i)
                else:
                    answer.choice = question.shown[parsed]
            pending = still
            if not pending:
                break
            for i in pending:  # re-ask with the same classes in a new, seeded order
                current[i] = _reshuffled(current[i], keys[i], attempt + 1)
        return answers

    def _fill_shared_first_tokens(self, images, pending, prompts, questions, firsts, logprobs, batch_size):
        """Return ``logprobs`` with the rows whose options share a first token scored in full instead.

        The first generated step tells options apart only when their first tokens differ (an answer
        prefix that tokenizes alone, " A" -> " ", "A", makes them all start alike); those rows get the
        whole answer's log-likelihood from ``score_options``, so every answer carries probabilities.
        """
        shared = [row for row, ids in enumerate(firsts) if ids is None]
        if not shared:
            return logprobs
        scores = score_options(self.vlm, [images[pending[row]] for row in shared], [prompts[row] for row in shared],
                               [self._answers(questions[pending[row]]) for row in shared], batch_size)
        logprobs = list(logprobs)
        for row, score in zip(shared, scores):
            logprobs[row] = score
        return logprobs

    # -- ordinary labels --------------------------------------------------------------------------

    def ordinary(self, images: Sequence, class_names: Sequence[str], keys: Sequence[str] | None = None,
                 rounds: int = 1, long_label: bool = True, method: str | None = None,
                 batch_size: int | None = None) -> list[list[Answer]]:
        """Return ``rounds`` Answers per image, each choosing one of all K classes.

        Round 0 lists the classes in class order; later rounds in a seeded per-image order (so
        rounds are not mere repeats). Raises ShortNameCollision when short names merge classes.
        """
        names = display_names(list(class_names), long_label)
        keys = list(keys) if keys is not None else [str(i) for i in range(len(images))]
        per_image: list[list[Answer]] = [[] for _ in images]
        for round_index in range(rounds):
            questions = [make_question("ordinary", _ordinary_order(len(names), key, round_index), names)
                         for key in keys]
            round_keys = [f"{key}#r{round_index}" for key in keys]
            for slot, answer in zip(per_image, self.ask(images, questions, method, round_keys, batch_size)):
                slot.append(answer)
        return per_image

    def classify(self, images: Sequence, class_names: Sequence[str], long_label: bool = True,
                 method: str | None = None, batch_size: int | None = None) -> np.ndarray:
        """Return (N, K) class probabilities, rows summing to 1 (float64).

        With method ``score`` these are the softmax of the options' log-likelihoods. With
        ``generate`` a parsed answer gives a one-hot row and an unparseable one a row of NaN.
        """
        answers = [rounds[0] for rounds in self.ordinary(images, class_names, rounds=1, long_label=long_label,
                                                           method=method, batch_size=batch_size)]
        return answers_to_class_probs(answers, len(class_names))

    # -- complementary labels -------------------------------------------------------------------

    def complementary(self, images: Sequence, class_names: Sequence[str], keys: Sequence[str] | None = None,
                      sampler: CandidateSampler | None = None, long_label: bool = True,
                      method: str | None = None, batch_size: int | None = None,
                      previous: Sequence[Sequence[int]] | None = None) -> list[list[Answer]]:
        """Return ``sampler.rounds`` Answers per image, each choosing the candidate the image does NOT show.

        Without ``sampler`` one is built from ``settings.complementary`` for these images. Rounds run
        one after another over the whole batch so that distinctness and quotas see earlier rounds.
        """
        names = display_names(list(class_names), long_label)
        keys = list(keys) if keys is not None else [str(i) for i in range(len(images))]
        if sampler is None:
            cfg = self.settings.complementary
            sampler = CandidateSampler(len(names), cfg.num_options, cfg.rounds, len(images), cfg.distinct,
                                       cfg.balance, cfg.quota_floor, cfg.seed)
        chosen = [list(p) for p in previous] if previous is not None else [[] for _ in images]
        per_image: list[list[Answer]] = [[] for _ in images]
        for round_index in range(sampler.rounds):
            questions = [make_question("complementary", sampler.candidates(key, round_index, chosen[i]), names)
                         for i, key in enumerate(keys)]
            round_keys = [f"{key}#r{round_index}" for key in keys]
            for i, answer in enumerate(self.ask(images, questions, method, round_keys, batch_size)):
                per_image[i].append(answer)
                sampler.record(answer.choice)
                if answer.choice is not None:
                    chosen[i].append(answer.choice)
        return per_image


def _ordinary_order(num_classes: int, key: str, round_index: int) -> list[int]:
    if round_index == 0:
        return list(range(num_classes))
    return [int(c) for c in np.random.default_rng([stable_key(key), round_index]).permutation(num_classes)]


def _reshuffled(question: Question, key: str, attempt: int) -> Question:
    rng = np.random.default_rng([stable_key(key), 7919, attempt])
    order = rng.permutation(len(question.shown))
    return Question(question.mode, tuple(question.shown[i] for i in order), tuple(question.names[i] for i in order))


def answers_to_class_probs(answers: Sequence[Answer], num_classes: int) -> np.ndarray:
    """Return (N, K) probabilities from ordinary Answers (see ``VLMLabeler.classify``)."""
    probs = np.zeros((len(answers), num_classes))
    for row, answer in zip(probs, answers):
        if answer.method == "score" and answer.option_probs is not None:
            row[list(answer.question.shown)] = answer.option_probs
        elif answer.choice is not None:
            row[answer.choice] = 1.0
        else:
            row[:] = np.nan
    return probs


_SHARED: dict[tuple, VLMLabeler] = {}
_SHARED_LOCK = threading.Lock()


def shared_labeler(model: str | None = None, device: str = "auto", dtype: str = "auto",
                   config: str | None = None) -> VLMLabeler:
    """Return the process-wide VLMLabeler for (model, device, dtype, config), loading it on first use.

    Thread-safe: concurrent first calls load once. Raises VLMLoadError / SettingsError like
    ``VLMLabeler.from_pretrained`` and ``load_settings``. Calls into one labeler are not meant to
    run concurrently; serialise them (one model, one forward pass at a time).
    """
    key = (model, device, dtype, config)
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = VLMLabeler.from_pretrained(model, load_settings(config), device=device, dtype=dtype)
        return _SHARED[key]
