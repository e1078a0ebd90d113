"""Validated, streaming JSONL access.

A file is scanned once, line by line: every line is parsed and checked, and only its byte offset is
kept. Records are then read back by offset, so a 10 GB file is never held in memory.
"""

from __future__ import annotations

import json
import os
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ragr.errors import DataError, UserError


def require_file(path: str | os.PathLike, key: str) -> Path:
    """``path`` (given as ``key``: a config key or a ``--option``) must be a readable file; else one UserError line."""
    shown = f"{key} {path}" if key.startswith("-") else f"{key}={path}"
    p = Path(path)
    if not p.exists():
        raise UserError(f"{shown}: no such file")
    if p.is_dir():
        raise UserError(f"{shown}: is a directory, not a file")
    try:
        with open(p, "rb"):
            pass
    except OSError as exc:
        raise UserError(f"{shown}: cannot be read ({(exc.strerror or type(exc).__name__).lower()})") from None
    return p


def decode_line(raw: bytes, path: str, lineno: int) -> str:
    """One line of a JSONL file as text; bytes that are not UTF-8 raise a DataError naming the line and column."""
    try:
        return raw.decode("utf-8-sig")  # -sig: a byte-order mark opening the file is not data
    except UnicodeDecodeError as exc:
        raise DataError(path, lineno, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})") from None


def valid_unicode(text: str) -> bool:
    """False for a string holding a lone surrogate (JSON's ``"\\ud800"``), which no tokenizer accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_line(raw: bytes, path: str, lineno: int) -> dict[str, Any]:
    """One non-blank JSONL line as a dict; bad UTF-8, bad JSON or a non-object raise DataError naming the line."""
    text = decode_line(raw, str(path), lineno)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(str(path), lineno, f"invalid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise DataError(str(path), lineno, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """Yield ``(line_number, byte_offset, object)`` for each non-blank line; bad JSON raises DataError.

    The JSONL primitive: other sources (gzip, parquet, ``datasets`` folders, hub datasets) are opened by
    :mod:`ragr.data.sources`, which uses this for plain JSONL.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            yield lineno, start, parse_line(raw, str(path), lineno)


def require_str(obj: dict, key: str, path: str, lineno: int, optional: bool = False) -> str | None:
    if key not in obj:
        if optional:
            return None
        raise DataError(path, lineno, "missing", field=key)
    value = obj[key]
    if not isinstance(value, str) or not value.strip():
        raise DataError(path, lineno, f"must be a non-empty string, got {json.dumps(value)[:60]}", field=key)
    if not valid_unicode(value):
        raise DataError(path, lineno, "not valid Unicode (a lone surrogate escape such as \\ud800)", field=key)
    return value


def require_str_list(obj: dict, key: str, path: str, lineno: int, optional: bool = False, empty_ok: bool = False):
    if key not in obj:
        if optional:
            return None
        raise DataError(path, lineno, "missing", field=key)
    value = obj[key]
    if not isinstance(value, list) or not (value or empty_ok):
        raise DataError(path, lineno, f"must be a non-empty list of strings, got {json.dumps(value)[:60]}", field=key)
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise DataError(path, lineno, f"item {i} must be a non-empty string, got {json.dumps(item)[:60]}", field=key)
        if not valid_unicode(item):
            raise DataError(path, lineno, f"item {i} is not valid Unicode (a lone surrogate escape such as \\ud800)",
                            field=key)
    return value


def require_numbers(obj: dict, key: str, path: str, lineno: int, length: int, optional: bool = False):
    if key not in obj:
        if optional:
            return None
        raise DataError(path, lineno, "missing", field=key)
    value = obj[key]
    ok = isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not ok:
        raise DataError(path, lineno, f"must be a list of numbers, got {json.dumps(value)[:60]}", field=key)
    if len(value) != length:
        raise DataError(path, lineno, f"has {len(value)} values but there are {length} texts beside it", field=key)
    return value


class JsonlIndex:
    """Byte offsets of a validated JSONL file; ``index[i]`` re-reads and parses record ``i``.

    ``columns`` (a :class:`ragr.data.sources.Columns`) renames each record's keys, as it did when validated.
    """

    def __init__(self, path: str | os.PathLike, offsets: array, linenos: array, columns=None) -> None:
        self.path, self.offsets, self.linenos = str(path), offsets, linenos
        self.columns = columns or None
        self._fh = None
        self._pid = None

    @classmethod
    def build(cls, path: str | os.PathLike, check: Callable[[dict, int], None], columns=None) -> JsonlIndex:
        offsets, linenos = array("q"), array("q")
        columns = columns or None
        for lineno, offset, obj in iter_jsonl(path):
            check(columns.apply(obj) if columns is not None else obj, lineno)
            offsets.append(offset)
            linenos.append(lineno)
        if not offsets:
            raise UserError(f"{path}: no records")
        return cls(path, offsets, linenos, columns)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self._fh is None or self._pid != os.getpid():  # reopen in dataloader workers
            self._fh, self._pid = open(self.path, "rb"), os.getpid()
        self._fh.seek(self.offsets[i])
        obj = json.loads(self._fh.readline())
        return self.columns.apply(obj) if self.columns is not None else obj

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fh"] = None
        return state
