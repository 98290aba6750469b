"""`labelloop label`: VLM labeling subcommand (ordinary or complementary labels into a run directory)."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from labelers import ray_flags


class Mode(str, Enum):
    ordinary = "ordinary"
    complementary = "complementary"


class Method(str, Enum):
    score = "score"
    generate = "generate"


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _class_list(classes: Optional[str]) -> Optional[list[str]]:
    if not classes:
        return None
    path = Path(classes)
    if path.is_file():  # one class name per line
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [name.strip() for name in classes.split(",") if name.strip()]


def label(
    source: Optional[Path] = typer.Argument(None, help="Image folder (ImageFolder tree or flat), CSV (image[,label]), "
                                                       "Label Studio JSON export, or cifar10 (the training set)."),
    dataset: Optional[Path] = typer.Option(None, "--dataset", "--data", help="The same as SOURCE (the seed's "
                                                                             "spelling)."),
    mode: Optional[Mode] = typer.Option(None, help="ordinary: pick the class; complementary: pick a candidate the "
                                                   "image does NOT show. Default: ordinary, complementary with "
                                                   "--auto_cl (as the seed)."),
    auto_cl: bool = typer.Option(False, "--auto-cl", "--auto_cl", help="Complementary labels (= --mode "
                                                                       "complementary; the seed's flag)."),
    model: Optional[str] = typer.Option(None, help="Preset (llava-next, its seed alias llava, qwen2-vl), hub name "
                                                   "or local folder."),
    rounds: Optional[int] = typer.Option(None, "--rounds", "--num-rounds", "--num_rounds", min=1,
                                         help="Labels per image (default: 1 ordinary, the config's rounds (3) "
                                              "complementary)."),
    num_options: Optional[int] = typer.Option(None, "--num-options", "--num_options", min=2,
                                              help="Candidates shown per complementary round."),
    long_label: bool = typer.Option(False, "--long-label", "--long_label", help="Full class names (default: last "
                                                                                "word, refused if that merges "
                                                                                "classes)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "--batch_size", min=1,
                                             help="Images per forward pass (a resume must use the same)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --output-dir, skipping "
                                                        "finished images."),
    output_dir: Path = typer.Option(Path("vlm_run"), "--output-dir", "--output_dir", help="Run directory."),
    method: Optional[Method] = typer.Option(None, help="score (option log-likelihoods) or generate "
                                                       "(free text + strict parser)."),
    max_retries: Optional[int] = typer.Option(None, "--max-retries", "--max_retries", min=0,
                                              help="Re-asks of an unparseable answer."),
    classes: Optional[str] = typer.Option(None, help="Class names, comma-separated or a file with one per "
                                                     "line (default: from the input)."),
    distinct: Optional[bool] = typer.Option(None, "--distinct/--no-distinct", help="Distinct CLs per image."),
    balance: Optional[bool] = typer.Option(None, "--balance/--no-balance", help="-R quota balancing of CLs."),
    seed: Optional[int] = typer.Option(None, help="Seed of the candidate sets."),
    config: Optional[Path] = typer.Option(None, help="YAML merged over configs/vlm.yaml."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, mps."),
    dtype: str = typer.Option("auto", help="auto, bf16, fp16, fp32."),
    local_files_root: Optional[Path] = typer.Option(None, "--image-root", "--local-files-root", "--local_files_root",
                                                    help="Folder a Label Studio JSON export's images are found "
                                                         "under: its local-files / media root (default: "
                                                         "LOCAL_FILES_DOCUMENT_ROOT, then the export's folder; "
                                                         "--local-files-root is the older spelling)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    use_ray: bool = ray_flags.USE_RAY,
    ray_address: Optional[str] = ray_flags.RAY_ADDRESS,
    actors: Optional[int] = ray_flags.ACTORS,
    gpus_per_actor: float = ray_flags.GPUS_PER_ACTOR,
) -> None:
    """Label images with a vision-language model into OUTPUT_DIR (auto_labels.csv + labels.jsonl).

    The seed's commands run by renaming the program: `labelloop label --model llava --dataset cifar10
    --batch_size 8 --seed 1126 --num_rounds 3 --output_dir logs/ [--auto_cl] [--long_label]`.
    """
    from labelers.formats.class_names import ShortNameCollision
    from labelers.ray_jobs import RayRunError, check_labeling, ray_options
    from labelers.vlm.inputs import InputError, read_inputs
    from labelers.vlm.loading import VLMLoadError, resolve_model
    from labelers.vlm.run import RunError, check_run_dir, run_settings
    from labelers.vlm.settings import SettingsError, load_settings

    try:
        source = _one_source(source, dataset)
        mode = _mode(mode, auto_cl)
        ray = ray_options(use_ray, ray_address, actors, gpus_per_actor)
        complementary = {key: value for key, value in dict(num_options=num_options, distinct=distinct,
                                                           balance=balance, seed=seed).items() if value is not None}
        settings = load_settings(config, method=method.value if method else None, max_retries=max_retries,
                                 batch_size=batch_size, complementary=complementary or None)
        items, class_names = read_inputs(source, _class_list(classes), local_files_root)
        if mode == Mode.complementary and num_options is None and rounds is None and config is None:
            rounds = _fit_candidates_to_classes(settings, len(class_names))
        _check_before_loading(settings, mode, class_names, rounds, len(items), long_label)
        if ray is not None:
            check_labeling(settings, mode.value)
        # the run directory too: a refused resume must not cost a model load
        check_run_dir(output_dir, run_settings(settings, mode.value, class_names, long_label, rounds, None,
                                               settings.batch_size, resolve_model(model, settings), None), resume)
    except (InputError, SettingsError, ShortNameCollision, RunError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    ignored = [flag for flag, value in (("--num-options", num_options), ("--distinct/--no-distinct", distinct),
                                        ("--balance/--no-balance", balance)) if value is not None]
    if mode == Mode.ordinary and ignored:
        typer.echo(f"warning: {', '.join(ignored)} only apply to complementary labels (--auto_cl); ignored",
                   err=True)
    try:
        from labelers.vlm.labeler import VLMLabeler
        from labelers.vlm.run import run_labeling

        run_batches = None
        if ray is not None:  # the actors load the model; here only its name and prompts are needed
            from labelers.ray_jobs import labeler_without_weights, labeling_on_ray

            labeler = labeler_without_weights(model, settings)
            run_batches = labeling_on_ray(model, settings, device, dtype, ray)
        else:
            labeler = VLMLabeler.from_pretrained(model, settings, device=device, dtype=dtype)
        typer.echo(f"{labeler.model_id} on {labeler.vlm.device}: {len(items)} images, {len(class_names)} classes, "
                   f"{mode.value} labels by {settings.method}", err=True)
        summary = run_labeling(labeler, items, class_names, output_dir, mode.value, rounds, long_label, resume,
                               settings.batch_size, settings.method, progress, run_batches=run_batches)
    except (VLMLoadError, RunError, ShortNameCollision, RayRunError, ValueError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        typer.echo(f"\ninterrupted; finished batches are saved, continue with --resume --output-dir {output_dir}",
                   err=True)
        raise typer.Exit(code=130)
    for key, reason in summary.failed.items():
        typer.echo(f"warning: skipped {reason}", err=True)
    typer.echo(f"labeled {summary.labeled} images ({summary.skipped} already done) -> {summary.out_dir}")
    if summary.quality:
        typer.echo(f"quality report: {summary.out_dir / 'quality.md'}")


def _one_source(source: Optional[Path], dataset: Optional[Path]) -> Path:
    """Return the input given as SOURCE or --dataset; raise ValueError for none or two different ones."""
    if source is None and dataset is None:
        raise ValueError("give the images to label: SOURCE or --dataset")
    if source is not None and dataset is not None and source != dataset:
        raise ValueError(f"two inputs given: SOURCE {source} and --dataset {dataset}; give one")
    return source if source is not None else dataset


def _mode(mode: Optional[Mode], auto_cl: bool) -> Mode:
    """Return the labeling mode: --mode, else complementary with --auto_cl, else ordinary (the seed's rule)."""
    if auto_cl and mode == Mode.ordinary:
        raise ValueError("--auto_cl asks for complementary labels but --mode is ordinary; give one")
    if auto_cl:
        return Mode.complementary
    return mode or Mode.ordinary


def _fit_candidates_to_classes(settings, num_classes: int) -> int | None:
    """Return the rounds to run when the default candidate sets (4 options, 3 rounds of distinct labels: 6+
    classes) do not fit `num_classes`, after shrinking settings.complementary.num_options, saying so; None when
    they fit. Only for defaults: options or rounds a user set are checked as given."""
    cfg = settings.complementary
    rounds = cfg.rounds
    if cfg.num_options <= num_classes and not (cfg.distinct and rounds - 1 + cfg.num_options > num_classes):
        return None
    options = max(2, min(cfg.num_options, num_classes - rounds + 1 if cfg.distinct else num_classes))
    if cfg.distinct and rounds - 1 + options > num_classes:
        rounds = max(1, num_classes - options + 1)
    typer.secho(f"note: {num_classes} classes: {options} options per question and {rounds} round(s) instead of "
                f"the defaults {cfg.num_options} and {cfg.rounds} (which need at least "
                f"{cfg.rounds - 1 + cfg.num_options} classes); set --num-options / --rounds to choose",
                fg=typer.colors.YELLOW, err=True)
    cfg.num_options, cfg.rounds = options, rounds
    return rounds


def _check_before_loading(settings, mode: Mode, class_names: list[str], rounds: Optional[int], count: int,
                          long_label: bool) -> None:
    """Raise on short names that merge classes and on impossible candidate settings, before a model loads."""
    from labelers.formats.class_names import display_names

    display_names(class_names, long_label)
    if mode == Mode.complementary:
        from labelers.vlm.sampling import CandidateSampler

        cfg = settings.complementary
        CandidateSampler(len(class_names), cfg.num_options, rounds or cfg.rounds, count, cfg.distinct,
                         cfg.balance, cfg.quota_floor, cfg.seed)


def register(app: typer.Typer) -> None:
    """Add the VLM labeling subcommands to the labelloop app."""
    app.command("label")(label)
