"""`labelloop audit`: rank the labels of a dataset by how likely they are wrong, and flag the suspects.

Reads any label source the trainers room reads (Label Studio JSON export, classification CSV,
ImageFolder tree, VLM run with ordinary labels, ``auto_labels.csv`` read as ordinary labels, features
``.npz``), embeds the images through the shared embedding cache, runs ``labelers.audit`` and writes
``audit.csv`` (every item, most suspect first), ``summary.json`` and, when true labels are known,
``precision_vs_rank.png``. It lives in ``trainers/`` because its readers do (imports go trainers -> labelers).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from labelers.audit import AUDIT_L2
from trainers.labelset import LabelSet

AUDIT_HELP = (
    "Find the labels that are probably wrong (annotators' or a VLM's) in SOURCE.\n\n"
    "SOURCE: a Label Studio JSON export, a classification CSV (path,label), an ImageFolder tree, a VLM run "
    "(directory or labels.jsonl, ordinary labels), an auto_labels.csv (with --image-root; read as ordinary labels, "
    "majority over rounds) or a features .npz. Images are embedded once through the embedding cache.\n\n"
    "Out-of-fold probabilities of the classifier head plus a nearest-neighbour vote are ranked and flagged by "
    "cleanlab. Writes audit.csv (every item, most suspect first), summary.json and, with --truth (or a gold VLM "
    "run), precision_vs_rank.png to --output-dir, and prints the top of the ranking.")

SEPARATOR = "|"  # joins the classes of one multi-label item in audit.csv


class AuditInputError(ValueError):
    """The audit input cannot be read as ordinary labels; the message says what to pass instead."""


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=2)


# ---------------------------------------------------------------- reading
LABEL_FILE_SUFFIXES = (".json", ".jsonl", ".npz", ".pkl", ".pickle")  # what read_any reads otherwise


def _is_auto_labels(path: Path) -> bool:
    """Return True for an auto_labels.csv (what read_any reads any other label file as): it holds file names
    only, so its images are found under the image root."""
    from trainers.export import is_classification_csv

    return path.is_file() and path.suffix not in LABEL_FILE_SUFFIXES and not is_classification_csv(path)


def _ordinary_auto_labels(path: Path) -> list[str]:
    """Refuse an auto_labels.csv whose run.json says its labels are complementary; return the note to print
    when no run.json says which kind they are (they are read as ordinary labels), else []."""
    from trainers.label_files import auto_labels_mode

    mode = auto_labels_mode(path)
    if mode == "complementary":
        raise AuditInputError(f"{path}: the run.json beside it says these are complementary labels (classes the "
                              "images are NOT); an audit checks ordinary labels (run the labeler with ordinary labels)")
    return [] if mode else [f"{path.name} has no run.json beside it saying which kind its labels are: read as "
                            "ordinary labels (majority over rounds)"]


def _refuse_complementary_run(path: Path) -> None:
    from trainers.formats.vlm_run import JSONL_NAME, read_vlm_run

    if path.suffix == ".jsonl" or (path.is_dir() and (path / JSONL_NAME).exists()):
        if read_vlm_run(path).meta.get("mode") != "ordinary":
            raise AuditInputError(f"{path}: a complementary-label VLM run says which classes an image is NOT; "
                                  "an audit checks ordinary labels (run the labeler with ordinary labels)")


def _the_label_control(path: Path, tasks, label_control: str | None) -> str:
    """Return the control to audit: ``label_control``, else the export's only Choices/Taxonomy control."""
    controls = sorted({name for task in tasks for name in task.labels})
    if label_control is not None:
        if label_control not in controls:
            raise AuditInputError(f"{path}: no annotation uses control {label_control!r}; controls found: "
                                  f"{', '.join(controls) or 'none'}")
        return label_control
    if len(controls) != 1:
        # No guessing by name: the trainers' complementary-label hints would take a control called "class" for CLs.
        raise AuditInputError(f"{path}: " + (f"the export has several label controls ({', '.join(controls)}); pass "
                                             "--label-control with the one to audit" if controls else
                                             "no task has a non-cancelled annotation with chosen labels"))
    return controls[0]


