"""The cloud-device-import robot as a flow on the shared Prefect server (accounts as blocks,
credentials from a vault entry, due/disabled accounts, a failing account), and the
``pamflow cloud`` / ``pamflow vault entry-*`` commands — against the real moto_server."""

from __future__ import annotations

import json

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from pamflow.cli import app
from pamflow.models import Device, VaultEntry
from pamflow.vault_entries import put_entry
from tests.test_cloud_aws import _cloud_endpoints, ec2, launch, moto_url  # noqa: F401 - fixtures

SECRET = "wJalrXUtnFEMI-flow-secret-never-published"


def _artifacts(client, flow_run_id):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    return client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))


def _logs(client, flow_run_id):
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    return client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))


def _table(artifact) -> list[dict]:
    data = artifact.data
    return json.loads(data) if isinstance(data, str) else data


@pytest.fixture
def blocks(prefect_server):
    """Save cloud account blocks; removes them afterwards."""
    from blocks.cloud_accounts import CloudAccountBlock, account_names

    saved: list[str] = []

    def save(name: str, **settings) -> None:
        CloudAccountBlock(**settings).save(name, overwrite=True)
        saved.append(name)

    for stale in account_names():
        CloudAccountBlock.delete(stale)
    yield save
    for name in saved:
        CloudAccountBlock.delete(name)


def aws(moto_url, **kw):  # noqa: F811
    return {"provider": "aws", "regions": ["us-east-1", "eu-west-1"], "endpoint_url": moto_url,
            "allow_cleartext": True, "page_size": 5, **kw}


def _vault_entry(store, name="aws-key", tenant="default"):
    with Session(store) as s:
        put_entry(s, name, {"access_key_id": "AKIAFLOW", "secret_access_key": SECRET},
                  tenant=tenant, kind="aws-access-key")
        s.commit()


def test_flow_imports_an_account_and_publishes_counts_without_secrets(
        prefect_server, prefect_client_sync, store, ec2, moto_url, blocks, monkeypatch):  # noqa: F811
    from flows.cloud import cloud_device_import

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k)  # the vault entry's keys, not the environment's
    for n in range(8):
        launch(ec2["us-east-1"], 2, {"Name": f"app-{n}"})
    launch(ec2["eu-west-1"], 3)
    _vault_entry(store)
    blocks("aws-flow", **aws(moto_url, credentials="vault", vault_entry="aws-key"))

    state = cloud_device_import(account="aws-flow", return_state=True)
    assert state.is_completed(), state
    [summary] = state.result()
    assert (summary["account"], summary["added"], summary["removed"]) == ("aws-flow", 19, 0)

    gone = [d.external_id for d in Session(store).exec(select(Device))][:2]
    ec2["us-east-1"].terminate_instances(InstanceIds=gone)
    state = cloud_device_import(account="aws-flow", return_state=True)
    [summary] = state.result()
    assert (summary["added"], summary["removed"], summary["unchanged"]) == (0, 2, 17)

    run_id = state.state_details.flow_run_id
    arts = {a.key: a for a in _artifacts(prefect_client_sync, run_id)}
    assert arts["cloud-import-progress"].data == 100.0
    [row] = _table(arts["cloud-import-summary"])
    assert (row["added"], row["updated"], row["removed"]) == (0, 0, 2)
    changes = _table(arts["cloud-import-changes"])
    assert sorted(c["instance"] for c in changes) == sorted(gone)
    published = repr([(a.data, a.description) for a in arts.values()])
    published += repr([lg.message for lg in _logs(prefect_client_sync, run_id)])
    assert SECRET not in published and "AKIAFLOW" not in published


def test_hourly_run_imports_due_enabled_accounts_only(
        prefect_server, store, ec2, moto_url, blocks):  # noqa: F811
    from flows.cloud import cloud_device_import

    launch(ec2["us-east-1"], 2)
    blocks("aws-due", **aws(moto_url, every_hours=24))
    blocks("aws-off", **aws(moto_url, enabled=False, tenant="other"))
    first = cloud_device_import(provider="aws")
    assert [s["account"] for s in first] == ["aws-due"]
    assert cloud_device_import(provider="aws") == []  # imported less than 24 h ago
    assert [s["account"] for s in cloud_device_import(provider="aws", force=True)] == ["aws-due"]
    assert cloud_device_import(provider="gcp") == []


