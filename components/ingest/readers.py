"""Readers: one source file (JSONL, Parquet, CSV) -> batches of candidate records in ``RAW_SCHEMA``.

Each batch carries the records that parsed (``table``, with the 1-based line/row number in ``_row``; for
JSONL the verbatim line stays in the chunk, ``RawBatch.raw_line``) and the records that did not
(``quarantined``, each with its reason and a message naming the field). Nothing is dropped: every
non-blank line or row read lands in one of the two.

JSONL fast path (why it is fast and still exact): numpy finds the line ends of a chunk; lines in braces
that a byte-level type screen passes are parsed by ``pyarrow.json`` in one multi-threaded call over the
chunk itself (the other lines blanked in a copy). Every other line (malformed JSON, wrong types, not an
object) takes the per-line path (``json.loads`` + the pydantic model), which gives the exact reason.
Arrow's explicit schema is strict, so a line the screen misses is rejected, never mis-typed; the chunk is
then parsed in blocks and a rejected block row by row, which isolates the offending rows.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from components.ingest.schema import KNOWN_FIELDS, RAW_SCHEMA, classify_record, event_to_row
from components.shared import storage

CHUNK_BYTES = 24 << 20

_ARROW_SCHEMA = pa.schema([f for f in RAW_SCHEMA if f.name != "metadata"])
_ROW_IN_ERROR = re.compile(r"in row (\d+)")


@dataclass
class QuarantinedRecord:
    """A record that could not become an event: where it was, verbatim, and why."""

    raw: str
    source: str
    row_number: int
    reason: str
    message: str
    event_id: str | None = None


@dataclass
class RawBatch:
    """Candidate records of one source file (or one chunk of it)."""

    source: str
    base_dir: str
    table: pa.Table
    quarantined: list[QuarantinedRecord] = field(default_factory=list)
    blank_lines: int = 0
    # JSONL: every line of the chunk (sharing its memory) and the number of the first, so the verbatim
    # line of a row quarantined later is ``lines[_row - first_line]`` (rows do not carry a copy).
    lines: pa.Array | None = None
    first_line: int = 1

    def raw_line(self, row_number: int) -> str | None:
        """The verbatim line ``row_number`` of a JSONL chunk (None for other formats)."""
        if self.lines is None:
            return None
        return str(self.lines[row_number - self.first_line].as_py()).rstrip("\r\n")


def empty_raw_table() -> pa.Table:
    """A zero-row table in the intermediate layout."""
    cols = {f.name: pa.array([], f.type) for f in RAW_SCHEMA}
    cols["_row"] = pa.array([], pa.int64())
    cols["_raw"] = pa.array([], pa.string())
    return pa.table(cols)


def rows_to_table(rows: list[dict[str, Any]], row_numbers: list[int], raws: list[str | None]) -> pa.Table:
    """Validated per-line records -> the intermediate layout."""
    cols: dict[str, Any] = {f.name: pa.array([r[f.name] for r in rows], f.type) for f in RAW_SCHEMA}
    cols["_row"] = pa.array(row_numbers, pa.int64())
    cols["_raw"] = pa.array(raws, pa.string())
    return pa.table(cols)


def conform(table: pa.Table, row_numbers: pa.Array, raw: pa.Array | None) -> pa.Table:
    """Any table with (a subset of) the known columns -> the intermediate layout.

    Extra columns and a struct ``metadata`` are folded into a JSON ``metadata`` string per row (only rows
    that have any, so the common case costs nothing).
    """
    n = table.num_rows
    extra = [c for c in table.column_names if c not in KNOWN_FIELDS and not c.startswith("_")]
    cols: dict[str, Any] = {}
    for f in RAW_SCHEMA:
        if f.name == "metadata":
            continue
        if f.name in table.column_names:
            col = table.column(f.name)
            cols[f.name] = col if col.type == f.type else pc.cast(col, f.type)
        else:
            cols[f.name] = pa.nulls(n, f.type)
    meta_col = table.column("metadata") if "metadata" in table.column_names else None
    if meta_col is not None and pa.types.is_string(meta_col.type) and not extra:
        cols["metadata"] = meta_col
    elif meta_col is None and not extra:
        cols["metadata"] = pa.nulls(n, pa.string())
    else:
        has = pa.nulls(n, pa.bool_()).fill_null(False)
        if meta_col is not None:
            has = pc.or_kleene(has, pc.is_valid(meta_col))
        for c in extra:
            has = pc.or_kleene(has, pc.is_valid(table.column(c)))
        idx = np.flatnonzero(has.to_numpy(zero_copy_only=False))
        out: list[str | None] = [None] * n
        if len(idx):
            sub = table.take(pa.array(idx))
            metas = sub.column("metadata").to_pylist() if meta_col is not None else [None] * len(idx)
            extras = {c: sub.column(c).to_pylist() for c in extra}
            for k, i in enumerate(idx):
                m = metas[k]
                merged: dict[str, Any] = {}
                if isinstance(m, str):
                    try:
                        merged = json.loads(m)
                    except ValueError:
                        merged = {"metadata": m}
                elif isinstance(m, dict):
                    merged = {key: v for key, v in m.items() if v is not None}
                for c in extra:
                    if extras[c][k] is not None:
                        merged[c] = extras[c][k]
                out[i] = json.dumps(merged, sort_keys=True, default=str) if merged else None
        cols["metadata"] = pa.array(out, pa.string())
    cols["_row"] = row_numbers
    cols["_raw"] = raw if raw is not None else pa.nulls(n, pa.string())
    return pa.table(cols)


# ---------------------------------------------------------------- JSONL

# The first byte a known field's JSON value may start with, for pyarrow.json (with the explicit schema)
# to accept it. Ids given as JSON numbers are legal but take the per-line path, which makes them text.
_TEXT_FIELDS = tuple(f for f in KNOWN_FIELDS if f not in ("score", "metadata"))
_VALUE_STARTS: dict[str, bytes] = {
    **{f: b'"n' for f in _TEXT_FIELDS},
    "score": b"-0123456789n",
    "metadata": b"{n",
}
ARROW_BLOCK_LINES = 2048
MAX_REJECTS_PER_BLOCK = 8


class ByteMask:
    """A reusable bool buffer for the byte-level passes over each chunk.

    A fresh 24 MB temporary per comparison is fresh pages for the kernel to fault in on every chunk; on
    the project's VMs that fault cost more than the comparison itself (see tests/benchmarks/RESULTS.md).
    """

    def __init__(self) -> None:
        self._buf = np.empty(0, dtype=bool)

    def of(self, n: int) -> np.ndarray:
        """A bool array of ``n`` elements (contents undefined), reusing the buffer when it is big enough."""
        if len(self._buf) < n:
            self._buf = np.empty(n, dtype=bool)
        return self._buf[:n]


def _line_bounds(view: np.ndarray, scratch: ByteMask | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Start of each line and its end (the newline's position, or the chunk's end)."""
    mask = (scratch or ByteMask()).of(len(view))
    np.equal(view, 10, out=mask)
    ends = np.flatnonzero(mask)
    if len(view) and (len(ends) == 0 or ends[-1] != len(view) - 1):
        ends = np.append(ends, len(view))
    starts = np.empty(len(ends), dtype=np.int64)
    if len(ends):
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
    return starts, ends


