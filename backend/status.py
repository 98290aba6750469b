"""`labelloop status`: what a running backend is doing, read from its /metrics and /versions.

Prints one table of projects (version served and in Label Studio, training state, warm-up progress, accuracy,
suspect labels, what annotators kept of relabel/box suggestions, last error) and the learning curve (estimated accuracy against annotations, one point per published
version); `--plot FILE` writes the curve as a PNG.
"""
from __future__ import annotations

from typing import Any

import httpx
from rich.console import Console
from rich.table import Table


class StatusError(RuntimeError):
    """The backend could not be reached or did not answer as a labelloop backend; the message says which."""


def fetch(url: str, auth: tuple[str, str] | None = None, timeout: float = 10.0) -> tuple[dict, dict]:
    """Return (/metrics, /versions) of the backend at `url`; raises StatusError naming the URL and the cause."""
    base = url.rstrip("/")
    try:
        with httpx.Client(auth=auth, timeout=timeout) as http:
            answers = [http.get(f"{base}{route}") for route in ("/metrics", "/versions")]
    except httpx.HTTPError as exc:
        raise StatusError(f"cannot reach the backend at {base} ({type(exc).__name__}: {exc})") from None
    for answer in answers:
        if answer.status_code == 401:
            raise StatusError(f"{answer.request.url} needs basic auth: pass --user and --password")
        if answer.status_code != 200:
            raise StatusError(f"{answer.request.url} answered HTTP {answer.status_code}: {answer.text[:200]}")
    try:
        return answers[0].json(), answers[1].json()
    except ValueError:
        raise StatusError(f"{base} did not answer JSON: is it a labelloop backend?") from None


def learning_curve(versions: dict, project: str) -> list[dict[str, Any]]:
    """Return [{"model_version", "n", "accuracy", "low", "high"}] of `project`'s versions with an accuracy,
    in publishing order (the x axis is the number of annotations the estimate rests on)."""
    points = []
    for item in versions.get("details") or []:
        accuracy = item.get("accuracy")
        if str(item.get("project")) == str(project) and accuracy:
            points.append({"model_version": item["model_version"], "n": accuracy["n"],
                           "accuracy": accuracy["accuracy"], "low": accuracy["low"], "high": accuracy["high"]})
    return points


def _warm_up(warm: dict | None) -> str:
    if not warm:
        return "-"
    total = warm.get("total")
    text = f"{warm.get('state')} {warm.get('tasks', 0)}/{total if total is not None else '?'}"
    if warm.get("failed"):
        text += f", {warm['failed']} failed"
    if warm.get("rate"):
        text += f", {warm['rate']}/s"
    if warm.get("eta_seconds") and warm.get("state") != "done":
        text += f", ETA {warm['eta_seconds']:.0f}s"
    return text


def _accuracy(accuracy: dict | None) -> str:
    if not accuracy:
        return "-"
    return f"{accuracy['accuracy']:.0%} [{accuracy['low']:.0%}, {accuracy['high']:.0%}] n={accuracy['n']}"


def _suspects(suspects: dict | None) -> str:
    """Return e.g. "3 of 120 judged", "off" or "not judged: <reason>" for the suspects column."""
    if not suspects:
        return "-"
    state = suspects.get("state")
    if state == "off":
        return "off"
    if state == "judged":
        text = f"{suspects['suspects']} of {suspects['judged']} judged"
        if suspects.get("not_judged"):
            text += f" ({suspects['not_judged']} not judged)"
        review = suspects.get("label_studio") or {}
        if review.get("error"):
            text += f"; not shown in Label Studio: {review['error']}"
        return text
    reasons = "; ".join(suspects.get("reasons") or []) or "no reason given"
    return f"{'not judged' if state == 'not_judged' else 'audit failed'}: {reasons}"


def _suggestions(summary: dict | None) -> str:
    """Return e.g. "kept 17, removed 5, added 3 (77%) in 12 annotations" for the suggestions column."""
    if not summary:
        return "-"
    share = f" ({summary['kept_share']:.0%})" if summary.get("kept_share") is not None else ""
    return (f"kept {summary['kept']}, removed {summary['removed']}, added {summary['added']}{share} "
            f"in {summary['annotations']} annotations")


def _learner(project: dict) -> str:
    """Return e.g. "mix", "head" or "head (mix not used: <reason>)" for the learner column."""
    learner = project.get("learner")
    if not learner:
        return "-"
    if learner.get("used") == learner.get("configured"):
        return str(learner.get("used"))
    return f"{learner.get('used')} ({learner.get('configured')} not used: {learner.get('fallback')})"


