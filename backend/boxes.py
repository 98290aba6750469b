"""Box pre-annotations for a project whose label config has `<RectangleLabels>` on an `<Image>`.

The pseudo-label pipeline (labelers.pseudo) per task image: region proposals (SAM when the operator configured
it and its weights are on disk, else the classical Felzenszwalb proposer, said in /health and once in the log),
CoT-PL's mask filters, then a label per box:
- `predictor: vlm`: the VLM's three chained questions over the visual prompt (clear object? which of the
  project's labels? foreground?), answered by option scoring; background boxes are dropped;
- else the project's embedder on the box crop and the head's zero-shot / ImageNet prior over the labels
  (a label the prior has no evidence for is never emitted).
A box's score is the label probability x the proposal's score; boxes overlapping by more than `cross_nms`
keep the best one (one object, one label), at most `max_boxes` per image. Results are Label Studio
`rectanglelabels` regions in percent (labelers.pseudo.label_studio.record_to_prediction). Every emitted label
is one of the control's values: a model answer that maps onto none of them is dropped and counted.

Box projects are not retrained (a head on whole images is not a detector): annotations are stored and
compared with the boxes we suggested (backend.acceptance), nothing else.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from backend.acceptance import boxes_suggestion
from backend.embedding import fetch_deadline
from backend.labels import ImageClassification, LabelConfigError, _image_of, _split_names, _truthy, \
    label_interface, parse_label_config, settings_from_params
from backend.loading import LoadOncePool

log = logging.getLogger(__name__)

PARAM = "boxes"
CLASSICAL = "felzenszwalb"


@dataclass(frozen=True)
class BoxTarget:
    """The `<RectangleLabels>` control served: where boxes go and which labels they may carry."""

    from_name: str
    to_name: str
    data_key: str
    labels: tuple[str, ...]
    model_names: tuple[tuple[str, ...], ...]   # per label: the names the model knows it by (predicted_values)
    score_threshold: float | None

    @property
    def classes(self) -> ImageClassification:
        """The labels as a single-choice classification target (what heads and the VLM rules are given)."""
        return ImageClassification(from_name=self.from_name, to_name=self.to_name, data_key=self.data_key,
                                   kind="choices", labels=self.labels, multiple=False,
                                   score_threshold=self.score_threshold, model_names=self.model_names)

    def label_for(self, name: str | None) -> str | None:
        """Return the control value a model's answer `name` means: a value, one of a value's
        predicted_values, or either case-insensitively; None when it maps onto none (never emitted)."""
        if not name:
            return None
        for exact in (True, False):
            for label, names in zip(self.labels, self.model_names):
                for candidate in (label, *names):
                    if candidate == name if exact else candidate.lower() == name.strip().lower():
                        return label
        return None


def box_target(xml: str | None, extra: dict[str, Any] | None = None) -> BoxTarget | None:
    """Return the RectangleLabels control to pre-annotate, or None when the project is not a box project.

    A config is a box project when it has `<RectangleLabels>` on an `<Image>` (without model_skip) and either
    no servable classification control or extra_params "boxes". Raises LabelConfigError for an unreadable
    config or a RectangleLabels control without labels."""
    interface = label_interface(xml)
    images = {obj.name: obj for obj in interface.objects if obj.tag == "Image" and obj.name}
    control = next((c for c in interface.controls if c.tag == "RectangleLabels" and _image_of(c) in images
                    and not _truthy(c.attr.get("model_skip", "false"))), None)
    if control is None:
        return None
    if PARAM not in (extra or {}):
        try:
            parse_label_config(xml)
            return None  # a classification project that also has boxes: classified unless asked for boxes
        except LabelConfigError:
            pass
    image = images[_image_of(control)]
    value = image.value or ""
    if not value.startswith("$") or len(value) < 2:
        raise LabelConfigError(f"<Image name={image.name!r}> must read a task field, e.g. value=\"$image\"")
    labels = [label for label in control.labels or [] if label]
    if not labels:
        raise LabelConfigError(f"<RectangleLabels name={control.name!r}> lists no <Label value=...>")
    attrs = control.labels_attrs or {}
    names = [_split_names(attrs[label].attr.get("predicted_values") if label in attrs else None) or (label,)
             for label in labels]
    threshold = control.attr.get("model_score_threshold")
    try:
        threshold = float(threshold) if threshold not in (None, "") else None
    except ValueError:
        raise LabelConfigError(f"model_score_threshold={threshold!r} on {control.name!r} is not a number") from None
    return BoxTarget(control.name, image.name, value[1:], tuple(labels), tuple(names), threshold)


@dataclass(frozen=True)
class BoxSettings:
    """extra_params {"boxes": {...}}: proposer, filters and how many boxes to emit."""

    proposer: str | None = None        # sam | felzenszwalb; None: the operator's (LABELLOOP_PSEUDO_CONFIG)
    min_score: float | None = None     # proposal score cut (CoT-PL 0.7); None: the pseudo config's
    mask_nms_iou: float | None = None  # mask NMS (CoT-PL 0.8)
    fallback_top_k: int | None = None  # proposals kept when none survive (CoT-PL 3)
    min_box_fraction: float = 0.01     # a box must cover this share of the image (CoT-PL's 10 000 px at COCO size)
    max_side: int = 320                # proposals are made on the image shrunk to this longest side (speed)
    max_boxes: int = 10                # per image, best scores first
    min_label_score: float | None = None  # drop boxes scored below it; None: model_score_threshold, else 0
    cross_nms: float = 0.7             # boxes of any labels overlapping by more IoU: the best one is kept


def box_settings(extra: dict[str, Any] | None) -> BoxSettings:
    """Return the project's box settings (defaults when extra_params has no "boxes"); raises LabelConfigError
    naming the key for unknown keys or unusable values."""
    raw = (extra or {}).get(PARAM)
    if raw in (None, True):
        raw = {}
    if not isinstance(raw, dict):
        raise LabelConfigError(f"extra_params {PARAM} must be an object such as {{\"max_boxes\": 5}}, got {raw!r}")
    settings = settings_from_params(BoxSettings, raw, PARAM)
    if settings.proposer not in (None, "sam", CLASSICAL):
        raise LabelConfigError(f"extra_params {PARAM} proposer must be sam or {CLASSICAL}, got {settings.proposer!r}")
    checks = (("min_score", 0.0, 1.0), ("mask_nms_iou", 0.0, 1.0), ("min_box_fraction", 0.0, 1.0),
              ("min_label_score", 0.0, 1.0), ("cross_nms", 0.0, 1.0))
    for name, low, high in checks:
        value = getattr(settings, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not low <= value <= high):
            raise LabelConfigError(f"extra_params {PARAM} {name} must be a number in [{low}, {high}], got {value!r}")
    for name, low in (("fallback_top_k", 0), ("max_side", 32), ("max_boxes", 1)):
        value = getattr(settings, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise LabelConfigError(f"extra_params {PARAM} {name} must be a whole number >= {low}, got {value!r}")
    return settings


def pipeline_settings(config: str | None, settings: BoxSettings):
    """Return labelers.pseudo PseudoSettings: configs/pseudo.yaml, the operator's `config` file, then the
    project's overrides. Raises LabelConfigError naming the file or key when they are unusable."""
    from labelers.pseudo.settings import PseudoSettingsError, load_pseudo_settings

    overrides: dict[str, Any] = {"filters": {k: v for k, v in (("min_score", settings.min_score),
                                                              ("mask_nms_iou", settings.mask_nms_iou),
                                                              ("fallback_top_k", settings.fallback_top_k))
                                             if v is not None}}
    if settings.proposer:
        overrides["proposer"] = settings.proposer
    try:
        return load_pseudo_settings(config, overrides)
    except (PseudoSettingsError, OSError) as exc:
        raise LabelConfigError(f"box pre-annotations: {exc}") from None


