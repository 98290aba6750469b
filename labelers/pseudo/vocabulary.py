"""Names of boxes: synonym merging (one object, one name) and mapping open-vocabulary names onto a
project's label set, by exact match, a synonym list, or text-embedding similarity when a text encoder
is given. A name that maps to nothing is counted and reported, never silently kept or dropped.

The synonym list is ``{name: [synonym, ...]}`` (configs/pseudo_synonyms.yaml by default). A text
encoder is anything with ``encode_texts(texts) -> (n, d) unit-norm array`` (labelers.embedders'
open_clip embedder has one).
"""
from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from configs import read_mapping

UNMAPPED_ACTIONS = ("drop", "keep")


class VocabularyError(ValueError):
    """A synonym list is malformed or contradicts itself; the message names the file and the name."""


class TextEncoder(Protocol):
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        ...


def normalise_name(name: str) -> str:
    """Return ``name`` lower-cased with single spaces (the form every comparison here uses)."""
    return " ".join(str(name).lower().replace("_", " ").split())


def _add(table: dict[str, str], synonym: str, canonical: str, source: str) -> None:
    synonym, canonical = normalise_name(synonym), normalise_name(canonical)
    if table.get(synonym, canonical) != canonical:
        raise VocabularyError(f"{source}: {synonym!r} is a synonym of both {table[synonym]!r} and {canonical!r}")
    if synonym != canonical:
        table[synonym] = canonical


def parse_synonyms(data: dict, source: str = "synonyms") -> dict[str, str]:
    """Return ``{synonym: canonical name}`` from ``{canonical: [synonyms]}``; VocabularyError when a value
    is not a list of strings or one synonym names two canonical names."""
    table: dict[str, str] = {}
    for canonical, synonyms in data.items():
        if isinstance(synonyms, str):
            synonyms = [synonyms]
        if not isinstance(synonyms, list) or not all(isinstance(s, str) for s in synonyms):
            raise VocabularyError(f"{source}: the synonyms of {canonical!r} must be a list of names")
        for synonym in synonyms:
            _add(table, synonym, str(canonical), source)
    return table


def load_synonyms(spec: str | Path | None = None, default: bool = True) -> dict[str, str]:
    """Return ``{synonym: canonical}``: the packaged list (unless ``default`` is False) updated with ``spec``,
    a YAML file of the same shape or pairs "puppy=dog,kitty=cat". Raises VocabularyError naming the
    source for a malformed entry or a contradiction."""
    table: dict[str, str] = {}
    if default:
        text = resources.files("configs").joinpath("pseudo_synonyms.yaml").read_text(encoding="utf-8")
        table.update(parse_synonyms(read_mapping(text, "configs/pseudo_synonyms.yaml", VocabularyError),
                                    "configs/pseudo_synonyms.yaml"))
    if spec is None:
        return table
    if Path(spec).is_file():
        extra = parse_synonyms(read_mapping(Path(spec).read_text(encoding="utf-8"), str(spec), VocabularyError),
                               str(spec))
    else:
        extra = {}
        for pair in str(spec).split(","):
            if pair.strip():
                if pair.count("=") != 1:
                    raise VocabularyError(f"--synonyms: {pair.strip()!r} is not synonym=name (nor a file)")
                synonym, canonical = pair.split("=")
                _add(extra, synonym, canonical, "--synonyms")
    table.update(extra)  # the user's list wins over the packaged one
    return table


@dataclass(frozen=True)
class NameMatch:
    """Where a name went: ``label`` (None when unmapped), ``how`` (exact, synonym, embedding or None),
    and the cosine ``similarity`` for an embedding match."""
    label: str | None
    how: str | None
    similarity: float | None = None


