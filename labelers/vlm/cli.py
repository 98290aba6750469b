"""`labelloop label`: VLM labeling subcommand (ordinary or complementary labels into a run directory)."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer


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
    source: Path = typer.Argument(..., help="Image folder (ImageFolder tree or flat), CSV (image[,label]) "
                                            "or Label Studio JSON export."),
    mode: Mode = typer.Option(Mode.complementary, help="ordinary: pick the class; complementary: pick a "
                                                       "candidate the image does NOT show."),
    model: Optional[str] = typer.Option(None, help="Preset (llava-next, qwen2-vl), hub name or local folder."),
    rounds: Optional[int] = typer.Option(None, min=1, help="Labels per image (default: 1 ordinary, "
                                                            "the config's rounds (3) complementary)."),
    num_options: Optional[int] = typer.Option(None, min=2, help="Candidates shown per complementary round."),
    long_label: bool = typer.Option(False, "--long-label", help="Full class names (default: last word, "
                                                                "refused if that merges classes)."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Images per forward pass."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --output-dir, skipping "
                                                        "finished images."),
    output_dir: Path = typer.Option(Path("vlm_run"), help="Run directory."),
    method: Optional[Method] = typer.Option(None, help="score (option log-likelihoods) or generate "
                                                       "(free text + strict parser)."),
    max_retries: Optional[int] = typer.Option(None, min=0, help="Re-asks of an unparseable answer."),
    classes: Optional[str] = typer.Option(None, help="Class names, comma-separated or a file with one per "
                                                     "line (default: from the input)."),
    distinct: Optional[bool] = typer.Option(None, "--distinct/--no-distinct", help="Distinct CLs per image."),
    balance: Optional[bool] = typer.Option(None, "--balance/--no-balance", help="-R quota balancing of CLs."),
    seed: Optional[int] = typer.Option(None, help="Seed of the candidate sets."),
    config: Optional[Path] = typer.Option(None, help="YAML merged over configs/vlm.yaml."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, mps."),
    dtype: str = typer.Option("auto", help="auto, bf16, fp16, fp32."),
    local_files_root: Optional[Path] = typer.Option(None, help="Label Studio local-files/media root for "
                                                               "JSON exports."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Label images with a vision-language model into OUTPUT_DIR (auto_labels.csv + labels.jsonl)."""
    from labelers.formats.class_names import ShortNameCollision
    from labelers.vlm.inputs import InputError, read_inputs
    from labelers.vlm.loading import VLMLoadError
    from labelers.vlm.run import RunError
    from labelers.vlm.settings import SettingsError, load_settings

    try:
        complementary = {key: value for key, value in dict(num_options=num_options, distinct=distinct,
                                                           balance=balance, seed=seed).items() if value is not None}
        settings = load_settings(config, method=method.value if method else None, max_retries=max_retries,
                                 batch_size=batch_size, complementary=complementary or None)
        items, class_names = read_inputs(source, _class_list(classes), local_files_root)
        from labelers.formats.class_names import display_names

        display_names(class_names, long_label)  # fail on merging short names before loading a model
        if mode == Mode.complementary:  # and on impossible candidate settings
            from labelers.vlm.sampling import CandidateSampler

            cfg = settings.complementary
            CandidateSampler(len(class_names), cfg.num_options, rounds or cfg.rounds, len(items), cfg.distinct,
                             cfg.balance, cfg.quota_floor, cfg.seed)
    except (InputError, SettingsError, ShortNameCollision, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    try:
        from labelers.vlm.labeler import VLMLabeler
        from labelers.vlm.run import run_labeling

        labeler = VLMLabeler.from_pretrained(model, settings, device=device, dtype=dtype)
        typer.echo(f"{labeler.model_id} on {labeler.vlm.device}: {len(items)} images, {len(class_names)} classes, "
                   f"{mode.value} labels by {settings.method}", err=True)
        summary = run_labeling(labeler, items, class_names, output_dir, mode.value, rounds, long_label, resume,
                               settings.batch_size, settings.method, progress)
    except (VLMLoadError, RunError, ShortNameCollision, ValueError) as exc:
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


def register(app: typer.Typer) -> None:
    """Add the VLM labeling subcommands to the labelloop app."""
    app.command("label")(label)
