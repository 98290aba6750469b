"""A zero-shot prior without CLIP: a project's label names mapped onto EfficientNet-Lite0's ImageNet classes.

The packaged EfficientNet-Lite0 ends in an ImageNet-1k classifier, and each ImageNet class is a WordNet 3.0
noun synset (its wnid, e.g. n02085620 = Chihuahua). A label name maps to every ImageNet class whose synset
is one of the label's noun senses or a hyponym of one: "dog" -> the 118 breeds under dog.n.01, "cat" -> the
domestic cats and wildcats under cat.n.01 and the big cats under big_cat.n.01 (its second sense). A class
under two labels goes to the more specific one ("dog" rather than "animal"); under two unrelated labels (a
minivan is both a car and a van) it is split evenly.
A label may also be written as a synset name ("plant.n.02") or a wnid ("n00017222") to pick one sense.
The classifier's probabilities summed per label are the prior (`labelers.priors`); labels without any
class keep the uniform share of what is left.

WordNet comes from the Debian package `wordnet-base` (/usr/share/wordnet, `make setup` installs it), read
with nltk's WordNet reader; the 1000 wnids in classifier order are `labelers/data/imagenet1k_wnids.txt`.
"""
from __future__ import annotations

import functools
import io
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .priors import ClassifierPrior

log = logging.getLogger(__name__)

WORDNET_DIR = Path("/usr/share/wordnet")
WNIDS_FILE = Path(__file__).with_name("data") / "imagenet1k_wnids.txt"
# Typical L2 norm of EfficientNet-Lite0's mean-pooled features: 17.42 +- 1.32 on the 10k CIFAR-10 test images
# at 224 px (benchmarks/bench_zero_shot_prior.py). The embedder hands out unit vectors, the classifier saw raw ones.
FEATURE_SCALE = 17.4
# WordNet 3.0's lexicographer files (lexnames(5WN)): nltk's reader expects them in a `lexnames` file, which
# Debian's wordnet-base does not ship.
LEXNAMES = (
    "adj.all 3", "adj.pert 3", "adv.all 4", "noun.Tops 1", "noun.act 1", "noun.animal 1", "noun.artifact 1",
    "noun.attribute 1", "noun.body 1", "noun.cognition 1", "noun.communication 1", "noun.event 1",
    "noun.feeling 1", "noun.food 1", "noun.group 1", "noun.location 1", "noun.motive 1", "noun.object 1",
    "noun.person 1", "noun.phenomenon 1", "noun.plant 1", "noun.possession 1", "noun.process 1",
    "noun.quantity 1", "noun.relation 1", "noun.shape 1", "noun.state 1", "noun.substance 1", "noun.time 1",
    "verb.body 2", "verb.change 2", "verb.cognition 2", "verb.communication 2", "verb.competition 2",
    "verb.consumption 2", "verb.contact 2", "verb.creation 2", "verb.emotion 2", "verb.motion 2",
    "verb.perception 2", "verb.possession 2", "verb.social 2", "verb.stative 2", "verb.weather 2", "adj.ppl 3",
)


class WordNetMissing(RuntimeError):
    """The WordNet dictionary files are not installed."""


@functools.lru_cache(maxsize=2)
def open_wordnet(folder: str | Path = WORDNET_DIR):
    """Return nltk's WordNet reader on the Princeton dictionary files in `folder` (loaded once, about 2 s).

    Raises WordNetMissing naming the folder and the package to install.
    """
    folder = Path(folder)
    if not (folder / "data.noun").is_file() or not (folder / "index.noun").is_file():
        raise WordNetMissing(f"no WordNet dictionary in {folder} (data.noun, index.noun): "
                             "apt-get install wordnet-base (or run `make setup`)")
    import nltk.data
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class SystemWordNet(WordNetCorpusReader):
        """nltk's reader on Debian's files, which lack `lexnames`; and no mapping from nltk's own WordNet copy:
        these files are WordNet 3.0 itself (the mapping only serves the multilingual data we do not use)."""

        def open(self, fileid):
            if fileid == "lexnames" and not (folder / "lexnames").is_file():
                return io.StringIO("".join(f"{i:02d} {entry}\n" for i, entry in enumerate(LEXNAMES)))
            return super().open(fileid)

        def map_wn(self, version="wordnet"):
            return None

    if str(folder) not in map(str, nltk.data.path):
        nltk.data.path.append(str(folder))  # nltk only reads corpora under its data paths
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": we do not use them
        return SystemWordNet(str(folder), None)


@functools.lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """Return the 1000 ImageNet-1k wnids in classifier order (n01440764 tench ... n15075141 toilet tissue).

    From `labelers/data/imagenet1k_wnids.txt`: the standard sorted-wnid order every ImageNet-1k classifier
    (EfficientNet-Lite0's included) uses.
    """
    wnids = tuple(WNIDS_FILE.read_text().split())
    if len(wnids) != 1000 or not all(re.fullmatch(r"n\d{8}", w) for w in wnids):
        raise RuntimeError(f"{WNIDS_FILE} is damaged: expected 1000 wnids, found {len(wnids)}")
    return wnids


def imagenet_class_name(index: int, wordnet=None) -> str:
    """Return a readable name of ImageNet class `index`: its synset's first lemma ("Chihuahua", "airliner")."""
    wordnet = wordnet or open_wordnet()
    return wordnet.synset_from_pos_and_offset("n", int(imagenet_wnids()[index][1:])).lemma_names()[0].replace("_", " ")


