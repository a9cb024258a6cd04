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


@app.callback()
def _before_every_command() -> None:
    # Prefect clients of this process talk to the server `pamflow up` started with its
    # auth string (read from the data directory; set before Prefect is imported)
    platform.use_local_api_auth()


def main() -> None:
    app()
