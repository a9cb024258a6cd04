"""Batch import: the domain importer (SQLite and PostgreSQL) and the Prefect flow."""

from __future__ import annotations

import csv
import io
import zipfile
from datetime import timedelta

import openpyxl
import pytest
import sqlalchemy as sa
from sqlmodel import select

from pamflow import db, inventory
from pamflow.config import data_dir
from pamflow.inventory import ImportFileError
from pamflow.models import AuditLog, Credential, CredentialHistory, Device, Notification, Operation
from pamflow.vault import credential_aad, vault

HEADER = ["Name", "Address", "Platform", "Ports", "Site", "Tenant", "Change Protocol", "Username",
          "Password", "Kind", "Change_Interval_Days"]
GOOD = [
    ["web1", "10.0.0.1", "linux", "22", "lab", "", "ssh", "root", "Root#Secret-1", "local", "90"],
    ["web1", "10.0.0.1", "linux", "22", "lab", "", "ssh", "deploy", "Deploy#Secret-2", "service", ""],
    ["dc1", "dc1.corp.example", "windows", "5985;3389", "hq", "default", "winrm", "Administrator",
     "Adm1n#Secret-3", "domain", "30"],
    ["sw1", "2001:DB8::10", "network", "22,443", "", "", "", "", "", "", ""],
]
SECRETS = ["Root#Secret-1", "Deploy#Secret-2", "Adm1n#Secret-3"]


@pytest.fixture(autouse=True)
def _uploads(tmp_path, monkeypatch):
    """Each test's files are written in ``tmp_path``, its upload directory."""
    monkeypatch.setenv("PAMFLOW_UPLOAD_DIR", str(tmp_path))
    monkeypatch.setenv("PAMFLOW_EMIT_EVENTS", "0")


def opened(cred, field="secret"):
    """A credential's secret, decrypted with the data binding it to its row."""
    token = {"secret": cred.secret, "candidate": cred.candidate_secret}[field]
    return vault().decrypt(token, credential_aad(cred.id, cred.device_id, field))


def write_csv(path, rows, header=HEADER, delimiter=","):
    with path.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh, delimiter=delimiter)
        out.writerow(header)
        out.writerows(rows)
    return path


def write_xlsx(path, rows, header=HEADER):
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(header)
    for r in rows:
        ws.append(r)
    wb.save(path)
    return path


