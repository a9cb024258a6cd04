"""A password policy edited as a Prefect block (the UI) drives the rotation on a real sshd,
never below the floor kept in the store."""

from __future__ import annotations

import json
import logging

import pytest
from sqlmodel import Session

from blocks.password_policy import PasswordPolicyBlock, clear_cache, load_policy_block
from pamflow.models import SystemParameter
from pamflow.operations import queue
from pamflow.operations.executor import drain
from pamflow.passwords import CLASSES, FLOOR_PARAMETER
from tests.test_rotation import (  # noqa: F401  (autouse fixture)
    _quiet_events,
    add_credential,
    make_device,
    secret_of,
    ssh_login,
)

pytestmark = pytest.mark.usefixtures("needs_sshd")  # fails, never skips, without root/sshd


def rotate(store, sshd, policy: str, initial: str) -> tuple[str, str]:
    dev, _ = make_device(store, sshd)
    user = sshd.add_account(initial)
    cred = add_credential(store, dev, user, initial, policy=policy)
    queue.enqueue(store, "change", cred.id, requested_by="test")
    # the Prefect layer hands the executor its policy source: the blocks
    assert drain(store, policy_source=load_policy_block).succeeded == 1
    return user, secret_of(store, cred.id)


def classes_in(password: str) -> set[str]:
    return {name for name, chars in CLASSES.items() if any(c in chars for c in password)}


def test_rotation_uses_the_policy_block_of_the_credential(store, sshd, prefect_server):
    PasswordPolicyBlock(length=17, classes=["lower", "upper", "digits"], min_each=3,
                        exclude="0oO1lI").save("alnum-17", overwrite=True)
    clear_cache()
    user, new = rotate(store, sshd, "alnum-17", "Initial-pw-1")
    assert len(new) == 17 and not set(new) & set("0oO1lI") and new.isalnum()
    assert sum(c.isdigit() for c in new) >= 3 and sum(c.isupper() for c in new) >= 3
    assert ssh_login(sshd.port, user, new)


def test_without_a_block_the_default_policy_applies(store, sshd, prefect_server):
    clear_cache()
    user, new = rotate(store, sshd, "no-such-policy", "Initial-pw-2")
    assert len(new) == 24 and ssh_login(sshd.port, user, new)


def test_a_block_asking_for_4_digit_pins_is_raised_to_the_floor(store, sshd, prefect_server,
                                                                   caplog):
    caplog.set_level(logging.WARNING, logger="pamflow")
    PasswordPolicyBlock(length=4, classes=["digits"], min_each=1).save("pin4", overwrite=True)
    clear_cache()
    user, new = rotate(store, sshd, "pin4", "Initial-pw-3")
    assert len(new) >= 16 and len(classes_in(new)) >= 3, new
    assert not new.isdigit()
    assert ssh_login(sshd.port, user, new)
    assert ("password policy block 'pin4' asks for weaker passwords than the floor "
            "(16 characters, 3 classes, 80 bits); raised to the floor: length 4 -> 16") in caplog.text
    assert new not in caplog.text


def test_the_floor_is_set_in_the_store_and_a_block_cannot_lower_it(store, sshd, prefect_server):
    with Session(store) as db:
        db.merge(SystemParameter(key=FLOOR_PARAMETER, value=json.dumps(
            {"min_length": 30, "min_classes": 4, "min_bits": 150})))
        db.commit()
    # the block is as weak as the block model allows, and names itself like the floor
    PasswordPolicyBlock(length=4, classes=["lower"], min_each=0, exclude="abcdefghijklmnopqrstuvwx"
                        ).save("floor", overwrite=True)
    clear_cache()
    user, new = rotate(store, sshd, "floor", "Initial-pw-4")
    assert len(new) >= 30 and classes_in(new) == set(CLASSES), new
    assert ssh_login(sshd.port, user, new)