def box_version(prefix: str, target: BoxTarget, settings: BoxSettings, pipeline, labeler: str) -> str:
    """Return "<prefix>-boxes-<6 hex>": new whenever the labels, the box settings, the pipeline settings or
    what labels the boxes (`labeler`: the head or the VLM and its questions) change."""
    what = [asdict(target), asdict(settings), asdict(pipeline), labeler]
    digest = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:6]
    return f"{prefix}-boxes-{digest}"


def sam_weights_missing(model: str) -> str | None:
    """Return why SAM `model` (a local folder or a hub name) has no weights here, or None when it has some.
    Never downloads: a hub name counts only when it is already in the Hugging Face cache."""
    path = Path(model).expanduser()
    if path.is_dir():
        return None if (path / "config.json").is_file() else f"{path} holds no config.json"
    if path.is_absolute() or model.startswith("."):
        return f"{path} does not exist"
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "config.json")
    except Exception as exc:  # an invalid repo id, for one
        return f"{model!r} is not a local folder nor a usable hub name ({exc})"
    return None if isinstance(cached, str) else f"{model!r} is not in the Hugging Face cache (never downloaded here)"


class ProposerPool(LoadOncePool):
    """SAM proposers loaded once per process (by model); the classical one is built per request (no weights)."""

    kind = "SAM"

    def __init__(self, device: str = "auto", loader=None):
        super().__init__(loader, capacity=1)
        self.device = device  # as LABELLOOP_VLM_DEVICE: auto prefers cuda, then mps, then cpu
        self.fallbacks: dict[str, str] = {}  # SAM model -> why the classical proposer stood in
        self.compute_lock = threading.Lock()

    def _load(self, spec: str):
        from labelers.pseudo.proposals import SamProposer
        from labelers.pseudo.settings import SamSettings

        from labelers.vlm.loading import pick_device

        return SamProposer(SamSettings(**json.loads(spec)), device=str(pick_device(self.device)))

    def proposer(self, pipeline):
        """Return (proposer, name) for `pipeline` (PseudoSettings): SAM when asked for and loadable, else
        Felzenszwalb, with the reason logged loudly (once per model) and kept for /health."""
        from labelers.pseudo.proposals import FelzenszwalbProposer

        if pipeline.proposer == "sam":
            model = pipeline.sam.model
            reason = sam_weights_missing(model)
            if reason is None:
                try:
                    return self.get(json.dumps(asdict(pipeline.sam), sort_keys=True)), "sam"
                except Exception as exc:
                    reason = f"SAM {model!r} failed to load ({type(exc).__name__}: {exc})"
            if self.fallbacks.get(model) != reason:
                log.warning("BOX PROPOSALS: SAM %s is not available (%s); using the classical %s proposer "
                            "instead (boxes follow colour segments, every proposal scores 1.0)", model, reason,
                            CLASSICAL)
            self.fallbacks[model] = reason
        return FelzenszwalbProposer(pipeline.felzenszwalb), CLASSICAL

    def status(self) -> dict[str, Any]:
        """What /health says: loaded SAM models and, per SAM model, why the classical proposer stands in."""
        return {"sam_loaded": [json.loads(s)["model"] for s in self.loaded_specs()],
                "fallback_to_classical": dict(self.fallbacks)}


