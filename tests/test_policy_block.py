"""A password policy edited as a Prefect block (the UI) drives the rotation on a real sshd."""

from __future__ import annotations

import pytest

from blocks.password_policy import PasswordPolicyBlock, clear_cache
from pamflow import queue
from pamflow.executor import drain
from tests.test_rotation import (  # noqa: F401  (autouse fixture)
    _quiet_events,
    add_credential,
    make_device,
    secret_of,
    ssh_login,
)

pytestmark = pytest.mark.usefixtures("needs_sshd")  # fails, never skips, without root/sshd


def test_rotation_uses_the_policy_block_of_the_credential(store, sshd, prefect_server):
    PasswordPolicyBlock(length=17, classes=["lower", "digits"], min_each=3, exclude="0o1l",
                        ).save("digits-lower-17", overwrite=True)
    clear_cache()
    dev, _ = make_device(store, sshd)
    user = sshd.add_account("Initial-pw-1")
    cred = add_credential(store, dev, user, "Initial-pw-1", policy="digits-lower-17")
    queue.enqueue(store, "change", cred.id, requested_by="test")
    assert drain(store)["succeeded"] == 1
    new = secret_of(store, cred.id)
    assert len(new) == 17 and set(new) <= set("abcdefghijkmnpqrstuvwxyz23456789")
    assert sum(c.isdigit() for c in new) >= 3
    assert ssh_login(sshd.port, user, new)


def test_without_a_block_the_default_policy_applies(store, sshd, prefect_server):
    clear_cache()
    dev, _ = make_device(store, sshd)
    user = sshd.add_account("Initial-pw-2")
    cred = add_credential(store, dev, user, "Initial-pw-2", policy="no-such-policy")
    queue.enqueue(store, "change", cred.id, requested_by="test")
    assert drain(store)["succeeded"] == 1
    new = secret_of(store, cred.id)
    assert len(new) == 24 and ssh_login(sshd.port, user, new)
