"""The floor under password policies read from Prefect blocks (pure, plus the store's parameter)."""

from __future__ import annotations

import logging

import pytest
from sqlmodel import Session

from pamflow.models import SystemParameter
from pamflow.passwords import (
    CLASSES,
    FLOOR_PARAMETER,
    PasswordPolicy,
    PolicyFloor,
    at_floor,
    meets_floor,
    raise_to_floor,
    store_floor,
)


def test_the_default_policy_meets_the_default_floor_unchanged():
    policy = PasswordPolicy()
    assert raise_to_floor(policy, PolicyFloor()) == (policy, [])


@pytest.mark.parametrize("policy", [
    PasswordPolicy(length=4, classes=("digits",), name="pin"),
    PasswordPolicy(length=8, classes=("lower", "upper"), min_each=0),
    # three classes, but exclusions leave an alphabet of 3: the length grows to keep 80 bits
    PasswordPolicy(length=16, classes=("lower", "upper", "digits"),
                   exclude="".join(c for c in "".join(CLASSES.values()) if c not in "aA0")),
    # exclusions empty every class but one: no way to reach 3 classes, the default replaces it
    PasswordPolicy(length=16, classes=("symbols",), exclude="".join(
        CLASSES["lower"] + CLASSES["upper"] + CLASSES["digits"])),
])
def test_weak_policies_are_raised_until_they_meet_the_floor(policy):
    floor = PolicyFloor()
    raised, changes = raise_to_floor(policy, floor)
    assert changes and meets_floor(raised, floor)
    for _ in range(20):
        password = raised.generate()
        assert raised.satisfied_by(password) and len(password) >= 16
        assert sum(any(c in chars for c in password) for chars in CLASSES.values()) >= 3


def test_the_floor_comes_from_the_store_and_a_bad_value_keeps_the_default(store, caplog):
    caplog.set_level(logging.WARNING, logger="pamflow")
    with Session(store) as db:
        assert store_floor(db) == PolicyFloor()
        for bad in ('{"min_length": -1}', '{"min_length": "4"}', '[4]', 'not json',
                    '{"min_length": 4, "unknown": 1}'):
            db.merge(SystemParameter(key=FLOOR_PARAMETER, value=bad))
            db.commit()
            assert store_floor(db) == PolicyFloor()
        assert caplog.text.count("password_policy.floor is not a valid floor") == 5
        db.merge(SystemParameter(key=FLOOR_PARAMETER, value='{"min_length": 8, "min_classes": 2}'))
        db.commit()
        assert store_floor(db) == PolicyFloor(min_length=8, min_classes=2)
        # a store administrator may lower the floor; a block only reads it
        pin8 = PasswordPolicy(length=8, classes=("digits", "lower"), name="pin8")
        assert at_floor(db, PasswordPolicy(length=10, classes=("digits", "lower"))).length == 16  # bits
        assert at_floor(db, None) is None
        assert raise_to_floor(pin8, store_floor(db))[0].classes == ("digits", "lower")
