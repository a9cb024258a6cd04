"""CLI commands: up, status, robots (filled in by the platform work)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
