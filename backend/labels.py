"""Which part of a Label Studio label config the backend serves, and how its results are read and written.

Parsed with label-studio-sdk's `LabelInterface` (Taxonomy paths excepted, see `_taxonomy_leaves`), after
defusedxml has checked the XML (`read_xml`: no DTD, no entities).
Served: the first `<Choices>` (single or `choice="multiple"`) or `<Taxonomy>` control on an `<Image>`, unless it
carries `model_skip="true"`. Honoured attributes (as upstream): `predicted_values="a,b"` on a `<Choice>` gives
the names the model knows that label by (used for zero-shot prompts), `model_score_threshold` on the control
drops choices whose probability is below it.

Complementary labels: a `<Choices>` on the same image with `model_complementary="true"` receives the VLM's
complementary labels ("the image does NOT show ..."); it is never the served control, and it must list every
class of the served control. An explicit attribute, rather than "a second control with the same choices", so
that a config with two ordinary fields of the same classes (e.g. a reviewer's) is never filled with negatives.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import defusedxml
import defusedxml.ElementTree as SafeET

from labelers.formats.label_studio import TAXONOMY_SEPARATOR, labels_by_control


class LabelConfigError(ValueError):
    """The label config cannot be served; the message says what is missing and what would work."""


def settings_from_params(cls, raw: dict, param: str):
    """Return ``cls(**raw)`` for the dataclass ``cls`` of extra_params key ``param``; raises LabelConfigError
    naming the unknown keys (and the known ones) or the argument the dataclass refused."""
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise LabelConfigError(f"extra_params {param}: unknown key(s) {', '.join(unknown)}; "
                               f"known: {', '.join(sorted(known))}")
    try:
        return cls(**raw)
    except TypeError as exc:
        raise LabelConfigError(f"extra_params {param}: {exc}") from None


@dataclass(frozen=True)
class ImageClassification:
    """One classification control on one image object: what to read from tasks and what to emit."""

    from_name: str
    to_name: str
    data_key: str
    kind: str                               # "choices" | "taxonomy"
    labels: tuple[str, ...]                  # class names, in config order (taxonomy: leaf paths joined)
    multiple: bool
    score_threshold: float | None
    model_names: tuple[tuple[str, ...], ...]  # per label: names to prompt the model with
    paths: tuple[tuple[str, ...], ...] = ()  # taxonomy only: the path of each label
    complementary_from: str | None = None    # the model_complementary="true" <Choices>, if any
    complementary_multiple: bool = False

    def labels_in(self, result: list[dict[str, Any]] | None) -> list[str]:
        """Return the served labels chosen in an annotation `result` (unknown labels are dropped)."""
        return [n for n in labels_by_control(result).get(self.from_name, []) if n in self.labels]

    def region(self, labels: list[str]) -> dict[str, Any]:
        """Return the Label Studio result region choosing `labels`."""
        if self.kind == "choices":
            value: dict[str, Any] = {"choices": list(labels)}
        else:
            index = {label: path for label, path in zip(self.labels, self.paths)}
            value = {"taxonomy": [list(index[label]) for label in labels]}
        return {"from_name": self.from_name, "to_name": self.to_name, "type": self.kind, "value": value}

    def complementary_region(self, labels: list[str]) -> dict[str, Any]:
        """Return the result region putting complementary `labels` into the complementary control."""
        if self.complementary_from is None:
            raise LabelConfigError("the label config has no <Choices model_complementary=\"true\"> control")
        return {"from_name": self.complementary_from, "to_name": self.to_name, "type": "choices",
                "value": {"choices": list(labels)}}


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def _split_names(text: str | None) -> tuple[str, ...]:
    return tuple(n.strip() for n in (text or "").split(",") if n.strip())


def read_xml(xml: str | None) -> ET.Element:
    """Return the root element of a label config, parsed with defusedxml.

    Raises LabelConfigError for empty or invalid XML and for any DTD (<!DOCTYPE>, <!ENTITY>): a label config
    never needs one, and entities are how "billion laughs" and external-file configs attack a parser."""
    if not isinstance(xml, str) or not xml.strip():
        raise LabelConfigError("the label config is empty; labelloop needs <Choices> on an <Image>")
    try:
        return SafeET.fromstring(xml, forbid_dtd=True)
    except defusedxml.DefusedXmlException:
        raise LabelConfigError("the label config declares a DTD or entities (<!DOCTYPE ...>/<!ENTITY ...>), "
                               "which labelloop refuses; remove them (Label Studio configs never need one)") from None
    except ET.ParseError as exc:
        raise LabelConfigError(f"the label config is not valid XML ({exc})") from None


def label_interface(xml: str | None):
    """Return label-studio-sdk's LabelInterface for `xml`, after `read_xml` has found it safe to parse.

    One object per config text, shared by every caller of this process (read it, never change it): a
    /predict reads the project's config up to four times (target, boxes, the served version), ~0.5 ms each.
    Raises LabelConfigError when it cannot be read (see `read_xml`); a refused config is not remembered."""
    if not isinstance(xml, str):
        read_xml(xml)  # raises: the config is empty
    return _label_interface(xml)


@lru_cache(maxsize=64)
def _label_interface(xml: str):
    read_xml(xml)  # the SDK's lxml parser expands entities: never hand it a DTD
    from label_studio_sdk.label_interface import LabelInterface

    try:
        return LabelInterface(xml)
    except Exception as exc:  # the SDK raises its own XML syntax error class, and others for broken tags
        kind = "not valid XML" if "syntax" in type(exc).__name__.lower() else "unreadable"
        raise LabelConfigError(f"the label config is {kind} ({exc})") from None


def parse_label_config(xml: str | None) -> ImageClassification:
    """Return the image-classification control to serve in `xml`; raises LabelConfigError explaining why not."""
    interface = label_interface(xml)
    images = {obj.name: obj for obj in interface.objects if obj.tag == "Image" and obj.name}
    if not images:
        raise LabelConfigError("the label config has no <Image> object; labelloop classifies images")
    skipped = []
    for control in interface.controls:  # document order: the first servable control wins
        if control.tag not in ("Choices", "Taxonomy") or _image_of(control) not in images:
            continue
        if _truthy(control.attr.get("model_complementary", "false")):
            continue
        if _truthy(control.attr.get("model_skip", "false")):
            skipped.append(control.name)
            continue
        return _with_complementary(_build(control, images[_image_of(control)], xml), interface)
    hint = f" (skipped by model_skip: {', '.join(map(str, skipped))})" if skipped else ""
    raise LabelConfigError("the label config has no <Choices> or <Taxonomy> control with toName pointing at an "
                           f"<Image>{hint}; labelloop serves image classification, e.g. <Image name=\"image\" "
                           "value=\"$image\"/><Choices name=\"label\" toName=\"image\"><Choice value=\"cat\"/>"
                           "<Choice value=\"dog\"/></Choices>")


def _image_of(control) -> str:
    """Return the first object name in the control's toName."""
    return control.to_name[0].strip() if control.to_name else ""