# '":' (the end of a key) as one 16-bit word in this machine's byte order.
_QUOTE_COLON = np.frombuffer(b'":', dtype=np.uint16)[0]


def _key_colons(view: np.ndarray, scratch: ByteMask) -> np.ndarray:
    """Positions of every ':' right after a '"' (unsorted): two 16-bit comparisons, at even and odd
    offsets, instead of a byte pass for ':' plus a gather of the byte before each."""
    n = len(view)
    found = []
    for offset in (0, 1):
        words = (n - offset) // 2
        mask = scratch.of(words)
        np.equal(view[offset : offset + 2 * words].view(np.uint16), _QUOTE_COLON, out=mask)
        found.append(np.flatnonzero(mask) * 2 + (offset + 1))
    return np.concatenate(found)


def _mistyped_lines(view: np.ndarray, ends: np.ndarray, scratch: ByteMask | None = None) -> np.ndarray:
    """Indices of lines where a known field probably holds a JSON value of the wrong type.

    pyarrow.json rejects such a line (and with it its whole block), so they are sent to the per-line
    path up front. A key ends in ``":``; the byte after the colon (and one optional space) starts the
    value. Only keys whose value is not a string, and the rare string-valued ``score``/``metadata``, are
    compared with the known names. This is a screen, not the judge: a line it misses still fails in
    Arrow and is isolated there, and a line it flags wrongly is still read exactly, only slower.
    """
    colon = _key_colons(view, scratch or ByteMask())
    colon = colon[colon + 2 < len(view)]
    value_at = colon + 1 + (view[colon + 1] == 32)
    first = view[value_at]
    # String values need a look only under keys ending like "score" / "metadata" (no text field does).
    before = view[colon - 2]
    check = (first != 34) | (before == ord("e")) | (before == ord("a"))
    colon, first = colon[check], first[check]
    flagged = np.zeros(len(colon), dtype=bool)
    for name, allowed in _VALUE_STARTS.items():
        key = np.frombuffer(f'"{name}"'.encode(), dtype=np.uint8)
        at = colon - len(key)
        ok_pos = at >= 0
        idx = np.flatnonzero(ok_pos)
        if not len(idx):
            continue
        window = view[at[idx, None] + np.arange(len(key))]
        is_key = (window == key).all(axis=1)
        bad = ~np.isin(first[idx], np.frombuffer(allowed, dtype=np.uint8))
        flagged[idx[is_key & bad]] = True
    return np.unique(np.searchsorted(ends, colon[flagged]))


