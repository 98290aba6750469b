"""`labelloop` subcommands of the labelers room."""
import typer


def register(app: typer.Typer) -> None:
    """Add this room's subcommands to the labelloop app."""