class NameMapper:
    """Maps names onto ``labels`` (sklearn-like: settings in the constructor, ``map`` is pure).

    Order: exact (after lower-casing), then the synonym list (both the name and each label are turned
    into their canonical names, so "puppy" finds a label "dog" and "dog" finds a label "puppy"), then,
    with ``encoder``, the most similar label when its cosine similarity is >= ``min_similarity``.
    """

    def __init__(self, labels: Sequence[str], synonyms: dict[str, str] | None = None,
                 encoder: TextEncoder | None = None, min_similarity: float = 0.8):
        if not labels:
            raise VocabularyError("a label set to map onto needs at least one label")
        self.labels = list(labels)
        self.synonyms = dict(synonyms or {})
        self.encoder, self.min_similarity = encoder, float(min_similarity)
        self._exact = {normalise_name(label): label for label in self.labels}
        self._canonical: dict[str, str] = {}
        for label in self.labels:
            self._canonical.setdefault(self.canonical(label), label)
        self._label_vectors = None

    def canonical(self, name: str) -> str:
        """Return the synonym list's canonical form of ``name`` (itself when it is not listed)."""
        name = normalise_name(name)
        return self.synonyms.get(name, name)

    def map(self, name: str) -> NameMatch:
        """Return the NameMatch of ``name``."""
        key = normalise_name(name)
        if key in self._exact:
            return NameMatch(self._exact[key], "exact")
        if self.canonical(key) in self._canonical:
            return NameMatch(self._canonical[self.canonical(key)], "synonym")
        if self.encoder is None:
            return NameMatch(None, None)
        if self._label_vectors is None:
            self._label_vectors = np.asarray(self.encoder.encode_texts([normalise_name(x) for x in self.labels]),
                                             dtype=np.float64)
        vector = np.asarray(self.encoder.encode_texts([key]), dtype=np.float64)[0]
        similarity = self._label_vectors @ vector
        best = int(np.argmax(similarity))
        if similarity[best] >= self.min_similarity:
            return NameMatch(self.labels[best], "embedding", float(similarity[best]))
        return NameMatch(None, None, float(similarity[best]))


@dataclass
class MappingReport:
    """Counts of one mapping pass: boxes per way of matching, unmapped boxes per name, what was done."""
    matched: Counter = field(default_factory=Counter)
    unmapped: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)   # name -> its label, for names that changed
    action: str = "drop"

    def as_dict(self) -> dict:
        return {"matched": dict(self.matched), "unmapped": dict(self.unmapped.most_common()),
                "unmapped_boxes": sum(self.unmapped.values()), "renamed": self.examples, "unmapped_action": self.action}

    def summary(self) -> str:
        """Return one line for the terminal: how many boxes matched how, and the unmapped names."""
        matched = ", ".join(f"{how} {n}" for how, n in sorted(self.matched.items())) or "none"
        line = f"name mapping: {matched}"
        if self.unmapped:
            top = ", ".join(f"{name!r} {n}" for name, n in self.unmapped.most_common(10))
            verb = "left out of the outputs" if self.action == "drop" else "kept under their own names"
            line += f"; {sum(self.unmapped.values())} boxes with {len(self.unmapped)} unmapped names ({top}) {verb}"
        return line


def map_records(records: Sequence[dict], mapper: NameMapper, unmapped: str = "drop") -> tuple[list[dict], MappingReport]:
    """Return (records with every box's ``category`` set to its label, the report).

    A renamed box keeps its model-given name in ``open_name``. An unmapped box is counted per name and,
    with ``unmapped="drop"``, moved to the record's ``unmapped`` list (still on disk, out of the
    outputs); with ``"keep"`` it stays under its own name. Inputs are not modified.
    """
    if unmapped not in UNMAPPED_ACTIONS:
        raise ValueError(f"unmapped must be one of {UNMAPPED_ACTIONS}, got {unmapped!r}")
    report = MappingReport(action=unmapped)
    out = copy.deepcopy(list(records))
    cache: dict[str, NameMatch] = {}
    for record in out:
        kept = []
        for box in record.get("boxes", []):
            name = box["category"]
            match = cache.setdefault(name, mapper.map(name))
            if match.label is None:
                report.unmapped[name] += 1
                if unmapped == "drop":
                    record.setdefault("unmapped", []).append(box)
                    continue
            else:
                report.matched[match.how] += 1
                if match.label != name:
                    box["open_name"], box["category"] = name, match.label
                    report.examples[name] = match.label
            kept.append(box)
        record["boxes"] = kept
    return out, report


def merge_synonyms(records: Sequence[dict], synonyms: dict[str, str]) -> tuple[list[dict], Counter]:
    """Return (records with every box renamed to its canonical name, renamed boxes per (old, new) name).

    For open vocabulary without a label set: "puppy" and "dog" become one category, and the
    cross-category NMS after it keeps one box per object. The old name stays in ``open_name``.
    """
    out = copy.deepcopy(list(records))
    renamed: Counter = Counter()
    for record in out:
        for box in record.get("boxes", []):
            name = normalise_name(box["category"])
            canonical = synonyms.get(name, name)
            if canonical != box["category"]:
                box.setdefault("open_name", box["category"])
                renamed[(box["category"], canonical)] += 1
                box["category"] = canonical
    return out, renamed