def _parse_lines(lines: pa.Array, single_block: bool = False) -> pa.Table:
    """Parse JSON lines with pyarrow.json (all of them, or raise).

    ``single_block`` parses in one thread and one block, so an error's "in row N" is the slice's row N.
    """
    data = lines.buffers()[2]
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset : lines.offset + len(lines) + 1]
    return _parse_buffer(data[int(offsets[0]) : int(offsets[-1])], single_block)


def _parse_buffer(body: Any, single_block: bool = False) -> pa.Table:
    return pj.read_json(
        pa.BufferReader(body),
        read_options=pj.ReadOptions(use_threads=True, block_size=min(len(body) + 1, 1 << 21))
        if not single_block
        else pj.ReadOptions(use_threads=False, block_size=len(body) + 1),
        parse_options=pj.ParseOptions(explicit_schema=_ARROW_SCHEMA, unexpected_field_behavior="infer"),
    )


def _per_line(
    line: str, source: str, row_number: int, max_prompt_chars: int
) -> tuple[dict | None, QuarantinedRecord | None]:
    text = line.rstrip("\r\n")
    try:
        record = json.loads(text)
    except ValueError as err:
        return None, QuarantinedRecord(
            text, source, row_number, "malformed_record", f"line {row_number}: not valid JSON ({err})"
        )
    event, reason, message = classify_record(record, max_prompt_chars)
    if event is None:
        event_id = record.get("event_id") if isinstance(record, dict) else None
        return None, QuarantinedRecord(
            text, source, row_number, reason, message, str(event_id) if event_id is not None else None
        )
    return event_to_row(event), None


def _parse_in_blocks(lines: pa.Array) -> tuple[list[tuple[pa.Table, int, int]], list[int]]:
    """pyarrow.json over ``lines`` when one call over all of them failed: blocks of ARROW_BLOCK_LINES
    parsed alone, a rejected block scanned row by row up to MAX_REJECTS_PER_BLOCK rejects (after that its
    rest goes to the per-line path, cheaper than re-parsing it again). Good segments and rejected rows."""
    segments: list[tuple[pa.Table, int, int]] = []
    rejected: list[int] = []
    for lo in range(0, len(lines), ARROW_BLOCK_LINES):
        block = lines.slice(lo, ARROW_BLOCK_LINES)
        try:
            segments.append((_parse_lines(block, single_block=True), lo, lo + len(block)))
            continue
        except pa.ArrowInvalid:
            pass
        segs, bad = _scan_resumable(block, MAX_REJECTS_PER_BLOCK)
        segments.extend((t, lo + a, lo + b) for t, a, b in segs)
        rejected.extend(lo + i for i in bad)
    return segments, rejected


