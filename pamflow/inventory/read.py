"""Reading a spreadsheet's records: CSV (encodings, delimiters) and XLSX (straight from the
worksheet XML, with the workbook's inflated size and ratio bounded)."""


from __future__ import annotations

import csv
import io
import os
import re
import zipfile
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from .files import (
    _env_limit,
)
from .model import (
    ALIASES,
    MAX_FILE_BYTES,
    MAX_MEMBERS,
    MAX_RATIO,
    MAX_UNCOMPRESSED,
    RATIO_FLOOR,
    ImportFileError,
)

# ---------------------------------------------------------------------------------------
# reading


def _normalized(header: str) -> str:
    """A header as written, lower case, spaces and dashes as ``_`` (before aliases)."""
    return re.sub(r"[\s\-]+", "_", str(header).strip().lower())


def _canonical(header: str) -> str:
    name = _normalized(header)
    return ALIASES.get(name, name)


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _read_csv_records(path: Path, raw: bytes) -> Iterator[tuple[int, list[str]]]:
    if b"\x00" in raw[:65536]:
        raise ImportFileError(f"{path.name}: not a CSV file (it holds binary data)")
    if raw.startswith(b"PK\x03\x04"):
        raise ImportFileError(f"{path.name}: not a CSV file (it is a zip archive; an .xlsx?)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = raw.decode("cp1252")
        except UnicodeDecodeError:
            raise ImportFileError(
                f"{path.name}: not a readable CSV file (neither UTF-8 nor Windows-1252 text)"
            ) from None
    first_nl = text.find("\n")
    first = text if first_nl < 0 else text[:first_nl]
    delimiter = None
    if first.lower().startswith("sep=") and len(first.strip()) == 5:
        delimiter = first.strip()[4]
        text = text[first_nl + 1:] if first_nl >= 0 else ""
        first_nl = text.find("\n")
        first = text if first_nl < 0 else text[:first_nl]
    if delimiter is None:
        counts = {d: first.count(d) for d in (",", ";", "\t")}
        delimiter = max(counts, key=lambda d: counts[d]) if any(counts.values()) else ","
    if csv.field_size_limit() < MAX_FILE_BYTES:
        # a huge cell is reported per row (MAX_CELL); the csv module must not choke first
        csv.field_size_limit(MAX_FILE_BYTES)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        yield from enumerate(reader, start=1)
    except csv.Error as exc:
        raise ImportFileError(f"{path.name}: malformed CSV near line {reader.line_num}: {exc}") from None


_SHEET_NS = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_ROW, _CELL, _VALUE, _TEXT = (f"{_SHEET_NS}{t}" for t in ("row", "c", "v", "t"))
_COLUMN_LETTERS = re.compile(r"^([A-Z]{1,3})")


def _column_index(ref: str, cache: dict[str, int]) -> int:
    """0-based column of a cell reference such as ``"AB12"``."""
    m = _COLUMN_LETTERS.match(ref)
    letters = m.group(1) if m else ""
    index = cache.get(letters)
    if index is None:
        index = 0
        for ch in letters:
            index = index * 26 + ord(ch) - 64
        index -= 1
        cache[letters] = index
    return index


def _xlsx_number(text: str) -> str:
    try:
        return str(int(text))
    except ValueError:
        try:
            return _cell_text(float(text))
        except ValueError:
            return text


def _iter_sheet(source, shared: Sequence) -> Iterator[tuple[int, list[str]]]:
    """Cell texts per row, straight from the worksheet XML (values only, as data_only does).

    Read with ElementTree's C parser, a few times faster than openpyxl's read-only mode
    (which also parses the whole sheet once more at load time when a writer left out the
    ``<dimension>``); openpyxl stays the writer in tests and the benchmark.
    Numbers come as their text (a date-formatted cell as its serial number).
    """
    from xml.etree.ElementTree import iterparse

    cache: dict[str, int] = {}
    number = 0
    # expat >= 2.4 (bundled: 2.5) limits entity amplification; ElementTree never fetches
    # external entities. openpyxl parses the same parts with the same parser.
    for _event, elem in iterparse(source, events=("end",)):  # noqa: S314
        if elem.tag != _ROW:
            continue
        ref = elem.get("r")
        number = int(ref) if ref and ref.isdigit() else number + 1
        cells: list[str] = []
        column = -1
        for c in elem:
            if c.tag != _CELL:
                continue
            ref = c.get("r")
            column = _column_index(ref, cache) if ref else column + 1
            kind = c.get("t", "n")
            if kind == "inlineStr":
                text = "".join(t.text or "" for t in c.iter(_TEXT))
            else:
                v = c.find(_VALUE)
                text = "" if v is None or v.text is None else v.text
                if text:
                    if kind == "s":
                        text = str(shared[int(text)])
                    elif kind == "n":
                        text = _xlsx_number(text)
                    elif kind == "b":
                        text = "true" if text == "1" else "false"
            if column >= len(cells):
                cells.extend([""] * (column - len(cells) + 1))
            cells[column] = text
        elem.clear()
        yield number, cells


_REL_NS = "{http://schemas.openxmlformats.org/package/2006/relationships}"
_DOC_REL_NS = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"


class _Inflated:
    """Counts the bytes inflated from a workbook's parts against the uncompressed limit
    (the zip directory's sizes were checked before reading, but a directory can lie)."""

    def __init__(self, name: str, limit: int) -> None:
        self.name, self.limit, self.total = name, limit, 0

    def take(self, n: int) -> None:
        self.total += n
        if self.total > self.limit:
            raise ImportFileError(
                f"{self.name}: the workbook inflates to more than {self.limit:,} bytes "
                "(PAMFLOW_IMPORT_MAX_UNCOMPRESSED); refused")

    def open(self, archive: zipfile.ZipFile, part: str) -> _Counted:
        return _Counted(archive.open(part), self)

    def read(self, archive: zipfile.ZipFile, part: str) -> bytes:
        with self.open(archive, part) as source:
            return source.read()


class _Counted:
    """A part of the archive, read through its inflated-bytes budget."""

    def __init__(self, raw, budget: _Inflated) -> None:
        self._raw, self._budget = raw, budget

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            chunks = []
            while chunk := self.read(1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
        data = self._raw.read(n)
        self._budget.take(len(data))
        return data

    def __enter__(self) -> _Counted:
        return self

    def __exit__(self, *exc) -> None:
        self._raw.close()


def _check_archive(name: str, archive: zipfile.ZipFile) -> _Inflated:
    """Refuse a zip bomb from the archive's directory, before anything is inflated."""
    limit = _env_limit("PAMFLOW_IMPORT_MAX_UNCOMPRESSED", MAX_UNCOMPRESSED)
    ratio = _env_limit("PAMFLOW_IMPORT_MAX_RATIO", MAX_RATIO)
    parts = archive.infolist()
    if len(parts) > MAX_MEMBERS:
        raise ImportFileError(f"{name}: {len(parts):,} parts in the workbook, over the "
                              f"{MAX_MEMBERS:,}-part limit; refused")
    total = sum(p.file_size for p in parts)
    if total > limit:
        raise ImportFileError(f"{name}: the workbook's parts inflate to {total:,} bytes, over the "
                              f"{limit:,}-byte limit (PAMFLOW_IMPORT_MAX_UNCOMPRESSED); refused")
    for p in parts:
        if p.file_size > RATIO_FLOOR and p.file_size > ratio * max(p.compress_size, 1):
            raise ImportFileError(
                f"{name}: a part of the workbook inflates {p.file_size / max(p.compress_size, 1):,.0f}"
                f" times its stored size, over the limit of {ratio} (PAMFLOW_IMPORT_MAX_RATIO); "
                "refused")
    return _Inflated(name, limit)


def _xml(archive: zipfile.ZipFile, name: str, budget: _Inflated):
    from xml.etree.ElementTree import fromstring

    return fromstring(budget.read(archive, name))  # noqa: S314 - see _iter_sheet


def _rels(archive: zipfile.ZipFile, part: str, budget: _Inflated) -> dict[str, tuple[str, str]]:
    """A part's relationships: id -> (type, absolute part name)."""
    folder, _, name = part.rpartition("/")
    rels_name = f"{folder}/_rels/{name}.rels" if folder else f"_rels/{name}.rels"
    out = {}
    for rel in _xml(archive, rels_name, budget).iter(f"{_REL_NS}Relationship"):
        target = rel.get("Target", "")
        target = target.lstrip("/") if target.startswith("/") else (
            f"{folder}/{target}" if folder else target)
        parts: list[str] = []
        for piece in target.split("/"):  # resolve "../"
            if piece == "..":
                if parts:
                    parts.pop()
            elif piece not in ("", "."):
                parts.append(piece)
        out[rel.get("Id")] = (rel.get("Type", ""), "/".join(parts))
    return out


def _shared_strings(archive: zipfile.ZipFile, part: str | None, budget: _Inflated) -> list[str]:
    if part is None:
        return []
    from xml.etree.ElementTree import iterparse

    strings = []
    run = f"{_SHEET_NS}r"
    with budget.open(archive, part) as source:
        for _event, si in iterparse(source, events=("end",)):  # noqa: S314 - see _iter_sheet
            if si.tag != f"{_SHEET_NS}si":
                continue
            text = []
            for child in si:  # plain text or rich-text runs; phonetic hints (rPh) left out
                if child.tag == _TEXT:
                    text.append(child.text or "")
                elif child.tag == run:
                    t = child.find(_TEXT)
                    text.append("" if t is None else t.text or "")
            strings.append("".join(text))
            si.clear()
    return strings


def _read_xlsx_records(path: Path, fh) -> Iterator[tuple[int, list[str]]]:
    """The first worksheet's rows. The package is navigated by its relationships (as
    openpyxl does) but without openpyxl's whole-sheet pass for the sheet's dimensions."""
    if not zipfile.is_zipfile(fh):
        raise ImportFileError(f"{path.name}: not an XLSX workbook (not a zip archive: "
                              "corrupt, or another kind of file)")
    try:
        fh.seek(0)
        archive = zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ImportFileError(f"{path.name}: not a readable XLSX workbook "
                              f"({exc.__class__.__name__})") from None
    with archive:
        budget = _check_archive(path.name, archive)
        try:
            workbook = next(target for kind, target in _rels(archive, "", budget).values()
                            if kind.endswith("/officeDocument"))
            rels = _rels(archive, workbook, budget)
            sheets = _xml(archive, workbook, budget).find(f"{_SHEET_NS}sheets")
            first = None if sheets is None else next(iter(sheets), None)
            strings = next((target for kind, target in rels.values()
                            if kind.endswith("/sharedStrings")), None)
            shared = _shared_strings(archive, strings, budget)
        except ImportFileError:
            raise
        except Exception as exc:  # noqa: BLE001 - missing parts, bad XML, bad zip members
            raise ImportFileError(f"{path.name}: not a readable XLSX workbook "
                                  f"({exc.__class__.__name__})") from None
        if first is None:
            return
        try:
            with budget.open(archive, rels[first.get(f"{_DOC_REL_NS}id")][1]) as source:
                yield from _iter_sheet(source, shared)
        except ImportFileError:
            raise
        except Exception as exc:  # noqa: BLE001 - a corrupt sheet part (zip, XML, index)
            raise ImportFileError(
                f"{path.name}: corrupt XLSX worksheet ({exc.__class__.__name__})"
            ) from None


def _records(path: Path, fh) -> tuple[str, Iterator[tuple[int, list[str]]]]:
    """The format and rows of the open file ``fh`` (``path``: its real path, for names)."""
    size = os.fstat(fh.fileno()).st_size
    if size > MAX_FILE_BYTES:
        raise ImportFileError(f"{path.name}: {size:,} bytes, over the {MAX_FILE_BYTES:,}-byte limit")
    suffix = path.suffix.lower()
    if suffix in (".xlsx", ".xlsm"):
        return "xlsx", _read_xlsx_records(path, fh)
    if suffix in (".csv", ".txt", ".tsv"):
        try:
            raw = fh.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise ImportFileError(f"{path.name}: cannot be read ({exc.strerror})") from None
        if len(raw) > MAX_FILE_BYTES:
            raise ImportFileError(f"{path.name}: over the {MAX_FILE_BYTES:,}-byte limit")
        return "csv", _read_csv_records(path, raw)
    if suffix == ".xls":
        raise ImportFileError(f"{path.name}: the old binary .xls format is not supported; "
                              "save it as .xlsx or .csv")
    raise ImportFileError(f"{path.name}: unsupported file type {suffix or '(none)'!r}; "
                          "expected .csv or .xlsx")
