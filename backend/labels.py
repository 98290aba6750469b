"""Which part of a Label Studio label config the backend serves, and how its results are read and written.

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
from typing import Any

SEPARATOR = " / "  # joins a taxonomy path into one class name


class LabelConfigError(ValueError):
    """The label config cannot be served; the message says what is missing and what would work."""


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
        chosen: list[str] = []
        for region in result or []:
            if not isinstance(region, dict) or region.get("from_name") != self.from_name:
                continue
            value = region.get("value") or {}
            if self.kind == "choices":
                names = value.get("choices") or []
            else:
                names = [SEPARATOR.join(path) for path in value.get("taxonomy") or [] if isinstance(path, list)]
            chosen.extend(n for n in names if n in self.labels and n not in chosen)
        return chosen

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


def parse_label_config(xml: str | None) -> ImageClassification:
    """Return the image-classification control to serve in `xml`; raises LabelConfigError explaining why not."""
    if not xml or not xml.strip():
        raise LabelConfigError("the label config is empty; labelloop needs <Choices> on an <Image>")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise LabelConfigError(f"the label config is not valid XML ({exc})") from None
    images = {el.get("name"): el for el in root.iter("Image") if el.get("name")}
    if not images:
        raise LabelConfigError("the label config has no <Image> object; labelloop classifies images")
    skipped = []
    for control in root.iter():
        if control.tag not in ("Choices", "Taxonomy"):
            continue
        to_name = (control.get("toName") or "").split(",")[0].strip()
        if to_name not in images:
            continue
        if _truthy(control.get("model_complementary", "false")):
            continue
        if _truthy(control.get("model_skip", "false")):
            skipped.append(control.get("name"))
            continue
        return _with_complementary(_build(control, images[to_name]), root)
    hint = f" (skipped by model_skip: {', '.join(map(str, skipped))})" if skipped else ""
    raise LabelConfigError("the label config has no <Choices> or <Taxonomy> control with toName pointing at an "
                           f"<Image>{hint}; labelloop serves image classification, e.g. <Image name=\"image\" "
                           "value=\"$image\"/><Choices name=\"label\" toName=\"image\"><Choice value=\"cat\"/>"
                           "<Choice value=\"dog\"/></Choices>")


def _build(control: ET.Element, image: ET.Element) -> ImageClassification:
    name = control.get("name")
    if not name:
        raise LabelConfigError(f"<{control.tag}> without a name attribute")
    value = image.get("value") or ""
    if not value.startswith("$") or len(value) < 2:
        raise LabelConfigError(f"<Image name={image.get('name')!r}> must read a task field, e.g. value=\"$image\"")
    if control.get("value", "").startswith("$"):
        raise LabelConfigError(f"<{control.tag} name={name!r}> takes its options from task data (value=\"$...\"); "
                               "labelloop needs the classes listed in the config")
    if control.tag == "Choices":
        choices = [c for c in control.iter("Choice") if c.get("value") or c.get("alias")]
        labels = [c.get("value") or c.get("alias") for c in choices]
        model_names = [_split_names(c.get("predicted_values")) or (label,) for c, label in zip(choices, labels)]
        paths: list[tuple[str, ...]] = []
        multiple = control.get("choice", "single").lower() == "multiple"
    else:
        paths = _taxonomy_leaves(control)
        labels = [SEPARATOR.join(p) for p in paths]
        leaves = {SEPARATOR.join(p): leaf for p, leaf in zip(paths, _taxonomy_leaf_elements(control))}
        model_names = [_split_names(leaves[label].get("predicted_values")) or (paths[i][-1],)
                       for i, label in enumerate(labels)]
        multiple = control.get("maxUsages") != "1"  # Taxonomy allows several picks unless limited to one
    if len(set(labels)) != len(labels):
        raise LabelConfigError(f"<{control.tag} name={name!r}> lists a class twice")
    if len(labels) < (1 if multiple else 2):
        raise LabelConfigError(f"<{control.tag} name={name!r}> needs at least two classes to choose from")
    threshold = control.get("model_score_threshold")
    try:
        score_threshold = float(threshold) if threshold not in (None, "") else None
    except ValueError:
        raise LabelConfigError(f"model_score_threshold={threshold!r} on {name!r} is not a number") from None
    return ImageClassification(from_name=name, to_name=image.get("name"), data_key=value[1:],
                               kind=control.tag.lower(), labels=tuple(labels), multiple=multiple,
                               score_threshold=score_threshold, model_names=tuple(model_names), paths=tuple(paths))


def _with_complementary(target: ImageClassification, root: ET.Element) -> ImageClassification:
    """Return `target` with its complementary control (model_complementary="true" on its image), if any."""
    for control in root.iter("Choices"):
        to_name = (control.get("toName") or "").split(",")[0].strip()
        if to_name != target.to_name or not _truthy(control.get("model_complementary", "false")):
            continue
        name = control.get("name")
        values = {c.get("value") or c.get("alias") for c in control.iter("Choice")}
        missing = [label for label in target.labels if label not in values]
        if not name or missing:
            raise LabelConfigError(f"the complementary control {name!r} (model_complementary=\"true\") must list "
                                   f"every class of {target.from_name!r}; missing: {', '.join(missing) or 'name'}")
        return replace(target, complementary_from=name,
                       complementary_multiple=control.get("choice", "single").lower() == "multiple")
    return target


def _taxonomy_leaf_elements(control: ET.Element) -> list[ET.Element]:
    out: list[ET.Element] = []

    def walk(node: ET.Element) -> None:
        for child in node:
            if child.tag != "Choice":
                continue
            if any(grand.tag == "Choice" for grand in child):
                walk(child)
            else:
                out.append(child)

    walk(control)
    return out


def _taxonomy_leaves(control: ET.Element) -> list[tuple[str, ...]]:
    """Return the path (root .. leaf values) of every leaf of a <Taxonomy>."""
    paths: list[tuple[str, ...]] = []

    def walk(node: ET.Element, prefix: tuple[str, ...]) -> None:
        for child in node:
            if child.tag != "Choice":
                continue
            path = prefix + (child.get("value") or child.get("alias") or "",)
            if any(grand.tag == "Choice" for grand in child):
                walk(child, path)
            else:
                paths.append(path)

    walk(control, ())
    return paths
