"""`labelloop label`: VLM labeling subcommand."""
import typer


def register(app: typer.Typer) -> None:
    """Add the VLM labeling subcommands to the labelloop app."""