def snapshot(engine):
    """Every column of every device, credential and history row."""
    with engine.connect() as conn:
        return {
            table: [tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY id"))]
            for table in ("device", "credential", "credential_history")
        }


def count(engine, model):
    with db.session(engine) as s:
        return s.exec(select(sa.func.count()).select_from(model)).one()


def credentials_by_user(engine):
    with db.session(engine) as s:
        rows = s.exec(select(Device, Credential).join(Credential, Credential.device_id == Device.id))
        return {(d.address, c.username): (d, c) for d, c in rows}


def check_good_import(engine, result):
    assert result.rows == 4 and result.created == 4 and result.rejected == 0, result.summary()
    assert (result.devices_created, result.credentials_created) == (3, 3)
    assert result.error_file is None
    creds = credentials_by_user(engine)
    assert set(creds) == {("10.0.0.1", "root"), ("10.0.0.1", "deploy"),
                          ("dc1.corp.example", "Administrator")}
    d, c = creds[("10.0.0.1", "root")]
    assert (d.name, d.platform, d.ports, d.site, d.tenant, d.change_protocol, d.source) == (
        "web1", "linux", [22], "lab", "default", "ssh", "import")
    assert c.secret != "Root#Secret-1" and opened(c) == "Root#Secret-1"
    assert (c.kind, c.change_interval_days, c.secret_version) == ("local", 90, 1)
    assert c.expires_at is not None and c.expires_at > c.last_changed_at
    d, c = creds[("dc1.corp.example", "Administrator")]
    assert (d.platform, d.ports, d.tenant, c.kind) == ("windows", [3389, 5985], "default", "domain")
    assert opened(c) == "Adm1n#Secret-3"
    with db.session(engine) as s:
        sw = s.exec(select(Device).where(Device.name == "sw1")).one()
        assert sw.address == "2001:db8::10" and sw.ports == [22, 443]
        assert s.exec(select(Credential).where(Credential.device_id == sw.id)).first() is None
        audit = s.exec(select(AuditLog).where(AuditLog.action == "import")).one()
        assert audit.detail["created"] == 4
        note = s.exec(select(Notification).where(Notification.type == "Batch import finished")).one()
        assert "4 rows, 4 created" in note.body
        text = repr(audit.detail) + note.body + repr(note.context)
    assert not any(secret in text for secret in SECRETS)


def test_good_csv(store, tmp_path):
    result = inventory.import_file(write_csv(tmp_path / "good.csv", GOOD), store)
    assert result.format == "csv"
    check_good_import(store, result)


def test_good_csv_semicolon_delimiter_and_bom(store, tmp_path):
    path = tmp_path / "excel.csv"
    buf = io.StringIO()
    out = csv.writer(buf, delimiter=";")
    out.writerow(HEADER)
    out.writerows(GOOD)
    path.write_bytes(b"\xef\xbb\xbf" + buf.getvalue().encode("utf-8"))
    check_good_import(store, inventory.import_file(path, store))


def test_good_xlsx_with_numeric_cells(store, tmp_path):
    rows = [list(r) for r in GOOD]
    rows[0][3] = 22  # numbers as Excel stores them
    rows[0][10] = 90
    rows[2][10] = 30.0
    result = inventory.import_file(write_xlsx(tmp_path / "good.xlsx", rows), store)
    assert result.format == "xlsx"
    check_good_import(store, result)
    # a numeric password cell is a password too
    path = write_xlsx(tmp_path / "num.xlsx", [["n", "10.9.9.9", "", "", "", "", "", "u", 123456]])
    assert inventory.import_file(path, store).created == 1
    assert opened(credentials_by_user(store)[("10.9.9.9", "u")][1]) == "123456"


def test_xlsx_shapes_inline_strings_booleans_gaps_and_other_sheets(store, tmp_path):
    # write-only workbooks store strings inline; Excel stores them shared (the test above)
    wb = openpyxl.Workbook(write_only=True)
    ws = wb.create_sheet("import")
    ws.append(["address", "username", "password", "auto_change", "ports"])
    ws.append(["10.3.3.3", "svc", "Inline-Secret", False, 2222])
    wb.create_sheet("notes").append(["address"])
    wb.save(tmp_path / "inline.xlsx")
    assert inventory.import_file(tmp_path / "inline.xlsx", store).created == 1
    dev, cred = credentials_by_user(store)[("10.3.3.3", "svc")]
    assert (dev.ports, cred.auto_change) == ([2222], False)
    assert opened(cred) == "Inline-Secret"
    # blank rows and skipped cells: row numbers are the sheet's own
    wb = openpyxl.Workbook()
    ws = wb.active
    ws["B3"], ws["D3"] = "address", "platform"
    ws["B4"], ws["D4"] = "10.3.3.4", "linux"
    ws["B9"], ws["D9"] = "10.3.3.9", "beos"
    wb.save(tmp_path / "gaps.xlsx")
    result = inventory.import_file(tmp_path / "gaps.xlsx", store)
    assert (result.rows, result.created) == (2, 1)
    assert [(e.row, e.column) for e in result.errors] == [(9, "platform")]


BAD_ROWS = [
    # (cells by column, the column reported, a piece of the reason)
    ({"address": ""}, "address", "address is required"),
    ({"address": "999.1.1.1"}, "address", "not an IP address or host name"),
    ({"address": "bad host!"}, "address", "not an IP address or host name"),
    ({"platform": "solaris"}, "platform", "not one of"),
    ({"ports": "22;ssh"}, "ports", "'ssh' is not a port number"),
    ({"ports": "70000"}, "ports", "outside 1-65535"),
    ({"username": "ro\x07ot"}, "username", "control characters"),
    ({"password": "x" * 1025}, "secret", "at most 1024"),
    ({"password": "two\nlines"}, "secret", "line break"),
    ({"username": "", "password": "orphan-secret"}, "secret", "needs a username"),
    ({"kind": "robot"}, "kind", "not one of local, domain, service"),
    ({"change_interval_days": "often"}, "change_interval_days", "whole number of days"),
    ({"change_interval_days": "0"}, "change_interval_days", "whole number of days"),
    ({"change_protocol": "telnet"}, "change_protocol", "not one of ssh, winrm, ldap"),
    ({"name": "n" * 300}, "name", "at most 255"),
    ({"tenant": "t\x01"}, "tenant", "control characters"),
    ({"auto_change": "maybe"}, "auto_change", "true/false"),
    ({"policy": "no spaces allowed"}, "policy", "policy name"),
    ({"username": "", "kind": "local"}, "kind", "no username"),
]
FULL_HEADER = ["name", "address", "platform", "ports", "site", "tenant", "change_protocol",
               "username", "password", "kind", "change_interval_days", "auto_change", "policy"]


def make_row(i, **cells):
    base = {"name": f"h{i}", "address": f"10.1.0.{i}", "platform": "linux", "ports": "22",
            "site": "", "tenant": "", "change_protocol": "", "username": "root",
            "password": f"Good-Secret-{i}", "kind": "", "change_interval_days": "",
            "auto_change": "", "policy": ""}
    base.update(cells)
    return [base[c] for c in FULL_HEADER]


def test_every_kind_of_bad_row(store, tmp_path):
    rows = [make_row(1)]  # one good row, first
    for i, (cells, _column, _reason) in enumerate(BAD_ROWS, start=2):
        rows.append(make_row(i, **cells))
    rows.append(make_row(99) + ["one cell too many"])
    path = write_csv(tmp_path / "bad.csv", rows, header=FULL_HEADER)
    result = inventory.import_file(path, store)

    assert result.rows == len(rows) and result.created == 1
    assert result.rejected == len(BAD_ROWS) + 1
    by_row = {}
    for e in result.errors:
        by_row.setdefault(e.row, []).append(e)
    for row_number, (_cells, column, reason) in enumerate(BAD_ROWS, start=3):
        assert any(e.column == column and reason in e.reason for e in by_row[row_number]), (
            row_number, column, reason, by_row.get(row_number))
    assert [e.column for e in by_row[len(rows) + 1]] == ["-"]
    # only the good row's device exists: no bad row left anything behind
    with db.session(store) as s:
        assert [d.address for d in s.exec(select(Device))] == ["10.1.0.1"]
        assert s.exec(select(sa.func.count()).select_from(Credential)).one() == 1
    # the error file in the data directory (never beside the input): row, column, reason;
    # no secret in it
    assert result.error_file.startswith(str(data_dir() / "import-errors") + "/")
    assert result.error_file.endswith("-bad.errors.csv")
    assert not list(tmp_path.glob("*.errors.csv"))
    text = open(result.error_file).read()
    listed = list(csv.DictReader(io.StringIO(text)))
    assert listed[0].keys() == {"row", "column", "reason"}
    assert len(listed) == len(result.errors)
    assert "orphan-secret" not in text and "two\nlines" not in text and "Good-Secret" not in text
    assert "x" * 100 not in text
    # fixing the file and importing again writes no error file
    write_csv(path, rows[:1], header=FULL_HEADER)
    assert inventory.import_file(path, store).error_file is None


@pytest.mark.parametrize("content", [b"", b"\n\n", b",,,\n", b"name,address,username\n"])
def test_empty_file(store, tmp_path, content):
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    result = inventory.import_file(path, store)
    assert result.empty and result.rows == 0 and result.rejected == 0
    assert result.summary()["empty"] is True and result.error_file is None
    assert count(store, Device) == 0


def test_empty_xlsx(store, tmp_path):
    wb = openpyxl.Workbook()
    wb.save(tmp_path / "empty.xlsx")
    result = inventory.import_file(tmp_path / "empty.xlsx", store)
    assert result.empty and result.format == "xlsx"


def _corrupt_xlsx(tmp_path):
    good = write_xlsx(tmp_path / "src.xlsx", GOOD)
    data = good.read_bytes()
    (tmp_path / "truncated.xlsx").write_bytes(data[: len(data) // 2])
    with zipfile.ZipFile(tmp_path / "notabook.xlsx", "w") as z:
        z.writestr("hello.txt", "not a workbook")
    bad_sheet = tmp_path / "badsheet.xlsx"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad_sheet, "w") as dst:
        for item in src.infolist():
            body = src.read(item.filename)
            if item.filename.startswith("xl/worksheets/sheet1"):
                body = body[: len(body) // 2]  # cut mid-XML
            dst.writestr(item, body)
    return ["truncated.xlsx", "notabook.xlsx", "badsheet.xlsx"]


def test_not_a_spreadsheet(store, tmp_path):
    import os

    (tmp_path / "garbage.csv").write_bytes(os.urandom(4096) + b"\x00")
    (tmp_path / "garbage.xlsx").write_bytes(os.urandom(4096))
    (tmp_path / "legacy.xls").write_bytes(b"\xd0\xcf\x11\xe0" + os.urandom(100))
    (tmp_path / "notes.pdf").write_bytes(b"%PDF-1.4")
    write_xlsx(tmp_path / "workbook-named.csv", GOOD)  # wrong extension: an xlsx called .csv
    names = ["garbage.csv", "garbage.xlsx", "legacy.xls", "notes.pdf", "workbook-named.csv",
             "missing.csv", *_corrupt_xlsx(tmp_path)]
    (tmp_path / "noheader.csv").write_text("10.0.0.1,root,pw\n")
    names.append("noheader.csv")
    for name in names:
        with pytest.raises(ImportFileError) as info:
            inventory.import_file(tmp_path / name, store)
        assert name in str(info.value)
    assert count(store, Device) == 0 and count(store, Credential) == 0
    assert not list(tmp_path.glob("*.errors.csv"))


def test_huge_cell_is_refused_with_a_clear_reason(store, tmp_path):
    rows = [make_row(1), make_row(2, name="N" * 500_000), make_row(3, password="P" * 200_000),
            make_row(4)]
    path = write_csv(tmp_path / "huge.csv", rows, header=FULL_HEADER)
    result = inventory.import_file(path, store)
    assert result.created == 2 and result.rejected == 2
    assert {(e.row, e.column) for e in result.errors} == {(3, "name"), (4, "secret")}
    assert all("over the 4,096-character limit" in e.reason for e in result.errors)
    assert "PPPP" not in open(result.error_file).read()


def test_duplicate_rows_in_one_file(store, tmp_path):
    rows = [
        make_row(1),
        make_row(2),
        make_row(1, password="other"),  # same device and username as row 2
        make_row(2, username="admin", platform="windows"),  # contradicts row 3
        make_row(2, username="oper", name=""),  # the same device, fine
        make_row(7, address="10.5.0.7", username="", password=""),  # a device-only row...
        make_row(7, address="10.5.0.7", username="", password=""),  # ...and its duplicate
    ]
    path = write_csv(tmp_path / "dups.csv", rows, header=FULL_HEADER)
    result = inventory.import_file(path, store)
    errors = {(e.row, e.column): e.reason for e in result.errors}
    assert errors == {
        (4, "username"): "duplicate of row 2: same tenant, address and username",
        (5, "platform"): "platform 'windows' contradicts row 3 for the same device ('linux')",
        (8, "address"): "duplicate of row 7: same tenant and address (no username)",
    }
    creds = credentials_by_user(store)
    assert opened(creds[("10.1.0.1", "root")][1]) == "Good-Secret-1"
    assert ("10.1.0.2", "oper") in creds and ("10.1.0.2", "admin") not in creds


def test_reimport_of_the_same_file_changes_nothing(store, tmp_path):
    path = write_csv(tmp_path / "good.csv", GOOD)
    inventory.import_file(path, store)
    before = snapshot(store)
    result = inventory.import_file(path, store)
    assert (result.created, result.updated, result.unchanged, result.rejected) == (0, 0, 4, 0)
    assert snapshot(store) == before  # same ciphertexts, same updated_at, no new rows
    # the same rows from an XLSX are the same rows
    assert inventory.import_file(write_xlsx(tmp_path / "good.xlsx", GOOD), store).unchanged == 4
    assert snapshot(store) == before


def test_reimport_with_changes_updates_only_what_changed(store, tmp_path):
    inventory.import_file(write_csv(tmp_path / "v1.csv", GOOD), store)
    before = credentials_by_user(store)
    rows = [list(r) for r in GOOD]
    rows[0][8] = "Root#Secret-NEW"  # root's password differs: a candidate, verified before use
    rows[2][3] = "5985"  # dc1's ports changed
    rows[1][0] = ""  # an empty cell keeps the stored value
    rows[1][10] = "45"  # deploy's change interval alone: its expiry follows its last change
    result = inventory.import_file(write_csv(tmp_path / "v2.csv", rows), store)
    assert (result.created, result.updated, result.unchanged) == (0, 3, 1), result.summary()
    assert (result.devices_updated, result.credentials_updated) == (1, 2)
    assert result.imports_to_verify == 1
    after = credentials_by_user(store)
    old_root, new_root = before[("10.0.0.1", "root")][1], after[("10.0.0.1", "root")][1]
    # the recorded secret is untouched; the imported one waits as the candidate
    assert (new_root.secret, new_root.secret_version) == (old_root.secret, 1)
    assert opened(new_root, "candidate") == "Root#Secret-NEW"
    with db.session(store) as s:
        assert s.exec(select(CredentialHistory)).all() == []
        [op] = s.exec(select(Operation)).all()
        assert (op.kind, op.credential_id, op.state, op.parameters) == (
            "verify", new_root.id, "queued", {"candidate": True})
    assert after[("dc1.corp.example", "Administrator")][0].ports == [5985]
    old_deploy, new_deploy = before[("10.0.0.1", "deploy")][1], after[("10.0.0.1", "deploy")][1]
    assert (new_deploy.secret, new_deploy.secret_version) == (old_deploy.secret, 1)
    assert new_deploy.change_interval_days == 45 and old_deploy.expires_at is None
    assert new_deploy.expires_at == old_deploy.last_changed_at + timedelta(days=45)
    assert after[("10.0.0.1", "root")][0].name == "web1"
    # the same file again changes nothing: the candidate is the same secret
    snap = snapshot(store)
    again = inventory.import_file(write_csv(tmp_path / "v2.csv", rows), store)
    assert (again.updated, again.unchanged, again.imports_to_verify) == (0, 4, 0)
    assert snapshot(store) == snap


def test_a_row_whose_credential_part_is_bad_creates_no_device(store, tmp_path):
    rows = [make_row(1, address="10.7.0.1", kind="wizard"),
            make_row(2, address="10.7.0.2", password="line\r\nbreak"),
            make_row(3, address="10.7.0.3", change_interval_days="-5")]
    result = inventory.import_file(write_csv(tmp_path / "atom.csv", rows, header=FULL_HEADER), store)
    assert result.rejected == 3 and result.created == 0
    assert count(store, Device) == 0


def test_a_credential_with_a_change_in_progress_is_refused_whole(store, tmp_path):
    inventory.import_file(write_csv(tmp_path / "v1.csv", GOOD), store)
    with db.session(store) as s:
        cred = s.exec(select(Credential).where(Credential.username == "root")).one()
        cred.pending_secret = vault().encrypt("in-flight", credential_aad(cred.id, cred.device_id,
                                                                          "pending"))
        s.add(cred)
        s.commit()
    before = snapshot(store)
    rows = [list(r) for r in GOOD[:1]]
    rows[0][8] = "Changed-While-Pending"
    rows[0][4] = "other-site"  # the row's device part must not land either
    result = inventory.import_file(write_csv(tmp_path / "v2.csv", rows), store)
    assert result.rejected == 1 and result.errors[0].column == "secret"
    assert "password change in progress" in result.errors[0].reason
    assert "Changed-While-Pending" not in result.errors[0].reason
    assert snapshot(store) == before


def test_a_failing_chunk_is_retried_row_by_row_isolating_the_offender(store, tmp_path):
    with store.begin() as conn:
        conn.execute(sa.text(
            "CREATE TRIGGER refuse_boom BEFORE INSERT ON device WHEN NEW.name = 'boom' "
            "BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"))
    rows = [make_row(i) for i in range(1, 6)]
    rows[2] = make_row(3, name="boom")
    result = inventory.import_file(write_csv(tmp_path / "t.csv", rows, header=FULL_HEADER), store,
                                  chunk_size=100)
    assert result.created == 4 and result.rejected == 1
    assert (result.errors[0].row, result.errors[0].column) == (4, "-")
    assert "refused by a trigger" in result.errors[0].reason
    assert "Good-Secret" not in result.errors[0].reason
    with db.session(store) as s:
        assert sorted(d.name for d in s.exec(select(Device))) == ["h1", "h2", "h4", "h5"]
        assert s.exec(select(sa.func.count()).select_from(Credential)).one() == 4


def test_chunks_share_devices_across_boundaries(store, tmp_path):
    rows = [make_row(1, username=f"user{i}", password=f"Secret-{i}") for i in range(7)]
    result = inventory.import_file(write_csv(tmp_path / "c.csv", rows, header=FULL_HEADER), store,
                                  chunk_size=3)
    assert result.created == 7 and result.devices_created == 1 and result.credentials_created == 7
    assert count(store, Device) == 1


def test_postgresql(pg_store, tmp_path):
    path = write_csv(tmp_path / "good.csv", GOOD)
    check_good_import(pg_store, inventory.import_file(path, pg_store))
    before = snapshot(pg_store)
    assert inventory.import_file(path, pg_store).unchanged == 4
    assert snapshot(pg_store) == before
    rows = [make_row(1, address="10.8.0.1", kind="wizard"), make_row(2, address="10.8.0.2")]
    result = inventory.import_file(write_csv(tmp_path / "b.csv", rows, header=FULL_HEADER), pg_store)
    assert (result.created, result.rejected) == (1, 1)
    with db.session(pg_store) as s:
        assert s.exec(select(Device).where(Device.address == "10.8.0.1")).first() is None


# ---------------------------------------------------------------------------------------
# the robot, as a flow against the shared Prefect server


def _artifacts(client, flow_run_id):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    return client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))


def _logs(client, flow_run_id):
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    return client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))


