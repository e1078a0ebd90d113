"""Where records come from: one place that opens any input ragr reads and streams its records.

A source is named by one string (``data.train``, ``data.eval``, ``--input``):

* a JSONL file (any name not below);
* a gzipped JSONL file (``*.gz``, or gzip bytes);
* a parquet file (``*.parquet`` / ``*.pq``, or parquet bytes);
* a folder written by ``datasets``' ``save_to_disk`` (a ``DatasetDict`` folder with one split, or its
  split subfolder ``DIR/train``);
* a hub dataset ``hf:NAME[:CONFIG][@SPLIT]`` (loaded through ``datasets``; offline, from its cache).

Every source yields the same thing: ``(location, record)`` with ``record`` a plain dict, so one set of
checks validates them all. A location is a line number for line-based sources (counted from 1, as
editors do) and a :class:`Row` for table sources (counted from 0, as ``dataset[N]`` and
``df.iloc[N]`` do), so a :class:`ragr.errors.DataError` reads ``train.jsonl:7: ...`` or
``train.parquet:row 6: ...``. A null cell of a table is an absent key.

Nothing is loaded whole. JSONL keeps byte offsets (:class:`ragr.data.jsonl.JsonlIndex`); ``save_to_disk``
folders and hub datasets are Arrow files, memory-mapped where they lie; parquet and gzipped JSONL are
streamed once (pyarrow batches, gzip lines) into an uncompressed Arrow file in the temporary folder
(``$TMPDIR``) that is memory-mapped and unlinked at once, so it vanishes with the process.

Column names are mapped by :class:`Columns` (``data.columns={query: anchor, pos: positive}``); the readers
of training and dev data also read sentence-transformers' layout (``anchor``, ``positive``, ``negative`` or
``negative_1..n``) without a mapping.
"""

from __future__ import annotations

import bisect
import gzip
import hashlib
import json
import os
import re
import tempfile
import zlib
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragr.errors import DataError, UserError, did_you_mean

HF_PREFIX = "hf:"
PARQUET_SUFFIXES = (".parquet", ".pq")
#: the kinds of source, as :func:`source_kind` names them
KINDS = ("jsonl", "jsonl.gz", "parquet", "disk", "hub")
_BATCH_ROWS = 1024          # rows per Arrow batch when scanning
_SPILL_BATCH_BYTES = 8 << 20  # raw JSONL bytes per spilled batch


class Row(int):
    """A table row number, counted from 0 (``dataset[N]``); a :class:`DataError` at it reads ``path:row N: ...``."""

    def __format__(self, spec: str) -> str:
        return f"row {int(self)}"

    def __str__(self) -> str:
        return f"row {int(self)}"

    def __repr__(self) -> str:
        return f"Row({int(self)})"


# ---------------------------------------------------------------------------------------------
# Column mapping
# ---------------------------------------------------------------------------------------------

#: the record fields ragr's readers know (the targets ``data.columns`` may name; ``data.label_key`` adds one)
TARGETS = ("query", "pos", "neg", "prompt", "scores", "pos_scores", "neg_scores",   # training data
           "content", "label", "hits",                                              # reranker training data
           "positive", "negative",                                                  # reranking eval data
           "text", "title", "teacher_prompt", "prompt_for_query",                  # texts, corpora
           "document", "documents")                                                 # `ragr rerank` input
#: fields that hold a list: a single value mapped to one is a one-item list, several columns are collected
LIST_TARGETS = ("pos", "neg", "positive", "negative", "documents", "scores", "pos_scores", "neg_scores")
#: sentence-transformers' column names: a record (or table) with an ``anchor`` column and no ``query`` is read
#: with these, for each field that neither the record nor ``data.columns`` gives
ST_COLUMNS: dict[str, tuple[str, ...]] = {"query": ("anchor",), "pos": ("positive",), "neg": ("negative", "negative_*")}


