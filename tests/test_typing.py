"""The type checker runs in the test command, and the checks that replaced unchecked ``None``s.

``scripts/test`` runs ``mypy`` (configured in pyproject.toml over ``pamflow/``, ``flows/``,
``tasks/`` and ``blocks/``) after ruff and before pytest, and a type error fails it. Where a
value the code used to assume present can be absent, it is now refused with an error that
names what is missing, before anything is written.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from sqlmodel import Session, select

from pamflow.errors import PamflowError
from pamflow.hostkeys import pin
from pamflow.models import AuditLog, Credential, Device, HostKey, NotStored, row_id
from pamflow.vault import vault

ROOT = Path(__file__).resolve().parents[1]
KEY_LINE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def test_the_test_command_type_checks_the_four_packages_between_lint_and_tests(tmp_path):
    lines = [line.strip() for line in (ROOT / "scripts/test").read_text().splitlines()]
    ruff = lines.index(".venv/bin/ruff check .")
    mypy = lines.index(".venv/bin/python -m mypy")
    pytest_line = next(i for i, line in enumerate(lines)
                       if line.startswith("exec .venv/bin/python -m pytest"))
    assert ruff < mypy < pytest_line
    assert "set -euo pipefail" in (ROOT / "scripts/_env.sh").read_text()  # a failing step stops the run
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["tool"]["mypy"]["files"] == ["pamflow", "flows", "tasks", "blocks"]
    assert "mypy" in config["project"]["optional-dependencies"]["test"]
    lock = (ROOT / "requirements-test.lock").read_text().splitlines()
    assert any(line.startswith("mypy==") for line in lock)

    # with the project's configuration, a type error makes the checker exit non-zero
    bad = tmp_path / "bad.py"
    bad.write_text("def half(n: int) -> int:\n    return n / 2\n")
    res = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                          "--cache-dir", str(tmp_path / "cache"), str(bad)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    assert 'bad.py:2: error: Incompatible return value type (got "float", expected "int")' in res.stdout


def test_a_row_without_an_id_is_refused_naming_its_table(store):
    with pytest.raises(NotStored, match="^device row has no id: it was not written to the store$") as err:
        row_id(Device(name="web-1", address="10.0.0.1"))
    assert isinstance(err.value, PamflowError)
    with Session(store) as db:
        dev = Device(name="web-1", address="10.0.0.1")
        db.add(dev)
        db.flush()
        assert row_id(dev) == dev.id and isinstance(dev.id, int)


def test_pinning_a_host_key_for_an_unsaved_device_writes_nothing(store):
    with Session(store) as db:
        with pytest.raises(NotStored, match="device row has no id"):
            pin(db, Device(name="web-1", address="10.0.0.1", ports=[22]), KEY_LINE)
        db.commit()  # nothing was left behind to write
    with Session(store) as db:
        assert db.exec(select(HostKey)).all() == []
        assert db.exec(select(AuditLog)).all() == []


def test_promoting_a_credential_without_a_pending_secret_is_refused(store):
    from pamflow.credentials.store import PromoteRefused, _promote
    from pamflow.models import utcnow

    cred = Credential(id=7, device_id=3, username="svc-backup", secret=None, pending_secret=None)
    with Session(store) as db:
        with pytest.raises(PromoteRefused, match=r"^account svc-backup \(credential 7\) has no pending "
                                                 r"secret to promote \(change operation 12, step promote\)$"):
            _promote(db, cred, "change operation 12", utcnow(), vault())
        assert list(db.new) == []  # no history row was added
    assert (cred.secret, cred.secret_version) == (None, 0)


def test_a_forwarder_that_was_not_started_posts_nothing_and_says_so(store):
    from pamflow.webhooks.outbox import Forwarder

    async def post() -> tuple[str, str]:
        return await Forwarder(store, api_url="http://127.0.0.1:9/api")._post([b"{}"])

    assert asyncio.run(post()) == ("unavailable", "the forwarder was not started: nothing posted")


def test_the_gateway_answers_503_when_its_outbox_is_not_running(store):
    """A call that reaches the gateway while it has no secrets cache or outbox writer (not
    started, or torn down) gets a 503 and a reason, not an internal error."""
    import time

    from pamflow.webhooks.app import Gateway
    from pamflow.webhooks.signing import sign

    body = b'{"path": "/x.csv"}'
    ts, delivery, event = str(int(time.time())), "d-1", "uploaded"
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"x-pamflow-timestamp", ts.encode()), (b"x-pamflow-delivery", delivery.encode()),
               (b"x-pamflow-event", event.encode()),
               (b"x-pamflow-signature", sign("s" * 32, ts, delivery, event, body).encode())]
    gateway = Gateway(store, api_url="http://127.0.0.1:9/api")
    gateway.started = True  # as seen by a request racing a start that has not finished
    sent: list[dict] = []

    async def call() -> None:
        messages = iter([{"type": "http.request", "body": body, "more_body": False}])

        async def receive() -> dict:
            return next(messages)

        async def send(message: dict) -> None:
            sent.append(message)

        await gateway({"type": "http", "path": "/hooks/import", "method": "POST", "headers": headers},
                      receive, send)

    asyncio.run(call())
    assert sent[0]["status"] == 503
    assert sent[1]["body"] == b'{"error":"gateway not running, retry later"}'
    assert gateway.counts == {"accepted": 0, "refused": 1}


def test_ran_sync_passes_values_and_refuses_coroutines():
    from tasks import ran_sync

    assert ran_sync(41, "create_progress_artifact") == 41

    async def answer() -> int:
        return 42

    coroutine = answer()
    with pytest.raises(RuntimeError, match="^create_progress_artifact was called inside a running"):
        ran_sync(coroutine, "create_progress_artifact")
    assert coroutine.cr_frame is None  # closed: never left pending
