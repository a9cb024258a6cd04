"""Shared test set-up. Environment first: before anything imports Prefect or pamflow."""

from __future__ import annotations

import base64
import os
import secrets
import tempfile
from pathlib import Path

_HOME = Path(tempfile.mkdtemp(prefix="pamflow-tests-"))
os.environ.update(
    {
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PAMFLOW_HOME": str(_HOME / "pamflow"),
        "PAMFLOW_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "PREFECT_HOME": str(_HOME / "prefect-client"),
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PAMFLOW_NOTIFICATIONS_STRICT": "1",  # a template missing a variable fails the test
    }
)
os.environ.pop("PAMFLOW_DATABASE_URL", None)

from pamflow.platform import free_port  # noqa: E402

# the session's Prefect server (tests/fixtures/prefect_server.py) starts on this port on first use
_PREFECT_PORT = free_port()
os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{_PREFECT_PORT}/api"
os.environ["PAMFLOW_TEST_PREFECT_SERVER_HOME"] = str(_HOME / "prefect-server")

pytest_plugins = [
    "tests.fixtures.peers",
    "tests.fixtures.stores",
    "tests.fixtures.prefect_server",
    "tests.fixtures.sshd",
    "tests.fixtures.winrm",
    "tests.fixtures.slapd",
    "tests.fixtures.smtpd",
]


import pytest  # noqa: E402


@pytest.fixture
def target_env(monkeypatch):
    """Quiet events, a 10 s target timeout, fresh password targets, and no registered
    target factory left behind (tests that swap a target register one)."""
    from pamflow.targets import reset_targets

    monkeypatch.setenv("PAMFLOW_EMIT_EVENTS", "0")
    monkeypatch.setenv("PAMFLOW_TARGET_TIMEOUT", "10")
    reset_targets()
    yield
    import pamflow.targets as targets

    targets._factories.clear()
    reset_targets()
