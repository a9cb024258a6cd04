"""Batch import against hostile input: paths leaving the upload directory, other tenants,
secrets over credentials that are not ok, undecryptable secrets, XLSX bombs — and the
verify that adopts an imported secret only when it logs in (real sshd)."""

from __future__ import annotations

import base64
import csv
import json
import os
import struct
import zipfile
from pathlib import Path

import openpyxl
import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from pamflow import inventory
from pamflow.config import data_dir
from pamflow.inventory import ImportFileError
from pamflow.models import (
    AuditLog,
    Credential,
    CredentialHistory,
    Device,
    Notification,
    Operation,
    WebhookDelivery,
)
from pamflow.vault import Keyring, Vault, credential_aad, vault

OUTSIDE_TEXT = "Outside-Header-Cell,Leaky-Cell-Value,TopSecret-outside"


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("PAMFLOW_EMIT_EVENTS", "0")


@pytest.fixture
def uploads(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "uploads"
    path.mkdir()
    monkeypatch.setenv("PAMFLOW_UPLOAD_DIR", str(path))
    return path


def write_csv(path: Path, rows: list[list], header=("address", "tenant", "username", "password")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(header)
        out.writerows(rows)
    return path


def table_rows(engine) -> dict:
    with engine.connect() as conn:
        return {t: [tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {t} ORDER BY id"))]
                for t in ("device", "credential", "credential_history", "operation")}


def stored_texts(engine) -> str:
    with Session(engine) as s:
        parts = [json.dumps([a.action, a.entity_id, a.detail], default=str)
                 for a in s.exec(select(AuditLog))]
        parts += [json.dumps([n.subject, n.body, n.context], default=str)
                  for n in s.exec(select(Notification))]
        parts += [json.dumps([o.error, o.result], default=str) for o in s.exec(select(Operation))]
    return "\n".join(parts)


def error_files(*folders: Path) -> list[Path]:
    return [p for f in folders for p in f.rglob("*.errors.csv")]


# ----------------------------------------------------------------------------- paths
def test_only_files_of_the_upload_directory_are_read(store, uploads, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    private = outside / "private.csv"
    private.write_text(f"{OUTSIDE_TEXT}\naddress,username,password\n10.66.0.1,root,TopSecret-2\n")
    good = write_csv(uploads / "good.csv", [["10.66.1.1", "", "root", "Inside-Secret-1"]])
    (uploads / "alias.csv").symlink_to("good.csv")  # a link that stays inside is fine
    (uploads / "link.csv").symlink_to(private)
    (uploads / "dirlink").symlink_to(outside, target_is_directory=True)
    (uploads / "sub").mkdir()
    (uploads / "sub" / "up.csv").symlink_to("../../outside/private.csv")
    os.mkfifo(uploads / "fifo.csv")
    os.link(private, uploads / "hard.csv")
    (uploads / "folder.csv").mkdir()
    refused = ["../outside/private.csv", str(private), "link.csv", "dirlink/private.csv",
               "sub/up.csv", "fifo.csv", "hard.csv", "folder.csv", "missing.csv",
               str(outside / "missing.csv"), "good.csv\x00.txt", "", "/etc/passwd",
               "../../../../../../../../etc/passwd", str(uploads / ".." / "outside" / "private.csv")]
    for path in refused:
        with pytest.raises(ImportFileError) as info:
            inventory.import_file(path, store)
        # the same answer for a file that exists outside and one that does not: no oracle
        assert str(info.value) == f"{path!r}: no such file in the upload directory {uploads}", path
    assert table_rows(store)["device"] == []
    assert private.read_text().startswith(OUTSIDE_TEXT)
    assert error_files(outside, uploads) == []

    assert inventory.import_file("good.csv", store).created == 1
    assert inventory.import_file("alias.csv", store).unchanged == 1
    assert inventory.import_file(str(good), store).unchanged == 1  # absolute, inside


def test_a_header_error_quotes_no_text_of_the_file(store, uploads):
    (uploads / "passwd.csv").write_text("root:x:0:0:root:/root:/bin/bash,Leaky-Cell-Value\n")
    (uploads / "named.csv").write_text("name,username,Leaky-Cell-Value\nweb,root,x\n")
    with pytest.raises(ImportFileError) as info:
        inventory.import_file("passwd.csv", store)
    assert "root:x" not in str(info.value) and "Leaky" not in str(info.value)
    assert "columns recognised: none" in str(info.value)
    with pytest.raises(ImportFileError) as info:
        inventory.import_file("named.csv", store)
    assert "columns recognised: name, username" in str(info.value) and "Leaky" not in str(info.value)


def test_error_files_go_to_the_data_directory_never_beside_the_input(store, uploads, tmp_path):
    target = tmp_path / "victim.txt"
    target.write_text("untouched")
    (uploads / "bad.errors.csv").symlink_to(target)  # a trap beside the input
    write_csv(uploads / "bad.csv", [["not a host!", "", "root", "pw"]])
    result = inventory.import_file("bad.csv", store)
    assert result.rejected == 1
    where = Path(result.error_file)
    assert where.parent == data_dir() / "import-errors" and where.name.endswith("-bad.errors.csv")
    assert oct(where.stat().st_mode & 0o777) == oct(0o600)
    assert target.read_text() == "untouched" and (uploads / "bad.errors.csv").is_symlink()
    # an import without errors removes nothing beside the input either
    write_csv(uploads / "bad.csv", [["10.1.1.1", "", "root", "pw"]])
    assert inventory.import_file("bad.csv", store).error_file is None
    assert (uploads / "bad.errors.csv").is_symlink() and target.read_text() == "untouched"


def test_a_signed_webhook_with_a_path_leaving_the_upload_dir_fails_and_writes_nothing(
        prefect_server, prefect_client_sync, store, uploads, tmp_path):
    from flows.batch_import import batch_import_processing
    from pamflow.webhooks.app import Gateway
    from pamflow.webhooks.signing import signed_headers
    from pamflow.webhooks.sources import add_source
    from tests.test_webhooks import DEAD_PREFECT, RunningGateway

    private = tmp_path / "private.csv"
    private.write_text(f"{OUTSIDE_TEXT}\n")
    (uploads / "evil.csv").symlink_to(private)
    secret = add_source(store, "import", tenant="acme")
    with RunningGateway(Gateway(store, api_url=DEAD_PREFECT)) as gw:
        for path in ("../../etc/passwd", "evil.csv"):
            body = json.dumps({"path": path, "tenant": "other"}).encode()
            assert gw.post("import", body, signed_headers(secret, "uploaded", body)).status_code == 202
    with Session(store) as s:
        payloads = [d.payload for d in s.exec(select(WebhookDelivery).order_by(WebhookDelivery.id))]
    assert [p["tenant"] for p in payloads] == ["acme", "acme"]  # the source's, not the caller's

    published = ""
    for payload in payloads:  # what the trigger does: path and tenant from the payload
        state = batch_import_processing(payload["path"], payload["tenant"], return_state=True)
        assert state.is_failed()
        with pytest.raises(ImportFileError, match="no such file in the upload directory"):
            state.result()
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        artifacts = prefect_client_sync.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
        published += repr([(a.data, a.description) for a in artifacts])
    published += stored_texts(store)
    for leak in ("root:x", "Outside-Header", "Leaky", "TopSecret"):
        assert leak not in published
    assert table_rows(store)["device"] == [] and error_files(tmp_path) == []
    with Session(store) as s:
        failed = s.exec(select(AuditLog).where(AuditLog.action == "import_failed")).all()
    assert [a.detail["tenant"] for a in failed] == ["acme", "acme"]


# ----------------------------------------------------------------------------- tenants
def test_an_import_writes_into_its_own_tenant_only(store, uploads):
    write_csv(uploads / "other.csv", [["10.0.0.1", "", "root", "Other-Tenant-Secret"]])
    inventory.import_file("other.csv", store, tenant="other")
    before_other = table_rows(store)
    write_csv(uploads / "acme.csv", [
        ["10.0.0.1", "", "root", "Acme-Secret-1"],  # empty: the import's tenant
        ["10.0.0.2", "other", "root", "Sneaky-1"],  # another tenant: rejected
        ["10.0.0.3", "acme", "root", "Acme-Secret-3"],
        ["10.0.0.4", "ACME", "root", "Sneaky-2"],
        ["10.0.0.1", "other", "root", "Overwrite-Other"],  # the other tenant's device: rejected
    ])
    result = inventory.import_file("acme.csv", store, tenant="acme")
    assert (result.created, result.rejected, result.tenant) == (2, 3, "acme")
    assert {(e.row, e.column) for e in result.errors} == {(3, "tenant"), (5, "tenant"), (6, "tenant")}
    assert all("is not this import's tenant 'acme'" in e.reason for e in result.errors)
    with Session(store) as s:
        devices = {(d.tenant, d.address) for d in s.exec(select(Device))}
    assert devices == {("other", "10.0.0.1"), ("acme", "10.0.0.1"), ("acme", "10.0.0.3")}
    after = table_rows(store)
    assert after["device"][0] == before_other["device"][0]  # the other tenant's rows untouched
    assert after["credential"][0] == before_other["credential"][0]
    for bad in ("", "  ", "a\x01b", "x" * 300):
        with pytest.raises(ImportFileError, match="invalid tenant"):
            inventory.import_file("acme.csv", store, tenant=bad)


# ----------------------------------------------------------------------------- secrets
def _import_root(store, uploads, secret: str, name: str = "v.csv"):
    write_csv(uploads / name, [["10.2.0.1", "", "root", secret]])
    return inventory.import_file(name, store)


@pytest.mark.parametrize("status", ["unverified", "invalid", "expired"])
def test_a_secret_is_never_imported_over_a_credential_that_is_not_ok(store, uploads, status):
    _import_root(store, uploads, "Recorded-1")
    with Session(store) as s:
        cred = s.exec(select(Credential)).one()
        cred.status = status
        s.add(cred)
        s.commit()
    before = table_rows(store)
    result = _import_root(store, uploads, "Imported-2")
    assert result.rejected == 1 and result.errors[0].column == "secret"
    assert f"is {status}: an import does not replace its secret" in result.errors[0].reason
    assert "Imported-2" not in result.errors[0].reason
    assert table_rows(store) == before  # no secret, no candidate, no verify queued
    assert _import_root(store, uploads, "Recorded-1").unchanged == 1  # the same one: fine


def test_an_undecryptable_recorded_secret_is_an_error_never_overwritten(store, uploads):
    _import_root(store, uploads, "Recorded-1")
    foreign = Vault(Keyring.from_env_value(f"lost:{base64.b64encode(os.urandom(32)).decode()}"))
    with Session(store) as s:
        cred = s.exec(select(Credential)).one()
        cred.secret = foreign.encrypt("Recorded-1", credential_aad(cred.id, cred.device_id, "secret"))
        s.add(cred)
        s.commit()
    before = table_rows(store)
    result = _import_root(store, uploads, "Imported-2")
    assert result.rejected == 1 and "cannot be decrypted" in result.errors[0].reason
    assert "key id lost" in result.errors[0].reason and "left as it is" in result.errors[0].reason
    assert table_rows(store) == before


def test_a_differing_secret_over_an_ok_credential_waits_as_a_candidate(pg_store, uploads):
    write_csv(uploads / "v1.csv", [["10.2.0.1", "", "root", "Recorded-1"]])
    inventory.import_file("v1.csv", pg_store)
    write_csv(uploads / "v2.csv", [["10.2.0.1", "", "root", "Imported-2"]])
    result = inventory.import_file("v2.csv", pg_store)
    assert (result.updated, result.imports_to_verify) == (1, 1)
    with Session(pg_store) as s:
        cred = s.exec(select(Credential)).one()
        [op] = s.exec(select(Operation)).all()
    aad = credential_aad(cred.id, cred.device_id, "secret")
    assert vault().decrypt(cred.secret, aad) == "Recorded-1" and cred.secret_version == 1
    assert vault().decrypt(cred.candidate_secret, credential_aad(cred.id, cred.device_id,
                                                                 "candidate")) == "Imported-2"
    assert (op.kind, op.parameters) == ("verify", {"candidate": True})
    before = table_rows(pg_store)
    assert inventory.import_file("v2.csv", pg_store).unchanged == 1
    assert table_rows(pg_store) == before


def test_imported_secrets_are_verified_before_adoption_and_never_pushed(store, sshd, uploads):
    from pamflow.operations import queue
    from pamflow.operations.executor import drain, recover
    from tests.test_rotation import (
        add_credential,
        assert_no_secret,
        logins,
        make_device,
        nasty,
        notifications_of,
        opened,
        recorded,
    )

    dev, acc = make_device(store, sshd, reconcile=True)
    # 1: changed out of band; the import brings the password the account really has
    real1 = nasty("real1")
    u1 = sshd.add_account(real1)
    stale1 = nasty("stale1")
    c1 = add_credential(store, dev, u1, stale1)
    # 2: the import brings a wrong password
    real2 = nasty("real2")
    u2 = sshd.add_account(real2)
    c2 = add_credential(store, dev, u2, real2)
    # 3: unverified: the import is refused; reconciliation must not push the imported value
    real3 = nasty("real3")
    u3 = sshd.add_account(real3)
    c3 = add_credential(store, dev, u3, real3, status="unverified")
    # 4: a candidate waits, then a change is promoted: the candidate is void
    real4 = nasty("real4")
    u4 = sshd.add_account(real4)
    c4 = add_credential(store, dev, u4, real4)
    wrong2, wrong3, cand4 = nasty("wrong2"), nasty("wrong3"), nasty("cand4")
    write_csv(uploads / "accounts.csv", [["127.0.0.1", "", u1, real1], ["127.0.0.1", "", u2, wrong2],
                                         ["127.0.0.1", "", u3, wrong3], ["127.0.0.1", "", u4, cand4]])
    result = inventory.import_file("accounts.csv", store)
    assert result.imports_to_verify == 3 and result.rejected == 1
    assert result.errors[0].row == 4 and "is unverified" in result.errors[0].reason
    assert recorded(store, c3.id).candidate_secret is None

    # the change of account 4 runs first and voids its candidate
    queue.enqueue(store, "change", c4.id)
    assert drain(store, kinds=["change"]).succeeded == 1
    assert recorded(store, c4.id).candidate_secret is None

    summary = drain(store)
    assert summary.failed == 0, summary
    r1, r2, r4 = recorded(store, c1.id), recorded(store, c2.id), recorded(store, c4.id)
    assert opened(r1) == real1 and r1.secret_version == 1 and r1.status == "ok"
    assert r1.candidate_secret is None
    with Session(store) as s:
        [hist] = s.exec(select(CredentialHistory).where(CredentialHistory.credential_id == c1.id))
    assert hist.reason == "import verified"
    assert vault().decrypt(hist.secret, credential_aad(c1.id, dev.id, "history")) == stale1
    assert opened(r2) == real2 and r2.status == "ok" and r2.candidate_secret is None
    refused = [n for n in notifications_of(store, "Invalid password") if "imported" in n.subject]
    assert len(refused) == 1 and u2 in refused[0].subject
    assert opened(r4) not in (real4, cand4)  # the change's password, verified by the change
    # the wrong imported password never reached the target: the reconcile account was not used
    assert logins(sshd.port, [(u1, real1), (u2, real2), (u2, wrong2)]) == [True, True, False]

    recover(store)  # reconciliation settles the unverified credential from what it recorded
    r3 = recorded(store, c3.id)
    assert r3.status == "ok" and opened(r3) == real3
    assert logins(sshd.port, [(u3, real3), (u3, wrong3), (u4, opened(r4))]) == [True, False, True]
    assert_no_secret(stored_texts(store), [real1, stale1, real2, wrong2, real3, wrong3, real4,
                                           cand4, acc["admin"][1], acc["reconcile"][1]])


# ----------------------------------------------------------------------------- XLSX bombs
def _workbook(path: Path, padding: bytes) -> Path:
    """A valid one-row workbook whose worksheet carries ``padding`` inside its XML."""
    src = path.with_suffix(".src.xlsx")
    wb = openpyxl.Workbook()
    wb.active.append(["address", "username"])
    wb.active.append(["10.77.0.1", "root"])
    wb.save(src)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            body = zin.read(item.filename)
            if item.filename == "xl/worksheets/sheet1.xml":
                body = body.replace(b"<sheetData>", b"<sheetData>" + padding, 1)
            zout.writestr(item.filename, body, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    src.unlink()
    return path


def _lie_about_size(path: Path, member: str, size: int) -> None:
    """Rewrite the uncompressed size the zip's headers give for ``member``."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    for sig, offset, name_at in ((b"PK\x01\x02", 24, 46), (b"PK\x03\x04", 22, 30)):
        at = data.find(sig)
        while at >= 0:
            if data[at + name_at:at + name_at + len(name)] == name:
                struct.pack_into("<I", data, at + offset, size)
            at = data.find(sig, at + 1)
    path.write_bytes(bytes(data))


def test_an_xlsx_bomb_is_refused_before_it_inflates(store, uploads, monkeypatch):
    # 64 MiB of spaces deflate to about 64 KiB: a ratio near 1000
    _workbook(uploads / "ratio.xlsx", b" " * (64 << 20))
    assert (uploads / "ratio.xlsx").stat().st_size < 1 << 20
    with pytest.raises(ImportFileError, match="PAMFLOW_IMPORT_MAX_RATIO"):
        inventory.import_file("ratio.xlsx", store)
    # not compressible, but bigger than the configured uncompressed limit
    _workbook(uploads / "big.xlsx", b"<!--" + os.urandom(1 << 20).hex().encode() + b"-->")
    monkeypatch.setenv("PAMFLOW_IMPORT_MAX_UNCOMPRESSED", str(1 << 20))
    with pytest.raises(ImportFileError, match=r"over the 1,048,576-byte limit \(PAMFLOW_IMPORT_MAX_UNCOMP"):
        inventory.import_file("big.xlsx", store)
    monkeypatch.setenv("PAMFLOW_IMPORT_MAX_UNCOMPRESSED", str(8 << 20))
    assert inventory.import_file("big.xlsx", store).created == 1  # under the limit: imported
    # a directory that lies about the sizes: the checks pass, the reader still stops
    _workbook(uploads / "liar.xlsx", b" " * (64 << 20))
    _lie_about_size(uploads / "liar.xlsx", "xl/worksheets/sheet1.xml", 4096)
    with pytest.raises(ImportFileError, match="liar.xlsx: corrupt XLSX worksheet"):
        inventory.import_file("liar.xlsx", store)
    monkeypatch.setenv("PAMFLOW_IMPORT_MAX_RATIO", "0")
    with pytest.raises(ImportFileError, match="PAMFLOW_IMPORT_MAX_RATIO='0' is not a positive"):
        inventory.import_file("big.xlsx", store)
    with Session(store) as s:
        assert [d.address for d in s.exec(select(Device))] == ["10.77.0.1"]


def test_a_zip_of_too_many_parts_is_refused(store, uploads):
    with zipfile.ZipFile(uploads / "parts.xlsx", "w") as z:
        for i in range(inventory.MAX_MEMBERS + 1):
            z.writestr(f"p/{i}", b"")
    with pytest.raises(ImportFileError, match="parts in the workbook, over the 10,000-part limit"):
        inventory.import_file("parts.xlsx", store)


def test_the_copy_option_of_the_cli_imports_a_file_from_elsewhere(store, uploads, tmp_path):
    from typer.testing import CliRunner

    from pamflow.cli import app

    elsewhere = write_csv(tmp_path / "elsewhere.csv", [["10.3.0.1", "", "root", "Cli-Secret"]])
    runner = CliRunner()
    res = runner.invoke(app, ["import", str(elsewhere)], env={"COLUMNS": "300"})
    flat = "".join(res.output.split())
    assert res.exit_code == 2 and "nosuchfileintheuploaddirectory" in flat and "pass--copy" in flat
    res = runner.invoke(app, ["import", str(elsewhere), "--copy", "--tenant", "acme"],
                        env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    [copy] = list(uploads.glob("*-elsewhere.csv"))
    assert oct(copy.stat().st_mode & 0o777) == oct(0o600)
    with Session(store) as s:
        assert [(d.tenant, d.address) for d in s.exec(select(Device))] == [("acme", "10.3.0.1")]
