"""CLI commands: ``pamflow backup keygen|create|list|verify|restore|delete``.

Backups are sealed to a backup key (X25519), not to the vault's master key. ``keygen``
writes the private key — whole, or split between two custodians (XOR 2-of-2 shares) — to a
directory you choose (keep it off this host) and installs only the public key here, so this
host can make backups but not read them. ``verify`` and ``restore`` need the private key:
``--key FILE`` or ``--share FILE --share FILE``.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from .common import actor, console, fail, fmt, json_line

backup_app = typer.Typer(help="Backups of credentials and secrets: keygen, create, list, verify, "
                              "restore (into an empty store), delete.", no_args_is_help=True)


def _key(key: Path | None, share: list[Path] | None):
    from pamflow.backup import BackupError, load_key

    try:
        return load_key(key, share or None)
    except BackupError as exc:
        fail(str(exc), code=2)


@backup_app.command("keygen")
def keygen(
    out: Path = typer.Option(..., "--out", help="Directory for the private key or the two "
                                                "shares (not the backup directory)."),
    split: bool = typer.Option(False, "--split", help="Write two custodian shares (XOR 2-of-2) "
                                                      "instead of one private key file."),
    as_json: bool = typer.Option(False, "--json", help="One JSON line."),
) -> None:
    """Make a backup key: private key (or two shares) in --out, public key installed here."""
    from pamflow.backup import BackupKey, backup_dir
    from pamflow.backup.keys import install_recipient, write_secret_file

    try:
        target = out.expanduser().resolve(strict=True)
    except OSError:
        fail(f"--out: {out} is not an existing directory", code=2)
    if not target.is_dir():
        fail(f"--out: {out} is not a directory", code=2)
    base = backup_dir()
    if target == base or base in target.parents:
        fail("--out: the private key must not be kept beside the backups it opens", code=2)
    key = BackupKey.generate()
    key.check_not_master_key()
    written: list[str] = []
    try:
        if split:
            for n, text in enumerate(key.split(), start=1):
                path = target / f"backup-{key.key_id}.share{n}"
                write_secret_file(path, text)
                written.append(str(path))
        else:
            path = target / f"backup-{key.key_id}.key"
            write_secret_file(path, key.text())
            written.append(str(path))
    except OSError as exc:
        fail(f"cannot write the key to {target}: {exc.strerror}", code=2)
    recipients = install_recipient(key.recipient)
    from pamflow import audit, db

    with db.session() as s:
        audit.record(s, actor(), "backup.key_created", "backup_key", key.key_id,
                     {"split": split, "files": len(written)})
        s.commit()
    if as_json:
        json_line({"key_id": key.key_id, "public_key": key.recipient.text(), "split": split,
                   "files": written, "recipients_file": str(recipients)})
        return
    console.print(f"backup key {key.key_id}: public key added to {recipients}", highlight=False)
    for shown in written:
        console.print(f"  wrote {shown} (0600){' — give it to one custodian' if split else ''}",
                      highlight=False)
    console.print("Keep the private key or shares off this host: backups made here open only "
                  "with them.", highlight=False)


@backup_app.command("create")
def create(
    kind: str = typer.Option("all", help="credentials, secrets or all."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines, one per backup."),
) -> None:
    """Make a backup now (what the Credentials backup and Secrets backup robots do)."""
    from pamflow import db
    from pamflow.backup import KINDS, BackupError, configured_recipients, create_backup
    from pamflow.backup.store import record_backup
    from pamflow.vault import vault

    if kind not in (*KINDS, "all"):
        fail(f"--kind: {kind[:40]!r} is not credentials, secrets or all", code=2)
    try:
        recipients = configured_recipients()
        engine = db.store()
        box = vault()
        results = []
        for k in KINDS if kind == "all" else (kind,):
            result = create_backup(engine, k, box, recipients)
            record_backup(engine, result, actor())
            results.append(result)
    except BackupError as exc:
        fail(str(exc), code=2)
    for r in results:
        if as_json:
            json_line({"file": r.name, "kind": r.kind, "size": r.size, "sha256": r.sha256,
                       "counts": r.counts, "records": r.records, "key_ids": r.key_ids})
        else:
            console.print(f"{r.name}: {r.records} record(s), {r.size} bytes, sha256 {r.sha256}",
                          highlight=False)


@backup_app.command("list")
def list_(
    kind: str = typer.Option(None, help="Only credentials or secrets."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines, one per backup."),
) -> None:
    """The backup files in the backup directory, oldest first."""
    import os

    from pamflow.backup import BackupError, backup_dir, list_backups
    from pamflow.backup.files import open_backup
    from pamflow.backup.sealed import read_header

    rows = []
    for b in list_backups(kind):
        try:
            fd, size = open_backup(b.path)
            try:
                keys = ", ".join(read_header(fd, size, b.name).key_ids)
            finally:
                os.close(fd)
        except BackupError as exc:
            keys = f"unreadable: {exc}"
        rows.append((b, keys))
    if as_json:
        for b, keys in rows:
            json_line({"file": b.name, "kind": b.kind, "created_at": b.created_at.isoformat(),
                       "size": b.size, "key_ids": keys})
        return
    table = Table(title=f"Backups in {backup_dir()} ({len(rows)})", title_justify="left")
    for column in ("file", "kind", "created (UTC)", "size", "sealed to key"):
        table.add_column(column, justify="right" if column == "size" else "left")
    for b, keys in rows:
        table.add_row(b.name, b.kind, fmt(b.created_at), str(b.size), keys)
    console.print(table, highlight=False)


def _show(result, as_json: bool, verb: str) -> None:
    if as_json:
        json_line({"file": result.name, "kind": result.kind, "size": result.size,
                   "sha256": result.sha256, "counts": result.counts, "records": result.records,
                   "key_id": result.key_id, "restored": result.restored})
        return
    held = ", ".join(f"{n} {t}" for t, n in sorted(result.counts.items())) or "nothing"
    console.print(f"{result.name} {verb}: {held} (sha256 {result.sha256})", highlight=False)


@backup_app.command("verify")
def verify(
    file: str = typer.Argument(..., help="A backup file name in the backup directory."),
    key: Path = typer.Option(None, "--key", help="The backup private key file."),
    share: list[Path] = typer.Option(None, "--share", help="A custodian share file (twice)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON line."),
) -> None:
    """Read and authenticate a whole backup without writing anything."""
    from pamflow.backup import BackupError, verify_backup

    backup_key = _key(key, share)
    try:
        result = verify_backup(file, backup_key)
    except BackupError as exc:
        fail(str(exc), code=2)
    _show(result, as_json, "verified")


@backup_app.command("restore")
def restore(
    file: str = typer.Argument(..., help="A backup file name in the backup directory."),
    key: Path = typer.Option(None, "--key", help="The backup private key file."),
    share: list[Path] = typer.Option(None, "--share", help="A custodian share file (twice)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON line."),
) -> None:
    """Restore a backup into this host's EMPTY store: every secret is sealed again under this
    store's vault. A wrong key, a truncated or altered file, or a store that is not empty is
    refused and nothing is written."""
    from pamflow import db
    from pamflow.backup import BackupError, restore_backup
    from pamflow.vault import vault

    backup_key = _key(key, share)
    try:
        engine = db.store()
        result = restore_backup(engine, file, backup_key, vault(), actor())
    except BackupError as exc:
        fail(str(exc), code=2)
    _show(result, as_json, "restored")


@backup_app.command("delete")
def delete(
    retention_days: float = typer.Option(30, min=1, help="Remove backups older than this."),
    keep_last: int = typer.Option(7, min=1, help="Always keep this many newest per kind."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would be removed."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines, one per file removed."),
) -> None:
    """What the backup delete robot does: backups past retention, tmp/upload leftovers older
    than a day (never following a symlink)."""
    from pamflow import db
    from pamflow.backup import BackupError
    from pamflow.backup.cleanup import delete_backups, record_cleanup

    try:
        report = delete_backups(retention_days, keep_last, dry_run=dry_run)
    except BackupError as exc:
        fail(str(exc), code=2)
    if not dry_run:
        record_cleanup(db.store(), report, actor())
    verb = "would remove" if dry_run else "removed"
    for r in report.removed:
        if as_json:
            json_line({"directory": r.directory, "file": r.name, "size": r.size,
                       "reason": r.reason, "dry_run": dry_run})
        else:
            console.print(f"{verb} {r.directory}/{r.name} ({r.size} bytes): {r.reason}",
                          highlight=False)
    if not as_json:
        for skipped in report.skipped:
            console.print(f"skipped {skipped}", highlight=False)
        console.print(f"{len(report.removed)} file(s) {verb}, {report.kept} kept",
                      highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``pamflow backup ...`` to ``app``."""
    app.add_typer(backup_app, name="backup")
