"""`labelloop train` and `labelloop export`: the trainers room's subcommands.

Option names follow the seed's train.py (``--batch_size`` etc. are accepted next to ``--batch-size``)
so its commands port by changing the program name. Heavy imports stay inside the command bodies.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

# Errors a user can fix; anything else is a bug and keeps its traceback.
_USER_ERRORS = (ValueError, FileNotFoundError, KeyError)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=2)


def train(
    strategy: str = typer.Option("FWD", "--strategy", help="SCL, URE, FWD, DM, PC, OP, CPE, MCL or Ord."),
    type_: Optional[str] = typer.Option(None, "--type", help="Strategy type: SCL NL|EXP, URE NN|GA|TNN|TGA, "
                                        "CPE I|F|T, MCL MAE|EXP|LOG, FWD JOINT (all CLs of an image at once; other types are ignored for FWD, DM, PC, OP, Ord)."),
    model: str = typer.Option("mlp", "--model", help="linear, mlp, resnet18 or resnet34."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "--data", help="mnist, fmnist, cifar10, an image "
                                          "folder, a classification CSV, a libcll pickle, an .npz of features or a "
                                          "VLM run directory."),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate."),
    batch_size: int = typer.Option(256, "--batch-size", "--batch_size"),
    epoch: int = typer.Option(20, "--epoch", "--epochs", help="Training epochs."),
    valid_type: str = typer.Option("auto", "--valid-type", "--valid_type", help="Accuracy, URE or SCEL; auto = "
                                   "Accuracy when the validation split has true labels, else SCEL."),
    output_dir: Path = typer.Option(Path("runs/train"), "--output-dir", "--output_dir"),
    label_path: Optional[str] = typer.Option(None, "--label-path", "--label_path", help="auto_labels.csv, a VLM "
                                             "run (labels.jsonl), a Label Studio JSON export or a libcll pickle."),
    long_label: bool = typer.Option(False, "--long-label", "--long_label", help="Label files use full class "
                                    "names (must match the labeling run)."),
    num_cl: Optional[int] = typer.Option(None, "--num-cl", "--num_cl", help="Complementary labels per image: "
                                         "default the first 3 of a label file (as the seed) or 1 synthetic CL; "
                                         "0 with synthetic CLs draws a random count per image."),
    transition_matrix: str = typer.Option("uniform", "--transition-matrix", "--transition_matrix",
                                          help="uniform, weak, strong, noisy[:lambda], empirical or shrunk[:a] "
                                          "(from gold labels, with --gold-count), anchor or em (from the model's "
                                          "predictions, no gold) or a .npy/.csv file. See docs/trainers.md."),
    synthetic_matrix: Optional[str] = typer.Option(None, "--synthetic-matrix", help="Data without CLs: draw "
                                                   "--num-cl CLs per image from this matrix (default: "
                                                   "--transition-matrix)."),
    seed: int = typer.Option(1126, "--seed"),
    classes: Optional[str] = typer.Option(None, "--classes", help="Class names: comma-separated or a file."),
    test_data: Optional[str] = typer.Option(None, "--test-data", "--test_data", help="A labelled test set."),
    embedder: Optional[str] = typer.Option(None, "--embedder", help="Train a head on frozen embeddings, e.g. "
                                           "efficientnet-lite0@128 (cached in --cache)."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Embedding cache file (SQLite)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", "--image_size"),
    augment: bool = typer.Option(False, "--augment", "--do-transform", "--do_transform",
                                 help="Random crop + flip (natural images)."),
    valid_split: float = typer.Option(0.1, "--valid-split", "--valid_split"),
    gold_count: Optional[int] = typer.Option(None, "--gold-count", help="With --transition-matrix empirical/shrunk: "
                                             "keep true labels on only this many images; T and validation see "
                                             "no others."),
    matrix_rounds: int = typer.Option(2, "--matrix-rounds", help="anchor/em: train-then-estimate rounds before "
                                      "the final run."),
    restarts: int = typer.Option(1, "--restarts", help="Train N initialisations; keep the best by the "
                                 "validation metric."),
    ordinary_weight: Optional[float] = typer.Option(None, "--ordinary-weight", help="Cross-entropy times this "
                                                    "weight on the gold labels (--gold-count) and on "
                                                    "--ordinary-labels (default 1 with --ordinary-labels, else 0)."),
    ordinary_labels: Optional[str] = typer.Option(None, "--ordinary-labels", help="The VLM's ordinary labels "
                                                  "for the same images (an ordinary VLM run or auto_labels.csv), "
                                                  "trained on beside the complementary labels."),
    weight_decay: float = typer.Option(0.0, "--weight-decay", help="Adam weight decay (L2)."),
    early_stop: Optional[int] = typer.Option(None, "--early-stop", help="Stop after N validations without a "
                                             "better score (the --valid-type metric)."),
    max_train: Optional[int] = typer.Option(None, "--max-train", help="Use a seeded random subset of training images."),
    eval_every: int = typer.Option(1, "--eval-every", help="Validate every N epochs."),
    accelerator: str = typer.Option("auto", "--accelerator", help="auto, cpu or gpu."),
    devices: int = typer.Option(1, "--devices", help="Processes (CPU) or GPUs to train on; more than 1 trains "
                                "with DDP, --batch-size split between them."),
    distributed: Optional[str] = typer.Option(None, "--distributed", help="Lightning strategy for --devices > 1: "
                                              "ddp (gloo on CPU, nccl on GPU; the default)."),
    stream_features: bool = typer.Option(False, "--stream-features", help="With --embedder: read the frozen "
                                         "features from the cache per batch instead of holding the pool in memory."),
    feature_block: int = typer.Option(4096, "--feature-block", help="--stream-features: images embedded or "
                                      "summed at once."),
    cl_control: Optional[str] = typer.Option(None, "--cl-control", help="Label Studio control holding CLs."),
    label_control: Optional[str] = typer.Option(None, "--label-control", help="Label Studio control holding labels."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Train a classifier from complementary (or ordinary) labels with PyTorch Lightning."""
    from trainers.sources import parse_classes
    from trainers.train import DISTRIBUTED, TrainConfig, run

    if strategy.lower() in DISTRIBUTED:  # the seed's --strategy is the CL strategy, not Lightning's
        _fail(f"--strategy names the complementary-label strategy (SCL, URE, FWD, ...); for {strategy} "
              f"training pass --devices N --distributed {strategy.lower()}")
    if devices > 1 and distributed is None:
        distributed = "ddp"
    cfg = TrainConfig(strategy=strategy, type=type_, model=model, data=dataset, label_path=label_path, lr=lr,
                      batch_size=batch_size, epoch=epoch, valid_type=valid_type, output_dir=str(output_dir),
                      long_label=long_label, num_cl=num_cl, transition_matrix=transition_matrix,
                      synthetic_matrix=synthetic_matrix, seed=seed,
                      valid_split=valid_split, classes=parse_classes(classes), test_data=test_data,
                      embedder=embedder, cache=str(cache) if cache else None, image_size=image_size, augment=augment,
                      gold_count=gold_count, matrix_rounds=matrix_rounds, restarts=restarts, ordinary_weight=ordinary_weight,
                      ordinary_labels=ordinary_labels,
                      weight_decay=weight_decay, early_stop=early_stop, max_train=max_train, eval_every=eval_every, accelerator=accelerator,
                      devices=devices, distributed=distributed, stream_features=stream_features,
                      feature_block=feature_block,
                      progress=progress, cl_control=cl_control, label_control=label_control)
    try:
        results = run(cfg)
    except _USER_ERRORS as err:
        _fail(str(err).strip("'\""))
    if results.get("global_rank", 0) != 0:  # the other DDP processes: the first one reports
        return
    typer.echo(f"strategy {results['strategy']}  T: {results['transition_matrix']}")
    for key in ("best_valid", "test_Accuracy"):
        if results.get(key) is not None:
            typer.echo(f"{key}: {results[key]:.4f}")
    typer.echo(f"results: {output_dir / 'results.json'}")


