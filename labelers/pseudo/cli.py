"""`labelloop pseudo-label`: detection pseudo-labels for a folder or COCO file, and `... merge` for shards."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperGroup

from labelers import ray_flags


class _RunByDefault(TyperGroup):
    """`pseudo-label SOURCE ...` means `pseudo-label run SOURCE ...`; `pseudo-label merge ...` merges."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


pseudo_app = typer.Typer(cls=_RunByDefault, help="Detection pseudo-labels (CoT-PL): SAM or classical masks, "
                                                 "three VLM questions, COCO / raw / Label Studio outputs.",
                         no_args_is_help=True)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


def _labels(spec: Optional[str]) -> Optional[list[str]]:
    if not spec:
        return None
    path = Path(spec)
    if path.is_file():
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [name.strip() for name in spec.split(",") if name.strip()]


def records_name(start: int, end: Optional[int]) -> str:
    """Return the shard's JSONL name: records-<start>-<end or all>.jsonl."""
    return f"records-{start}-{end if end is not None else 'all'}.jsonl"


def _check_base(base: Path) -> None:
    import json

    from labelers.pseudo.coco import CocoError, check_coco

    try:
        check_coco(json.loads(base.read_text(encoding="utf-8")), str(base))
    except (OSError, json.JSONDecodeError, CocoError) as exc:
        _fail(f"--base: {exc}")