def _shrunk(image, max_side: int):
    """Return (image no longer than `max_side` on its long side, factor from its pixels to the original's)."""
    factor = max(image.size) / max_side
    if factor <= 1:
        return image, 1.0
    size = (max(1, round(image.width / factor)), max(1, round(image.height / factor)))
    return image.resize(size), image.width / size[0]


def propose_boxes(image, proposer, pipeline, settings: BoxSettings) -> list:
    """Return the filtered proposals of one image (labelers.pseudo.filters), as (mask on the shrunk image,
    proposal score, box (x0, y0, x1, y1) in original pixels, shrunk image)."""
    from labelers.pseudo.filters import drop_small_boxes, filter_proposals
    from labelers.pseudo.proposals import mask_box

    small, factor = _shrunk(image, settings.max_side)
    min_area = settings.min_box_fraction * small.width * small.height
    filters = replace(pipeline.filters, min_box_area=min_area)
    found = drop_small_boxes(proposer.propose([small])[0], min_area)  # cheap first: NMS is quadratic
    out = []
    for proposal in filter_proposals(found, filters):
        x0, y0, x1, y1 = mask_box(proposal.mask)
        box = (min(image.width, round(x0 * factor)), min(image.height, round(y0 * factor)),
               min(image.width, round(x1 * factor)), min(image.height, round(y1 * factor)))
        if box[2] > box[0] and box[3] > box[1]:
            # a random or untrained SAM can predict an IoU below 0: a score is a probability here
            out.append((proposal.mask, min(1.0, max(0.0, float(proposal.score))), box, small))
    return out