def check_columns(mapping: Any, key: str = "data.columns", extra_targets: Sequence[str] = ()) -> dict[str, list[str]]:
    """Validate a column mapping ``{field: column | [column, ...]}``; return it with every value a list.

    A column ending in ``*`` matches every column with that prefix (``negative_*``: ``negative_1``,
    ``negative_2`` ... in numeric order). Raises a UserError naming the key, with a did-you-mean for a
    field ragr does not read.
    """
    if mapping is None:
        return {}
    if not isinstance(mapping, Mapping):
        raise UserError(f"config key '{key}' must be a mapping of field to column (for example "
                        f"{key}={{query: anchor, pos: positive}}), got {mapping!r}")
    targets = list(dict.fromkeys([*TARGETS, *extra_targets]))
    out: dict[str, list[str]] = {}
    for field, cols in mapping.items():
        path = f"{key}.{field}"
        if field not in targets:
            raise UserError(f"unknown field '{path}'{did_you_mean(path, [f'{key}.{t}' for t in targets])}: "
                            f"a field is what ragr reads ({', '.join(targets)}), the value is your column")
        names = [cols] if isinstance(cols, str) else cols
        if not isinstance(names, (list, tuple)) or not names or \
                not all(isinstance(c, str) and c.strip() for c in names):
            raise UserError(f"config key '{path}' must be a column name or a list of them, got {cols!r}")
        if len(names) > 1 and field not in LIST_TARGETS:
            raise UserError(f"config key '{path}': '{field}' holds one value, so it takes one column, got {list(names)!r}")
        out[field] = list(names)
    return out


