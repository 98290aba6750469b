"""`labelloop relabel` (single-label images -> label sets) and `labelloop relabel evaluate`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .. import ray_flags

RELABEL_HELP = """Relabel single-label images into multi-label ones: regions -> confidence -> label -> retrain -> repeat.

--data is an image folder root/<class>/*, a CSV (image,label), the relabeler JSON {"data": [{"img_path",
"labels"}]} with --class-index, or a Label Studio export (single Choices). Writes round_<r>.json per round,
rounds.json, labels.json (the best round), class_index.json and suggestions_ls.json (Label Studio multi-choice
predictions with a score per label) to --output-dir. --config reads the CS570 seed's YAML; command-line
options override it. See docs/relabel.md."""

DEFAULTS = {"regions": "random", "num_crops": 5, "crop_size": "fixed", "confidence": "mc-dropout", "passes": 20,
            "dropout_rate": 0.05, "aggregation": "mean", "label": "threshold", "threshold": 0.5,
            "target_precision": 0.9, "target_recall": None, "threshold_by": "balanced", "replace_precision": None, "keep_original": True, "rounds": 3, "folds": 5, "max_images": None,
            "save_path": None, "data": None}
# --regions sam only; None = labelers.pseudo.settings.SamSettings' default (CoT-PL's)
SAM_OPTIONS = {"sam_model": "model", "sam_points_per_side": "points_per_side", "sam_crop_layers": "crop_n_layers",
               "sam_min_iou": "pred_iou_thresh", "sam_min_stability": "stability_score_thresh",
               "sam_min_mask_area": "min_mask_region_area"}
SAM_WEIGHTS_HELP = ("SAM weights are not downloaded by labelloop: on a machine with network run `huggingface-cli "
                    "download facebook/sam-vit-base --local-dir sam-vit-base` (or sam-vit-huge), copy the folder "
                    "here and pass --sam-model sam-vit-base; `python -m labelers.pseudo.tiny FOLDER` writes a tiny "
                    "random SAM (mechanics only, its masks mean nothing) to FOLDER/sam")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


def _merged(config: Optional[Path], given: dict) -> dict:
    """Return the options: the command line where given, else the seed config, else our defaults."""
    from .inputs import read_seed_config

    options = dict(DEFAULTS)
    if config is not None:
        if not config.is_file():
            _fail(f"{config}: no such config file")
        options.update(read_seed_config(config))
    options.update({k: v for k, v in given.items() if v is not None})
    return options


CHUNK = 32  # images per embedding call: batches of a few hundred crops, a bounded number of images in memory


def _sam_settings(options: dict):
    """Return the SamSettings of --regions sam: SamSettings' defaults where a --sam-* option is not given."""
    from dataclasses import replace

    from ..pseudo.settings import SamSettings

    return replace(SamSettings(), **{field: options[key] for key, field in SAM_OPTIONS.items()
                                     if options.get(key) is not None})


def _has_weights(folder: Path) -> bool:
    """Return whether `folder` looks like a saved checkpoint: config.json beside .safetensors or .bin weights."""
    return folder.is_dir() and (folder / "config.json").is_file() and \
        (any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")))


def _sam_proposer(options: dict):
    """Return the SAM proposer of --regions sam, built once per run; exits (code 2) naming --sam-model when it
    is a folder without weights, no such folder, or cannot be loaded."""
    from ..pseudo.proposals import ProposerError, make_proposer

    model = options["sam_model"]
    folder = Path(model).expanduser()
    if folder.exists() and not _has_weights(folder):
        _fail(f"--sam-model {model}: no SAM weights there (a folder with config.json and model.safetensors or "
              f"pytorch_model.bin is needed). {SAM_WEIGHTS_HELP}")
    if not folder.exists() and (folder.is_absolute() or model.startswith((".", "~")) or model.count("/") > 1):
        _fail(f"--sam-model {model}: no such folder. {SAM_WEIGHTS_HELP}")
    try:
        return make_proposer("sam", _sam_settings(options))
    except ProposerError as exc:
        _fail(f"--sam-model {model}: {str(exc).rstrip('.')}. {SAM_WEIGHTS_HELP}")


def _boxes_of(options: dict, embedder, cam_head=None, sam=None):
    """Return the ``boxes_of(images)`` hook of --regions cam (needs `cam_head`, a head fitted on the
    whole-image embeddings) or sam (needs `sam`, from _sam_proposer); None for the other methods."""
    if options["regions"] == "cam":
        from .cam import cam_proposals

        return lambda images: cam_proposals(embedder, cam_head, images, top_k=options["num_crops"])
    if options["regions"] == "sam":
        from .regions import sam_regions

        return lambda images: sam_regions(sam, images, options["num_crops"])
    return None


def _embed_set(paths, embedder, cache, options, seed, what, ray=None, boxes_of=None):
    """Return (images' region embeddings, boxes per image) for image files (on Ray with ``ray``);
    `boxes_of` (from _boxes_of) replaces the proposals of --regions for cam and sam."""
    from tqdm.auto import tqdm

    from .region_features import embed_chunk

    if ray is not None:
        from ..ray_jobs import regions_on_ray

        return regions_on_ray(paths, CHUNK, embedder.spec, cache.path, options, seed, ray)
    boxes, region_features = [], []
    bar = tqdm(total=len(paths), desc=f"regions {what}", unit="img")
    for start in range(0, len(paths), CHUNK):
        chunk_features, chunk_boxes = embed_chunk(paths[start:start + CHUNK], start, embedder, cache, options, seed,
                                                  boxes_of)
        boxes += chunk_boxes
        region_features += chunk_features
        bar.update(len(chunk_boxes))
    bar.close()
    return region_features, boxes


def _holdout(path: Path, class_names, embedder, cache, options, seed, ray=None, boxes_of=None):
    from .inputs import read_holdout
    from .metrics import multi_hot
    from .rounds import Holdout

    paths, truth, originals = read_holdout(path, len(class_names))
    regions, _ = _embed_set(paths, embedder, cache, options, seed + 1_000_003, "holdout", ray, boxes_of)
    return Holdout(regions, multi_hot(truth, len(class_names)), originals)


def _cam_head(paths, embedder, cache, original, class_names, settings):
    """Return the head CAM boxes are computed with: fitted on the whole-image embeddings and original labels."""
    from ..cache import embed_files
    from .metrics import multi_hot
    from .rounds import fit_head

    result = embed_files(embedder, cache, paths)
    if result.errors:
        first = min(result.errors)
        raise ValueError(f"cannot embed {len(result.errors)} images, first: {result.errors[first]}")
    return fit_head(result.features, multi_hot([[int(o)] for o in original], len(class_names)), class_names, settings)


def _run_inputs(options: dict, embedder: str, holdout: Optional[Path], seed: int) -> dict:
    """Return what produced the regions and labels besides the settings (compared on --resume)."""
    keys = ("data", "regions", "num_crops", "crop_size", "max_images")
    inputs = {**{k: None if options[k] is None else str(options[k]) for k in keys}, "embedder": embedder,
              "holdout": None if holdout is None else str(holdout), "region_seed": seed}
    if options["regions"] == "sam":  # only then: runs saved before SAM regions existed stay resumable
        sam = _sam_settings(options)
        inputs.update({key: getattr(sam, field) for key, field in SAM_OPTIONS.items()})
    return inputs


def relabel(
    ctx: typer.Context,
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="folder, .csv, relabeler .json or LS export"),
    class_index: Optional[Path] = typer.Option(None, help="class-index JSON (imagenet_class_index.json shape) or names file"),
    image_root: list[Path] = typer.Option([], help="folder(s) image references resolve under"),
    holdout: Optional[Path] = typer.Option(None, help="relabeler JSON with multi-label truth: calibrates per-class "
                                                     "thresholds (even rows) and validates rounds (odd rows)"),
    regions: Optional[str] = typer.Option(None, help="random | grid | felzenszwalb | cam (class-activation-map boxes of the "
                                                   "--num-crops top classes) | sam (boxes of the --num-crops "
                                                   "best-scoring SAM masks; needs --sam-model); the whole image "
                                                   "is always added"),
    num_crops: Optional[int] = typer.Option(None, help="random crops (or max proposals) per image"),
    sam_model: Optional[str] = typer.Option(None, help="--regions sam: a folder holding a SAM checkpoint "
                                                       "(SamModel + SamProcessor) or a hub name"),
    sam_points_per_side: Optional[int] = typer.Option(None, min=1, help="--regions sam: prompt points per side "
                                                                        "(default 32)"),
    sam_crop_layers: Optional[int] = typer.Option(None, min=0, help="--regions sam: SAM's crop layers (default 1: "
                                                                    "the image and 4 crops; 0 = the image only, "
                                                                    "5x fewer prompts)"),
    sam_min_iou: Optional[float] = typer.Option(None, min=0.0, max=1.0,
                                                help="--regions sam: keep masks above this predicted IoU "
                                                     "(default 0.7)"),
    sam_min_stability: Optional[float] = typer.Option(None, min=0.0, max=1.0,
                                                      help="--regions sam: keep masks above this stability score "
                                                           "(default 0.85)"),
    sam_min_mask_area: Optional[int] = typer.Option(None, min=0, help="--regions sam: mask islands and holes under "
                                                                      "this many pixels are removed (default 100)"),
    crop_size: Optional[str] = typer.Option(None, help="fixed | range | a side in pixels"),
    confidence: Optional[str] = typer.Option(None, help="naive | mc-dropout | mc-perturbation"),
    passes: Optional[int] = typer.Option(None, help="passes for mc-dropout / mc-perturbation"),
    dropout_rate: Optional[float] = typer.Option(None, help="feature dropout for mc-dropout"),
    aggregation: Optional[str] = typer.Option(None, help="mean | vote over passes"),
    label: Optional[str] = typer.Option(None, help="threshold | per-class | gmm | learned (a model of which scores "
                                                   "mean present, fitted on --holdout) | argmax (the seed's rule)"),
    threshold: Optional[float] = typer.Option(None, help="global threshold (and the fallback of per-class / gmm)"),
    target_precision: Optional[float] = typer.Option(None, help="per-class: held-out precision to reach"),
    target_recall: Optional[float] = typer.Option(None, help="learned: held-out recall its threshold must reach "
                                                  "(default: see --threshold-by)"),
    threshold_by: Optional[str] = typer.Option(None, help="learned, without --target-recall: balanced (where "
                                               "held-out precision and recall meet; default) | f1 (best held-out F1)"),
    replace_precision: Optional[float] = typer.Option(None, help="swap a given label for the head's top class when "
                                                      "the top class beats it by a per-class margin calibrated on "
                                                      "the holdout for this precision of the swaps (needs --holdout "
                                                      "with \"original\" labels; default: never swap)"),
    keep_original: Optional[bool] = typer.Option(None, "--keep-original/--drop-original",
                                                 help="always keep the original label (default keep; with "
                                                      "--label learned, default drop: the rule judges the "
                                                      "original label too)"),
    rounds: Optional[int] = typer.Option(None, help="relabel/retrain rounds at most"),
    folds: Optional[int] = typer.Option(None, help="score each image with a head not trained on it (k folds; "
                                                   "0 = the head scores its own training images)"),
    max_images: Optional[int] = typer.Option(None, help="relabel only the first N images (the seed config's "
                                                        "num_relabel; 0 = all)"),
    output_dir: Path = typer.Option(Path("runs/relabel"), "--output-dir"),
    resume: bool = typer.Option(False, help="continue after the last round written in --output-dir"),
    config: Optional[Path] = typer.Option(None, help="the seed's YAML (relabel_naive.yaml, ...)"),
    embedder: str = typer.Option("efficientnet-lite0", help="embedder spec"),
    cache: Optional[Path] = typer.Option(None, help="embedding cache file (default: user cache)"),
    seed: int = typer.Option(0),
    use_ray: bool = ray_flags.USE_RAY,
    ray_address: Optional[str] = ray_flags.RAY_ADDRESS,
    actors: Optional[int] = ray_flags.ACTORS,
    gpus_per_actor: float = ray_flags.GPUS_PER_ACTOR,
) -> None:
    if ctx.invoked_subcommand:
        return
    from ..cache import EmbeddingCache
    from ..datasets import DatasetError
    from ..embedders import EmbedderUnavailable, make_embedder
    from ..formats.ls_relabel import write_multichoice_predictions
    from ..formats.relabel_json import ClassIndex, RelabelFormatError, write_class_index, write_relabel_json
    from ..images import ImageLoadError
    from ..ray_jobs import RayRunError, ray_options
    from ..sample_data import cache_dir
    from .confidence import autoaugment_views
    from .inputs import RelabelInputError, read_input
    from .region_features import embed_crops
    from .regions import RegionError, crop_regions
    from .rounds import RelabelSettings, best_round, run_rounds

    options = _merged(config, dict(data=data, regions=regions, num_crops=num_crops, crop_size=crop_size,
                                   confidence=confidence, passes=passes, dropout_rate=dropout_rate,
                                   aggregation=aggregation, label=label, threshold=threshold,
                                   target_precision=target_precision, target_recall=target_recall,
                                   threshold_by=threshold_by,
                                   replace_precision=replace_precision, keep_original=keep_original, rounds=rounds,
                                   folds=folds, max_images=max_images, sam_model=sam_model,
                                   sam_points_per_side=sam_points_per_side, sam_crop_layers=sam_crop_layers,
                                   sam_min_iou=sam_min_iou, sam_min_stability=sam_min_stability,
                                   sam_min_mask_area=sam_min_mask_area))
    if options["data"] is None:
        _fail("no input: pass --data (or json_dir in --config)")
    given_sam = [f"--{key.replace('_', '-')}" for key in SAM_OPTIONS if options.get(key) is not None]
    if given_sam and options["regions"] != "sam":
        _fail(f"{', '.join(given_sam)} only apply to --regions sam (regions is {options['regions']!r})")
    if options["regions"] == "sam" and not options.get("sam_model"):
        _fail(f"--regions sam needs --sam-model (a folder holding a SAM checkpoint, or a hub name). "
              f"{SAM_WEIGHTS_HELP}")
    from .learned import CHOICES
    if options["threshold_by"] not in CHOICES:
        _fail(f"--threshold-by {options['threshold_by']!r}: choose {' or '.join(CHOICES)}")
    if options["label"] == "learned" and holdout is None:
        _fail("--label learned needs --holdout (held-out images with their multi-label truth) to learn from")
    if options["label"] == "learned" and keep_original is None:
        options["keep_original"] = False  # the rule learns when a given label is wrong; forcing it back undoes that
    if options["replace_precision"] is not None and holdout is None:
        _fail("--replace-precision needs --holdout (held-out images with their truth and given \"original\" "
              "labels) to calibrate the swaps on")
    settings = RelabelSettings(confidence=options["confidence"], passes=options["passes"],
                               dropout_rate=options["dropout_rate"], aggregation=options["aggregation"],
                               rule=options["label"], threshold=options["threshold"],
                               target_precision=options["target_precision"], target_recall=options["target_recall"],
                               threshold_by=options["threshold_by"],
                               keep_original=options["keep_original"],
                               replace_precision=options["replace_precision"], seed=seed, folds=options["folds"])
    try:
        ray = ray_options(use_ray, ray_address, actors, gpus_per_actor)
        if ray is not None and options["regions"] == "sam":
            raise ValueError("--regions sam does not run on --ray yet (every actor would have to load SAM): run "
                             "it without --ray, or pick another --regions")
        dataset = read_input(Path(options["data"]), class_index, image_root)
        if options["max_images"]:
            dataset.paths, dataset.original = dataset.paths[:options["max_images"]], dataset.original[:options["max_images"]]
        sam = _sam_proposer(options) if options["regions"] == "sam" else None  # once per run, before any embedding
        model = make_embedder(embedder)
        model.spec = embedder  # what the actors of a Ray run build it from
        store = EmbeddingCache(cache or cache_dir() / "embeddings.sqlite")
        typer.echo(f"{len(dataset.paths)} images, {len(dataset.class_names)} classes; embedder {model.id}; "
                   f"{settings.confidence} x{settings.passes if settings.confidence != 'naive' else 1}, "
                   f"rule {settings.rule}, {'keep' if settings.keep_original else 'drop'} original")
        if ray is not None and options["regions"] == "cam":
            raise ValueError("--regions cam does not run on --ray yet (its boxes need a head fitted on the whole "
                             "set first): run it without --ray, or pick another --regions")
        head0 = _cam_head(dataset.paths, model, store, dataset.original, dataset.class_names, settings) \
            if options["regions"] == "cam" else None
        boxes_of = _boxes_of(options, model, head0, sam)
        region_features, boxes = _embed_set(dataset.paths, model, store, options, seed, "train", ray, boxes_of)
        held = _holdout(holdout, dataset.class_names, model, store, options, seed, ray, boxes_of) if holdout else None
        if held is None:
            typer.secho("warning: no --holdout: every round is accepted WITHOUT validation (nothing checks the "
                        "new labels against the originals); rounds.json marks them validated: false",
                        fg="yellow", err=True)

        def perturb(i, n_passes, pass_seed):
            from ..images import load_image

            crops = crop_regions(load_image(dataset.paths[i]), boxes[i])
            names = [f"{dataset.paths[i]} region {j}" for j in range(len(crops))]
            import numpy as np
            return np.stack([embed_crops(model, store, view, names)
                             for view in autoaugment_views(crops, n_passes, pass_seed + i)])

        history = run_rounds(region_features, dataset.original, dataset.class_names, settings,
                             rounds=options["rounds"], holdout=held, output_dir=output_dir,
                             img_paths=[str(p) for p in dataset.paths], resume=resume,
                             perturb=perturb if settings.confidence == "mc-perturbation" else None, progress=True,
                             inputs=_run_inputs(options, embedder, holdout, seed))
    except (RelabelInputError, RelabelFormatError, DatasetError, RegionError, ImageLoadError, EmbedderUnavailable,
            RayRunError, ValueError) as exc:
        _fail(str(exc))
    best = best_round(history)
    rows = list(zip([str(p) for p in dataset.paths], best.labels))
    write_relabel_json(output_dir / "labels.json", rows)
    if options["save_path"]:
        write_relabel_json(options["save_path"], rows)
    write_class_index(output_dir / "class_index.json", ClassIndex(dataset.class_names, dataset.class_names))
    names = dataset.class_names
    scores = [{names[k]: (1.0 if best.scores is None else float(best.scores[i, k])) for k in labels}
              for i, labels in enumerate(best.labels)]
    write_multichoice_predictions(output_dir / "suggestions_ls.json", [str(p) for p in dataset.paths],
                                  [[names[k] for k in labels] for labels in best.labels], scores)
    for h in history:
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in h.metrics.items()
                 if k in ("val_f1", "val_precision", "val_recall", "val_top1", "cardinality", "changed_images",
                          "accepted", "validated")}
        typer.echo(f"round {h.round}: {shown}")
        if h.metrics.get("warning"):
            typer.secho(f"round {h.round}: warning: {h.metrics['warning']}", fg="yellow", err=True)
    typer.echo(f"best round {best.round}; wrote {output_dir}/labels.json, rounds.json, suggestions_ls.json")


def evaluate(
    predicted: Path = typer.Argument(..., help="relabeler JSON of predicted label sets"),
    truth: Path = typer.Argument(..., help="relabeler JSON (matched by img_path) or ReaL real.json "
                                           "(paired with the predicted images sorted by file name)"),
    class_index: Optional[Path] = typer.Option(None, help="class-index file (checks index range)"),
    classifier: Optional[Path] = typer.Option(None, help="a classifier's top-1 predictions: relabeler JSON with "
                                                         "one label per row (matched by img_path); adds its "
                                                         "ReaL-style top-1 (correct = in the true set)"),
    output: Optional[Path] = typer.Option(None, help="write the metrics as JSON here"),
) -> None:
    """Score label sets against a multi-label truth: per-image Jaccard, precision, recall, F1 (averaged
    over images; empty true sets unscored, as in ReaL) and label cardinality; with --classifier, the
    ReaL-style top-1 of the classifier's predictions on the same images."""
    from ..formats.real_json import read_real_json
    from ..formats.relabel_json import RelabelFormatError, atomic_write_json, image_identity, read_class_index, \
        read_relabel_json
    from .metrics import multi_hot, real_accuracy, set_metrics

    try:
        k = len(read_class_index(class_index)) if class_index else None
        rows = [(image_identity(p, predicted), labels) for p, labels in read_relabel_json(predicted, k)]
        raw = json.loads(truth.read_text(encoding="utf-8"))
        if isinstance(raw, list):
            by_name = read_real_json(truth, [Path(p).name for p, _ in rows], k)
            true_sets = [by_name[Path(p).name] for p, _ in rows]
        else:
            known = {image_identity(p, truth): labels for p, labels in read_relabel_json(truth, k)}
            missing = [p for p, _ in rows if p not in known]
            if missing:
                raise RelabelFormatError(f"{truth}: no truth for {len(missing)} predicted images, first {missing[0]}")
            true_sets = [known[p] for p, _ in rows]
        n = k or 1 + max([i for s in true_sets for i in s] + [i for _, s in rows for i in s] + [0])
        metrics = set_metrics(multi_hot([s for _, s in rows], n), multi_hot(true_sets, n))
        if classifier is not None:
            top1 = _classifier_top1(classifier, [p for p, _ in rows], k)
            real = real_accuracy(top1, multi_hot(true_sets, max(n, int(top1.max()) + 1)))
            metrics.update({"classifier_top1": real["top1"], "classifier_scored": real["scored"]})
    except (RelabelFormatError, ValueError) as exc:
        _fail(str(exc))
    for key, value in metrics.items():
        typer.echo(f"{key:>18}: {value:.4f}" if isinstance(value, float) else f"{key:>18}: {value}")
    if output:
        atomic_write_json(output, metrics)


def _classifier_top1(path: Path, img_paths: list[str], n_classes: Optional[int]):
    """Return the classifier's predicted class per image of `img_paths` from a relabeler JSON of one label per
    row; raises RelabelFormatError naming the row of a row with != 1 label or a missing image."""
    import numpy as np

    from ..formats.relabel_json import RelabelFormatError, image_identity, read_relabel_json

    predictions = {}
    for row, (image, labels) in enumerate(read_relabel_json(path, n_classes)):
        if len(labels) != 1:
            raise RelabelFormatError(f"{path}: row {row} ({image}): {len(labels)} labels; a classifier's "
                                     f"prediction is one class per image")
        predictions[image_identity(image, path)] = labels[0]
    missing = [p for p in img_paths if p not in predictions]
    if missing:
        raise RelabelFormatError(f"{path}: no prediction for {len(missing)} images, first {missing[0]}")
    return np.asarray([predictions[p] for p in img_paths], np.int64)


def register(app: typer.Typer) -> None:
    """Add `relabel` (with its `evaluate` subcommand) to the labelloop app."""
    group = typer.Typer(help=RELABEL_HELP, invoke_without_command=True, no_args_is_help=False)
    group.callback(invoke_without_command=True)(relabel)
    group.command("evaluate")(evaluate)
    app.add_typer(group, name="relabel")
