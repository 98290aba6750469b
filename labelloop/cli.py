"""The `labelloop` console script: one Typer app, each room adds its own subcommands.

Rooms keep heavy imports (torch, transformers) inside their command bodies so that
`labelloop --help` stays instant.
"""
import importlib

import typer

app = typer.Typer(
    name="labelloop",
    help="Label Studio ML backend, active learning, VLM labelers and complementary-label trainers.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# Each module exposes register(app); order sets the order in --help.
COMMAND_MODULES = ("backend.cli", "labelers.cli", "labelers.vlm.cli", "labelers.pseudo.cli", "trainers.cli")
for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