def export(
    source: str = typer.Argument(..., help="Labels to read: Label Studio JSON export, VLM run dir or labels.jsonl, "
                                 "auto_labels.csv, libcll pickle, classification CSV or ImageFolder tree."),
    target: Path = typer.Argument(..., help="Where to write: .pkl (libcll), auto_labels*.csv, other .csv "
                                  "(path,label), .json (Label Studio import) or a directory (ImageFolder)."),
    fmt: Optional[str] = typer.Option(None, "--format", help="libcll, auto-labels, csv, imagefolder, label-studio or "
                                      "relabel-json (the relabeler's JSON + <stem>_class_index.json); "
                                      "for boxes: records, cotpl-raw, coco or ls-boxes."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "--data", help="The images the labels refer to."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Class names: comma-separated or a file."),
    long_label: bool = typer.Option(False, "--long-label", "--long_label"),
    ordinary: bool = typer.Option(False, "--ordinary", help="Read label columns as ordinary labels (majority vote)."),
    num_cl: Optional[int] = typer.Option(None, "--num-cl", "--num_cl", help="Keep the first N CLs per image."),
    image_size: Optional[int] = typer.Option(None, "--image-size", "--image_size", help="Resize images (libcll)."),
    cl_control: Optional[str] = typer.Option(None, "--cl-control"),
    label_control: Optional[str] = typer.Option(None, "--label-control"),
    link: bool = typer.Option(False, "--link", help="ImageFolder: symlink instead of copying."),
):
    """Convert labels between Label Studio, VLM runs, auto_labels.csv, libcll pickles, CSV and ImageFolder;
    detection boxes between pseudo-label records, CoT-PL raw JSON, COCO instances and Label Studio boxes."""
    from labelers.pseudo.convert import BOX_FORMATS, sniff_box_format

    if sniff_box_format(source) or fmt in BOX_FORMATS:
        return _export_boxes(source, target, fmt, dataset, classes)
    from trainers.export import export as write, read_any
    from trainers.sources import parse_classes

    try:
        labels = read_any(source, dataset, parse_classes(classes), long_label, ordinary, cl_control, label_control)
        written = write(labels, target, fmt, long_label, image_size, num_cl, cl_control or "complementary",
                        label_control or "label", link)
    except _USER_ERRORS as err:
        _fail(str(err).strip("'\""))
    typer.echo(f"wrote {len(labels)} images ({labels.num_classes} classes) to {written}")


def _export_boxes(source: str, target: Path, fmt: Optional[str], dataset: Optional[str], classes: Optional[str]):
    """`labelloop export` for pseudo-label boxes (labelers.pseudo.convert)."""
    from labelers.pseudo.convert import BoxFormatError, read_boxes, target_box_format, write_boxes
    from labelers.pseudo.coco import CocoError
    from trainers.sources import parse_classes

    try:
        records = read_boxes(source, images=dataset)
        written = write_boxes(records, target, target_box_format(target, fmt), parse_classes(classes))
    except (BoxFormatError, CocoError, FileNotFoundError) as err:
        _fail(str(err))
    boxes = sum(len(r.get("boxes", [])) for r in records)
    typer.echo(f"wrote {len(records)} images ({boxes} boxes) to {written}")


def register(app: typer.Typer) -> None:
    """Add this room's subcommands (train, export) to the labelloop app."""
    app.command("train")(train)
    app.command("export")(export)
    __import__("trainers.audit_cli", fromlist=["register"]).register(app)  # `labelloop audit`
