"""The ``pamflow`` command. Each module below adds its own commands in ``register(app)``."""

from __future__ import annotations

import sys

import typer

from . import (
    alerts,
    audit,
    backup,
    cloud,
    directory,
    inventory,
    monitors,
    notifications,
    operations,
    platform,
    purge,
    reservations,
    vault,
    webhooks,
)

app = typer.Typer(
    name="pamflow",
    help="pamflow: the background robots of a PAM platform, as Prefect flows.",
    no_args_is_help=True,
    add_completion=False,
)

COMMAND_MODULES = (
    platform,
    inventory,
    reservations,
    operations,
    webhooks,
    vault,
    audit,
    alerts,
    notifications,
    directory,
    cloud,
    purge,
    monitors,
    backup,
)
for module in COMMAND_MODULES:
    module.register(app)


@app.callback()
def _before_every_command() -> None:
    # Prefect clients of this process talk to the server `pamflow up` started with its
    # auth string (read from the data directory; set before Prefect is imported)
    platform.use_local_api_auth()


def main() -> None:
    from pamflow.vault import VaultError

    try:
        app()
    except VaultError as exc:  # a key problem is the operator's to fix: say it, no traceback
        print(f"pamflow: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
