"""The ``pamflow`` command. Each module below adds its own commands in ``register(app)``."""

from __future__ import annotations

import typer

from . import inventory, operations, platform, webhooks

app = typer.Typer(
    name="pamflow",
    help="pamflow: the background robots of a PAM platform, as Prefect flows.",
    no_args_is_help=True,
    add_completion=False,
)

for module in (platform, inventory, operations, webhooks):
    module.register(app)


def main() -> None:
    app()
