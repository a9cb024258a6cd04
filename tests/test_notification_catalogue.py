"""The catalogue as data, its templates (sandboxed, HTML autoescaped, strict in tests) and
``queue`` (new form, transition form, secrets refused, the repeat window)."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from pamflow import db, notifications
from pamflow.models import Notification, SystemParameter
from pamflow.models._base import utcnow
from pamflow.notifications import CATALOGUE, RENAMED, render, sample, set_strict
from pamflow.notifications.templates import TemplateError

# copies of the seed documents 002 and 003 (the product's notification catalogues), so the
# test reads them wherever the repository is checked out
SEEDS = Path(__file__).resolve().parent / "fixtures" / "seeds"


def seed_names() -> tuple[set[str], set[str]]:
    """Type names of Appendix II (002: "  • Name: description;") and of 003 (table rows)."""
    old: set[str] = set()
    for bullet in re.findall(r"^\s*•\s+(.+)$", (SEEDS / "002_68f2a1d80c36b5ca.txt").read_text(), re.M):
        cuts = [m.start() for m in re.finditer(r": ", bullet)]
        known = [bullet[:c] for c in cuts if bullet[:c] in CATALOGUE]
        old.add(known[-1] if known else bullet[:cuts[0]])  # an unknown one shows as missing
    new: set[str] = set()
    for line in (SEEDS / "003_3a5145893fcae7be.txt").read_text().splitlines():
        for name, t in CATALOGUE.items():
            if "003" in t.source and line.startswith(name + " "):
                new.add(name)
    return old, new


def test_every_seed_type_is_in_the_catalogue():
    old, new = seed_names()
    # 002 spells the product name; the catalogue says "the agent" in descriptions only
    assert len(old) == 101  # every bullet of Appendix II
    missing = sorted(n for n in old if n not in CATALOGUE)
    assert missing == []
    assert all("002" in CATALOGUE[n].source for n in old)
    newer = {n for n, t in CATALOGUE.items() if "003" in t.source}
    assert newer == new, sorted(newer ^ new)
    assert len(CATALOGUE) >= 150


def test_renamed_types_keep_both_names_and_say_which_is_newer():
    for old, new in RENAMED.items():
        assert CATALOGUE[old].source == "002" and CATALOGUE[new].source == "003"
        assert CATALOGUE[old].newer == new and CATALOGUE[new].older == old
        assert CATALOGUE[old].family in (CATALOGUE[new].family, "User behavior")


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_every_type_renders_text_and_html_with_sample_data(name):
    r = render(CATALOGUE[name], sample(name))
    assert r.subject and "\n" not in r.subject and len(r.subject) <= 250
    assert r.text.strip() and "[missing" not in r.text
    assert r.html.startswith("<!DOCTYPE html>") and "</html>" in r.html


def test_html_is_autoescaped_and_text_is_not():
    ctx = {**sample("Lost of connectivity"), "device": "<script>alert(1)</script>"}
    r = render(CATALOGUE["Lost of connectivity"], ctx)
    assert "<script>" not in r.html and "&lt;script&gt;" in r.html
    assert "<script>alert(1)</script>" in r.text


def test_sandbox_refuses_python_internals():
    from pamflow.notifications.templates import _render

    with pytest.raises(TemplateError, match="unsafe|SecurityError"):
        _render("{{ x.__class__.__mro__[1].__subclasses__() }}", False, {"x": ""}, "t")


def test_missing_variable_fails_strict_and_is_a_placeholder_in_production():
    kind = CATALOGUE["Lost of connectivity"]
    with pytest.raises(TemplateError, match="address"):
        render(kind, {"device": "db-01"})
    set_strict(False)
    try:
        r = render(kind, {"device": "db-01"})
        assert "[missing: address]" in r.subject and "db-01" in r.text
    finally:
        set_strict(None)


def test_queue_renders_the_template_and_keeps_the_transition_form(store):
    with db.session(store) as s:
        n = notifications.queue(s, "Lost of connectivity", context=sample("Lost of connectivity"))
        legacy = notifications.queue(s, "Error on change", "Error on change: root on x", "boom",
                                     {"device": "x", "account": "root"})
        s.commit()
        assert n.subject == "Lost of connectivity: db-01 (10.0.0.5)" and "timed out" in n.body
        assert n.severity == "critical" and n.tenant == "default" and "<html>" in (n.html or "")
        assert legacy.subject == "Error on change: root on x" and legacy.body == "boom"


def test_queue_refuses_secrets_even_nested_and_oversized_context(store):
    with db.session(store) as s:
        for bad in ({"password": "p"}, {"items": [{"api_key": "k"}]}, {"a": {"Token": 1}}):
            with pytest.raises(ValueError, match="secrets"):
                notifications.queue(s, "Audit trail", context=bad)
        with pytest.raises(ValueError, match="bytes"):
            notifications.queue(s, "Audit trail", context={"blob": "x" * 70_000})
        with pytest.raises(ValueError, match="JSON"):
            notifications.queue(s, "Audit trail", context={"o": object()})
        with pytest.raises(KeyError):
            notifications.queue(s, "No such thing", context={})
        s.commit()
        assert s.exec(select(Notification)).all() == []


def test_the_same_event_within_the_window_is_counted_not_queued_again(store):
    ctx = sample("Lost of connectivity")
    now = utcnow()
    with db.session(store) as s:
        first = notifications.queue(s, "Lost of connectivity", context=ctx, key="device:1", now=now)
        for i in range(5):
            again = notifications.queue(s, "Lost of connectivity",
                                        context={**ctx, "checked_at": f"t{i}"}, key="device:1",
                                        now=now + timedelta(minutes=i))
            assert again is first
        other = notifications.queue(s, "Lost of connectivity", context=ctx, key="device:2", now=now)
        later = notifications.queue(s, "Lost of connectivity", context=ctx, key="device:1",
                                    now=now + timedelta(hours=2))
        s.commit()
        assert first.repeats == 5 and other is not first and later is not first
        s.add(SystemParameter(key="notifications.repeat_window_s", value="0"))
        s.commit()
    with db.session(store) as s:
        notifications.queue(s, "Lost of connectivity", context=ctx, key="device:2", now=now)
        s.commit()
        assert len(s.exec(select(Notification)).all()) == 4


def test_tenant_comes_from_the_argument_or_the_context(store):
    with db.session(store) as s:
        a = notifications.queue(s, "Audit trail", context={"tenant": "acme", "summary": "x"})
        b = notifications.queue(s, "Audit trail", context={"summary": "y"}, tenant="globex")
        s.commit()
        assert (a.tenant, b.tenant) == ("acme", "globex")


def test_hostile_values_are_data_not_templates_and_bad_encoding_is_repaired(store):
    ctx = {**sample("Lost of connectivity"), "device": "{{ 7*7 }}{% for x in range(9) %}x{% endfor %}",
           "reason": "bad \udcff byte\x00 and <b>tags</b>",
           "nested": {"a": [{"b": "\udcfe" * 3}] * 3}}
    with db.session(store) as s:
        n = notifications.queue(s, "Lost of connectivity", context=ctx)
        s.commit()
        assert "{{ 7*7 }}" in n.subject and "49" not in n.subject
        assert "\udcff" not in n.body and "\ufffd" in n.body and "\x00" not in n.body
        assert "&lt;b&gt;tags" in (n.html or "")
    deep: dict = {}
    cur = deep
    for _ in range(2000):
        cur["k"] = {}
        cur = cur["k"]
    with db.session(store) as s, pytest.raises(ValueError):
        notifications.queue(s, "Audit trail", context=deep)


def test_a_rolled_back_queue_leaves_nothing_and_the_session_goes_on(store):
    with db.session(store) as s:
        notifications.queue(s, "Audit trail", context={"summary": "a"})
        s.rollback()
        notifications.queue(s, "Audit trail", context={"summary": "a"})  # not a "repeat"
        s.commit()
        assert len(s.exec(select(Notification)).all()) == 1
