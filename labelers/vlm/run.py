"""A labeling run directory: ``run.json``, ``labels.jsonl`` (written as it goes), ``auto_labels.csv``,
``label_set.csv`` and, with ground truth, the quality report.

``labels.jsonl`` holds one record per (image, round) and is flushed and fsynced after every batch,
so a killed run loses at most the batch in flight. ``resume=True`` keeps every image whose rounds
are all recorded, drops partial ones (and a torn last line), and labels the rest.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from labelers.formats.auto_labels import UNPARSEABLE, write_auto_labels
from labelers.formats.class_names import display_names
from labelers.vlm.sampling import CandidateSampler

SCHEMA = "labelloop.vlm-labels/1"
JSONL_NAME, RUN_NAME, CSV_NAME, SET_NAME = "labels.jsonl", "run.json", "auto_labels.csv", "label_set.csv"
# Settings that must match for a resume to mix old and new answers.
# batch_size is one: -R quotas are updated once per batch (so the candidate draws depend on it), and
# padding changes scores in their last digits.
RESUME_KEYS = ("mode", "method", "model_id", "prompt_hash", "class_names", "long_label", "rounds",
               "num_options", "distinct", "balance", "seed", "max_retries", "batch_size")


class RunError(RuntimeError):
    """The run directory cannot be used (exists without --resume, or resume settings differ)."""


@dataclass
class RunSettings:
    mode: str
    method: str
    model_id: str
    prompt_hash: str
    class_names: list[str]
    long_label: bool
    rounds: int
    num_options: int | None
    distinct: bool | None
    balance: bool | None
    seed: int | None
    max_retries: int
    batch_size: int | None = None
    schema: str = SCHEMA


def run_settings(settings, mode: str, class_names: Sequence[str], long_label: bool, rounds: int | None,
                 method: str | None, batch_size: int | None, model_id: str,
                 prompt_hash: str | None) -> RunSettings:
    """Return the RunSettings of a run (what ``run.json`` records and a resume must match).

    ``prompt_hash`` is None before the model is loaded (the chat template is part of it).
    """
    cfg = settings.complementary
    cl = mode == "complementary"  # candidate settings mean nothing for ordinary labels
    return RunSettings(mode, method or settings.method, model_id, prompt_hash, list(class_names), long_label,
                       rounds or (cfg.rounds if cl else 1), cfg.num_options if cl else None,
                       cfg.distinct if cl else None, cfg.balance if cl else None, cfg.seed if cl else None,
                       settings.max_retries, batch_size or settings.batch_size)


def check_run_dir(out_dir: str | Path, run: RunSettings, resume: bool) -> None:
    """Raise RunError when ``out_dir`` cannot take this run: it holds a run and ``resume`` is off, or
    ``resume`` is on and a setting differs from the earlier run's ``run.json``.

    Settings that are None here (the prompt hash before the model is loaded) are not compared; the
    CLI calls this before loading the model, and the run calls it again with every setting known.
    """
    out_dir = Path(out_dir)
    jsonl, meta = out_dir / JSONL_NAME, out_dir / RUN_NAME
    if not resume:
        if jsonl.exists() or meta.exists():
            raise RunError(f"{out_dir} already holds a run; pass --resume to continue it or choose another "
                           f"--output-dir")
        return
    if not meta.exists():
        return
    old, new = json.loads(meta.read_text(encoding="utf-8")), asdict(run)
    diff = [k for k in RESUME_KEYS if new.get(k) is not None and old.get(k) != new.get(k)]
    if diff:
        raise RunError(f"cannot resume {out_dir}: {', '.join(diff)} differ from the earlier run "
                       f"({'; '.join(f'{k}: earlier {old.get(k)!r}, now {new.get(k)!r}' for k in diff)})")


@dataclass
class RunSummary:
    out_dir: Path
    labeled: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    quality: dict | None = None


def answer_record(key: str, path: str | Path, round_index: int, answer, names: Sequence[str], run: RunSettings,
                  true_label: int | None, index: int | None = None) -> dict:
    """Return the JSONL record of one image and round (see docs/vlm-labeling.md for the fields).

    ``path`` is stored absolute, so the run can be read from any working directory; ``index`` is the
    image's position in the input, so readers can restore the input order (the JSONL is written in
    processing order, which -R balancing shuffles).
    """
    q = answer.question
    return {
        "schema": SCHEMA, "image": key, "index": index, "path": str(Path(path).absolute()), "round": round_index,
        "mode": run.mode,
        "method": answer.method, "candidates": list(q.shown), "candidate_names": list(q.names),
        "letters": q.letters, "raw_answers": answer.raw, "attempts": answer.attempts,
        "status": answer.status, "label": answer.choice,
        "label_name": names[answer.choice] if answer.choice is not None else UNPARSEABLE,
        "option_logprobs": answer.option_logprobs, "option_probs": answer.option_probs,
        "model_id": run.model_id, "prompt_hash": run.prompt_hash, "true_label": true_label,
    }


def _load_records(path: Path, rounds: int) -> dict[str, list[dict]]:
    """Return {image key: its records sorted by round} for images with every round recorded."""
    by_image: dict[str, dict[int, dict]] = {}
    if not path.exists():
        return {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill mid-write
            if isinstance(record, dict) and "round" in record and "image" in record:
                by_image.setdefault(record["image"], {})[int(record["round"])] = record
    return {key: [rec[r] for r in range(rounds)] for key, rec in by_image.items()
            if all(r in rec for r in range(rounds))}


def _prepare_dir(out_dir: Path, run: RunSettings, resume: bool) -> dict[str, list[dict]]:
    check_run_dir(out_dir, run, resume)
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl, meta = out_dir / JSONL_NAME, out_dir / RUN_NAME
    if not resume or not meta.exists():
        meta.write_text(json.dumps(asdict(run), indent=2), encoding="utf-8")
    if not resume:
        return {}
    done = _load_records(jsonl, run.rounds)
    # Rewrite with complete images only, so partial images and torn lines do not linger.
    tmp = jsonl.with_name(JSONL_NAME + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for records in done.values():
            fh.writelines(json.dumps(r) + "\n" for r in records)
    tmp.replace(jsonl)
    return done


def label_batch(labeler, batch: Sequence, sampler: CandidateSampler | None, class_names: Sequence[str], mode: str,
                rounds: int, long_label: bool, method: str, batch_size: int) -> tuple[list, list, dict[str, str]]:
    """Return (the items of ``batch`` whose image loaded, their answers per round, {key: error} of the rest).

    The per-batch step of a run, the same in one process and on Ray (labelers.ray_jobs); ``sampler`` draws
    the complementary candidates (None for ordinary labels).
    """
    from labelers.images import ImageLoadError, load_image

    loaded, images, failed = [], [], {}
    for item in batch:
        try:
            images.append(load_image(item.path, name=item.key))
            loaded.append(item)
        except ImageLoadError as exc:
            failed[item.key] = str(exc)
    if not loaded:
        return loaded, [], failed
    keys = [item.key for item in loaded]
    if mode == "complementary":
        answers = labeler.complementary(images, class_names, keys, sampler, long_label, method, batch_size)
    else:
        answers = labeler.ordinary(images, class_names, keys, rounds, long_label, method, batch_size)
    return loaded, answers, failed


def run_labeling(labeler, items: Sequence, class_names: Sequence[str], out_dir: str | Path, mode: str,
                 rounds: int | None = None, long_label: bool = True, resume: bool = False,
                 batch_size: int | None = None, method: str | None = None, progress: bool = True,
                 on_batch: Callable[[int], None] | None = None,
                 run_batches: Callable | None = None) -> RunSummary:
    """Label ``items`` (ImageItems) into ``out_dir``; return a RunSummary.

    ``mode`` is ``ordinary`` or ``complementary``; ``rounds`` defaults to 1 (ordinary) or the
    settings' complementary rounds. Unreadable images are reported in ``summary.failed`` and left
    out of ``auto_labels.csv``; the rest is still labeled. Raises RunError for a directory that
    holds another run, ShortNameCollision when short names merge classes.

    ``run_batches(batches, step)`` maps the batches to `label_batch` results in order, given ``step``
    (label_batch's keyword arguments after the sampler); by default they run here one after another
    (labelers.ray_jobs.labeling_on_ray runs them on Ray, ``labeler`` then only names the model and prompts).
    """
    from tqdm import tqdm

    settings = labeler.settings
    cfg = settings.complementary
    method = method or settings.method
    batch_size = batch_size or settings.batch_size
    rounds = rounds or (cfg.rounds if mode == "complementary" else 1)
    names = display_names(list(class_names), long_label)
    if UNPARSEABLE in (name.lower() for name in names):
        raise ValueError(f"a class may not be called {UNPARSEABLE!r}: auto_labels.csv uses that word for "
                         f"answers that could not be parsed")
    out_dir = Path(out_dir)
    run = run_settings(settings, mode, class_names, long_label, rounds, method, batch_size, labeler.model_id,
                       labeler.prompt_hash(method))
    sampler = None
    if mode == "complementary":
        sampler = CandidateSampler(len(names), cfg.num_options, rounds, len(items), cfg.distinct, cfg.balance,
                                   cfg.quota_floor, cfg.seed)
    done = _prepare_dir(out_dir, run, resume)
    for records in done.values():
        for record in records:
            if sampler is not None:
                sampler.record(record["label"])
    order = sampler.processing_order([i.key for i in items]) if sampler else list(range(len(items)))
    todo = [items[i] for i in order if items[i].key not in done]
    index = {name: i for i, name in enumerate(class_names)}
    position = {item.key: i for i, item in enumerate(items)}
    summary = RunSummary(out_dir, skipped=len(items) - len(todo))
    bar = tqdm(total=len(items), initial=summary.skipped, unit="img", desc=f"{mode} labels", disable=not progress)
    batches = [todo[start:start + batch_size] for start in range(0, len(todo), batch_size)]
    step = dict(class_names=list(class_names), mode=mode, rounds=rounds, long_label=long_label, method=method,
                batch_size=batch_size)
    results = run_batches(batches, step) if run_batches is not None else \
        (label_batch(labeler, batch, sampler, **step) for batch in batches)  # lazily: quotas move per batch
    with open(out_dir / JSONL_NAME, "a", encoding="utf-8") as fh:
        for todo_batch, (batch, answers, failed) in zip(batches, results):
            summary.failed.update(failed)
            if batch:
                for item, per_round in zip(batch, answers):
                    truth = index.get(item.label) if item.label is not None else None
                    records = [answer_record(item.key, item.path, r, a, names, run, truth, position[item.key])
                               for r, a in enumerate(per_round)]
                    fh.writelines(json.dumps(rec) + "\n" for rec in records)
                    done[item.key] = records
                fh.flush()
                os.fsync(fh.fileno())
            summary.labeled += len(batch)
            bar.update(len(todo_batch))
            if on_batch is not None:
                on_batch(summary.labeled)
    bar.close()
    _write_tables(out_dir, items, done)
    summary.quality = _maybe_report(out_dir, items, done, class_names, run)
    return summary


def _write_tables(out_dir: Path, items: Sequence, done: dict[str, list[dict]]) -> None:
    """auto_labels.csv and label_set.csv in input order (the seed trainers assume dataset order)."""
    rows = [(item.key, [r["label_name"] for r in done[item.key]]) for item in items if item.key in done]
    write_auto_labels(out_dir / CSV_NAME, rows)
    sets = [(item.key, [",".join(r["candidate_names"]) for r in done[item.key]]) for item in items
            if item.key in done]
    write_auto_labels(out_dir / SET_NAME, sets)


def _maybe_report(out_dir: Path, items: Sequence, done: dict[str, list[dict]], class_names, run: RunSettings):
    if not items or any(item.label is None for item in items):
        return None
    from labelers.vlm.quality import quality_report, write_quality_report

    records = [r for item in items if item.key in done for r in done[item.key]]
    report = quality_report(records, list(class_names), run.mode, run.num_options)
    write_quality_report(report, out_dir)
    return report
