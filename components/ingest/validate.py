"""Vectorised checks of candidate records (the pydantic model's rules, column-wise) and image URI policy.

``check_batch`` returns one reason code per row ("" = valid) plus the parsed ``created_at`` and the
resolved image URIs; messages naming the field are built only for the rejected rows.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.ingest.schema import FEEDBACK_KINDS, PAIRWISE_KINDS, REQUIRED_FIELDS
from components.shared import storage

# Local directories an event must never point into, whatever allowed_roots says.
SYSTEM_DIRS = (
    "etc",
    "proc",
    "sys",
    "dev",
    "boot",
    "root",
    "run",
    "var/run",
    "usr",
    "bin",
    "sbin",
    "lib",
    "lib64",
)
_SYSTEM_RE = r"^/(?:" + "|".join(re.escape(d) for d in SYSTEM_DIRS) + r")(?:/|$)"
_DOTDOT_RE = r"(?:^|/)\.\.(?:/|$)"
_TZ_RE = r"(?:Z|z|[+-][0-9]{2}:?[0-9]{2})$"

TIMESTAMP = pa.timestamp("us", tz="UTC")


@dataclass
class CheckedBatch:
    """Per-row results of the checks on one batch."""

    reasons: np.ndarray  # object array of reason codes, "" for valid rows
    messages: dict[int, str]
    image_uri: pa.Array
    other_image_uri: pa.Array
    created_at: pa.Array


def take_rows(
    data: pa.Table | pa.ChunkedArray | pa.Array, idx: np.ndarray
) -> pa.Table | pa.ChunkedArray | pa.Array:
    """Rows ``idx`` (sorted) of a table or array, taken chunk by chunk.

    Arrow's take on a chunked input concatenates every chunk first (a copy of the whole column); for the
    few rows that are quarantined or compared this is most of the cost, so each chunk is taken alone.
    """
    if isinstance(data, pa.Array):
        return data.take(pa.array(idx, pa.int64()))
    if isinstance(data, pa.Table):
        return pa.table(
            {name: take_rows(data.column(name), idx) for name in data.column_names}, schema=data.schema
        )
    lengths = [len(c) for c in data.chunks]
    if len(lengths) <= 1:
        return data.take(pa.array(idx, pa.int64()))
    offsets = np.cumsum([0, *lengths])
    which = np.searchsorted(offsets, idx, side="right") - 1
    parts = []
    for k in np.unique(which).tolist():
        local = idx[which == k] - offsets[k]
        parts.append(data.chunk(k).take(pa.array(local, pa.int64())))
    return pa.chunked_array(parts, data.type)


def normalise_roots(roots: list[str]) -> list[str]:
    """Allowed roots as absolute local paths / gs:// prefixes, each ending in '/'."""
    out = []
    for root in roots:
        if root.startswith("file://"):
            root = root[len("file://") :]
        if not storage.is_gcs(root):
            root = os.path.abspath(root)
        out.append(root.rstrip("/") + "/")
    return out


def base_dir_of(uri: str) -> str:
    """Directory that relative image paths in ``uri`` are resolved against."""
    if storage.is_gcs(uri):
        return uri.rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(uri))


def _regex_where(arr: pa.Array, maybe: pa.Array, pattern: str) -> np.ndarray:
    """``pattern`` matched only on rows a cheap plain-substring test flagged (RE2 over every row is the
    slowest part of ingest at a million events); returns a bool mask over all rows."""
    out = np.zeros(len(arr), dtype=bool)
    idx = np.flatnonzero(pc.fill_null(maybe, False).to_numpy(zero_copy_only=False))
    if len(idx):
        hits = pc.fill_null(pc.match_substring_regex(arr.take(pa.array(idx)), pattern), False)
        out[idx[hits.to_numpy(zero_copy_only=False)]] = True
    return out


