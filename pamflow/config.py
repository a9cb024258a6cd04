"""Where pamflow keeps its files and which database it talks to."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """The data directory: ``PAMFLOW_HOME`` or ``~/.pamflow``; created on first use."""
    path = Path(os.environ.get("PAMFLOW_HOME") or Path.home() / ".pamflow").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def database_url() -> str:
    """``PAMFLOW_DATABASE_URL`` or the embedded SQLite file in the data directory."""
    url = os.environ.get("PAMFLOW_DATABASE_URL")
    if url:
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://"):]
        return url
    return f"sqlite:///{data_dir() / 'pamflow.db'}"