def read_label_studio_audit(path: str | Path, images: str | None, classes: list[str] | None,
                            label_control: str | None = None, image_key: str | None = None,
                            multi_label: bool = False) -> LabelSet:
    """Return a Label Studio export's chosen labels as a LabelSet of the tasks' image files.

    Single-label: ``ord_labels`` (-1 for a task without a label, which the audit leaves unjudged).
    Multi-label: ``meta['multi_hot']`` (N, K) over the tasks that have labels (the others are left out and
    counted in ``meta['notes']``: no annotation is not the same answer as "none of these").
    Raises AuditInputError for several controls without ``label_control``, several labels on one task of
    a single-label audit, a class outside ``classes``, or an image not found under ``images`` / the export's folder.
    """
    from labelers.formats.label_studio import read_label_studio_export, resolve_image_path

    path = Path(path)
    tasks = read_label_studio_export(path, image_key)
    control = _the_label_control(path, tasks, label_control)
    notes = []
    if multi_label:
        kept = [t for t in tasks if t.labels.get(control)]
        if len(kept) < len(tasks):
            notes.append(f"{len(tasks) - len(kept)} tasks have no label in {control!r} and are left out")
        tasks = kept
    names = classes or sorted({label for task in tasks for label in task.labels.get(control, [])})
    index = {name: k for k, name in enumerate(names)}
    roots = ([Path(images)] if images else []) + [path.parent]
    multi_hot = np.zeros((len(tasks), len(names)), dtype=np.int64)
    paths = []
    for number, task in enumerate(tasks, start=1):
        chosen = task.labels.get(control, [])
        if len(chosen) > 1 and not multi_label:
            raise AuditInputError(f"{path}: task {number} (id {task.id}) has {len(chosen)} labels ({', '.join(chosen)}); "
                                  "audit a multi-label project with --format label-studio-multi")
        for label in chosen:
            if label not in index:
                raise AuditInputError(f"{path}: task {number} (id {task.id}) has class {label!r}, not in the "
                                      f"class list ({', '.join(names)})")
            multi_hot[number - 1, index[label]] = 1
        found = resolve_image_path(task.image, roots)
        if found is None:
            raise AuditInputError(f"{path}: task {number} image {task.image!r} not found under "
                                  f"{', '.join(map(str, roots))} (pass --image-root <folder>)")
        paths.append(found)
    single = np.where(multi_hot.any(axis=1), multi_hot.argmax(axis=1), -1)
    return LabelSet(names, [str(p) for p in paths], np.full((len(tasks), 1), -1),
                    np.full(len(tasks), -1) if multi_label else single, paths=paths,
                    meta={"source": str(path), "label_control": control, "multi_hot": multi_hot, "notes": notes})


def read_audit_labels(source: str | Path, images: str | None = None, classes: list[str] | None = None,
                      label_control: str | None = None, image_key: str | None = None,
                      long_label: bool = True, multi_label: bool = False) -> LabelSet:
    """Return the LabelSet whose labels are audited: ``ord_labels``, or ``meta['multi_hot']`` for multi-label.

    Raises FileNotFoundError, AuditInputError (a complementary VLM run, no label at all, multi-label from
    a format that has none) or the readers' own errors (unknown class names, images not found), each
    naming the file and row.
    """
    from trainers.export import read_any

    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"not found: {path}")
    if path.suffix == ".json":
        return read_label_studio_audit(path, images, classes, label_control, image_key, multi_label)
    if multi_label:
        raise AuditInputError(f"{path}: multi-label audits read Label Studio JSON exports only")
    _refuse_complementary_run(path)
    auto_labels = _is_auto_labels(path)
    notes = _ordinary_auto_labels(path) if auto_labels else []
    labels = read_any(path, images, classes, long_label, True, image_option="--image-root",
                      mode_checked=auto_labels)  # refused or noted above in audit's words, not train's
    if not (labels.ord_labels >= 0).any():
        raise AuditInputError(f"{path}: no item has an ordinary label to audit")
    labels.meta["notes"] = list(labels.meta.get("notes", [])) + notes
    return labels