def _training(training: dict) -> str:
    """Return e.g. "running run 7 (pid 4242, heartbeat 1s ago) (succeeded 6)" for the training column: the state
    every worker agrees on (/metrics reads it from the store), the live run, runs whose process died."""
    runs = training.get("runs") or {}
    text = str(training.get("state"))
    running = training.get("running")
    if running:
        text += f" run {running['id']} (pid {running['pid']}, heartbeat {running.get('heartbeat_age', 0):.0f}s ago)"
    for dead in training.get("interrupted") or []:
        text += f"; run {dead['id']} died with pid {dead['pid']}, resuming"
    return f"{text} ({', '.join(f'{k} {v}' for k, v in sorted(runs.items())) or 'no runs'})"


def _last_error(project: dict) -> str:
    training = project.get("training") or {}
    failure = training.get("last_failure")
    warm = project.get("warm_cache") or {}
    errors = []
    if failure:
        errors.append(f"training: {failure.get('error')}")
    if warm.get("state") in ("failed", "retrying") and warm.get("last_error"):
        errors.append(f"warm-up: {warm['last_error']}")
    elif warm.get("last_task_error"):
        errors.append(f"images: {warm['last_task_error']}")
    predictor = project.get("predictor") or {}
    if predictor.get("error"):
        errors.append(f"predictor: {predictor['error']}")
    return "; ".join(errors) or "-"


COLUMNS = ("project", "version", "in Label Studio", "annotations", "training", "warm-up", "accuracy", "learner",
           "suspects", "suggestions", "last error")


def _project_cells(pid: str, project: dict) -> list[str]:
    training = project.get("training") or {}
    return [str(pid), project.get("model_version") or "-", project.get("label_studio_model_version") or "not yet",
            str(project.get("annotations", 0)), _training(training), _warm_up(project.get("warm_cache")),
            _accuracy(project.get("accuracy")), _learner(project), _suspects(project.get("suspects")),
            _suggestions(project.get("suggestions")), _last_error(project)]


def render(metrics: dict, versions: dict, console: Console) -> None:
    """Print the projects table and each project's learning curve to `console`. A console too narrow for
    the table (an 80-column terminal) gets one field-per-line table per project instead of folded columns."""
    projects = metrics.get("projects") or {}
    rows = [_project_cells(pid, project) for pid, project in projects.items()]
    table = Table(title="labelloop projects")
    for column in COLUMNS:
        table.add_column(column, overflow="fold")
    for cells in rows:
        table.add_row(*cells)
    if console.measure(table, options=console.options.update_width(10_000)).maximum <= console.width:
        console.print(table)
    else:
        for cells in rows:
            card = Table(title=f"labelloop project {cells[0]}", show_header=False)
            card.add_column("field", style="bold", no_wrap=True)
            card.add_column("value", overflow="fold")
            for column, value in zip(COLUMNS[1:], cells[1:]):
                card.add_row(column, value)
            console.print(card)
    for pid in projects:
        curve = learning_curve(versions, pid)
        if not curve:
            continue
        points = Table(title=f"project {pid}: learning curve")
        for column in ("annotations", "accuracy", "95% CI", "version"):
            points.add_column(column)
        for p in curve:
            points.add_row(str(p["n"]), f"{p['accuracy']:.1%}", f"{p['low']:.1%} - {p['high']:.1%}",
                           p["model_version"])
        console.print(points)


def plot(versions: dict, projects: list[str], path) -> int:
    """Write the learning curves of `projects` (accuracy with its 95 % interval against annotations) to the
    PNG `path`; returns how many points were drawn (0 draws an empty figure that says so)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = 0
    for pid in projects:
        curve = learning_curve(versions, pid)
        if not curve:
            continue
        n = [p["n"] for p in curve]
        ax.plot(n, [p["accuracy"] for p in curve], marker="o", label=f"project {pid}")
        ax.fill_between(n, [p["low"] for p in curve], [p["high"] for p in curve], alpha=0.2)
        drawn += len(curve)
    if not drawn:
        ax.text(0.5, 0.5, "no version with an accuracy yet", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend()
    ax.set_xlabel("annotations")
    ax.set_ylabel("estimated accuracy (k-fold, 95% CI)")
    ax.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return drawn
