"""The backup file format: a header, then AES-256-GCM frames, the last one the manifest.

::

    "PFBACKUP\\n"  u32 header length  header (JSON)
    frame*: u32 length  AES-256-GCM(data key, nonce = index, aad = sha256(header) | index | final)

The header (not secret) names the format version, the kind of backup, when and from what
it was made, and the data key sealed to each recipient (:mod:`pamflow.backup.keys`). Each
frame holds zlib-compressed JSON lines, one record each (``{"t": table, "r": row}``); the
last frame (``final`` = 1 in its associated data) holds only the manifest: counts per
table, the number of records and the sha256 of all record bytes. So the header is
authenticated by every frame, frames cannot be reordered, dropped or replayed from another
file (each file has its own data key), a file cut after any frame is missing its final
frame, and bytes after the final frame are refused.

Reading is streamed: one frame (at most :data:`MAX_FRAME` bytes, inflating to at most
:data:`MAX_PLAIN`) in memory at a time. Every refusal is a :class:`BackupRefused` naming
the file and what is wrong with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import struct
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import BackupRefused
from .keys import BackupKey, Recipient

MAGIC = b"PFBACKUP\n"
FORMAT = "pamflow-backup"
VERSION = 1
MAX_HEADER = 64 * 1024
MAX_FRAME = 16 * 1024 * 1024
MAX_PLAIN = 64 * 1024 * 1024
MAX_RECIPIENTS = 16
_U32 = struct.Struct(">I")


def _frame_aad(header_digest: bytes, index: int, final: bool) -> bytes:
    return header_digest + struct.pack(">QB", index, 1 if final else 0)


def _nonce(index: int) -> bytes:
    return struct.pack(">4xQ", index)


def _wrap_context(file_id: str, kind: str) -> bytes:
    return f"pamflow-backup-v1:{file_id}:{kind}".encode()


@dataclass
class Manifest:
    """What a backup holds: counts per table, record count, sha256 of the record bytes."""

    counts: dict[str, int]
    records: int
    records_sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "records": self.records,
                "records_sha256": self.records_sha256}


class SealedWriter:
    """Writes a backup to ``out`` (a binary file), record by record, a frame at a time."""

    def __init__(self, out: IO[bytes], kind: str, recipients: list[Recipient],
                 meta: dict[str, Any] | None = None, chunk_records: int = 1000) -> None:
        if not recipients:
            raise ValueError("a backup needs at least one recipient")
        self.out = out
        self.kind = kind
        self.file_id = secrets.token_hex(16)
        dek = secrets.token_bytes(32)
        context = _wrap_context(self.file_id, kind)
        self.header = {"format": FORMAT, "version": VERSION, "kind": kind,
                       "file_id": self.file_id, "cipher": "AES-256-GCM", "compression": "zlib",
                       "recipients": [r.wrap(dek, context) for r in recipients],
                       **(meta or {})}
        raw = json.dumps(self.header, sort_keys=True, separators=(",", ":")).encode()
        self._digest = hashlib.sha256(raw).digest()
        self._aead = AESGCM(dek)
        self._index = 0
        self._buf: list[bytes] = []
        self._chunk = chunk_records
        self._hash = hashlib.sha256()
        self.counts: Counter[str] = Counter()
        out.write(MAGIC + _U32.pack(len(raw)) + raw)

    def add(self, table: str, row: dict[str, Any]) -> None:
        line = json.dumps({"t": table, "r": row}, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode() + b"\n"
        self._buf.append(line)
        self.counts[table] += 1
        if len(self._buf) >= self._chunk:
            self._flush()

    def _frame(self, plain: bytes, final: bool) -> None:
        sealed = self._aead.encrypt(_nonce(self._index), zlib.compress(plain, 6),
                                    _frame_aad(self._digest, self._index, final))
        if len(sealed) > MAX_FRAME:
            raise ValueError("a backup frame grew over the frame limit: lower chunk_records")
        self.out.write(_U32.pack(len(sealed)) + sealed)
        self._index += 1

    def _flush(self) -> None:
        if not self._buf:
            return
        plain = b"".join(self._buf)
        self._buf = []
        self._hash.update(plain)
        self._frame(plain, final=False)

    def close(self) -> Manifest:
        """Write the remaining records and the final manifest frame."""
        self._flush()
        manifest = Manifest(dict(self.counts), sum(self.counts.values()), self._hash.hexdigest())
        self._frame(json.dumps({"manifest": manifest.as_dict()}, sort_keys=True).encode(),
                    final=True)
        return manifest


@dataclass
class Header:
    kind: str
    file_id: str
    key_ids: list[str]
    raw: dict[str, Any] = field(repr=False)
    digest: bytes = field(repr=False)
    length: int = 0  # bytes of magic, length and header


class _Source:
    """Reads exactly n bytes from a file descriptor, naming truncation."""

    def __init__(self, fd: int, size: int, name: str) -> None:
        self.fd, self.size, self.name, self.pos = fd, size, name, 0

    def read(self, n: int, what: str) -> bytes:
        if self.pos + n > self.size:
            raise BackupRefused(f"backup {self.name} is truncated: it ends inside {what}")
        chunks = []
        left = n
        while left:
            data = os.pread(self.fd, min(left, 1 << 20), self.pos)
            if not data:
                raise BackupRefused(f"backup {self.name} is truncated: it ends inside {what}")
            chunks.append(data)
            self.pos += len(data)
            left -= len(data)
        return b"".join(chunks)


def read_header(fd: int, size: int, name: str) -> Header:
    """The header of a backup file (no key needed); BackupRefused when it is not one."""
    src = _Source(fd, size, name)
    if size < len(MAGIC) or src.read(len(MAGIC), "its magic") != MAGIC:
        raise BackupRefused(f"{name} is not a pamflow backup file (bad magic)")
    (length,) = _U32.unpack(src.read(4, "its header length"))
    if not 2 <= length <= MAX_HEADER:
        raise BackupRefused(f"backup {name}: header length {length} is out of bounds "
                            f"(at most {MAX_HEADER})")
    raw = src.read(length, "its header")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BackupRefused(f"backup {name}: the header is not valid JSON") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BackupRefused(f"{name} is not a pamflow backup file (no {FORMAT} header)")
    if data.get("version") != VERSION:
        shown = str(data.get("version"))[:20]
        raise BackupRefused(f"backup {name} has format version {shown}; this pamflow reads "
                            f"version {VERSION} only")
    kind, file_id, recips = data.get("kind"), data.get("file_id"), data.get("recipients")
    if not isinstance(kind, str) or not isinstance(file_id, str) or not isinstance(recips, list) \
            or not 1 <= len(recips) <= MAX_RECIPIENTS \
            or not all(isinstance(r, dict) and isinstance(r.get("kid"), str) for r in recips):
        raise BackupRefused(f"backup {name}: the header lacks its kind, file id or recipients")
    return Header(kind, file_id, [str(r["kid"])[:32] for r in recips], data,
                  hashlib.sha256(raw).digest(), src.pos)


class SealedReader:
    """Reads and authenticates a backup: ``records()`` yields ``(table, row)`` and, once
    exhausted, ``manifest`` is set — after the counts and hash were checked against it."""

    def __init__(self, fd: int, size: int, name: str, key: BackupKey) -> None:
        self.name = name
        self.header = read_header(fd, size, name)
        self._src = _Source(fd, size, name)
        self._src.pos = self.header.length
        context = _wrap_context(self.header.file_id, self.header.kind)
        entries = [r for r in self.header.raw["recipients"] if r.get("kid") == key.key_id]
        if not entries:
            raise BackupRefused(
                f"wrong key: backup {name} is sealed to backup key id(s) "
                f"{', '.join(self.header.key_ids)}; the key given is {key.key_id}")
        dek = None
        for entry in entries:
            dek = key.unwrap(entry, context)
            if dek is not None:
                break
        if dek is None or len(dek) != 32:
            raise BackupRefused(f"backup {name}: its data key does not open with key "
                                f"{key.key_id}: the header was altered")
        self._aead = AESGCM(dek)
        self.manifest: Manifest | None = None

    def _frames(self) -> Iterator[tuple[int, bytes, bool]]:
        index = 0
        while True:
            if self._src.pos == self._src.size:
                raise BackupRefused(f"backup {self.name} is truncated: it ends after frame "
                                    f"{index} without its final (manifest) frame")
            (length,) = _U32.unpack(self._src.read(4, f"the length of frame {index}"))
            if not 17 <= length <= MAX_FRAME:
                raise BackupRefused(f"backup {self.name}: frame {index} claims {length} bytes, "
                                    f"out of bounds (at most {MAX_FRAME}): altered or not a backup")
            sealed = self._src.read(length, f"frame {index}")
            for final in (False, True):
                try:
                    packed = self._aead.decrypt(_nonce(index), sealed,
                                                _frame_aad(self.header.digest, index, final))
                    break
                except InvalidTag:
                    continue
            else:
                raise BackupRefused(f"backup {self.name}: frame {index} fails authentication: "
                                    "the file was altered")
            inflater = zlib.decompressobj()
            try:
                plain = inflater.decompress(packed, MAX_PLAIN)
            except zlib.error:
                raise BackupRefused(f"backup {self.name}: frame {index} does not inflate") from None
            if inflater.unconsumed_tail or not inflater.eof:
                raise BackupRefused(f"backup {self.name}: frame {index} inflates past "
                                    f"{MAX_PLAIN} bytes or is incomplete")
            if final and self._src.pos != self._src.size:
                raise BackupRefused(f"backup {self.name}: {self._src.size - self._src.pos} "
                                    "byte(s) follow its final frame: altered")
            yield index, plain, final
            if final:
                return
            index += 1

    def records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        counts: Counter[str] = Counter()
        digest = hashlib.sha256()
        for index, plain, final in self._frames():
            if final:
                self.manifest = self._check_manifest(plain, counts, digest.hexdigest())
                return
            digest.update(plain)
            for n, line in enumerate(plain.splitlines()):
                try:
                    rec = json.loads(line)
                except (ValueError, RecursionError):
                    raise BackupRefused(f"backup {self.name}: record {n} of frame {index} is "
                                        "not JSON") from None
                if not (isinstance(rec, dict) and isinstance(rec.get("t"), str)
                        and isinstance(rec.get("r"), dict)):
                    raise BackupRefused(f"backup {self.name}: record {n} of frame {index} is "
                                        "not a table row")
                counts[rec["t"]] += 1
                yield rec["t"], rec["r"]

    def _check_manifest(self, plain: bytes, counts: Counter[str], sha: str) -> Manifest:
        try:
            data = json.loads(plain)["manifest"]
            manifest = Manifest({str(k): int(v) for k, v in data["counts"].items()},
                                int(data["records"]), str(data["records_sha256"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise BackupRefused(f"backup {self.name}: the manifest is unreadable") from None
        if manifest.counts != dict(counts) or manifest.records != sum(counts.values()) \
                or manifest.records_sha256 != sha:
            raise BackupRefused(f"backup {self.name}: its records do not match its manifest "
                                f"(counts {dict(counts)} against {manifest.counts})")
        return manifest


__all__ = ["FORMAT", "MAGIC", "MAX_FRAME", "VERSION", "Header", "Manifest", "SealedReader",
           "SealedWriter", "read_header"]