def _match_keys(labels: LabelSet) -> list[list[str]]:
    """Return, per item, the keys a truth row may match: resolved file path first, then the name."""
    keys = []
    for i, name in enumerate(labels.names):
        found = [str(Path(labels.paths[i]).resolve())] if labels.paths is not None and labels.paths[i] else []
        keys.append(found + [name])
    return keys


def read_truth(truth: str | Path, labels: LabelSet, images: str | None = None) -> np.ndarray:
    """Return (N,) true class indices in ``labels``' class order for ``labels``' items (-1 where unknown).

    ``truth`` is a Label Studio export or an auto_labels.csv (their images found under ``images``, the image
    root of the audited source), a classification CSV, an ImageFolder tree, a features .npz or a gold VLM run
    (its true labels, whatever its mode); rows are matched by resolved image path, else by name. Raises
    AuditInputError when a true class is not in the audit's class list, an auto_labels.csv's run.json says
    its labels are complementary, or nothing matches; the readers' errors when an image is not found.
    """
    from trainers.export import read_any

    path = Path(truth)
    if path.suffix == ".json":
        known = read_label_studio_audit(path, images, None)
    elif _is_auto_labels(path):  # file names only: under the source's image root, in the audited classes
        _ordinary_auto_labels(path)  # true labels without a run.json are the user's word: no note
        known = read_any(path, images, labels.class_names, True, True, image_option="--image-root",
                         mode_checked=True)
    else:  # the other formats name their own images (reading the root for them would only cost time)
        known = read_any(path, None, None, True, True)
    index = {name: k for k, name in enumerate(labels.class_names)}
    lookup: dict[str, int] = {}
    for keys, value in zip(_match_keys(known), known.ord_labels):
        if value < 0:
            continue
        name = known.class_names[value]
        if name not in index:
            raise AuditInputError(f"{truth}: true class {name!r} is not one of the audited classes "
                                  f"({', '.join(labels.class_names)})")
        for key in keys:
            lookup.setdefault(key, index[name])
    out = np.full(len(labels), -1, dtype=np.int64)
    for i, keys in enumerate(_match_keys(labels)):
        out[i] = next((lookup[k] for k in keys if k in lookup), -1)
    if not (out >= 0).any():
        raise AuditInputError(f"{truth}: no row matches an audited image (by file path or name)")
    return out


def embedded(labels: LabelSet, embedder_spec: str, cache_path: Path | None, batch_size: int) -> np.ndarray:
    """Return the (N, D) embeddings of ``labels``' images, computed once through the embedding cache."""
    if labels.features is not None:
        return labels.features
    from labelers.cache import EmbeddingCache
    from labelers.embedders import make_embedder
    from labelers.sample_data import cache_dir
    from trainers.features import with_features

    embedder = make_embedder(embedder_spec)
    typer.echo(f"embedder: {embedder.id}; {len(labels)} images")
    cache = EmbeddingCache(cache_path or cache_dir() / "embeddings.sqlite")
    return with_features(labels, embedder, cache, batch_size=batch_size, progress=True).features


# ---------------------------------------------------------------- writing
def _label_text(result, value) -> str:
    if result.multi_label:
        return SEPARATOR.join(result.class_names[k] for k in np.flatnonzero(value))
    return result.class_names[value] if value >= 0 else ""


def write_audit_csv(path: Path, result, labels: LabelSet, truth: np.ndarray | None) -> Path:
    """Write one row per item, most suspect first (unjudged items last, quality empty); return the path."""
    order = list(result.ranking()) + list(np.flatnonzero(~result.judged))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["rank", "key", "path", "given", "suggested", "quality", "flagged", "judged"]
                        + (["true", "wrong"] if truth is not None else []))
        for rank, i in enumerate(order, start=1):
            row = [rank if result.judged[i] else "", labels.names[i],
                   str(labels.paths[i]) if labels.paths is not None else "",
                   _label_text(result, result.given[i]), _label_text(result, result.suggested[i]),
                   f"{result.quality[i]:.6f}" if result.judged[i] else "", int(result.flagged[i]),
                   int(result.judged[i])]
            if truth is not None:
                row += [_label_text(result, truth[i]) if truth[i] >= 0 else "",
                        int(truth[i] != result.given[i]) if truth[i] >= 0 else ""]
            writer.writerow(row)
    return path