def parse_jsonl_chunk(
    chunk: bytes | memoryview | np.ndarray,
    first_line: int,
    source: str,
    base_dir: str,
    max_prompt_chars: int,
    scratch: ByteMask | None = None,
) -> RawBatch:
    """Parse one chunk of whole lines; ``first_line`` is the 1-based number of its first line.

    Lines in braces that pass a cheap byte-level type screen are parsed by ``pyarrow.json`` in one
    multi-threaded call over the chunk itself, with every other line overwritten by spaces in a copy
    (Arrow skips blank lines, so its rows are exactly the kept lines, in order). Everything else, and
    every line Arrow rejects, goes through ``json.loads`` + the pydantic model, which names the reason.
    """
    if len(chunk) == 0:
        return RawBatch(source, base_dir, empty_raw_table())
    view = np.frombuffer(chunk, dtype=np.uint8)
    scratch = scratch or ByteMask()
    starts, ends = _line_bounds(view, scratch)
    n = len(starts)
    offsets = np.append(starts, len(chunk)).astype(np.int32)
    lines = pa.StringArray.from_buffers(n, pa.py_buffer(offsets.tobytes()), pa.py_buffer(chunk))
    invalid_utf8 = np.zeros(n, dtype=bool)
    try:
        lines.validate(full=True)
    except pa.ArrowInvalid:
        for i in range(n):
            try:
                bytes(chunk[starts[i] : ends[i]]).decode("utf-8")
            except UnicodeDecodeError:
                invalid_utf8[i] = True
    numbers = np.arange(first_line, first_line + n, dtype=np.int64)
    content_end = ends - ((ends > starts) & (view[np.maximum(ends - 1, 0)] == 13))
    length = content_end - starts
    first = np.where(length > 0, view[np.minimum(starts, len(chunk) - 1)], 0)
    last = np.where(length > 0, view[np.maximum(content_end - 1, 0)], 0)
    # Blank lines are not records (counted apart); only empty lines or ones starting with whitespace can be.
    blank = length == 0
    for i in np.flatnonzero((length > 0) & np.isin(first, list(b" \t\r\x0b\x0c"))).tolist():
        blank[i] = not bytes(chunk[starts[i] : content_end[i]]).strip()
    arrow_ok = (length >= 2) & (first == ord("{")) & (last == ord("}")) & ~invalid_utf8
    arrow_ok[_mistyped_lines(view, ends, scratch)] = False
    slow = ~blank & ~arrow_ok
    tables: list[pa.Table] = []
    slow_idx = np.flatnonzero(slow)
    # the per-line path's lines, taken before they are blanked for Arrow below
    slow_text = {i: bytes(chunk[starts[i] : ends[i]]) for i in slow_idx.tolist()}
    arrow_idx = np.flatnonzero(arrow_ok)
    if len(arrow_idx):
        rejected: list[int] = []
        try:
            if len(arrow_idx) == n - int(blank.sum()):
                body: Any = chunk
            else:
                # blank in place when the chunk is our own buffer (read_jsonl's), else in a copy
                own = isinstance(chunk, np.ndarray) and chunk.flags.writeable
                body = chunk if own else np.frombuffer(bytearray(chunk), dtype=np.uint8)
                for i in slow_idx.tolist():
                    body[starts[i] : ends[i]] = 32
            parsed = _parse_buffer(pa.py_buffer(body))
            if parsed.num_rows != len(arrow_idx):
                raise pa.ArrowInvalid("row count differs from the kept lines")
            # The verbatim line of a row is looked up in RawBatch.lines when it is quarantined later.
            tables.append(conform(parsed, pa.array(numbers[arrow_idx]), None))
        except pa.ArrowInvalid:
            arrow_lines = lines.take(pa.array(arrow_idx))
            segments, rejected = _parse_in_blocks(arrow_lines)
            for seg_table, lo, hi in segments:
                tables.append(conform(seg_table, pa.array(numbers[arrow_idx[lo:hi]]), None))
        if rejected:
            slow_idx = np.sort(np.concatenate([slow_idx, arrow_idx[rejected]]))
    quarantined: list[QuarantinedRecord] = []
    rows: list[dict] = []
    row_numbers: list[int] = []
    raws: list[str | None] = []
    for i in slow_idx.tolist():
        raw_bytes = slow_text[i] if i in slow_text else bytes(chunk[starts[i] : ends[i]])
        if invalid_utf8[i]:
            text = raw_bytes.decode("utf-8", "replace").rstrip("\r")
            message = f"line {numbers[i]}: not valid UTF-8"
            quarantined.append(QuarantinedRecord(text, source, int(numbers[i]), "malformed_record", message))
            continue
        line = raw_bytes.decode("utf-8")
        row, bad = _per_line(line, source, int(numbers[i]), max_prompt_chars)
        if bad is not None:
            quarantined.append(bad)
        else:
            rows.append(row)  # type: ignore[arg-type]
            row_numbers.append(int(numbers[i]))
            raws.append(line.rstrip("\r\n"))
    if rows:
        tables.append(rows_to_table(rows, row_numbers, raws))
    table = pa.concat_tables(tables) if tables else empty_raw_table()
    return RawBatch(source, base_dir, table, quarantined, int(blank.sum()), lines, first_line)