def test_an_account_that_fails_fails_the_run_and_writes_nothing(
        prefect_server, prefect_client_sync, store, ec2, moto_url, blocks):  # noqa: F811
    from flows.cloud import cloud_device_import

    launch(ec2["us-east-1"], 2)
    blocks("aws-good", **aws(moto_url))
    blocks("aws-nokey", **aws(moto_url, credentials="vault", vault_entry="missing", tenant="t2"))
    blocks("aws-badregion", **aws(moto_url, regions=["us-east-1; rm -rf /"]))
    state = cloud_device_import(provider="aws", return_state=True)
    assert state.is_failed()
    assert "aws-nokey: cloud account aws-nokey: no vault entry missing for tenant t2" \
        in state.message
    assert "aws-badregion: cloud account aws-badregion: invalid settings: regions" in state.message
    with Session(store) as s:
        assert {d.tenant for d in s.exec(select(Device))} == {"default"}
    rows = _table({a.key: a for a in _artifacts(prefect_client_sync,
                                                state.state_details.flow_run_id)}
                  ["cloud-import-summary"])
    assert {r["account"]: r.get("failed", "") != "" for r in rows} == {
        "aws-good": False, "aws-nokey": True, "aws-badregion": True}


def test_cli_cloud_import_and_accounts(prefect_server, store, ec2, moto_url, blocks):  # noqa: F811
    launch(ec2["eu-west-1"], 3, {"Name": "cli"})
    blocks("aws-cli", **aws(moto_url, tenant="acme", tag_filters={"Name": "cli"}))
    runner = CliRunner()
    out = runner.invoke(app, ["cloud", "import", "aws-cli", "--json"])
    assert out.exit_code == 0, out.output
    lines = [json.loads(x) for x in out.output.splitlines()]
    assert (lines[0]["added"], lines[0]["tenant"]) == (3, "acme")
    assert [x["action"] for x in lines[1:]] == ["added"] * 3

    out = runner.invoke(app, ["cloud", "import", "aws-cli"])
    assert out.exit_code == 0 and "3 unchanged" in out.output

    out = runner.invoke(app, ["cloud", "accounts", "--json"])
    [acct] = [json.loads(x) for x in out.output.splitlines()]
    assert (acct["name"], acct["provider"], acct["tenant"]) == ("aws-cli", "aws", "acme")

    for bad in ("no-such-account", "'; DROP TABLE device;--", "../../etc/passwd", "x" * 5000):
        out = runner.invoke(app, ["cloud", "import", bad])
        assert out.exit_code == 2, out.output
        assert "cannot import cloud account" in out.output and "Traceback" not in out.output


def test_cli_vault_entries_never_show_values(store):
    runner = CliRunner()
    body = json.dumps({"access_key_id": "AKIACLI", "secret_access_key": SECRET})
    out = runner.invoke(app, ["vault", "entry-put", "aws-cli-key", "--tenant", "acme",
                              "--kind", "aws-access-key"], input=body)
    assert out.exit_code == 0, out.output
    assert "access_key_id, secret_access_key" in out.output and SECRET not in out.output
    out = runner.invoke(app, ["vault", "entries", "--json"])
    assert json.loads(out.output) == {"name": "aws-cli-key", "tenant": "acme",
                                      "kind": "aws-access-key",
                                      "fields": ["access_key_id", "secret_access_key"]}
    with Session(store) as s:
        token = s.exec(select(VaultEntry)).one().secret
    assert SECRET not in token and token.startswith("pfv1.")
    hostile = [
        ("aws-cli-key", "not json at all"),
        ("aws-cli-key", "\udcff".encode("utf-8", "surrogatepass").decode("latin-1")),
        ("aws-cli-key", "[" * 100_000),
        ("aws-cli-key", json.dumps({"a": {"nested": "x"}})),
        ("aws-cli-key", json.dumps({f"f{i}": "v" for i in range(40)})),
        ("aws-cli-key", json.dumps({"k": "v" * 70_000})),
        ("../../etc/passwd", json.dumps({"k": "v"})),
        ("x'; DROP TABLE vault_entry;--", json.dumps({"k": "v"})),
    ]
    for name, text in hostile:
        out = runner.invoke(app, ["vault", "entry-put", name], input=text)
        assert out.exit_code == 2, (name, text[:40], out.output)
        assert "Traceback" not in out.output
    # another tenant cannot replace it
    out = runner.invoke(app, ["vault", "entry-put", "aws-cli-key"], input=body)
    assert out.exit_code == 2 and "another tenant" in out.output
    assert runner.invoke(app, ["vault", "entry-remove", "aws-cli-key"]).exit_code == 0
    assert runner.invoke(app, ["vault", "entry-remove", "aws-cli-key"]).exit_code == 2
    out = runner.invoke(app, ["vault", "status"])
    assert out.exit_code == 0, out.output


