"""Batch import of devices and credentials from a spreadsheet (CSV or XLSX).

The domain side of the "Batch import processing" robot: no Prefect here. The robot
(``flows/batch_import.py``) and ``pamflow import FILE`` both use it.

Where files come from
---------------------
Only from the upload directory (``PAMFLOW_UPLOAD_DIR``, default ``<data dir>/uploads``,
created with mode 0700). A path is taken relative to it, or absolute inside it; it is
resolved (symlinks followed) and refused when the result leaves the directory, and the
file is then opened component by component without following symlinks, so a link
swapped in meanwhile is refused too. A missing file, a path outside, a symlink out, a
directory, a device, a FIFO and a file with several hard links all get the same answer
("no such file in the upload directory"), so a caller learns nothing about files
elsewhere. Errors never quote a file's content beyond column names (and row cells of
rejected rows of the uploaded file itself, never a secret).

An XLSX workbook is a zip archive: it is refused before anything is inflated when its
parts add up to more than ``PAMFLOW_IMPORT_MAX_UNCOMPRESSED`` bytes (default 512 MiB),
when a part over 1 MiB inflates more than ``PAMFLOW_IMPORT_MAX_RATIO`` times its stored
size (default 100), or when it has more than 10,000 parts; the bytes actually inflated
are counted too, as the archive's directory may lie.

File
----
``.csv`` (UTF-8, with or without BOM, or Windows-1252; delimiter ``,`` ``;`` or tab, taken
from the header line; an Excel ``sep=;`` first line is honoured) or ``.xlsx`` (the first
worksheet; a formula cell counts by its cached result). The first non-blank row is the
header. Row numbers in reports are the ones a spreadsheet program shows (the header of a
plain CSV is row 1). Blank rows are skipped. Anything else (a binary file, a corrupt
workbook, another extension such as ``.xls``) is refused with
:class:`ImportFileError` before anything is written.

Columns (header names are case-insensitive; spaces and dashes count as ``_``)
-----------------------------------------------------------------------------
======================== ==========================================================
``address`` (required)   IPv4/IPv6 address or host name (aliases ``ip``, ``ip_address``;
                         ``host`` and ``hostname`` when no other column gives the
                         address). With ``tenant``, the device's key.
``name``                 Display name (default: the address; alias ``device_name``;
                         ``hostname`` or ``host`` beside an address column).
``platform``             ``linux`` (default), ``unix``, ``windows``, ``ldap``, ``network``.
``ports``                Ports to probe, ``22;3389``, ``22,443`` or ``22 443``
                         (default by platform: 22, windows 5986, ldap 636). Alias
                         ``port`` when no ``ports`` column exists.
``site``                 Free text.
``tenant``               Must be the import's tenant, or empty (see *Tenant*).
``change_protocol``      ``ssh``, ``winrm`` or ``ldap`` (default: from the platform).
``external_id``          The device's id in the source system.
``username``             Account on the device (aliases ``user``, ``account``, ``login``).
                         With the device, the credential's key. Empty: a device-only row.
``secret``               The account's password (alias ``password``), at most 1,024
                         characters, no line breaks. Encrypted with the vault at once;
                         never echoed in a report.
``kind``                 ``local`` (default), ``domain`` or ``service``.
``change_interval_days`` Days between automatic changes (1-3650).
``policy``               Password policy name (default ``default``).
``auto_change``          ``true``/``false``, ``yes``/``no``, ``1``/``0``.
``admin_username``       The device's admin account (alias ``admin``): the one that
                         changes the others' passwords (``sudo chpasswd``, ``net user``,
                         LDAP admin bind). A username of the same device, stored already
                         or given by a row of this file (any row, any chunk).
``reconcile_username``   The device's reconcile account (alias ``reconcile``), the same way.
``change_port``          The port changes connect to, 1-65535 (alias ``ssh_port``;
                         ``port`` beside a ``ports`` column). Stored as the device's
                         ``port`` setting.
``sudo``                 How the admin runs chpasswd on an SSH device: ``nopasswd``,
                         ``password`` or ``none`` (the ``sudo`` setting).
``host_key``             The device's SSH host key, pinned (as ``pamflow devices
                         pin-host-key`` does, audited) for the port changes use: a
                         ``.pub`` line or a ``known_hosts`` line.
``maintenance_mode``     ``true``/``false`` (alias ``maintenance``): robots leave a
                         device in maintenance alone.
======================== ==========================================================

``sudo`` and ``host_key`` apply to devices changed over SSH only; a row giving them for
another device is rejected, and so is a row naming an admin or reconcile account that
exists neither in the store nor in a valid row of the file for that device. Such a
problem is reported on the rows that give the cell; the device's other rows are written.

Headers: aliases never make a file unreadable when one reading makes sense. A column
named as the field itself, or by an alias with no second meaning (``ip``), wins over an
alias that has one (``hostname``, ``host``: the name; ``port``: the change port), which
is then read as that second meaning, or ignored (and said so) when that is taken too.
Only one field named twice with no such way out (``ip`` and ``address``, ``user`` and
``username``, ``host`` and ``hostname``) refuses the file, naming the columns.

Other columns are ignored and named in the result. A cell longer than 4,096 characters
rejects its row. An empty optional cell means "keep what the store has" on an update and
"the default" on a create; a column cannot blank a stored value.

Tenant
------
An import runs for one tenant, given by the caller (``pamflow import --tenant``; for the
robot, the tenant of the webhook source that announced the upload). A row whose
``tenant`` cell names another tenant is rejected; an empty cell means the import's tenant.

Secrets
-------
A secret for a new credential (or one that has none) is stored. A secret that differs
from an existing credential's recorded one is never written over it: when the credential
is ``ok`` with no change in progress, it is stored as the credential's *candidate* and a
``verify`` operation is queued (parameters ``{"candidate": true}``); the verify adopts the
candidate only if it logs in (see :func:`pamflow.credentials.verify_candidates`). A row that
would change the secret of a credential that is not ``ok`` (unverified, invalid, expired)
or has a change in progress is rejected, and so is one whose credential's stored secret
cannot be decrypted: it is an error, never overwritten.

Rows
----
Each row is validated completely before anything is written. A bad row is reported with
its row number, column and reason (never a secret's value) and written to
``<data dir>/import-errors/<UTC timestamp>-<input stem>.errors.csv`` (columns
``row, column, reason``; never beside the input). A second
row with the same tenant, address and username is a duplicate and is rejected; a row
whose device fields disagree with an earlier row for the same device is rejected too.

Rows are upserted idempotently: a device is keyed by ``(tenant, address)``, a credential
by ``(device, username)``. Only real differences are written (a secret is compared with
the decrypted stored one, and with the waiting candidate), so importing the same file
again changes nothing — no new rows, no new ciphertexts, no ``updated_at`` bumps.

Writes go in chunks, one transaction each (a row's device and credential always in the
same transaction). When a chunk's transaction fails, its rows are retried one
transaction per row, so the offending row is isolated and reported and the others land.
Each import writes one audit record and queues a "Batch import finished" notification.
"""

