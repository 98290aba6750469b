"""`labelloop serve`: the Label Studio ML backend on uvicorn (production ASGI server, several workers)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

def serve(
    host: Optional[str] = typer.Option(None, help="Interface to bind (env HOST; default 127.0.0.1; 0.0.0.0 to accept other machines)."),
    port: Optional[int] = typer.Option(None, help="Port (env PORT; default 9090)."),
    workers: Optional[int] = typer.Option(None, help="Worker processes (env WORKERS; default 1)."),
    threads: Optional[int] = typer.Option(None, help="Parallel image downloads per request (env THREADS)."),
    model_dir: Optional[Path] = typer.Option(None, "--model-dir", help="State folder (env MODEL_DIR)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML settings file (env LABELLOOP_CONFIG)."),
    embedder: Optional[str] = typer.Option(None, help="Embedder spec (env LABELLOOP_EMBEDDER; default auto)."),
    strategy: Optional[str] = typer.Option(None, help="margin|entropy|least|random|gaussian, optionally +kmeans, "
                                           "+head|+mix|+lp and +self[N], e.g. margin+kmeans+mix+self (the "
                                           "benchmarks' best; env LABELLOOP_STRATEGY; default margin)."),
    learner: Optional[str] = typer.Option(None, help="head|mix|lp: the head alone, its mean with label spreading "
                                          "over the pool's k-NN graph, or spreading alone (env LABELLOOP_LEARNER; "
                                          "default mix)."),
    predictor: Optional[str] = typer.Option(None, help="head|vlm: what pre-annotates projects (env LABELLOOP_PREDICTOR)."),
    vlm_model: Optional[str] = typer.Option(None, "--vlm-model",
                                            help="VLM preset, hub name or folder (env LABELLOOP_VLM_MODEL)."),
    log_level: Optional[str] = typer.Option(None, "--log-level", help="(env LOG_LEVEL; default INFO)."),
) -> None:
    """Start the Label Studio ML backend (connect it in Label Studio: Settings > Model > Connect Model)."""
    from backend.config import CONFIG_ENV, ConfigError, env_name, load_settings
    from backend.store import StoreError, prepare_model_dir

    options = {"host": host, "port": port, "workers": workers, "threads": threads, "model_dir": model_dir,
               "embedder": embedder, "strategy": strategy, "learner": learner, "log_level": log_level, "predictor": predictor,
               "vlm_model": vlm_model}
    try:
        settings = load_settings(config_path=config, **options)
        prepare_model_dir(settings.model_dir)
    except (ConfigError, StoreError) as exc:
        typer.echo(f"labelloop serve: {exc}", err=True)
        raise typer.Exit(2)
    # Worker processes build their app from the environment: hand them exactly what we resolved here.
    for name, value in options.items():
        if value is not None:
            os.environ[env_name(name)] = str(value)
    os.environ["MODEL_DIR"] = str(Path(settings.model_dir).absolute())
    if config is not None:
        os.environ[CONFIG_ENV] = str(Path(config).absolute())

    import uvicorn

    typer.echo(f"labelloop backend on http://{settings.host}:{settings.port} "
               f"(workers={settings.workers}, MODEL_DIR={os.environ['MODEL_DIR']}, embedder={settings.embedder})",
               err=True)
    if settings.workers == 1:
        # One process: build the app here so a broken setting or MODEL_DIR is a message, not a traceback.
        from backend.app import create_app

        try:
            target = create_app(settings)
        except (ConfigError, StoreError) as exc:
            typer.echo(f"labelloop serve: {exc}", err=True)
            raise typer.Exit(2)
        factory = False
    else:
        # Several processes: uvicorn spawns workers (no fork after loading torch) that each call the factory.
        target, factory = "backend.app:create_app", True
    uvicorn.run(target, factory=factory, host=settings.host, port=settings.port, workers=settings.workers,
                log_level=settings.log_level.lower(), proxy_headers=True, timeout_graceful_shutdown=10)


def status(
    url: str = typer.Option("http://localhost:9090", "--url", help="The backend's URL."),
    user: Optional[str] = typer.Option(None, "--user", help="Basic auth user (BASIC_AUTH_USER of the backend)."),
    password: Optional[str] = typer.Option(None, "--password", envvar="LABELLOOP_STATUS_PASSWORD",
                                           help="Basic auth password (or env LABELLOOP_STATUS_PASSWORD)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also write the learning curve to this PNG."),
) -> None:
    """Show a running backend's projects, versions, training, warm-up, accuracy and last errors."""
    from rich.console import Console

    from backend import status as report

    try:
        metrics, versions = report.fetch(url, (user, password or "") if user else None)
    except report.StatusError as exc:
        typer.echo(f"labelloop status: {exc}", err=True)
        raise typer.Exit(2)
    report.render(metrics, versions, Console())
    if plot is not None:
        drawn = report.plot(versions, list((metrics.get("projects") or {})), plot)
        typer.echo(f"learning curve ({drawn} point(s)) written to {plot}")


def project_embeddings(model_dir: Path, project: str):
    """`labelloop similar --project`: a backend project's cached embeddings (backend.similar, imported here
    so `labelloop --help` stays instant)."""
    from backend.similar import cli_project_embeddings

    return cli_project_embeddings(model_dir, project)


def register(app: typer.Typer) -> None:
    """Add this room's subcommands to the labelloop app."""
    from backend.importer import import_command  # light: the SDK is imported inside the command

    app.command("serve")(serve)
    app.command("import")(import_command)
    app.command("status")(status)
    import labelers.cli

    labelers.cli.PROJECT_EMBEDDINGS = project_embeddings  # `labelloop similar --project`