def _numeric_key(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _expand(pattern: str, names: Sequence[str]) -> list[str]:
    if pattern.endswith("*"):
        prefix = pattern[:-1]
        return sorted((n for n in names if n.startswith(prefix) and n != prefix), key=_numeric_key)
    return [pattern] if pattern in names else []


class Columns:
    """Renames a record's columns to the fields ragr reads.

    Args:
        mapping: ``{field: column | [columns]}`` (``data.columns``); see :func:`check_columns`.
        st_names: read sentence-transformers' layout (:data:`ST_COLUMNS`): in a record with an ``anchor``
            column and no ``query``, a field that neither the record nor ``mapping`` gives comes from its
            sentence-transformers column.

    A field mapped from several columns (or from one holding a single value, where ragr reads a list) is
    the list of their values, nulls left out. Mapped columns leave the record; other keys stay.
    """

    def __init__(self, mapping: Mapping[str, Any] | None = None, st_names: bool = False) -> None:
        self.mapping = check_columns(mapping)
        self.st_names = st_names
        self._plans: dict[tuple[str, ...], list[tuple[str, list[str]]]] = {}

    def __bool__(self) -> bool:
        return bool(self.mapping) or self.st_names

    def plan(self, names: Sequence[str]) -> list[tuple[str, list[str]]]:
        """``[(field, [columns])]`` for a record (or table) with these column names."""
        key = tuple(names)
        plan = self._plans.get(key)
        if plan is None:
            plan = []
            for field, patterns in self.mapping.items():
                cols = [c for p in patterns for c in _expand(p, names)]
                if cols:
                    plan.append((field, cols))
            if self.st_names and "anchor" in names and "query" not in names:  # sentence-transformers' layout
                for field, patterns in ST_COLUMNS.items():
                    if field in self.mapping or field in names:
                        continue
                    cols = [c for p in patterns for c in _expand(p, names)]
                    if cols:
                        plan.append((field, cols))
            if len(self._plans) < 64:
                self._plans[key] = plan
        return plan

    def missing(self, names: Sequence[str]) -> list[tuple[str, str]]:
        """``(field, pattern)`` of the mapping that match none of ``names`` (a table's columns)."""
        return [(f, p) for f, ps in self.mapping.items() for p in ps if not _expand(p, names)]

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        plan = self.plan(list(obj))
        if not plan:
            return obj
        values: dict[str, Any] = {}
        for field, cols in plan:
            cells = [obj[c] for c in cols]
            if field in LIST_TARGETS and (len(cells) > 1 or not isinstance(cells[0], list)):
                items: list[Any] = []
                for v in cells:
                    if isinstance(v, list):
                        items.extend(v)
                    elif v is not None:
                        items.append(v)
                # every cell null: null (a table's null is an absent key), as one null column would be
                values[field] = items if any(v is not None for v in cells) else None
            else:
                values[field] = cells[0]
        used = {c for _, cols in plan for c in cols}
        out = {k: v for k, v in obj.items() if k not in used}
        out.update(values)
        return out


def as_columns(columns: Columns | Mapping[str, Any] | None, st_names: bool = False) -> Columns:
    return columns if isinstance(columns, Columns) else Columns(columns, st_names=st_names)


# ---------------------------------------------------------------------------------------------
# Naming sources
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubName:
    """A hub dataset ``hf:NAME[:CONFIG][@SPLIT]``."""

    name: str
    config: str | None = None
    split: str | None = None

    def __str__(self) -> str:
        return HF_PREFIX + self.name + (f":{self.config}" if self.config else "") + (f"@{self.split}" if self.split else "")


_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def parse_hub(spec: str) -> HubName:
    """``hf:org/name:config@split`` -> :class:`HubName`; a malformed one is a UserError."""
    body = spec[len(HF_PREFIX):]
    split = None
    if "@" in body:
        body, split = body.split("@", 1)
        if not split:
            raise UserError(f"{spec}: nothing after '@' (write hf:NAME[:CONFIG][@SPLIT], e.g. hf:org/name@train)")
    name, _, config = body.partition(":")
    if not _HUB_NAME.match(name):
        raise UserError(f"{spec}: '{name}' is not a hub dataset name (write hf:NAME[:CONFIG][@SPLIT], "
                        "e.g. hf:sentence-transformers/all-nli:triplet@train)")
    if ":" in config or (_ and not config):
        raise UserError(f"{spec}: bad config '{config}' (write hf:NAME[:CONFIG][@SPLIT])")
    return HubName(name, config or None, split)


def _magic(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(4)
    except OSError:
        return b""


def source_kind(spec: str | os.PathLike) -> str:
    """One of :data:`KINDS` for a source name (by prefix, folder, suffix, then the file's first bytes)."""
    text = str(spec)
    if text.startswith(HF_PREFIX):
        return "hub"
    path = Path(text).expanduser()
    if path.is_dir():
        return "disk"
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(".gz"):
        return "jsonl.gz"
    magic = _magic(path)
    if magic == b"PAR1":
        return "parquet"
    if magic[:2] == b"\x1f\x8b":
        return "jsonl.gz"
    return "jsonl"


def _disk_splits(path: Path) -> list[str] | None:
    """The splits of a ``DatasetDict`` folder, or None for a ``Dataset`` folder."""
    meta = path / "dataset_dict.json"
    if not meta.is_file():
        return None
    try:
        return list(json.loads(meta.read_text()).get("splits") or [])
    except (OSError, json.JSONDecodeError, AttributeError):
        raise UserError(f"{path}: dataset_dict.json cannot be read (a broken save_to_disk folder)") from None


def require_source(spec: str | os.PathLike, key: str) -> None:
    """``spec`` (given as ``key``: a config key or a ``--option``) must name a source ragr can read.

    A file must exist and be readable; a folder must be a ``save_to_disk`` folder (a ``DatasetDict``
    folder with one split, or a split's subfolder); ``hf:`` names are parsed, and looked up in the
    local cache when the hub is offline (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``), so a missing
    dataset is refused before anything runs. Raises one UserError line.
    """
    from ragr.data.jsonl import require_file

    text = str(spec)
    shown = f"{key} {text}" if key.startswith("-") else f"{key}={text}"
    if text.startswith(HF_PREFIX):
        hub = parse_hub(text)
        if _hub_offline():
            _load_hub(hub)
        return
    path = Path(text).expanduser()
    if path.is_dir():
        _disk_folder(path, shown)
        return
    require_file(path, key)


def _disk_folder(path: Path, shown: str) -> Path:
    """The ``Dataset`` folder to read for ``path`` (a DatasetDict folder with one split: that split's)."""
    if (path / "state.json").is_file():
        return path
    splits = _disk_splits(path)
    if splits is None:
        raise UserError(f"{shown}: is a directory, not a data file (a `datasets` save_to_disk folder holds "
                        "state.json, or dataset_dict.json and a folder per split)")
    if len(splits) != 1:
        choices = ", ".join(str(path / s) for s in splits)
        raise UserError(f"{shown}: the folder holds the splits {', '.join(splits) or '(none)'}; "
                        f"name one: {choices}")
    return _disk_folder(path / splits[0], shown)


# ---------------------------------------------------------------------------------------------
# Hub datasets
# ---------------------------------------------------------------------------------------------


def _hub_offline() -> bool:
    try:
        import datasets.config

        return bool(datasets.config.HF_HUB_OFFLINE)
    except Exception:  # noqa: BLE001 - no datasets: the load says so
        return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or \
            os.environ.get("HF_DATASETS_OFFLINE", "").lower() in ("1", "true", "yes")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _load_hub(hub: HubName):
    """The ``datasets.Dataset`` of ``hub`` (memory-mapped Arrow in the datasets cache); one UserError on failure."""
    try:
        import datasets
        from datasets.utils import logging as ds_logging
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise UserError(f"{hub}: reading hub datasets needs the `datasets` package (pip install datasets)") from None
    key = (hub.name, hub.config, hub.split, str(datasets.config.HF_DATASETS_CACHE))  # one load per run (fingerprint, index)
    if key in _HUB_CACHE:
        return _HUB_CACHE[key]
    level = ds_logging.get_verbosity()
    ds_logging.set_verbosity_error()  # "Using the latest cached version ..." is not news
    try:
        loaded = datasets.load_dataset(hub.name, hub.config, split=hub.split)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        raise _hub_error(hub, exc) from None
    finally:
        ds_logging.set_verbosity(level)
    if isinstance(loaded, Mapping):  # no split named: a DatasetDict
        splits = list(loaded)
        if len(splits) != 1:
            raise UserError(f"{hub} has the splits {', '.join(splits)}; name one: "
                            + ", ".join(str(HubName(hub.name, hub.config, s)) for s in splits))
        loaded = loaded[splits[0]]
    if not isinstance(loaded, datasets.Dataset):
        raise UserError(f"{hub}: expected a dataset, got {type(loaded).__name__}")
    _HUB_CACHE[key] = loaded
    return loaded


_HUB_CACHE: dict[tuple, Any] = {}


def _hub_error(hub: HubName, exc: Exception) -> UserError:
    msg = str(exc)
    m = re.search(r"Unknown split \"([^\"]+)\"\. Should be one of \[([^\]]*)\]", msg)
    if m:
        splits = [s.strip(" '\"") for s in m.group(2).split(",") if s.strip()]
        return UserError(f"{hub}: no split '{m.group(1)}'{did_you_mean(m.group(1), splits)}; "
                         f"its splits: {', '.join(splits)}")
    m = re.search(r"BuilderConfig '?([^' ]+)'? not found\. Available: \[([^\]]*)\]", msg) or \
        re.search(r"Couldn't find cache for \S+ for config '([^']+)'\s*Available configs in the cache: \[([^\]]*)\]", msg)
    if m:
        configs = [c.strip(" '\"") for c in m.group(2).split(",") if c.strip()]
        return UserError(f"{hub}: no config '{m.group(1)}'{did_you_mean(m.group(1), configs)}; "
                         f"its configs{' in the cache' if 'cache' in msg else ''}: {', '.join(configs)}")
    m = re.search(r"Config name is missing\.\s*Please pick one among the available configs: \[([^\]]*)\]", msg)
    if m:
        configs = [c.strip(" '\"") for c in m.group(1).split(",") if c.strip()]
        return UserError(f"{hub} needs a config: name one as hf:{hub.name}:CONFIG ({', '.join(configs)})")
    args = ", ".join(repr(a) for a in (hub.name, hub.config) if a) + (f", split={hub.split!r}" if hub.split else "")
    return UserError(
        f"dataset '{hub}' is not in the local datasets cache and could not be fetched from the Hugging Face Hub "
        f"({_first_line(exc)}). Without network access, save it on another machine "
        f"(python -c \"import datasets; datasets.load_dataset({args}).save_to_disk('DIR')\"), copy DIR here "
        f"and pass DIR in place of {hub}")


def _dataset_table(ds):
    """The rows of a ``datasets.Dataset`` as one pyarrow Table (zero-copy over its memory-mapped files)."""
    return ds.with_format("arrow")[:]


# ---------------------------------------------------------------------------------------------
# Row access over Arrow
# ---------------------------------------------------------------------------------------------


def _row_dict(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if v is not None}


class _Batches:
    """Random access to the rows of a pyarrow Table through its record batches (bisect over their starts)."""

    def __init__(self, table) -> None:
        self.table = table
        self.batches = table.to_batches()
        self.starts = array("q")
        at = 0
        for b in self.batches:
            self.starts.append(at)
            at += b.num_rows
        self.rows = at

    def locate(self, i: int):
        b = bisect.bisect_right(self.starts, i) - 1
        return self.batches[b], i - self.starts[b]

    def row(self, i: int) -> dict[str, Any]:
        batch, j = self.locate(i)
        return batch.slice(j, 1).to_pylist()[0]

    def cell(self, i: int, column: int):
        batch, j = self.locate(i)
        return batch.column(column)[j].as_py()


def _spill_path() -> str:
    fd, path = tempfile.mkstemp(prefix="ragr-", suffix=".arrow")
    os.close(fd)
    return path


def _map_spill(path: str):
    """Memory-map a written Arrow IPC file as a Table and unlink it (the mapping keeps the data)."""
    import pyarrow as pa

    try:
        table = pa.ipc.open_file(pa.memory_map(path, "r")).read_all()
    finally:
        os.unlink(path)
    return table


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------


class Source:
    """An opened input: streams ``(location, record)`` and builds a validated random-access index.

    ``label`` names it in messages (the path or the ``hf:...`` name); ``kind`` is one of :data:`KINDS`.
    Use :func:`open_source`.
    """

    kind = ""

    def __init__(self, spec: str, columns: Columns) -> None:
        self.spec, self.label, self.columns = spec, spec, columns

    def raw(self) -> Iterator[tuple[int, Any]]:
        """``(location, payload)``: the undecoded line (bytes) of a line source, the row dict of a table."""
        raise NotImplementedError

    def records(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(location, record)`` for every record, columns mapped (bad JSON raises DataError)."""
        raise NotImplementedError

    def build_index(self, check: Callable[[dict, int], None]):
        """Validate every record with ``check(record, location)``; return an index ``index[i] -> record``
        with ``path`` (the label), ``linenos`` (each record's location) and ``len``."""
        raise NotImplementedError


class JsonlSource(Source):
    kind = "jsonl"

    def raw(self):
        with open(self.spec, "rb") as f:
            yield from enumerate(f, start=1)

    def records(self):
        from ragr.data.jsonl import iter_jsonl

        for lineno, _, obj in iter_jsonl(self.spec):
            yield lineno, self.columns.apply(obj) if self.columns else obj

    def build_index(self, check):
        from ragr.data.jsonl import JsonlIndex

        return JsonlIndex.build(self.spec, check, columns=self.columns)


def _gzip_error(label: str, exc: BaseException) -> UserError:
    return UserError(f"{label}: not a readable gzip file ({_first_line(exc)})")


class GzipJsonlSource(Source):
    """Gzipped JSONL: streamed line by line; the index spills the lines into an Arrow file (line, json)."""

    kind = "jsonl.gz"

    def raw(self):
        try:
            with gzip.open(self.spec, "rb") as f:
                yield from enumerate(f, start=1)
        except (OSError, EOFError, zlib.error) as exc:
            raise _gzip_error(self.label, exc) from None

    def _parsed(self) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
        from ragr.data.jsonl import parse_line

        for lineno, raw in self.raw():
            if raw.strip():
                yield lineno, raw, parse_line(raw, self.label, lineno)

    def records(self):
        for lineno, _, obj in self._parsed():
            yield lineno, self.columns.apply(obj) if self.columns else obj

    def build_index(self, check):
        import pyarrow as pa

        schema = pa.schema([("line", pa.int64()), ("json", pa.large_binary())])
        path = _spill_path()
        try:
            with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
                lines: list[int] = []
                blobs: list[bytes] = []
                size = 0
                for lineno, raw, obj in self._parsed():
                    check(self.columns.apply(obj) if self.columns else obj, lineno)
                    lines.append(lineno)
                    blobs.append(raw)
                    size += len(raw)
                    if size >= _SPILL_BATCH_BYTES:
                        writer.write_batch(pa.record_batch([lines, blobs], schema=schema))
                        lines, blobs, size = [], [], 0
                if lines:
                    writer.write_batch(pa.record_batch([lines, blobs], schema=schema))
        except BaseException:
            os.unlink(path)
            raise
        table = _map_spill(path)
        if table.num_rows == 0:
            raise UserError(f"{self.label}: no records")
        return ArrowIndex(table, self.label, self.columns, json_lines=True)


class ArrowSource(Source):
    """A table: a ``save_to_disk`` folder or a hub dataset (memory-mapped), or a parquet file (streamed)."""

    def __init__(self, spec: str, columns: Columns, table=None) -> None:
        super().__init__(spec, columns)
        self._table = table

    @property
    def table(self):
        return self._table

    @property
    def column_names(self) -> list[str]:
        return list(self.table.schema.names)

    def check_mapping(self) -> None:
        """A column named in ``data.columns`` that the table lacks is an error naming it (and its columns)."""
        names = self.column_names
        for field, pattern in self.columns.missing(names):
            raise UserError(f"data.columns.{field}: {self.label} has no column '{pattern}'"
                            f"{did_you_mean(pattern, names)}; its columns: {', '.join(names)}")

    def _batches(self):
        return self.table.to_batches(max_chunksize=_BATCH_ROWS)

    def raw(self):
        i = 0
        for batch in self._batches():
            for row in batch.to_pylist():
                yield Row(i), _row_dict(row)
                i += 1

    def records(self):
        self.check_mapping()
        apply = self.columns.apply if self.columns else None
        i = 0
        for batch in self._batches():
            for row in batch.to_pylist():
                yield Row(i), _row_dict(apply(row) if apply else row)
                i += 1

    def build_index(self, check):
        self.check_mapping()
        for loc, rec in self.records():
            check(rec, loc)
        table = self.table
        if table.num_rows == 0:
            raise UserError(f"{self.label}: no records")
        return ArrowIndex(table, self.label, self.columns)


class ParquetSource(ArrowSource):
    """Parquet: streamed in pyarrow batches; the index first copies them into an unlinked, memory-mapped Arrow file."""

    kind = "parquet"

    def __init__(self, spec: str, columns: Columns) -> None:
        super().__init__(spec, columns)
        self._file = self._open()

    def _open(self):
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(self.spec, memory_map=True)
        except Exception as exc:  # noqa: BLE001 - ArrowInvalid, OSError: not parquet
            raise UserError(f"{self.label}: not a readable parquet file ({_first_line(exc)})") from None

    @property
    def column_names(self) -> list[str]:
        return list(self._file.schema_arrow.names)

    def _batches(self):
        if self._table is not None:
            yield from self._table.to_batches(max_chunksize=_BATCH_ROWS)
            return
        try:
            yield from self._file.iter_batches(batch_size=_BATCH_ROWS)
        except Exception as exc:  # noqa: BLE001 - a corrupt page
            raise UserError(f"{self.label}: cannot be read as parquet ({_first_line(exc)})") from None

    def build_index(self, check):
        import pyarrow as pa

        if self._table is None:  # stream once: validate each batch and copy it into the spill
            self.check_mapping()
            apply = self.columns.apply if self.columns else None
            path = _spill_path()
            try:
                with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, self._file.schema_arrow) as writer:
                    i = 0
                    for batch in self._batches():
                        for row in batch.to_pylist():
                            check(_row_dict(apply(row) if apply else row), Row(i))
                            i += 1
                        writer.write_batch(batch)
            except BaseException:
                os.unlink(path)
                raise
            self._table = _map_spill(path)
            if self._table.num_rows == 0:
                raise UserError(f"{self.label}: no records")
            return ArrowIndex(self._table, self.label, self.columns)
        return super().build_index(check)


def _open_disk(spec: str, columns: Columns) -> ArrowSource:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise UserError(f"{spec}: reading a save_to_disk folder needs the `datasets` package") from None
    folder = _disk_folder(Path(spec).expanduser(), spec)
    try:
        ds = datasets.load_from_disk(str(folder))
    except Exception as exc:  # noqa: BLE001 - a broken folder
        raise UserError(f"{spec}: cannot be read as a `datasets` save_to_disk folder ({_first_line(exc)})") from None
    src = ArrowSource(spec, columns, _dataset_table(ds))
    src.kind, src.files = "disk", [f["filename"] for f in ds.cache_files]
    return src


def _open_hub(spec: str, columns: Columns) -> ArrowSource:
    ds = _load_hub(parse_hub(spec))
    src = ArrowSource(spec, columns, _dataset_table(ds))
    src.kind, src.files = "hub", [f["filename"] for f in ds.cache_files]
    return src


def open_source(spec: str | os.PathLike, columns: Columns | Mapping[str, Any] | None = None,
                st_names: bool = False) -> Source:
    """Open the source named ``spec`` (see the module docstring); a missing or unreadable one is a UserError.

    ``columns`` maps column names (:class:`Columns`, or a ``data.columns`` mapping with ``st_names``).
    """
    text = str(spec)
    cols = as_columns(columns, st_names)
    kind = source_kind(text)
    if kind == "hub":
        return _open_hub(text, cols)
    if kind == "disk":
        return _open_disk(text, cols)
    path = Path(text).expanduser()
    if not path.is_file():
        raise UserError(f"data file not found: {text}")
    text = str(path)
    if kind == "parquet":
        return ParquetSource(text, cols)
    if kind == "jsonl.gz":
        return GzipJsonlSource(text, cols)
    return JsonlSource(text, cols)


def as_source(spec_or_source: Source | str | os.PathLike, columns=None, st_names: bool = False) -> Source:
    return spec_or_source if isinstance(spec_or_source, Source) else open_source(spec_or_source, columns, st_names)


def index_records(spec: Source | str | os.PathLike, check: Callable[[dict, int], None], columns=None,
                  st_names: bool = False):
    """Validate every record of ``spec`` with ``check(record, location)``; return its random-access index."""
    return as_source(spec, columns, st_names).build_index(check)


class ArrowIndex:
    """Validated records of a table source (or of spilled JSONL lines): ``index[i]`` reads record ``i``.

    ``path`` is the source's label and ``linenos[i]`` record ``i``'s location (a :class:`Row`, or the line
    number of a gzipped JSONL line), as :class:`ragr.data.jsonl.JsonlIndex` has them.
    """

    def __init__(self, table, label: str, columns: Columns, json_lines: bool = False) -> None:
        self.path, self.columns, self.json_lines = label, columns, json_lines
        self.table = table
        self._rows = _Batches(table)
        self.linenos: Sequence[int] = _Lines(self._rows) if json_lines else _Rows(table.num_rows)

    def __len__(self) -> int:
        return self._rows.rows

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        if self.json_lines:
            obj = json.loads(self._rows.cell(i, 1))
            return self.columns.apply(obj) if self.columns else obj
        row = self._rows.row(i)
        return _row_dict(self.columns.apply(row) if self.columns else row)


class _Rows(Sequence):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [Row(j) for j in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return Row(i % self.n)


class _Lines(Sequence):
    def __init__(self, rows: _Batches) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return self.rows.rows

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return int(self.rows.cell(i, 0))


# ---------------------------------------------------------------------------------------------
# Fingerprints (run manifests, caches, resume checks)
# ---------------------------------------------------------------------------------------------


def _sha256(path: str, h=None):
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h


def source_files(spec: str | os.PathLike) -> list[str]:
    """The files a source's bytes come from (a file itself; a folder's or hub dataset's Arrow files)."""
    text = str(spec)
    kind = source_kind(text)
    if kind == "hub":
        return [f["filename"] for f in _load_hub(parse_hub(text)).cache_files]
    if kind == "disk":
        folder = _disk_folder(Path(text).expanduser(), text)
        return sorted(str(p) for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return [text]


def fingerprint(spec: str | os.PathLike) -> dict[str, Any]:
    """``{"sha256", "bytes"}`` of a source: a file's own hash, else the hash over its files (name and content)."""
    text = str(spec)
    files = source_files(text)
    if source_kind(text) in ("jsonl", "jsonl.gz", "parquet"):
        return {"sha256": _sha256(text).hexdigest(), "bytes": os.path.getsize(text)}
    h = hashlib.sha256()
    for f in files:
        h.update(Path(f).name.encode() + b"\0")
        h.update(_sha256(f).digest())
    return {"sha256": h.hexdigest(), "bytes": sum(os.path.getsize(f) for f in files)}


def source_exists(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` names something that may be read (a file, a folder, or any ``hf:`` name)."""
    text = str(spec)
    return text.startswith(HF_PREFIX) or Path(text).expanduser().exists()


def parse_columns_option(values: Sequence[str] | None, option: str = "--columns") -> dict[str, Any] | None:
    """``["query=anchor", "pos=positive,neg=negative_*"]`` -> ``{"query": "anchor", ...}``; a field given twice
    collects its columns into a list. A bad item is a UserError naming the option."""
    if not values:
        return None
    out: dict[str, Any] = {}
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            field, sep, col = item.partition("=")
            if not sep or not field.strip() or not col.strip():
                raise UserError(f"{option} {value}: write FIELD=COLUMN (for example {option} query=anchor,pos=positive)")
            field, col = field.strip(), col.strip()
            if field in out:
                prev = out[field]
                out[field] = (prev if isinstance(prev, list) else [prev]) + [col]
            else:
                out[field] = col
    check_columns(out, option)
    return out