def _list_source(source: Path, images_root: Optional[Path], image_key: Optional[str]):
    """Return (items, category names or None) of an image folder, COCO file or Label Studio export."""
    import json

    from labelers.pseudo.run import list_coco, list_folder, list_label_studio

    if source.is_dir():
        return list_folder(source), None
    if source.suffix != ".json" or not source.is_file():
        raise ValueError(f"{source}: not an image folder, a COCO .json file or a Label Studio .json export")
    try:
        payload = json.loads(source.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: not valid JSON ({exc})") from None
    if isinstance(payload, dict) and "images" in payload:
        return list_coco(source, images_root)
    return list_label_studio(source, images_root, image_key), None


@pseudo_app.command("run")
def run(
    source: Path = typer.Argument(..., help="Image folder, COCO instances JSON or Label Studio JSON export."),
    images_root: Optional[Path] = typer.Option(None, "--image-root", "--images-root",
                                               help="Folder a COCO file's or Label Studio export's images are "
                                                    "found under (default: the file's folder; --images-root is "
                                                    "the older spelling)."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Categories: comma list or a file, one per line "
                                                                "(default: a COCO file's categories; none: open "
                                                                "vocabulary, names generated)."),
    open_vocabulary: bool = typer.Option(False, "--open-vocabulary", help="Generate names even for a COCO "
                                                                          "source with categories."),
    image_key: Optional[str] = typer.Option(None, "--image-key", help="Label Studio export: the data key "
                                                                      "holding the image (default: image)."),
    start: int = typer.Option(0, "--start", min=0, help="First image (position in id order), as in the seed."),
    end: Optional[int] = typer.Option(None, "--end", min=1, help="One past the last image."),
    output_dir: Path = typer.Option(Path("pseudo_run"), "--output-dir", "--output_dir"),
    resume: bool = typer.Option(False, "--resume", help="Continue the shard in --output-dir, skipping finished "
                                                        "images."),
    proposer: Optional[str] = typer.Option(None, "--proposer", help="sam or felzenszwalb (default: config)."),
    sam: Optional[str] = typer.Option(None, "--sam", help="SAM hub name or local folder."),
    model: Optional[str] = typer.Option(None, "--model", help="VLM preset, hub name or local folder."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML merged over configs/pseudo.yaml."),
    base: Optional[Path] = typer.Option(None, "--base", help="Base COCO instances file to merge into."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Images per batch (written after each)."),
    masks: bool = typer.Option(False, "--masks", help="Keep RLE masks in records and COCO."),
    device: str = typer.Option("auto", "--device"),
    use_ray: bool = ray_flags.USE_RAY,
    ray_address: Optional[str] = ray_flags.RAY_ADDRESS,
    actors: Optional[int] = ray_flags.ACTORS,
    gpus_per_actor: float = ray_flags.GPUS_PER_ACTOR,
) -> None:
    """Pseudo-label the images [start, end) of SOURCE into --output-dir."""
    from labelers.pseudo.proposals import ProposerError, make_proposer
    from labelers.ray_jobs import RayRunError, pseudo_labeling_on_ray, ray_options
    from labelers.pseudo.run import PseudoRunError, run_pseudo_labels, write_outputs
    from labelers.pseudo.settings import PseudoSettingsError, load_pseudo_settings
    from labelers.vlm.loading import VLMLoadError, load_vlm, pick_device
    from labelers.vlm.settings import load_settings

    overrides = {k: v for k, v in {"proposer": proposer, "model": model}.items() if v}
    if sam:
        overrides["sam"] = {"model": sam}
    try:
        settings = load_pseudo_settings(config, overrides)
    except (PseudoSettingsError, FileNotFoundError) as exc:
        _fail(str(exc))
    try:
        items, names = _list_source(source, images_root, image_key)
    except (PseudoRunError, ValueError) as exc:
        _fail(str(exc))
    if base is not None:  # a bad base file is refused now, not after hours of labeling
        _check_base(base)
    categories = None if open_vocabulary else (_labels(labels) or names or None)
    typer.echo(f"{len(items)} images; categories: " +
               (", ".join(categories) if categories else "open vocabulary (generated names)"))
    if end is not None and end <= start:
        _fail(f"--end {end} must be greater than --start {start}")
    items = items[start:end]
    try:
        vlm_settings, ray = load_settings(), ray_options(use_ray, ray_address, actors, gpus_per_actor)
        if ray is not None:  # the actors build the proposer and the VLM
            props, vlm, label_batches = pseudo_labeling_on_ray(settings, device, ray)
        else:
            torch_device = pick_device(device)
            props = make_proposer(settings.proposer, settings.sam, settings.felzenszwalb, device=str(torch_device))
            vlm, label_batches = load_vlm(settings.model, vlm_settings, device=device), None
    except (ProposerError, VLMLoadError, ValueError) as exc:
        _fail(str(exc))
    records_path = output_dir / records_name(start, end)
    try:
        summary = run_pseudo_labels(items, props, vlm, categories, settings, records_path, resume=resume,
                                    batch_size=batch_size, answer_prefix=vlm_settings.prefix_for(vlm.model_type),
                                    save_masks=masks, label_batches=label_batches)
    except (PseudoRunError, RayRunError) as exc:
        _fail(str(exc))
    from labelers.pseudo.run import read_records

    files = write_outputs(read_records(records_path), output_dir, categories, base,
                          model_version=f"pseudo-{props.name}-{Path(vlm.model_id).name}")
    typer.echo(f"{summary['done']} images labeled, {summary['skipped']} skipped (resume), "
               f"{summary['errors']} unreadable, {summary['no_regions']} without regions, "
               f"{summary['unnamed']} regions unnamed; records: {records_path}")
    for name, path in files.items():
        typer.echo(f"{name}: {path}")


@pseudo_app.command("merge")
def merge(
    shards: List[Path] = typer.Argument(..., help="Shard records-*.jsonl files or run folders."),
    output_dir: Path = typer.Option(Path("pseudo_merged"), "--output-dir", "--output_dir"),
    labels: Optional[str] = typer.Option(None, "--labels", help="Category order for COCO ids (default: first "
                                                                "appearance)."),
    base: Optional[Path] = typer.Option(None, "--base", help="Base COCO instances file to merge into."),
    exclude: Optional[str] = typer.Option(None, "--exclude", help="Categories moved to background: comma list "
                                                                  "or file (e.g. the base classes)."),
    exclude_keywords: Optional[str] = typer.Option(None, "--exclude-keywords", help="Keywords (whole words) "
                                                   "whose categories move to background: comma list or file."),
    substring: bool = typer.Option(False, "--substring", help="Match keywords as substrings (CoT-PL: 'man' "
                                                              "hits 'woman')."),
    min_count: int = typer.Option(0, "--min-count", min=0, help="Frequency cut: keep categories with at least "
                                                                "this many foreground boxes (CoT-PL: 1294)."),
    cross_nms: Optional[float] = typer.Option(None, "--cross-nms", min=0.0, max=1.0,
                                              help="Cross-category box NMS IoU: one label per object."),
    class_weights_file: Optional[Path] = typer.Option(None, "--class-weights", help="Write the detector's "
                                                      "class-weight vector here (needs --base)."),
    base_classes: Optional[str] = typer.Option(None, "--base-classes", help="Trained base classes for the "
                                               "weights (default: base categories with annotations)."),
    map_to: Optional[str] = typer.Option(None, "--map-to", help="Map box names onto this label set (comma list "
                                         "or file): exact, synonym list, then --text-encoder similarity."),
    synonyms: Optional[str] = typer.Option(None, "--synonyms", help="Synonyms over the packaged list: a YAML "
                                           "file (name: list of synonyms) or pairs 'puppy=dog,kitty=cat'."),
    merge_synonyms: bool = typer.Option(False, "--merge-synonyms", help="Rename synonyms to one name (without "
                                        "--map-to; implied by --synonyms)."),
    text_encoder: Optional[str] = typer.Option(None, "--text-encoder", help="Embedder spec with a text tower "
                                               "(open_clip:...) for similarity mapping."),
    min_similarity: float = typer.Option(0.8, "--min-similarity", help="Cosine similarity an embedding match "
                                         "needs."),
    unmapped: str = typer.Option("drop", "--unmapped", help="drop (kept in records.jsonl under 'unmapped', out "
                                 "of the outputs) or keep (under their own names); counted either way."),
) -> None:
    """Merge shard records into one set of raw / COCO / Label Studio files (overlapping shards refused),
    with CoT-PL's post-processing as options."""
    import json

    from labelers.pseudo import postprocess
    from labelers.pseudo.coco import CocoError
    from labelers.pseudo.run import PseudoRunError, merge_records, write_outputs, write_records
    from labelers.pseudo.vocabulary import VocabularyError

    paths = []
    for shard in shards:
        found = sorted(shard.glob("records-*.jsonl")) if shard.is_dir() else [shard]
        if not found or not all(p.is_file() for p in found):
            _fail(f"{shard}: no shard records found")
        paths += found
    if class_weights_file and not base:
        _fail("--class-weights needs --base (the weights follow the merged category list)")
    try:
        records = merge_records(paths)
        shards_count = len(records)
        records = _names(records, output_dir, map_to, synonyms, merge_synonyms, text_encoder, min_similarity,
                         unmapped)
        if exclude or exclude_keywords:
            records = postprocess.exclude_categories(records, _labels(exclude) or (), _labels(exclude_keywords) or (),
                                                     substring)
        if cross_nms is not None:
            records = postprocess.cross_category_nms(records, cross_nms)
        if min_count:
            records, kept = postprocess.frequency_cut(records, min_count)
            typer.echo(f"frequency cut >= {min_count}: {len(kept)} categories kept: {', '.join(kept)}")
        files = write_outputs(records, output_dir, _labels(labels) or _labels(map_to), base)
        # The merged, post-processed records too: the source `labelloop export` converts from.
        files["records"] = write_records(records, output_dir / "records.jsonl")
    except (PseudoRunError, CocoError, VocabularyError) as exc:
        _fail(str(exc))
    typer.echo(f"{shards_count} images from {len(paths)} shards")
    if class_weights_file:
        merged = json.loads(files["merged"].read_text(encoding="utf-8"))
        base_data = json.loads(base.read_text(encoding="utf-8"))
        names = {c["id"]: c["name"] for c in base_data["categories"]}
        trained = _labels(base_classes) or sorted({names[a["category_id"]] for a in base_data["annotations"]})
        pseudo = postprocess.category_counts(records)
        weights = postprocess.class_weights(merged["categories"], trained, pseudo)
        postprocess.write_class_weights(class_weights_file, weights,
                                        [c["name"] for c in sorted(merged["categories"], key=lambda c: c["id"])])
        typer.echo(f"class weights ({len(weights)}): {class_weights_file}")
    for name, path in files.items():
        typer.echo(f"{name}: {path}")


def _names(records, output_dir: Path, map_to, synonyms, merge_synonyms, text_encoder, min_similarity, unmapped):
    """Return records with names mapped onto --map-to (report printed and written to name_mapping.json),
    or synonyms merged, or unchanged."""
    import json

    from labelers.pseudo import vocabulary

    if not (map_to or synonyms or merge_synonyms):
        return records
    table = vocabulary.load_synonyms(synonyms)
    if not map_to:
        records, renamed = vocabulary.merge_synonyms(records, table)
        typer.echo(f"synonyms merged: {sum(renamed.values())} boxes renamed " +
                   ", ".join(f"{a}->{b} {n}" for (a, b), n in renamed.most_common(10)))
        return records
    if unmapped not in vocabulary.UNMAPPED_ACTIONS:
        _fail(f"--unmapped must be one of {', '.join(vocabulary.UNMAPPED_ACTIONS)}, got {unmapped!r}")
    encoder = None
    if text_encoder:
        from labelers.embedders import EmbedderUnavailable, make_embedder

        try:
            encoder = make_embedder(text_encoder)
            encoder.encode_texts(["probe"])
        except (EmbedderUnavailable, NotImplementedError, ValueError) as exc:
            _fail(f"--text-encoder {text_encoder}: {exc}")
    mapper = vocabulary.NameMapper(_labels(map_to), table, encoder, min_similarity)
    records, report = vocabulary.map_records(records, mapper, unmapped)
    typer.echo(report.summary())
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "name_mapping.json").write_text(json.dumps(report.as_dict(), indent=1), encoding="utf-8")
    return records  # merge writes them to records.jsonl, unmapped boxes included


def register(app: typer.Typer) -> None:
    """Add `pseudo-label` (run by default, and merge) to the labelloop app."""
    app.add_typer(pseudo_app, name="pseudo-label")