def test_flow_imports_and_publishes_artifacts_without_secrets(prefect_server, prefect_client_sync,
                                                              store, tmp_path):
    from flows.batch_import import batch_import_processing

    rows = [make_row(i, password=f"Flow-Secret-{i}") for i in range(1, 4)]
    rows.append(make_row(4, kind="wizard", password="Flow-Secret-4"))
    rows.append(make_row(5, password="Flow-Secret-5\nx"))
    path = write_csv(tmp_path / "flow.csv", rows, header=FULL_HEADER)
    state = batch_import_processing(str(path), return_state=True)
    assert state.is_completed(), state
    summary = state.result()
    assert (summary["created"], summary["rejected"]) == (3, 2)
    assert summary["error_file"].endswith("-flow.errors.csv")
    assert not list(tmp_path.glob("*.errors.csv"))
    run_id = state.state_details.flow_run_id

    run = prefect_client_sync.read_flow_run(run_id)
    assert run.parameters["path"] == str(path)
    artifacts = _artifacts(prefect_client_sync, run_id)
    kinds = {a.type: a for a in artifacts}
    assert {"progress", "markdown", "table"} <= set(kinds)
    assert kinds["progress"].data == 100.0
    table = kinds["table"].data
    table = __import__("json").loads(table) if isinstance(table, str) else table
    assert sorted((r["row"], r["column"]) for r in table) == [(5, "kind"), (6, "secret")]
    assert "| 5 | 3 | 0 | 0 | 2 |" in kinds["markdown"].data
    published = repr([(a.data, a.description) for a in artifacts])
    published += repr(run.parameters) + repr([lg.message for lg in _logs(prefect_client_sync, run_id)])
    assert "Imported" in published
    for i in range(1, 6):
        assert f"Flow-Secret-{i}" not in published
    creds = credentials_by_user(store)
    assert opened(creds[("10.1.0.2", "root")][1]) == "Flow-Secret-2"