def _scan_resumable(
    lines: pa.Array, max_rejects: int | None = None
) -> tuple[list[tuple[pa.Table, int, int]], list[int]]:
    """Parse ``lines`` in order, skipping each row Arrow rejects; returns good segments and rejected rows.

    After ``max_rejects`` rejects the rest is returned as rejected (for the per-line path).
    """
    segments: list[tuple[pa.Table, int, int]] = []
    rejected: list[int] = []
    pos, n = 0, len(lines)
    while pos < n:
        if max_rejects is not None and len(rejected) >= max_rejects:
            rejected.extend(range(pos, n))
            break
        try:
            segments.append((_parse_lines(lines.slice(pos), single_block=True), pos, n))
            break
        except pa.ArrowInvalid as err:
            match = _ROW_IN_ERROR.search(str(err))
            if match is None:
                # No row number in the message: give the rest to the per-line path.
                rejected.extend(range(pos, n))
                break
            # Arrow numbers rows per block; a single-threaded single block makes that the slice's row.
            bad = pos + int(match.group(1))
            if bad >= n:
                rejected.extend(range(pos, n))
                break
            if bad > pos:
                segments.append((_parse_lines(lines.slice(pos, bad - pos), single_block=True), pos, bad))
            rejected.append(bad)
            pos = bad + 1
    return segments, rejected


def _fill(f: Any, out: memoryview) -> int:
    """Read into ``out`` until it is full or the file ends; the number of bytes read."""
    got = 0
    while got < len(out):
        n = f.readinto(out[got:])
        if not n:
            break
        got += n
    return got


