"""The gateway's cache of source secrets against a real store and a real uvicorn."""

from __future__ import annotations

import base64
import logging
import secrets

from pamflow.models import WebhookSource, utcnow
from pamflow.vault import Keyring, Vault, webhook_aad
from pamflow.webhooks.app import Gateway
from pamflow.webhooks.signing import generate_secret, signed_headers
from pamflow.webhooks.sources import add_source, remove_source, rotate_secret
from tests.test_webhooks import DEAD_PREFECT, IMPORT_BODY, RunningGateway

QUIET = 3600  # no periodic refresh: only the re-read after a miss can notice a change


def post(gw: RunningGateway, source: str, secret: str) -> int:
    return gw.post(source, IMPORT_BODY, signed_headers(secret, "uploaded", IMPORT_BODY)).status_code


def add_foreign_source(engine, name: str, secret: str) -> None:
    """A source row whose secret was sealed under a master key this gateway does not hold."""
    foreign = Vault(Keyring.from_env_value(base64.b64encode(secrets.token_bytes(32)).decode()))
    with engine.begin() as conn:
        conn.execute(WebhookSource.__table__.insert().values(
            name=name, secret=foreign.encrypt(secret, webhook_aad(name, "secret")),
            secret_version=1, enabled=True, created_at=utcnow()))


def test_a_source_removed_and_added_again_is_seen_at_once(store):
    old = add_source(store, "import")
    with RunningGateway(Gateway(store, api_url=DEAD_PREFECT, refresh_seconds=QUIET)) as gw:
        assert post(gw, "import", old) == 202
        remove_source(store, "import")
        new = add_source(store, "import")  # same name, secret version 1 again
        assert post(gw, "import", new) == 202
        assert post(gw, "import", old) == 401


def test_an_undecryptable_source_is_refused_and_the_others_still_work(store, caplog):
    caplog.set_level(logging.INFO, logger="pamflow.webhooks")
    good = add_source(store, "import")
    foreign_secret = generate_secret()
    add_foreign_source(store, "crm", foreign_secret)
    with RunningGateway(Gateway(store, api_url=DEAD_PREFECT, refresh_seconds=QUIET)) as gw:
        assert post(gw, "import", good) == 202
        assert post(gw, "crm", foreign_secret) == 401
        rotated = rotate_secret(store, "import")
        assert post(gw, "import", rotated) == 202
        assert post(gw, "import", good) == 401
        assert gw.gateway.secrets.names == ["import"]
    assert "webhook source crm: its secret cannot be decrypted (VaultError)" in caplog.text
    assert foreign_secret not in caplog.text and good not in caplog.text


def test_a_source_that_turns_undecryptable_does_not_stop_the_refreshes(store, caplog):
    caplog.set_level(logging.INFO, logger="pamflow.webhooks")
    good = add_source(store, "import")
    with RunningGateway(Gateway(store, api_url=DEAD_PREFECT, refresh_seconds=QUIET)) as gw:
        assert post(gw, "import", good) == 202
        foreign_secret = generate_secret()
        add_foreign_source(store, "crm", foreign_secret)
        rotated = rotate_secret(store, "import")
        assert post(gw, "import", rotated) == 202  # the re-read passed over crm and went on
        assert post(gw, "crm", foreign_secret) == 401
        assert post(gw, "import", good) == 401
    assert caplog.text.count("webhook source crm: its secret cannot be decrypted") == 1