def resolve_uris(uris: pa.Array, base_dir: str) -> pa.Array:
    """Strip file://, make relative paths absolute against the source's directory, drop './' segments."""
    gcs_mask = pc.starts_with(uris, "gs://")
    if pc.all(pc.fill_null(gcs_mask, True)).as_py():
        # Every URI is gs:// (the common export): nothing to strip or make absolute.
        if pc.any(pc.match_substring(uris, "/./")).as_py():
            uris = pc.replace_substring_regex(uris, r"/\./", "/")
        return uris
    if pc.any(pc.starts_with(uris, "file://")).as_py():
        uris = pc.replace_substring_regex(uris, r"^file://", "")
    gcs = pc.fill_null(pc.starts_with(uris, "gs://"), False).to_numpy(zero_copy_only=False)
    other_scheme = pc.and_kleene(pc.match_substring(uris, "://"), pa.array(~gcs))
    has_scheme = gcs | _regex_where(uris, other_scheme, r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
    is_relative = pc.and_kleene(pc.invert(pc.starts_with(uris, "/")), pa.array(~has_scheme))
    if pc.any(is_relative).as_py():
        joined = pc.binary_join_element_wise(pa.scalar(base_dir.rstrip("/")), uris, "/")
        uris = pc.if_else(is_relative, joined, uris)
    if pc.any(pc.match_substring(uris, "/./")).as_py():
        uris = pc.replace_substring_regex(uris, r"/\./", "/")
    return uris


def uri_problem(raw: str | None, resolved: str | None, roots: list[str]) -> str:
    """Why one URI is not allowed ("" if it is); used for messages and by the per-row path."""
    if raw is None or resolved is None:
        return ""
    if re.search(_DOTDOT_RE, raw):
        return f"{raw!r} contains a '..' segment (paths may not escape their directory)"
    if "://" in resolved and not storage.is_gcs(resolved):
        return f"{raw!r} uses an unsupported scheme (valid: gs://, file://, local paths)"
    if re.search(_SYSTEM_RE, resolved):
        return f"{raw!r} points into a system directory ({resolved})"
    if roots and not any(resolved.startswith(r) for r in roots):
        return f"{raw!r} resolves to {resolved}, outside allowed_roots {roots}"
    return ""


def _uri_bad(raw: pa.Array, resolved: pa.Array, roots: list[str]) -> np.ndarray:
    bad = _regex_where(raw, pc.match_substring(raw, ".."), _DOTDOT_RE)
    not_gcs = pc.invert(pc.starts_with(resolved, "gs://"))
    if pc.any(not_gcs).as_py():  # gs:// URIs have neither another scheme nor a system directory
        scheme = pc.and_kleene(pc.match_substring(resolved, "://"), not_gcs)
        bad |= pc.fill_null(scheme, False).to_numpy(zero_copy_only=False)
        # only an absolute local path can point into a system directory
        bad |= _regex_where(resolved, pc.starts_with(resolved, "/"), _SYSTEM_RE)
    if roots:
        inside = pc.starts_with(resolved, roots[0])
        for r in roots[1:]:
            inside = pc.or_kleene(inside, pc.starts_with(resolved, r))
        bad |= pc.fill_null(pc.and_kleene(pc.is_valid(resolved), pc.invert(inside)), False).to_numpy(
            zero_copy_only=False
        )
    return bad


def parse_timestamps(text: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """ISO 8601 text -> timestamp[us, UTC] (naive times taken as UTC); also a mask of unparseable values."""
    n = len(text)
    present = pc.is_valid(text).to_numpy(zero_copy_only=False)
    zulu = pc.fill_null(pc.ends_with(text, "Z"), False).to_numpy(zero_copy_only=False)
    has_tz = zulu | _regex_where(text, pa.array(present & ~zulu), _TZ_RE)
    out: list[pa.Array] = []
    bad = np.zeros(n, dtype=bool)
    values = np.zeros(n, dtype="datetime64[us]")
    all_aware = not (present & ~has_tz).any()
    if all_aware:
        # The common case, every timestamp with an offset: one cast, nulls stay null, no numpy round trip.
        try:
            return _within_python_dates(pc.cast(text, TIMESTAMP), np.zeros(n, dtype=bool))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass  # some value is not ISO 8601: the per-value path below names which
    for mask, aware in ((present & has_tz, True), (present & ~has_tz, False)):
        idx = np.flatnonzero(mask)
        if not len(idx):
            continue
        # when every present value has an offset, one cast over the column (nulls stay null) does it all
        whole = aware and all_aware
        sub = text if whole else text.take(pa.array(idx))
        try:
            if aware:
                cast = pc.cast(sub, TIMESTAMP)
            else:
                cast = pc.assume_timezone(pc.cast(sub, pa.timestamp("us")), "UTC")
            converted = pc.cast(cast, pa.timestamp("us")).to_numpy(zero_copy_only=False)
            values[idx] = converted[idx] if whole else converted
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            sub = text.take(pa.array(idx))
            for i, s in zip(idx, sub.to_pylist(), strict=True):
                try:
                    dt = datetime.fromisoformat(s)
                except ValueError:
                    bad[i] = True
                    continue
                if dt.tzinfo is None:
                    dt = dt.replace(tzinfo=timezone.utc)
                values[i] = np.datetime64(dt.astimezone(timezone.utc).replace(tzinfo=None), "us")
    del out
    valid = present & ~bad
    arr = pa.array(values, type=pa.timestamp("us"), mask=~valid)
    return _within_python_dates(pc.assume_timezone(arr, "UTC") if n else pa.array([], TIMESTAMP), bad)


# Python's datetime, which readers of events.parquet convert to, spans years 1-9999 in UTC; an offset
# can move a valid-looking time outside (0001-01-01T00:30+01:00 is year 0 in UTC).
_FIRST_US = -62_135_596_800 * 10**6  # 0001-01-01T00:00:00Z
_LAST_US = 253_402_300_800 * 10**6 - 1  # 9999-12-31T23:59:59.999999Z


def _within_python_dates(times: pa.Array, bad: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """Times outside Python's date range become null and are marked bad (invalid_timestamp)."""
    us = pc.cast(times, pa.int64())
    outside = pc.fill_null(pc.or_(pc.less(us, _FIRST_US), pc.greater(us, _LAST_US)), False)
    if not pc.any(outside).as_py():
        return times, bad
    mask = outside.to_numpy(zero_copy_only=False)
    return pc.if_else(outside, pa.scalar(None, times.type), times), bad | mask


def check_batch(table: pa.Table, base_dir: str, roots: list[str], max_prompt_chars: int) -> CheckedBatch:
    """Apply every record-level rule to every row of ``table`` (intermediate layout)."""
    n = table.num_rows
    reasons = np.full(n, "", dtype=object)
    unset = np.ones(n, dtype=bool)

    def mark(mask: pa.Array | np.ndarray, code: str) -> None:
        m = mask if isinstance(mask, np.ndarray) else pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
        m = m & unset
        if m.any():
            reasons[m] = code
            unset[m] = False

    for name in REQUIRED_FIELDS:
        col = table.column(name)
        # An empty prompt has its own reason (empty_prompt, below), as in the pydantic path.
        missing = pc.is_null(col) if name == "prompt" else pc.or_kleene(pc.is_null(col), pc.equal(col, ""))
        mark(missing, "missing_field")
    feedback = table.column("feedback")
    mark(pc.invert(pc.is_in(feedback, pa.array(FEEDBACK_KINDS))), "invalid_feedback")
    prompt = table.column("prompt")
    # A blank prompt is empty or starts with whitespace; only those rows need the full regex.
    maybe_blank = pc.or_kleene(
        pc.equal(pc.binary_length(prompt), 0), pc.match_substring_regex(prompt, r"^\s")
    )
    mark(_regex_where(prompt, maybe_blank, r"^\s*$"), "empty_prompt")
    mark(pc.greater(pc.utf8_length(prompt), max_prompt_chars), "prompt_too_long")
    score = table.column("score")
    no_score = pc.or_kleene(pc.is_null(score), pc.invert(pc.is_finite(pc.fill_null(score, 0.0))))
    mark(pc.and_kleene(pc.equal(feedback, "score"), no_score), "missing_score")
    other = table.column("other_image_uri")
    no_other = pc.or_kleene(pc.is_null(other), pc.equal(pc.fill_null(other, ""), ""))
    mark(pc.and_kleene(pc.is_in(feedback, pa.array(PAIRWISE_KINDS)), no_other), "missing_other_image")
    created, bad_time = parse_timestamps(table.column("created_at").combine_chunks())
    mark(bad_time, "invalid_timestamp")
    image_raw = table.column("image_uri").combine_chunks()
    other_raw = other.combine_chunks()
    image = resolve_uris(image_raw, base_dir)
    other_resolved = resolve_uris(other_raw, base_dir)
    mark(_uri_bad(image_raw, image, roots), "uri_not_allowed")
    mark(_uri_bad(other_raw, other_resolved, roots), "uri_not_allowed")

    messages: dict[int, str] = {}
    bad_idx = np.flatnonzero(~unset)
    if len(bad_idx):
        rows = take_rows(table, bad_idx).to_pylist()
        img = image.take(pa.array(bad_idx)).to_pylist()
        oth = other_resolved.take(pa.array(bad_idx)).to_pylist()
        for i, row, ri, ro in zip(bad_idx, rows, img, oth, strict=True):
            messages[int(i)] = _message(reasons[i], row, ri, ro, roots, max_prompt_chars)
    return CheckedBatch(reasons, messages, image, other_resolved, created)


def _message(
    code: str, row: dict, image: str | None, other: str | None, roots: list[str], max_chars: int
) -> str:
    where = f"line/row {row.get('_row')}"
    if code == "missing_field":
        missing = [f for f in REQUIRED_FIELDS if row.get(f) is None or (f != "prompt" and row.get(f) == "")]
        return f"{where}: field {missing[0]!r} is required and missing or empty"
    if code == "invalid_feedback":
        return f"{where}: field 'feedback' is {row.get('feedback')!r}; valid: {', '.join(FEEDBACK_KINDS)}"
    if code == "empty_prompt":
        return f"{where}: field 'prompt' is empty"
    if code == "prompt_too_long":
        return f"{where}: field 'prompt' has {len(row['prompt'])} characters, more than max_prompt_chars={max_chars}"
    if code == "missing_score":
        return f"{where}: field 'score' must be a finite number when feedback is 'score' (got {row.get('score')!r})"
    if code == "missing_other_image":
        return f"{where}: field 'other_image_uri' is required for feedback {row.get('feedback')!r}"
    if code == "invalid_timestamp":
        return f"{where}: field 'created_at' is {row.get('created_at')!r}, not an ISO 8601 timestamp"
    if code == "uri_not_allowed":
        problem = uri_problem(row.get("image_uri"), image, roots)
        if problem:
            return f"{where}: field 'image_uri': {problem}"
        return f"{where}: field 'other_image_uri': {uri_problem(row.get('other_image_uri'), other, roots)}"
    return f"{where}: {code}"


def normalise_path(path: str) -> str:
    """Collapse '.' segments of a local path or gs:// URI (used by the importers)."""
    if storage.is_gcs(path):
        bucket, key = storage.split_gcs(path)
        return f"gs://{bucket}/{posixpath.normpath(key)}"
    return os.path.normpath(path)