def read_jsonl(
    uri: str, base_dir: str, max_prompt_chars: int, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[RawBatch]:
    """Stream a JSONL file in chunks of whole lines.

    Each chunk is read straight into its own buffer (after the previous chunk's partial last line), so
    no chunk is copied; the batch keeps the buffer for verbatim lines of rows quarantined later. (A
    memory map would save the read's copy, but it holds a file descriptor per source until the run ends
    and turns a source truncated mid-run into SIGBUS instead of an error.)
    """
    line_no = 1
    carry = np.empty(0, dtype=np.uint8)
    scratch = ByteMask()
    with storage.open_read(uri) as f:
        while True:
            buf = np.empty(len(carry) + chunk_bytes, dtype=np.uint8)
            buf[: len(carry)] = carry
            got = _fill(f, buf.data[len(carry) :])
            if not got:
                break
            data = buf[: len(carry) + got]
            cut = _after_last_newline(data)
            if cut == 0:
                carry = data.copy()
                continue
            chunk, carry = data[:cut], data[cut:].copy()
            batch = parse_jsonl_chunk(chunk, line_no, uri, base_dir, max_prompt_chars, scratch)
            line_no += len(batch.lines) if batch.lines is not None else 0
            yield batch
    if len(carry):
        yield parse_jsonl_chunk(carry, line_no, uri, base_dir, max_prompt_chars, scratch)


def _after_last_newline(data: np.ndarray) -> int:
    """Position just after the last newline of ``data`` (0 if it has none)."""
    end = len(data)
    step = 1 << 16
    while end > 0:
        lo = max(0, end - step)
        hits = np.flatnonzero(data[lo:end] == 10)
        if len(hits):
            return int(lo + hits[-1] + 1)
        end = lo
        step *= 4
    return 0


# ---------------------------------------------------------------- Parquet and CSV


def read_table_records(table: pa.Table, uri: str, base_dir: str, max_prompt_chars: int) -> RawBatch:
    """A Parquet or CSV table -> batch; columns that do not cast to the schema go row by row."""
    n = table.num_rows
    numbers = pa.array(np.arange(1, n + 1, dtype=np.int64))
    try:
        return RawBatch(uri, base_dir, conform(table, numbers, None))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        pass
    quarantined: list[QuarantinedRecord] = []
    rows: list[dict] = []
    row_numbers: list[int] = []
    for i, record in enumerate(table.to_pylist(), start=1):
        record = {k: v for k, v in record.items() if v is not None and v != ""}
        event, reason, message = classify_record(record, max_prompt_chars)
        if event is None:
            raw = json.dumps(record, default=str, sort_keys=True)
            eid = record.get("event_id")
            quarantined.append(
                QuarantinedRecord(
                    raw, uri, i, reason, f"row {i}: {message}", None if eid is None else str(eid)
                )
            )
        else:
            rows.append(event_to_row(event))
            row_numbers.append(i)
    out = rows_to_table(rows, row_numbers, [None] * len(rows)) if rows else empty_raw_table()
    return RawBatch(uri, base_dir, out, quarantined)


def read_parquet(uri: str, base_dir: str, max_prompt_chars: int) -> Iterator[RawBatch]:
    """A Parquet file of feedback records."""
    yield read_table_records(storage.read_parquet(uri), uri, base_dir, max_prompt_chars)


def _csv_header(data: bytes) -> list[str]:
    """Column names of a CSV file, parsed as CSV (quoted names may hold commas, quotes or newlines)."""
    import csv

    head = data[: 1 << 16].decode("utf-8", "replace")
    try:
        return next(csv.reader(io.StringIO(head)))
    except StopIteration:
        return []


def read_csv_table(uri: str) -> tuple[pa.Table, list[QuarantinedRecord]]:
    """A CSV file as all-string columns (empty cells null), plus its structurally broken rows."""
    import pyarrow.csv as pcsv

    bad: list[QuarantinedRecord] = []

    def on_invalid(row: Any) -> str:
        bad.append(
            QuarantinedRecord(
                row.text,
                uri,
                int(row.number or 0),
                "malformed_record",
                f"CSV row {row.number}: {row.actual_columns} columns, expected {row.expected_columns}",
            )
        )
        return "skip"

    data = storage.read_bytes(uri)
    header = _csv_header(data)
    table = pcsv.read_csv(
        io.BytesIO(data),
        read_options=pcsv.ReadOptions(use_threads=False),
        parse_options=pcsv.ParseOptions(invalid_row_handler=on_invalid),
        convert_options=pcsv.ConvertOptions(
            column_types={name: pa.string() for name in header}, strings_can_be_null=True
        ),
    )
    return table, bad


def read_csv(uri: str, base_dir: str, max_prompt_chars: int) -> Iterator[RawBatch]:
    """A CSV file of feedback records (``score`` parsed from text; a bad number is quarantined)."""
    table, bad = read_csv_table(uri)
    if "score" in table.column_names:
        text = table.column("score")
        numeric = pc.match_substring_regex(
            text, r"^\s*[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?\s*$"
        )
        ok = pc.or_kleene(pc.is_null(text), numeric)
        if not pc.all(ok).as_py():
            rows = np.arange(1, table.num_rows + 1)
            mask = ok.to_numpy(zero_copy_only=False)
            for i in np.flatnonzero(~mask):
                rec = {k: v for k, v in table.slice(int(i), 1).to_pylist()[0].items() if v is not None}
                bad.append(
                    QuarantinedRecord(
                        json.dumps(rec, sort_keys=True),
                        uri,
                        int(rows[i]) + 1,
                        "wrong_type",
                        f"row {int(rows[i]) + 1}: field 'score' is {rec.get('score')!r}, not a number",
                        rec.get("event_id"),
                    )
                )
            keep = pa.array(mask)
            numbers = pa.array(rows[mask] + 1)
            table = table.filter(keep)
        else:
            numbers = pa.array(np.arange(2, table.num_rows + 2, dtype=np.int64))
        table = table.set_column(
            table.column_names.index("score"), "score", pc.cast(table.column("score"), pa.float64())
        )
    else:
        numbers = pa.array(np.arange(2, table.num_rows + 2, dtype=np.int64))
    # CSV line numbers count the header line, so row k of the data is line k + 1.
    batch = RawBatch(uri, base_dir, conform(table, numbers, None), bad)
    yield batch


def detect_format(uri: str) -> str:
    """jsonl / parquet / csv from the file extension (compressed variants are not supported)."""
    name = uri.lower()
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith(".csv"):
        return "csv"
    return "unknown"