from __future__ import annotations

from .files import (
    copy_to_uploads,
    errors_dir,
    open_upload,
    upload_dir,
)
from .model import (
    ALIASES,
    CHANGE_PROTOCOLS,
    CHUNK_SIZE,
    COLUMNS,
    CREDENTIAL_FIELDS,
    DEVICE_FIELDS,
    EXTRA_DEVICE_FIELDS,
    FALLBACKS,
    KINDS,
    MAX_CELL,
    MAX_FILE_BYTES,
    MAX_MEMBERS,
    MAX_PORTS,
    MAX_RATIO,
    MAX_ROWS,
    MAX_SECRET,
    MAX_TEXT,
    MAX_UNCOMPRESSED,
    PLATFORMS,
    RATIO_FLOOR,
    ROLE_FIELDS,
    SUDO_MODES,
    ChunkOutcome,
    ImportFileError,
    ImportResult,
    ImportRow,
    RowError,
    Secret,
    Sheet,
)
from .validate import (
    check_rows,
    check_tenant,
    normalize_address,
    parse_ports,
    read_sheet,
    validate_row,
)
from .write import (
    error_file_for,
    finish_import,
    import_file,
    record_failed_import,
    write_error_file,
    write_rows,
)

__all__ = [
    "ALIASES",
    "CHANGE_PROTOCOLS",
    "CHUNK_SIZE",
    "COLUMNS",
    "CREDENTIAL_FIELDS",
    "ChunkOutcome",
    "DEVICE_FIELDS",
    "EXTRA_DEVICE_FIELDS",
    "FALLBACKS",
    "ImportFileError",
    "ImportResult",
    "ImportRow",
    "KINDS",
    "MAX_CELL",
    "MAX_FILE_BYTES",
    "MAX_MEMBERS",
    "MAX_PORTS",
    "MAX_RATIO",
    "MAX_ROWS",
    "MAX_SECRET",
    "MAX_TEXT",
    "MAX_UNCOMPRESSED",
    "PLATFORMS",
    "RATIO_FLOOR",
    "ROLE_FIELDS",
    "SUDO_MODES",
    "RowError",
    "Secret",
    "Sheet",
    "check_rows",
    "check_tenant",
    "copy_to_uploads",
    "error_file_for",
    "errors_dir",
    "finish_import",
    "import_file",
    "normalize_address",
    "open_upload",
    "parse_ports",
    "read_sheet",
    "record_failed_import",
    "upload_dir",
    "validate_row",
    "write_error_file",
    "write_rows",
]