def label_senses(name: str, wordnet) -> list:
    """Return the WordNet noun synsets a label name stands for: a synset name or wnid as given, else every
    noun sense of the words ("Fire truck", "fire-truck" -> fire_truck; plurals through WordNet's morphy)."""
    text = name.strip()
    if re.fullmatch(r"n\d{8}", text):
        return [wordnet.synset_from_pos_and_offset("n", int(text[1:]))]
    if re.fullmatch(r"[\w'.-]+\.n\.\d{2}", text):
        return [wordnet.synset(text)]
    lemma = re.sub(r"[\s-]+", "_", text.lower())
    return wordnet.synsets(lemma, pos="n") if lemma else []


@dataclass(frozen=True)
class LabelMapping:
    """How label names map onto ImageNet classes: A (K, 1000) and, per label, its classes' indices."""

    label_names: list[str]
    aggregation: np.ndarray
    classes: dict[str, list[int]]
    class_names: dict[int, str]  # readable names of the classes that belong to some label

    @property
    def matched(self) -> list[str]:
        """Labels that got at least one ImageNet class (so an informed prior)."""
        return [name for name in self.label_names if self.classes[name]]

    def describe(self, limit: int = 3) -> dict[str, str]:
        """Return {label: "n classes (first names ...)" or "no ImageNet class: uniform prior"} for logs and /health."""
        out = {}
        for label in self.label_names:
            idx = self.classes[label]
            shown = ", ".join(self.class_names[i] for i in idx[:limit]) + (", ..." if len(idx) > limit else "")
            out[label] = f"{len(idx)} ImageNet classes ({shown})" if idx else "no ImageNet class: uniform prior"
        return out


@functools.lru_cache(maxsize=None)
def _ancestors(synset) -> frozenset:
    """The synset and all its hypernyms, instance hypernyms included."""
    return frozenset(ancestor for ancestor, _ in synset.hypernym_distances())


def _most_specific(matched: dict[int, set]) -> list[int]:
    """Return the labels among `matched` ({label: its senses above a class}) that no other label refines:
    "animal" loses a beagle to "dog" (dog.n.01 lies under animal.n.01). Unrelated labels (a minivan under
    both "car" and "truck") all stay, and share the class."""
    def refines(theirs: set, mine: set) -> bool:
        return any(mine & (_ancestors(sense) - {sense}) for sense in theirs)

    return [k for k, mine in matched.items()
            if not any(j != k and refines(theirs, mine) for j, theirs in matched.items())]


def map_labels_to_imagenet(label_names: Sequence[str], wordnet_dir: str | Path = WORDNET_DIR,
                           model_names: Sequence[Sequence[str]] | None = None) -> LabelMapping:
    """Return the LabelMapping of `label_names` (see the module docstring). Raises WordNetMissing.

    `model_names[k]`: the words to look up for label k (synonyms, all senses pooled); default the label itself.
    """
    wordnet = open_wordnet(wordnet_dir)
    words = model_names if model_names is not None else [[name] for name in label_names]
    if len(words) != len(label_names):
        raise ValueError(f"{len(words)} model-name lists for {len(label_names)} labels")
    senses = [set().union(*(label_senses(word, wordnet) for word in group)) for group in words]
    aggregation = np.zeros((len(label_names), 1000), np.float32)
    for c, wnid in enumerate(imagenet_wnids()):
        ancestors = _ancestors(wordnet.synset_from_pos_and_offset("n", int(wnid[1:])))
        matched = {k: mine & ancestors for k, mine in enumerate(senses) if mine & ancestors}
        winners = _most_specific(matched)
        aggregation[winners, c] = 1.0 / len(winners) if winners else 0.0
    classes = {name: np.flatnonzero(row).tolist() for name, row in zip(label_names, aggregation)}
    names = {c: imagenet_class_name(c, wordnet) for c in np.flatnonzero(aggregation.any(axis=0))}
    return LabelMapping(list(label_names), aggregation, classes, names)


def imagenet_prior(label_names: Sequence[str], embedder, model_names: Sequence[Sequence[str]] | None = None,
                   wordnet_dir: str | Path = WORDNET_DIR, feature_scale: float | None = None) -> ClassifierPrior:
    """Return the zero-shot ClassifierPrior of `label_names` for an EfficientNet-Lite0 embedder.

    Feed it to `ClassifierHead.init_from_prior`. `model_names`: see `map_labels_to_imagenet`. Logs which
    labels got a prior; `prior.matched` lists them and `prior.details` says, per label, which classes.
    Raises ValueError for an embedder without the ImageNet classifier, WordNetMissing without WordNet.
    """
    fc = getattr(getattr(embedder, "model", None), "_fc", None)
    if fc is None or fc.out_features != 1000:
        raise ValueError(f"embedder {getattr(embedder, 'id', embedder)!r} has no ImageNet-1k classifier")
    mapping = map_labels_to_imagenet(label_names, wordnet_dir, model_names)
    described = mapping.describe()
    prior = ClassifierPrior(mapping.label_names, fc.weight.detach().float().cpu().numpy(),
                            fc.bias.detach().float().cpu().numpy(), mapping.aggregation,
                            FEATURE_SCALE if feature_scale is None else feature_scale,
                            source=f"imagenet-1k via wordnet ({embedder.id})", details=described)
    log.info("ImageNet prior for %d of %d labels: %s", len(mapping.matched), len(label_names),
             "; ".join(f"{k}: {v}" for k, v in described.items()))
    if not mapping.matched:
        log.warning("ImageNet prior: none of the labels %s names an ImageNet class; predictions start uniform",
                    list(label_names))
    return prior
