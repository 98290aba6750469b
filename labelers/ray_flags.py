"""The `--ray [--ray-address ADDR] [--actors N] [--gpus-per-actor G]` flags every batch job takes.

Defined once here so `embed`, `label`, `relabel` and `pseudo-label` spell and explain them alike; the
flags become a `labelers.ray_jobs.RayOptions` with `ray_jobs.ray_options`. Importing this imports no Ray.
"""
from typing import Optional

import typer

# No square brackets in the help: Typer's rich markup would swallow "[ray]".
USE_RAY = typer.Option(False, "--ray", help="Run the batches on Ray Data (labelloop's ray extra): an actor "
                                            "pool, the model loaded once per actor; see docs/scale.md.")
RAY_ADDRESS: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster to join (e.g. head:6379 "
                                                                      "or auto; default: RAY_ADDRESS, else a "
                                                                      "local Ray on this machine).")
ACTORS: Optional[int] = typer.Option(None, "--actors", min=1, help="Actors in the pool (default: one per GPU "
                                                                   "share with --gpus-per-actor, else one "
                                                                   "per CPU but one).")
GPUS_PER_ACTOR: float = typer.Option(0.0, "--gpus-per-actor", min=0.0, help="GPUs each actor holds (0: CPU "
                                                                            "actors; 0.5: two per GPU).")