@dataclass
class LabeledBox:
    box: tuple[int, int, int, int]   # x0, y0, x1, y1 in original pixels
    label: str
    score: float


def head_labels(proposals: list, image, target: BoxTarget, embed, proba, evident: set[str] | None,
                counts: dict[str, int]) -> list[LabeledBox]:
    """Label each proposal from its crop: `embed(crops) -> (N, D)`, `proba(features) -> (N, K)`. A label the
    head has no evidence for (`evident`, backend.heads.evidence) is dropped and counted."""
    if not proposals:
        return []
    crops = [image.crop(box) for _, _, box, _ in proposals]
    probs = proba(embed(crops))
    out = []
    for (_, score, box, _), row in zip(proposals, probs):
        k = int(np.argmax(row))
        label = target.labels[k]
        if evident is not None and label not in evident:
            counts["boxes_without_evidence"] += 1
            continue
        out.append(LabeledBox(box, label, float(row[k]) * score))
    return out


def vlm_labels(proposals: list, target: BoxTarget, labeler, pipeline, counts: dict[str, int]) -> list[LabeledBox]:
    """Label each proposal by the VLM's question chain over its visual prompt; background, no-object and
    unmappable answers are dropped (the last counted)."""
    from backend.vlm import vlm_class_names
    from labelers.pseudo.questions import ask_chain
    from labelers.pseudo.visual_prompt import render_visual_prompt

    if not proposals:
        return []
    names = vlm_class_names(target.classes)
    prompts = [render_visual_prompt(small, mask, pipeline.visual_prompt) for mask, _, _, small in proposals]
    prefix = labeler.settings.prefix_for(labeler.vlm.model_type)
    answers = ask_chain(labeler.vlm, prompts, names, pipeline.questions, prefix)
    out = []
    for (_, score, box, _), answer in zip(proposals, answers):
        if answer.category is None or not answer.foreground:
            continue
        label = target.label_for(answer.category)
        if label is None:
            counts["boxes_unmapped"] += 1
            log.warning("box label %r maps onto none of %s; box dropped", answer.category, list(target.labels))
            continue
        out.append(LabeledBox(box, label, answer.score * score))
    return out


def to_prediction(boxes: list[LabeledBox], image, target: BoxTarget, settings: BoxSettings, version: str) -> dict:
    """Return the Label Studio prediction {result, score, model_version} of one image's labeled boxes after
    the score cut, cross-label NMS and the max_boxes cap."""
    from labelers.pseudo.label_studio import record_to_prediction
    from labelers.pseudo.postprocess import cross_category_nms

    floor = settings.min_label_score if settings.min_label_score is not None else (target.score_threshold or 0.0)
    record = {"width": image.width, "height": image.height, "boxes": [
        {"bbox": [b.box[0], b.box[1], b.box[2] - b.box[0], b.box[3] - b.box[1]], "category": b.label,
         "foreground": True, "score": round(b.score, 6)} for b in boxes if b.score >= floor]}
    record = cross_category_nms([record], settings.cross_nms)[0]
    record["boxes"] = sorted(record["boxes"], key=lambda b: -b["score"])[:settings.max_boxes]
    return record_to_prediction(record, from_name=target.from_name, to_name=target.to_name, model_version=version)


