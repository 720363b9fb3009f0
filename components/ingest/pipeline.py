"""Orchestration of one ingest run: read -> check -> de-duplicate -> check images -> write, with counts.

Counting rule (checked at the end of every run): every non-blank record read this run is exactly one of
accepted (a new event), duplicate (same id and same content as an event already accepted, in this run or
in the previous output) or quarantined (with a reason).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.ingest import importers, readers
from components.ingest.images import check_images
from components.ingest.readers import QuarantinedRecord, RawBatch
from components.ingest.schema import EVENTS_SCHEMA, QUARANTINE_SCHEMA, utc_now
from components.ingest.step import IngestConfig, IngestResult
from components.ingest.validate import base_dir_of, check_batch, normalise_roots, take_rows
from components.shared import storage
from components.shared.telemetry import StepTelemetry

# Columns whose equality makes two records with one id "the same event" (a re-send, not a conflict).
# created_at and metadata are left out: a re-send may be stamped anew or carry other bookkeeping.
CONTENT_COLUMNS = ("prompt", "image_uri", "feedback", "score", "other_image_uri", "user_id", "model_version")


# What became of each candidate row (int8 codes: cheap to compare over millions of rows).
ACCEPTED, DUPLICATE, CONFLICT, CONFLICT_PREVIOUS, IMAGE_FAILED, OTHER_IMAGE_FAILED, INVALID = range(7)


class IngestError(RuntimeError):
    """The run cannot produce a trustworthy events table; the message says why and what to look at."""


def _content_key(table: pa.Table) -> pa.Array:
    parts = []
    for name in CONTENT_COLUMNS:
        col = table.column(name)
        parts.append(pc.cast(col, pa.string()) if col.type != pa.string() else col)
    return pc.binary_join_element_wise(*parts, "\x1f", null_handling="replace", null_replacement="\x00")


def _source_column(source: str, n: int) -> pa.Array:
    return pc.cast(
        pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([source])), pa.string()
    )


def _row_raw(row: dict[str, Any], batch: RawBatch) -> str:
    """The record as it was read: the verbatim JSONL line, else the row as sorted JSON."""
    if row.get("_raw"):
        return str(row["_raw"]).rstrip("\r\n")
    line = batch.raw_line(int(row["_row"]))
    if line is not None:
        return line
    rec = {k: v for k, v in row.items() if not k.startswith("_") and v is not None}
    return json.dumps(rec, default=str, sort_keys=True)


@dataclass
class CheckedPart:
    """One batch after the record-level checks: its candidate rows and which of them failed."""

    batch: RawBatch
    table: pa.Table  # candidate columns (events.parquet's, plus _row and _raw)
    invalid: np.ndarray  # bool per row
    quarantined: list[QuarantinedRecord]  # the batch's unparseable records and the rows that failed


def _check_part(batch: RawBatch, roots: list[str], max_prompt_chars: int) -> CheckedPart:
    """Record-level checks of one batch (relative URIs resolve against its own file's directory).

    Rows are not filtered here: the rows that fail are marked invalid and the one filter that builds
    events.parquet drops them, so no full-table copy is made per batch.
    """
    quarantined = list(batch.quarantined)
    t = batch.table
    if t.num_rows == 0:
        return CheckedPart(batch, _empty_candidates(), np.zeros(0, dtype=bool), quarantined)
    checked = check_batch(t, batch.base_dir, roots, max_prompt_chars)
    bad = checked.reasons != ""
    if bad.any():
        idx = np.flatnonzero(bad)
        rows = take_rows(
            t.select(["event_id", "_row", "_raw", *CONTENT_COLUMNS, "created_at", "metadata"]), idx
        ).to_pylist()
        for i, row in zip(idx, rows, strict=True):
            quarantined.append(
                QuarantinedRecord(
                    _row_raw(row, batch),
                    batch.source,
                    int(row["_row"]),
                    str(checked.reasons[i]),
                    checked.messages[int(i)],
                    row.get("event_id"),
                )
            )
    table = pa.table(
        {
            "event_id": t.column("event_id"),
            "source": _source_column(batch.source, t.num_rows),
            "prompt": t.column("prompt"),
            "image_uri": checked.image_uri,
            "feedback": t.column("feedback"),
            "score": t.column("score"),
            "other_image_uri": checked.other_image_uri,
            "user_id": t.column("user_id"),
            "created_at": checked.created_at,
            "model_version": t.column("model_version"),
            "metadata": t.column("metadata"),
            "_row": t.column("_row"),
            "_raw": t.column("_raw"),
        }
    )
    return CheckedPart(batch, table, bad, quarantined)


_T = TypeVar("_T")


def _run_ahead(items: Iterator[_T]) -> Iterator[_T]:
    """Yield ``items`` while a worker thread already produces the next one.

    The JSONL reader's work (numpy byte screens, Arrow's parse) and the checks (Arrow kernels) mostly
    release the GIL, so the checks of one chunk run on one core while the next chunk is read and parsed.
    """
    end = object()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-read") as pool:
        pending = pool.submit(next, items, end)
        while True:
            item = pending.result()
            if item is end:
                return
            pending = pool.submit(next, items, end)
            yield item  # type: ignore[misc]


def _read_sources(
    config: IngestConfig, image_store: str, roots: list[str]
) -> tuple[list[CheckedPart], list[dict[str, Any]], list[QuarantinedRecord]]:
    """Read and check every source file; a file that cannot be read counts as one quarantined record."""
    parts: list[CheckedPart] = []
    sources: list[dict[str, Any]] = []
    unreadable: list[QuarantinedRecord] = []
    for pattern in config.sources:
        files = storage.list_files(pattern)
        if not files:
            raise IngestError(
                f"source {pattern!r}: no files found (give a file, a directory, a glob or a gs:// prefix)"
            )
        for uri in files:
            fmt: str = config.source_format
            if fmt == "auto":
                fmt = readers.detect_format(uri)
                if fmt == "unknown" and files != [pattern]:
                    # A directory or prefix may hold the images too; those files are listed, not read.
                    sources.append({"uri": uri, "format": "skipped (not .jsonl/.parquet/.csv)", "records": 0})
                    continue
                if fmt == "unknown":
                    raise IngestError(
                        f"source file {uri}: unknown extension; use .jsonl/.parquet/.csv or set source_format"
                    )
            base = base_dir_of(uri)
            found: Iterator[RawBatch]
            if fmt == "jsonl":
                found = _run_ahead(readers.read_jsonl(uri, base, config.max_prompt_chars))
            elif fmt == "parquet":
                found = readers.read_parquet(uri, base, config.max_prompt_chars)
            elif fmt == "csv":
                found = readers.read_csv(uri, base, config.max_prompt_chars)
            elif fmt == "pickapic_v2":
                found = importers.read_pickapic(uri, image_store, config.max_prompt_chars)
            else:
                found = importers.read_diffusion_kto_csv(
                    uri, base, config.max_prompt_chars, config.reference_intersections
                )
            # A file's parts are kept only once all of it was read: a file that fails half-way counts
            # as one unreadable record, not as the part that happened to come before the failure.
            # Only reading is guarded: an error in the checks is a bug and stops the run, rather than
            # passing a readable file off as unreadable.
            file_parts: list[CheckedPart] = []
            failure: Exception | None = None
            while True:
                try:
                    batch = next(found)
                except StopIteration:
                    break
                except (OSError, ValueError, pa.ArrowException, storage.StorageError) as err:
                    failure = err
                    break
                file_parts.append(_check_part(batch, roots, config.max_prompt_chars))
            if failure is not None:
                unreadable.append(
                    QuarantinedRecord("", uri, 0, "unreadable_source", f"source file {uri}: {failure}")
                )
                sources.append({"uri": uri, "format": fmt, "records": 1, "error": str(failure)})
                continue
            n = sum(p.batch.table.num_rows + len(p.batch.quarantined) for p in file_parts)
            sources.append({"uri": uri, "format": fmt, "records": n})
            parts.extend(file_parts)
    return parts, sources, unreadable


def _previous_image_store(config: IngestConfig) -> str | None:
    """The image store the previous run wrote (its stats.json says), so that an incremental run of an
    importer gives the same images the same URIs: a new store would make every re-imported event differ
    from its previous copy in image_uri, a conflict instead of a duplicate."""
    if not config.previous_output:
        return None
    prev = config.previous_output
    prev_dir = prev.rsplit("/", 1)[0] if prev.endswith(".parquet") else prev
    stats_uri = storage.join(prev_dir, "stats.json")
    if not storage.exists(stats_uri):
        return None
    store = storage.read_json(stats_uri).get("image_store")
    return str(store) if store else None


def ingest(config: IngestConfig) -> IngestResult:
    """Run the ingest step (see :mod:`components.ingest.step`)."""
    telemetry = StepTelemetry("ingest", run_id=config.run_id, pushgateway=config.pushgateway)
    log = telemetry.log
    out = config.output_dir
    events_uri = storage.join(out, "events.parquet")
    quarantine_uri = storage.join(out, "quarantine.parquet")
    stats_uri = storage.join(out, "stats.json")
    image_store = config.image_store or _previous_image_store(config) or storage.join(out, "images")
    if not storage.is_gcs(image_store):
        image_store = os.path.abspath(image_store)
    roots = normalise_roots(config.allowed_roots)
    if config.allowed_roots and config.source_format == "pickapic_v2":
        roots = roots + normalise_roots([image_store])

    checked_parts, sources, quarantined = _read_sources(config, image_store, roots)
    now = utc_now()

    # 1. record-level checks ran batch by batch as the sources were read (_check_part)
    for part in checked_parts:
        quarantined.extend(part.quarantined)
    blank_lines = sum(p.batch.blank_lines for p in checked_parts)
    checked_parts = [p for p in checked_parts if p.table.num_rows]
    parts = [p.table for p in checked_parts]
    part_batches = [p.batch for p in checked_parts]
    invalid_parts = [p.invalid for p in checked_parts]
    candidates = pa.concat_tables(parts) if parts else _empty_candidates()
    part_starts = np.cumsum([0] + [p.num_rows for p in parts])
    del parts
    n = candidates.num_rows
    state = np.full(n, ACCEPTED, dtype=np.int8)
    if invalid_parts:
        state[np.concatenate(invalid_parts)] = INVALID
    n_read = int((state != INVALID).sum()) + len(quarantined)

    def raw_of(i: int, row: dict[str, Any]) -> str:
        return _row_raw(row, part_batches[int(np.searchsorted(part_starts, i, side="right")) - 1])

    # 2. de-duplicate within the run; an id with two different contents is a conflict, quarantined both ways.
    # Only ids that occur more than once need their content compared (a hash count over all ids, then the
    # grouping on that small subset of valid rows).
    ids = candidates.column("event_id")
    counts = pc.value_counts(ids)
    repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    if len(repeated):
        in_repeated = pc.fill_null(pc.is_in(ids, repeated), False).to_numpy(zero_copy_only=False)
        rep_idx = np.flatnonzero(in_repeated & (state == ACCEPTED))
        sub = take_rows(candidates.select(["event_id", *CONTENT_COLUMNS]), rep_idx)
        groups = (
            pa.table({"event_id": sub.column("event_id"), "key": _content_key(sub), "i": pa.array(rep_idx)})
            .group_by("event_id", use_threads=False)
            .aggregate([("key", "count_distinct"), ("i", "min")])
        )
        conflict_ids = groups.filter(pc.greater(groups.column("key_count_distinct"), 1)).column("event_id")
        first = np.zeros(len(rep_idx), dtype=bool)
        firsts = groups.filter(pc.equal(groups.column("key_count_distinct"), 1)).column("i_min").to_numpy()
        first[np.searchsorted(rep_idx, firsts)] = True
        state[rep_idx[~first]] = DUPLICATE
        if len(conflict_ids):
            conflict = pc.is_in(sub.column("event_id"), conflict_ids).to_numpy(zero_copy_only=False)
            state[rep_idx[conflict]] = CONFLICT

    # 3. against the previous output: same id + same content = duplicate, same id + other content = conflict
    previous = None
    if config.previous_output:
        prev_uri = config.previous_output
        if not prev_uri.endswith(".parquet"):
            prev_uri = storage.join(prev_uri, "events.parquet")
        if storage.exists(prev_uri):
            previous = storage.read_parquet(prev_uri)
            acc_idx = np.flatnonzero(state == ACCEPTED)
            seen = pc.is_in(ids.take(pa.array(acc_idx)), previous.column("event_id")).to_numpy(
                zero_copy_only=False
            )
            if seen.any():
                ii = acc_idx[seen]
                sub = take_rows(candidates.select(["event_id", *CONTENT_COLUMNS]), ii)
                prev_sub = previous.filter(pc.is_in(previous.column("event_id"), sub.column("event_id")))
                prev_keys = pa.table(
                    {"event_id": prev_sub.column("event_id"), "prev_key": _content_key(prev_sub)}
                )
                probe = pa.table(
                    {"event_id": sub.column("event_id"), "key": _content_key(sub), "i": pa.array(ii)}
                )
                joined = probe.join(prev_keys, "event_id", join_type="inner")
                same = pc.equal(joined.column("key"), joined.column("prev_key")).to_numpy(
                    zero_copy_only=False
                )
                jj = joined.column("i").to_numpy()
                state[jj[same]] = DUPLICATE
                state[jj[~same]] = CONFLICT_PREVIOUS
        else:
            log.warning("previous output %s not found: starting from scratch", prev_uri)

    # 4. image checks on the events about to be accepted (images known from the previous output are reused)
    image_sha = pa.nulls(n, pa.string())
    other_sha = pa.nulls(n, pa.string())
    images_checked = 0
    identical_image_groups = 0
    known: dict[str, str] = {}
    if previous is not None and "image_sha256" in previous.column_names:
        for u_col, s_col in (("image_uri", "image_sha256"), ("other_image_uri", "other_image_sha256")):
            pairs = pa.table({"u": previous.column(u_col), "s": previous.column(s_col)}).filter(
                pc.is_valid(previous.column(s_col))
            )
            known.update(zip(pairs.column("u").to_pylist(), pairs.column("s").to_pylist(), strict=True))
    if config.check_images:
        acc = state == ACCEPTED
        acc_idx = pa.array(np.flatnonzero(acc))
        uris = set(candidates.column("image_uri").take(acc_idx).to_pylist())
        uris |= {u for u in candidates.column("other_image_uri").take(acc_idx).to_pylist() if u}
        to_check = [u for u in uris if u not in known]
        results = check_images(
            to_check, config.image_check_workers, config.min_image_side, config.max_image_side
        )
        images_checked = len(results)
        sha_of = dict(known)
        sha_of.update({u: r.sha256 for u, r in results.items() if not r.reason and r.sha256})
        failed = {u: r for u, r in results.items() if r.reason}
        image_sha = pa.array([sha_of.get(u) for u in candidates.column("image_uri").to_pylist()], pa.string())
        other_sha = pa.array(
            [sha_of.get(u) if u else None for u in candidates.column("other_image_uri").to_pylist()],
            pa.string(),
        )
        if failed:
            bad_img = pc.fill_null(
                pc.is_in(candidates.column("image_uri"), pa.array(list(failed))), False
            ).to_numpy(zero_copy_only=False)
            bad_other = pc.fill_null(
                pc.is_in(candidates.column("other_image_uri"), pa.array(list(failed))), False
            ).to_numpy(zero_copy_only=False)
            state[acc & bad_img] = IMAGE_FAILED
            state[acc & ~bad_img & bad_other] = OTHER_IMAGE_FAILED
        # the same bytes under several URIs: one image, recognised by its hash (label merges them)
        by_sha: dict[str, set[str]] = {}
        for u, s in sha_of.items():
            by_sha.setdefault(s, set()).add(u)
        identical_image_groups = sum(1 for us in by_sha.values() if len(us) > 1)
    else:
        failed = {}

    # 5. quarantine the conflicts and failed images
    q_idx = np.flatnonzero(state >= CONFLICT)
    q_idx = q_idx[state[q_idx] != INVALID]
    if len(q_idx):
        rows = take_rows(candidates, q_idx).to_pylist()
        for i, row in zip(q_idx, rows, strict=True):
            st = state[i]
            where = f"line/row {row['_row']}"
            if st == CONFLICT:
                reason, msg = (
                    "conflicting_event_id",
                    f"{where}: field 'event_id' {row['event_id']!r} appears with different content in this run; every record with it is quarantined",
                )
            elif st == CONFLICT_PREVIOUS:
                reason, msg = (
                    "conflicting_with_previous",
                    f"{where}: field 'event_id' {row['event_id']!r} is already in the previous output with different content",
                )
            else:
                field = "image_uri" if st == IMAGE_FAILED else "other_image_uri"
                check = failed[row[field]]
                reason, msg = check.reason, f"{where}: field {field!r}: {check.message}"
            quarantined.append(
                QuarantinedRecord(
                    raw_of(int(i), row), row["source"], int(row["_row"]), reason, msg, row["event_id"]
                )
            )

    accepted_mask = state == ACCEPTED
    n_accepted = int(accepted_mask.sum())
    n_duplicates = int((state == DUPLICATE).sum())
    n_quarantined = len(quarantined)
    if n_read != n_accepted + n_duplicates + n_quarantined:
        raise IngestError(
            f"count invariant broken: read {n_read} != accepted {n_accepted} + duplicates {n_duplicates} + "
            f"quarantined {n_quarantined} (a bug in ingest; please report it with the sources)"
        )
    by_reason = dict(sorted(Counter(q.reason for q in quarantined).items()))

    # 6. the one filter over the event columns (the verbatim lines and row numbers are not copied)
    keep = pa.array(accepted_mask)
    event_columns = [c for c in EVENTS_SCHEMA.names if c not in ("image_sha256", "other_image_sha256")]
    new_events = candidates.select(event_columns).append_column("image_sha256", image_sha)
    new_events = new_events.append_column("other_image_sha256", other_sha)
    if n_accepted != n:
        new_events = new_events.filter(keep)
    created = new_events.column("created_at")
    if created.null_count:
        new_events = new_events.set_column(
            new_events.column_names.index("created_at"),
            "created_at",
            pc.fill_null(created, pa.scalar(now, pa.timestamp("us", tz="UTC"))),
        )
    new_events = new_events.select(EVENTS_SCHEMA.names).cast(EVENTS_SCHEMA)
    events = (
        pa.concat_tables([previous.select(EVENTS_SCHEMA.names).cast(EVENTS_SCHEMA), new_events])
        if previous is not None
        else new_events
    )
    watermark = pc.max(events.column("created_at")).as_py() if events.num_rows else None

    quarantine_table = pa.table(
        {
            "raw": [q.raw for q in quarantined],
            "source": [q.source for q in quarantined],
            "row_number": [q.row_number for q in quarantined],
            "reason": [q.reason for q in quarantined],
            "message": [q.message for q in quarantined],
            "event_id": [q.event_id for q in quarantined],
        },
        schema=QUARANTINE_SCHEMA,
    )
    stats: dict[str, Any] = {
        "read": n_read,
        "accepted": n_accepted,
        "duplicates": n_duplicates,
        "quarantined": n_quarantined,
        "quarantined_by_reason": by_reason,
        "sources": sources,
        "watermark": watermark.isoformat() if watermark else None,
        "previous_output": config.previous_output,
        "previous_output_used": previous is not None,
        "total_events": events.num_rows,
        "blank_lines_skipped": blank_lines,
        "images_checked": images_checked,
        "image_store": image_store,
        "identical_image_groups": identical_image_groups,
        "ingested_at": now.isoformat(),
        "config_hash": config.config_hash(),
    }

    read_c = telemetry.counter("events_read_total", "Feedback records read from the sources")
    read_c.inc(n_read)
    telemetry.counter("events_accepted_total", "Records accepted as new events").inc(n_accepted)
    telemetry.counter("events_duplicates_total", "Records that repeat an accepted event").inc(n_duplicates)
    q_c = telemetry.counter("events_quarantined_total", "Records quarantined, by reason", ("reason",))
    for reason, count in by_reason.items():
        q_c.labels(reason=reason).inc(count)
    telemetry.gauge("events_stored", "Rows of events.parquet after this run").set(events.num_rows)

    # Rows a chosen policy leaves out (reference_intersections=exclude) are counted, not broken: the
    # limit guards against broken exports, so it looks at the other reasons only.
    n_broken = n_quarantined - by_reason.get("excluded_by_policy", 0)
    fraction = n_broken / n_read if n_read else 0.0
    storage.write_parquet(quarantine_table, quarantine_uri)
    if fraction > config.max_quarantined_fraction:
        stats["failed"] = (
            f"{n_broken} of {n_read} records ({fraction:.1%}) were quarantined, more than "
            f"max_quarantined_fraction={config.max_quarantined_fraction:.1%}"
        )
        storage.write_json(stats_uri, stats)
        telemetry.push()
        top = ", ".join(f"{r}: {c}" for r, c in sorted(by_reason.items(), key=lambda kv: -kv[1])[:5])
        raise IngestError(
            f"ingest failed: {stats['failed']} (top reasons: {top}). events.parquet was not written; "
            f"see {quarantine_uri} for every rejected record, or raise max_quarantined_fraction if this is expected."
        )
    storage.write_parquet(events, events_uri)
    storage.write_json(stats_uri, stats)
    telemetry.push()
    log.info(
        "ingest: read %d, accepted %d, duplicates %d, quarantined %d %s -> %s",
        n_read,
        n_accepted,
        n_duplicates,
        n_quarantined,
        by_reason,
        events_uri,
    )
    return IngestResult(
        events_uri=events_uri,
        quarantine_uri=quarantine_uri,
        stats_uri=stats_uri,
        read=n_read,
        accepted=n_accepted,
        duplicates=n_duplicates,
        quarantined=n_quarantined,
        quarantined_by_reason=by_reason,
        new_events=n_accepted,
        total_events=events.num_rows,
        watermark=stats["watermark"],
    )


def _empty_candidates() -> pa.Table:
    fields = [f for f in EVENTS_SCHEMA if f.name not in ("image_sha256", "other_image_sha256")]
    cols = {f.name: pa.array([], f.type) for f in fields}
    cols["_row"] = pa.array([], pa.int64())
    cols["_raw"] = pa.array([], pa.string())
    return pa.table(cols)