def test_flow_error_table_is_capped(prefect_server, prefect_client_sync, store, tmp_path):
    from flows import batch_import

    rows = [make_row(i, address=f"bad-{i}-!") for i in range(batch_import.ERROR_TABLE_LIMIT + 7)]
    path = write_csv(tmp_path / "many.csv", rows, header=FULL_HEADER)
    state = batch_import.batch_import_processing(str(path), return_state=True)
    assert state.result()["rejected"] == len(rows)
    table = next(a for a in _artifacts(prefect_client_sync, state.state_details.flow_run_id)
                 if a.type == "table")
    data = __import__("json").loads(table.data) if isinstance(table.data, str) else table.data
    assert len(data) == batch_import.ERROR_TABLE_LIMIT
    assert "7 more in" in table.description


def test_flow_fails_clearly_on_a_file_that_is_not_a_spreadsheet(prefect_server, prefect_client_sync,
                                                                  store, tmp_path):
    from flows.batch_import import batch_import_processing

    path = tmp_path / "junk.xlsx"
    path.write_bytes(b"\x00\x01 definitely not a workbook")
    state = batch_import_processing(str(path), return_state=True, )
    assert state.is_failed()
    with pytest.raises(ImportFileError, match="junk.xlsx: not an XLSX workbook"):
        state.result()
    md = next(a for a in _artifacts(prefect_client_sync, state.state_details.flow_run_id)
              if a.type == "markdown")
    assert "Batch import failed" in md.data and "Nothing was imported" in md.data
    with db.session(store) as s:
        assert s.exec(select(AuditLog).where(AuditLog.action == "import_failed")).one()
        assert s.exec(select(Notification)).one().subject == "Batch import failed: junk.xlsx"
        assert s.exec(select(sa.func.count()).select_from(Device)).one() == 0