def _build(control, image, xml: str) -> ImageClassification:
    name = control.name
    if not name:
        raise LabelConfigError(f"<{control.tag}> without a name attribute")
    value = image.value or ""
    if not value.startswith("$") or len(value) < 2:
        raise LabelConfigError(f"<Image name={image.name!r}> must read a task field, e.g. value=\"$image\"")
    if str(control.attr.get("value", "")).startswith("$"):
        raise LabelConfigError(f"<{control.tag} name={name!r}> takes its options from task data (value=\"$...\"); "
                               "labelloop needs the classes listed in the config")
    if control.tag == "Choices":
        # `labels` are what annotations store: a <Choice>'s alias when it has one, else its value.
        labels = [label for label in control.labels or [] if label]
        attrs = control.labels_attrs or {}
        model_names = [_split_names(attrs[label].attr.get("predicted_values") if label in attrs else None)
                       or (label,) for label in labels]
        paths: list[tuple[str, ...]] = []
        multiple = str(control.attr.get("choice", "single")).lower() == "multiple"
    else:
        paths, leaves = _taxonomy_leaves(xml, name)
        labels = [TAXONOMY_SEPARATOR.join(p) for p in paths]
        model_names = [_split_names(leaf.get("predicted_values")) or (path[-1],) for path, leaf in zip(paths, leaves)]
        multiple = control.attr.get("maxUsages") != "1"  # Taxonomy allows several picks unless limited to one
    if len(set(labels)) != len(labels):
        raise LabelConfigError(f"<{control.tag} name={name!r}> lists a class twice")
    if len(labels) < (1 if multiple else 2):
        raise LabelConfigError(f"<{control.tag} name={name!r}> needs at least two classes to choose from")
    threshold = control.attr.get("model_score_threshold")
    try:
        score_threshold = float(threshold) if threshold not in (None, "") else None
    except ValueError:
        raise LabelConfigError(f"model_score_threshold={threshold!r} on {name!r} is not a number") from None
    return ImageClassification(from_name=name, to_name=image.name, data_key=value[1:],
                               kind=control.tag.lower(), labels=tuple(labels), multiple=multiple,
                               score_threshold=score_threshold, model_names=tuple(model_names), paths=tuple(paths))


def _with_complementary(target: ImageClassification, interface) -> ImageClassification:
    """Return `target` with its complementary control (model_complementary="true" on its image), if any."""
    for control in interface.controls:
        if control.tag != "Choices" or _image_of(control) != target.to_name \
                or not _truthy(control.attr.get("model_complementary", "false")):
            continue
        missing = [label for label in target.labels if label not in set(control.labels or [])]
        if missing:
            raise LabelConfigError(f"the complementary control {control.name!r} (model_complementary=\"true\") "
                                   f"must list every class of {target.from_name!r}; missing: {', '.join(missing)}")
        return replace(target, complementary_from=control.name,
                       complementary_multiple=str(control.attr.get("choice", "single")).lower() == "multiple")
    return target


def _taxonomy_leaves(xml: str, name: str) -> tuple[list[tuple[str, ...]], list[ET.Element]]:
    """Return (path from root to leaf, leaf element) for every leaf of the <Taxonomy name=`name`>.

    The one place that reads the XML itself: LabelInterface flattens a Taxonomy's nested <Choice>s into one
    label list (["Animal", "Cat", "Dog", "Vehicle"]), losing which ones are leaves and the path to each.
    """
    control = next(el for el in read_xml(xml).iter("Taxonomy") if el.get("name") == name)
    paths: list[tuple[str, ...]] = []
    leaves: list[ET.Element] = []

    def walk(node: ET.Element, prefix: tuple[str, ...]) -> None:
        for child in node:
            if child.tag != "Choice":
                continue
            # Label Studio stores a choice's alias (when it has one) in result paths, as for <Choices>.
            path = prefix + (child.get("alias") or child.get("value") or "",)
            if any(grand.tag == "Choice" for grand in child):
                walk(child, path)
            else:
                paths.append(path)
                leaves.append(child)

    walk(control, ())
    return paths, leaves
