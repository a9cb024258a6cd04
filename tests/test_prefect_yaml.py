"""prefect.yaml is what CI deploys: every robot in it must be complete and consistent.

For each deployment: the entrypoint imports and is a Prefect flow; it has a description,
tags, a work pool, a concurrency limit and a schedule or a trigger; its parameters and its
triggers' parameters are parameters the flow takes, and every required flow parameter is
supplied; a trigger's templated parameters read fields the gateway's schema guarantees
for the event, and every ``pam.*`` event a trigger expects is one the gateway accepts and
docs/events.md lists.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest
import yaml

from pamflow.webhooks.schemas import EVENT_SCHEMAS, GATEWAY_FIELDS

ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = yaml.safe_load((ROOT / "prefect.yaml").read_text())
DEPLOYMENTS = PREFECT_YAML["deployments"]
TEMPLATE = re.compile(r"\{\{\s*([^}]+?)\s*\}\}")


def load_flow(entrypoint: str):
    path, func = entrypoint.split(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, func)


def flow_parameters(flow) -> tuple[set[str], set[str]]:
    """(all parameter names, required ones) of the flow function."""
    params = inspect.signature(flow.fn).parameters.values()
    names = {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    required = {p.name for p in params if p.default is p.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return names, required


def test_prefect_yaml_has_robots_with_unique_names():
    names = [d["name"] for d in DEPLOYMENTS]
    assert names and len(names) == len(set(names))
    assert PREFECT_YAML.get("pull"), "workers need the pull step (set_working_directory)"


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_deployment_is_complete(deployment):
    from prefect import Flow

    name = deployment["name"]
    flow = load_flow(deployment["entrypoint"])
    assert isinstance(flow, Flow), f"{name}: {deployment['entrypoint']} is not a Prefect flow"
    assert (deployment.get("description") or "").strip(), f"{name}: no description"
    assert deployment.get("tags"), f"{name}: no tags"
    assert (deployment.get("work_pool") or {}).get("name"), f"{name}: no work pool"

    limit = deployment.get("concurrency_limit")
    value = limit.get("limit") if isinstance(limit, dict) else limit
    assert isinstance(value, int) and value >= 1, f"{name}: no concurrency limit"

    schedules = deployment.get("schedules") or []
    triggers = deployment.get("triggers") or []
    assert schedules or triggers, f"{name}: neither a schedule nor a trigger"

    names, required = flow_parameters(flow)
    fixed = set(deployment.get("parameters") or {})
    assert fixed <= names, f"{name}: parameters {fixed - names} are not parameters of the flow"
    if schedules:
        assert required <= fixed, f"{name}: scheduled runs lack required parameters {required - fixed}"

    for trigger in triggers:
        assert trigger.get("type", "event") == "event", f"{name}: only event triggers are used"
        expected = trigger.get("expect") or []
        assert expected, f"{name}: a trigger without expected events"
        templated = trigger.get("parameters") or {}
        assert set(templated) <= names, (
            f"{name}: trigger parameters {set(templated) - names} are not parameters of the flow")
        assert required <= fixed | set(templated), (
            f"{name}: triggered runs lack required parameters {required - fixed - set(templated)}")
        pam_events = [e for e in expected if e.startswith("pam.")]
        for event in pam_events:
            assert event in EVENT_SCHEMAS, f"{name}: the gateway has no schema for {event}"
            source = event.split(".")[1]
            resource = (trigger.get("match") or {}).get("prefect.resource.id", "")
            assert resource in (f"pam.{source}.*", f"pam.{source}.**") or not resource, (
                f"{name}: trigger matches {resource!r}, but the gateway's resources for {event} "
                f"are pam.{source}.<delivery id>")
        for param, value in templated.items():
            for ref in TEMPLATE.findall(str(value)):
                assert ref.startswith("event."), f"{name}: {param} is templated from {ref}, not the event"
                field = ref.split(".")
                if field[:2] == ["event", "payload"] and len(field) > 2 \
                        and field[2] not in GATEWAY_FIELDS:  # set by the gateway on every call
                    for event in pam_events:
                        assert field[2] in EVENT_SCHEMAS[event].fields, (
                            f"{name}: {param} reads payload.{field[2]}, which {event}'s schema lacks")
                        assert EVENT_SCHEMAS[event].fields[field[2]].required, (
                            f"{name}: {param} reads optional payload.{field[2]} of {event}")


def test_every_gateway_event_is_documented_and_starts_its_robot():
    doc = (ROOT / "docs" / "events.md").read_text()
    triggered = {event: d["name"] for d in DEPLOYMENTS for t in d.get("triggers") or []
                 for event in t.get("expect") or []}
    for event, schema in EVENT_SCHEMAS.items():
        assert f"`{event}`" in doc, f"docs/events.md does not list {event}"
        assert f"`{schema.robot}`" in doc, f"docs/events.md does not name the robot {schema.robot}"
        if schema.robot in {d["name"] for d in DEPLOYMENTS}:
            assert triggered.get(event) == schema.robot, (
                f"{event} should start {schema.robot}, prefect.yaml says {triggered.get(event)}")