def test_one_run_imports_aws_gcp_and_azure_accounts(
        prefect_server, prefect_client_sync, store, ec2, moto_url, blocks, tmp_path):  # noqa: F811
    """The hourly run with no parameter: every due account of the three clouds, each through
    its real SDK client, into its own tenant."""
    from flows.cloud import cloud_device_import
    from tests.peers.azure_arm import SUB, FakeArm
    from tests.peers.gcp_compute import FakeCompute, gcp_instance
    from tests.peers.tls import self_signed

    launch(ec2["us-east-1"], 2)
    gcp = FakeCompute(token="gcp-flow-token")
    for n in range(3):
        gcp.add("us-central1-a", gcp_instance(100 + n, f"g{n}", "us-central1-a", ip=f"10.2.0.{n + 1}"))
    cert = self_signed(tmp_path, "arm")[:2]
    arm = FakeArm(token="azure-flow-token")
    for n in range(4):
        arm.add_vm(n, private=f"10.3.0.{n + 4}")
    gcp_peer, arm_peer = gcp.serve(), arm.serve(cert)
    try:
        with Session(store) as s:
            put_entry(s, "gcp-flow", {"access_token": "gcp-flow-token"}, tenant="t-gcp")
            put_entry(s, "azure-flow", {"access_token": "azure-flow-token"}, tenant="t-azure")
            s.commit()
        blocks("aws-all", **aws(moto_url))
        blocks("gcp-all", provider="gcp", project=gcp.project, tenant="t-gcp",
               endpoint_url=gcp_peer.url, allow_cleartext=True, credentials="vault",
               vault_entry="gcp-flow")
        blocks("azure-all", provider="azure", subscription_id=SUB, tenant="t-azure",
               endpoint_url=arm_peer.url, ca_file=str(cert[0]), credentials="vault",
               vault_entry="azure-flow")
        state = cloud_device_import(return_state=True)
        assert state.is_completed(), state
        done = {r["account"]: (r["provider"], r["tenant"], r["added"]) for r in state.result()}
        assert done == {"aws-all": ("aws", "default", 2), "gcp-all": ("gcp", "t-gcp", 3),
                        "azure-all": ("azure", "t-azure", 4)}
        rows = _table({a.key: a for a in _artifacts(prefect_client_sync,
                                                    state.state_details.flow_run_id)}
                      ["cloud-import-summary"])
        assert sorted(r["account"] for r in rows) == ["aws-all", "azure-all", "gcp-all"]
        with Session(store) as s:
            by_source = {(d.source, d.tenant) for d in s.exec(select(Device))}
        assert by_source == {("aws", "default"), ("gcp", "t-gcp"), ("azure", "t-azure")}
    finally:
        gcp_peer.stop()
        arm_peer.stop()


def test_the_flow_module_imports_no_cloud_sdk():
    import subprocess
    import sys

    code = ("import sys, flows.cloud, blocks.cloud_accounts, pamflow.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('boto3', 'botocore', 'google', 'azure')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