class BoxPredictor:
    """Serves box pre-annotations; the embedder, the VLM and SAM come from the process's load-once pools."""

    def __init__(self, embeddings, heads, cache, fetcher, vlms, proposers: ProposerPool, ledger,
                 pseudo_config: str | None = None, fetch_timeout: float = 20.0):
        self.embeddings, self.heads, self.cache, self.fetcher = embeddings, heads, cache, fetcher
        self.vlms, self.proposers, self.ledger = vlms, proposers, ledger
        self.pseudo_config, self.fetch_timeout = pseudo_config, fetch_timeout

    def predict(self, project, version, served: str, tasks: list[dict[str, Any]], target: BoxTarget,
                settings: BoxSettings, choice, budget: float | None = None):
        """Return (one item per task, counts, errors by row). `project` is a store.Project, `version` the
        store.Version of its head, `served` the version the predictions carry and `choice` the project's
        PredictorChoice. Raises VLMUnavailable / EmbedderUnavailable when the model cannot be loaded."""
        from collections import Counter

        from backend.heads import evidence, label_probabilities
        from backend.schemas import PredictionValue
        from backend.task_images import load_task_images
        from labelers.relabel.region_features import embed_crops

        pipeline = pipeline_settings(self.pseudo_config, settings)
        proposer, proposer_name = self.proposers.proposer(pipeline)
        counts: Counter = Counter()
        if choice.predictor == "vlm":
            labeler = self.vlms.get(choice.model)
            lock = self.vlms.compute_locks.get(choice.model) or threading.Lock()

            def label(proposals, image):
                with lock:
                    return vlm_labels(proposals, target, labeler, pipeline, counts)
        else:
            embedder = self.embeddings.embedder(project)
            head = self.heads.get(project.id, version, target.classes, embedder)
            evident = evidence(head)
            lock = self.embeddings.embedders.compute_locks.get(embedder.id) or threading.Lock()

            def embed(crops):
                with lock:
                    return embed_crops(embedder, self.cache, crops, [f"box {j}" for j in range(len(crops))])

            def label(proposals, image):
                return head_labels(proposals, image, target, embed,
                                   lambda f: label_probabilities(head, target.classes, f), evident, counts)

        # as the VLM path: no image is started after the deadline, so Label Studio gets an answer in time
        deadline = None if budget is None else fetch_deadline(self.fetcher.clock(), budget, self.fetch_timeout)
        got = load_task_images(self.fetcher, tasks, target.data_key, budget, self.fetch_timeout)
        items: list[Any] = [PredictionValue(result=[], score=None, model_version=served) for _ in tasks]
        remembered = {}
        for i in sorted(got.images):
            if deadline is not None and self.fetcher.clock() >= deadline:
                got.not_reached.append(i)
                continue
            image = got.images[i]
            with self.proposers.compute_lock:
                proposals = propose_boxes(image, proposer, pipeline, settings)
            prediction = to_prediction(label(proposals, image), image, target, settings, served)
            items[i] = PredictionValue(result=prediction["result"], score=round(prediction["score"], 6),
                                       model_version=served)
            counts["boxes"] += len(prediction["result"])
            if got.ids[i] is not None:
                remembered[got.ids[i]] = boxes_suggestion(target.from_name, prediction["result"], served)
        self.ledger.remember(project.id, remembered)
        for i in got.not_reached:
            items[i] = []
        counts.update(tasks_predicted=len(got.images) - len(set(got.not_reached) & set(got.images)),
                      tasks_failed=len(got.errors),
                      tasks_not_predicted=len(got.not_reached), images_fetched=got.fetched)
        counts[f"box_proposer_{proposer_name}"] += counts["tasks_predicted"]
        return items, dict(counts), got.errors