def truth_scores(result, truth: np.ndarray) -> dict:
    """Return precision/recall/F1 of the flagged set and AUROC of the ranking, over judged items with truth."""
    from sklearn.metrics import roc_auc_score

    rows = np.flatnonzero(result.judged & (truth >= 0))
    wrong = truth[rows] != result.given[rows]
    flagged = result.flagged[rows]
    hits = int((flagged & wrong).sum())
    precision = hits / flagged.sum() if flagged.sum() else float("nan")
    recall = hits / wrong.sum() if wrong.sum() else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else float("nan")
    auroc = roc_auc_score(wrong, -result.quality[rows]) if 0 < wrong.sum() < len(rows) else float("nan")
    return {"items_with_truth": len(rows), "wrong_labels": int(wrong.sum()), "flagged": int(flagged.sum()),
            "precision": precision, "recall": recall, "f1": f1, "auroc": auroc}


def plot_precision_vs_rank(path: Path, result, truth: np.ndarray, title: str) -> Path:
    """Plot the share of truly wrong labels among the top-k ranked items against k; return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [i for i in result.ranking() if truth[i] >= 0]
    wrong = np.asarray([truth[i] != result.given[i] for i in order], dtype=float)
    k = np.arange(1, len(order) + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(k, np.cumsum(wrong) / k, label="precision of the top k")
    ax.axhline(wrong.mean(), color="grey", linestyle=":", label=f"noise rate {wrong.mean():.2f} (random ranking)")
    n_flagged = int(sum(result.flagged[i] for i in order))
    if n_flagged:
        ax.axvline(n_flagged, color="red", linestyle="--", label=f"flagged: {n_flagged}")
    ax.set(xlabel="rank k (most suspect first)", ylabel="share of wrong labels", ylim=(0, 1.02), title=title)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _warn_when_few(result, reliable: int) -> None:
    """Say loudly when a judged class has so few labels that many correct ones get flagged."""
    counts = (result.given[result.judged].sum(axis=0) if result.multi_label
              else np.bincount(result.given[result.judged], minlength=len(result.class_names)))
    few = [f"{name} ({int(c)})" for name, c in zip(result.class_names, counts) if 0 < c < reliable]
    if few:
        typer.secho(f"warning: fewer than {reliable} labels in {', '.join(few)}: with so few, many correct labels "
                    "are flagged (about a third at 5 per class on CIFAR-10); read these classes' flags as weak",
                    fg=typer.colors.RED, err=True)


def _print_table(result, labels: LabelSet, top: int) -> None:
    typer.echo(f"{'rank':>4}  {'quality':>7}  {'flag':>4}  {'given':<16} {'suggested':<16} key")
    for rank, i in enumerate(result.ranking()[:top], start=1):
        typer.echo(f"{rank:>4}  {result.quality[i]:7.3f}  {'yes' if result.flagged[i] else '':>4}  "
                   f"{_label_text(result, result.given[i]):<16} {_label_text(result, result.suggested[i]):<16} "
                   f"{labels.names[i]}")


# ---------------------------------------------------------------- the command
def audit(
    source: str = typer.Argument(..., help="Label Studio export, classification CSV, ImageFolder tree, VLM run "
                                 "(dir or labels.jsonl), auto_labels.csv or features .npz."),
    fmt: Optional[str] = typer.Option(None, "--format", help="How to read SOURCE: auto (by its suffix/layout) or "
                                      "label-studio-multi (a multi-label Label Studio export)."),
    images: Optional[str] = typer.Option(None, "--image-root", "--images", help="Folder the images of a "
                                         "label-only source (Label Studio export, auto_labels.csv) are found "
                                         "under (--images is the older spelling)."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Class names: comma-separated or a file."),
    label_control: Optional[str] = typer.Option(None, "--label-control", help="Label Studio control to audit."),
    truth: Optional[str] = typer.Option(None, "--truth", help="True labels (any SOURCE format) to score the audit; "
                                        "a Label Studio export's or auto_labels.csv's images are found under "
                                        "--image-root, as SOURCE's."),
    embedder: str = typer.Option("auto", "--embedder", help="Embedder spec, e.g. efficientnet-lite0@128."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Embedding cache file (default: user cache)."),
    folds: int = typer.Option(5, "--folds", help="Cross-validation folds for out-of-fold probabilities."),
    neighbours: int = typer.Option(10, "--neighbours", help="Neighbours in the k-NN vote."),
    neighbour_weight: float = typer.Option(0.5, "--neighbour-weight", help="Vote's share of the combined "
                                           "probabilities (0 = head only)."),
    l2: float = typer.Option(AUDIT_L2, "--l2", help="Head L2 strength towards its prior (audit default: 10x "
                             "the serving head's, so it does not memorise wrong labels)."),
    top: int = typer.Option(20, "--top", help="Rows of the ranked table to print."),
    batch_size: int = typer.Option(64, "--batch-size"),
    output_dir: Path = typer.Option(Path("runs/audit"), "--output-dir"),
):
    """Rank and flag probably wrong labels; see AUDIT_HELP."""
    import warnings

    from labelers.audit import RELIABLE_PER_CLASS, find_label_errors, judgeable_classes
    from trainers.sources import parse_classes

    multi = (fmt or "auto").lower() == "label-studio-multi"
    if fmt and fmt.lower() not in ("auto", "label-studio-multi"):
        _fail(f"unknown --format {fmt!r}; choose auto or label-studio-multi")
    try:
        class_list = parse_classes(classes)
        labels = read_audit_labels(source, images, class_list, label_control, multi_label=multi)
        gold = labels.true_labels  # a gold VLM run keeps the truth beside the VLM's labels
        known_truth = read_truth(truth, labels, images) if truth else (
            gold if gold is not None and (np.asarray(gold) >= 0).any() else None)
        given = labels.meta["multi_hot"] if multi else labels.ord_labels
        judgeable_classes(given, labels.class_names, multi)  # refuse bad labels before embedding anything
        features = embedded(labels, embedder, cache, batch_size)
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")  # the notes carry the same message; printed once, below
            result = find_label_errors(features, given, labels.class_names, multi_label=multi, folds=folds,
                                       neighbours=neighbours, neighbour_weight=neighbour_weight, l2=l2)
    except (ValueError, FileNotFoundError, KeyError) as err:
        _fail(str(err).strip("'\""))
    if multi and known_truth is not None:
        typer.secho("note: --truth scores single-label audits only; ignored", fg=typer.colors.YELLOW, err=True)
        known_truth = None
    for note in labels.meta.get("notes", []) + result.notes:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)
    _warn_when_few(result, RELIABLE_PER_CLASS)
    output_dir.mkdir(parents=True, exist_ok=True)
    _print_table(result, labels, top)
    summary = {"source": str(source), "items": len(labels), "judged": int(result.judged.sum()),
               "flagged": result.n_flagged, "folds": result.folds, "neighbours": neighbours,
               "neighbour_weight": neighbour_weight, "l2": l2, "notes": result.notes}
    write_audit_csv(output_dir / "audit.csv", result, labels, known_truth)
    written = ["audit.csv", "summary.json"]
    if known_truth is not None:
        summary["truth"] = truth_scores(result, known_truth)
        plot_precision_vs_rank(output_dir / "precision_vs_rank.png", result, known_truth, Path(source).name)
        written.append("precision_vs_rank.png")
        scores = summary["truth"]
        typer.echo(f"against truth: {scores['wrong_labels']} wrong labels; flagged precision "
                   f"{scores['precision']:.3f}, recall {scores['recall']:.3f}, AUROC {scores['auroc']:.3f}")
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=float), encoding="utf-8")
    typer.echo(f"{result.n_flagged} of {int(result.judged.sum())} judged labels flagged "
               f"({len(labels) - int(result.judged.sum())} not judged); wrote {', '.join(written)} to {output_dir}")


def register(app: typer.Typer) -> None:
    """Add `labelloop audit` to the app."""
    app.command("audit", help=AUDIT_HELP)(audit)
