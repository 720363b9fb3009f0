"""Importers of two public feedback formats into the event schema.

* Pick-a-Pic v2 (Kirstain et al. 2023): Parquet shards with ``caption``, ``jpg_0``/``jpg_1`` (image bytes),
  ``label_0``/``label_1``, ``image_0_uid``/``image_1_uid``, ``user_id``, ``ranking_id``, ``best_image_uid``,
  ``has_label``, ``are_different`` (and ``created_at``, ``model_0``/``model_1`` when present). Each row is one
  comparison and becomes one event: ``pairwise`` (``image_uri`` = the preferred image), ``pairwise_tie``
  (labels 0.5/0.5) or ``pairwise_unlabeled`` (``has_label`` false): ties and unlabeled rows are kept as
  their own kind, never guessed. Image bytes are written to the image store as ``<uid>.jpg``.
  Rows with ``are_different`` false compare an image with itself and carry no preference: they become
  ``pairwise_unlabeled`` (label does not use those). Image uids must be plain file names.
* The Diffusion-KTO reference CSV: ``file_name`` or ``file_path`` (relative to the CSV), ``caption``, and
  ``label`` (1/0, true/false, desirable/undesirable, like/dislike) or, without ``label``, a ``split`` column
  holding those values or the reference code's own (``train_kto_sd_v1.5.py``, Pick-a-Pic processed v3):
  ``exclusive_win`` (desirable), ``exclusive_loss`` (undesirable) and ``intersections`` (won some
  comparisons and lost others: desirable, undesirable or excluded by ``reference_intersections``, the
  reference code's policies gt_label_wi_l / gt_label_w_il / gt_label_w_l). Each row becomes a
  ``like``/``dislike`` event with a content-derived id; the raw ``split`` stays in metadata.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any

from components.ingest.readers import (
    QuarantinedRecord,
    RawBatch,
    empty_raw_table,
    read_csv_table,
    rows_to_table,
)
from components.ingest.schema import classify_record, event_to_row
from components.shared import storage

PICKAPIC_COLUMNS = (
    "caption",
    "jpg_0",
    "jpg_1",
    "label_0",
    "label_1",
    "image_0_uid",
    "image_1_uid",
    "user_id",
    "ranking_id",
    "best_image_uid",
    "has_label",
    "are_different",
)

_DESIRABLE = {"1", "1.0", "true", "desirable", "like", "liked", "positive", "good", "exclusive_win"}
_UNDESIRABLE = {
    "0",
    "0.0",
    "false",
    "undesirable",
    "dislike",
    "disliked",
    "negative",
    "bad",
    "exclusive_loss",
    "exclusive_lose",
}
_INTERSECTIONS = "intersections"
# A Pick-a-Pic uid names a file in the image store: a plain name, never a path.
_UID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def _raw_json(record: dict[str, Any]) -> str:
    return json.dumps(
        {k: v for k, v in record.items() if not isinstance(v, bytes)}, default=str, sort_keys=True
    )


def _rows(table: Any, rows_per_batch: int = 256) -> Iterator[dict[str, Any]]:
    """The rows of ``table`` as dicts, a batch at a time: a Pick-a-Pic shard holds its images, so one
    ``to_pylist`` of a whole shard would copy every image into Python objects at once."""
    for batch in table.to_batches(max_chunksize=rows_per_batch):
        yield from batch.to_pylist()


def read_pickapic(uri: str, image_store: str, max_prompt_chars: int) -> Iterator[RawBatch]:
    """One Pick-a-Pic v2 Parquet shard -> pairwise events (images written to ``image_store``)."""
    table = storage.read_parquet(uri)
    missing = [c for c in PICKAPIC_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{uri}: not a Pick-a-Pic v2 shard, missing columns {missing}")
    rows: list[dict] = []
    numbers: list[int] = []
    bad: list[QuarantinedRecord] = []
    # One listing of the store instead of an existence check per image: a shard repeats each image in
    # many rows, and on gs:// every check is a request.
    stored = {u.rsplit("/", 1)[-1] for u in storage.list_files(storage.join(image_store, ""))}
    for i, rec in enumerate(_rows(table), start=1):
        uid0, uid1 = rec.get("image_0_uid"), rec.get("image_1_uid")
        ids_ok = uid0 and uid1 and rec.get("ranking_id") is not None
        event_id = f"pickapic-v2:{rec.get('ranking_id')}:{uid0}:{uid1}"
        if not ids_ok:
            bad.append(
                QuarantinedRecord(
                    _raw_json(rec),
                    uri,
                    i,
                    "missing_field",
                    f"row {i}: fields 'ranking_id', 'image_0_uid' and 'image_1_uid' are required",
                )
            )
            continue
        not_a_name = next(
            (f for f in ("image_0_uid", "image_1_uid") if not _UID.fullmatch(str(rec[f]))), None
        )
        if not_a_name:
            bad.append(
                QuarantinedRecord(
                    _raw_json(rec),
                    uri,
                    i,
                    "uri_not_allowed",
                    f"row {i}: field {not_a_name!r} is {rec[not_a_name]!r}; a uid must be a plain name "
                    "(letters, digits, '.', '_', '-'), as it names the image file in the store",
                    event_id,
                )
            )
            continue
        if not rec.get("jpg_0") or not rec.get("jpg_1"):
            which = "jpg_0" if not rec.get("jpg_0") else "jpg_1"
            bad.append(
                QuarantinedRecord(
                    _raw_json(rec),
                    uri,
                    i,
                    "image_missing",
                    f"row {i}: field {which!r} holds no image bytes",
                    event_id,
                )
            )
            continue
        l0, l1 = rec.get("label_0"), rec.get("label_1")
        if not rec.get("has_label") or rec.get("are_different") is False:
            # are_different false: the two images are the same, so the label is no preference
            feedback, first, second = "pairwise_unlabeled", 0, 1
        elif (l0, l1) == (0.5, 0.5):
            feedback, first, second = "pairwise_tie", 0, 1
        elif (l0, l1) == (1.0, 0.0):
            feedback, first, second = "pairwise", 0, 1
        elif (l0, l1) == (0.0, 1.0):
            feedback, first, second = "pairwise", 1, 0
        else:
            bad.append(
                QuarantinedRecord(
                    _raw_json(rec),
                    uri,
                    i,
                    "invalid_label",
                    f"row {i}: fields 'label_0'/'label_1' are {l0!r}/{l1!r}; valid: 1/0, 0/1, 0.5/0.5",
                    event_id,
                )
            )
            continue
        uris = []
        for side in (first, second):
            uid = rec[f"image_{side}_uid"]
            name = f"{uid}.jpg"
            dest = storage.join(image_store, name)
            if name not in stored:
                storage.write_bytes(dest, rec[f"jpg_{side}"])
                stored.add(name)
            uris.append(dest)
        metadata = {
            "ranking_id": rec.get("ranking_id"),
            "best_image_uid": rec.get("best_image_uid"),
            "are_different": rec.get("are_different"),
            "label_0": l0,
            "label_1": l1,
        }
        for key in ("model_0", "model_1", "num_example_per_prompt"):
            if rec.get(key) is not None:
                metadata[key] = rec[key]
        record = {
            "event_id": event_id,
            "prompt": rec.get("caption"),
            "image_uri": uris[0],
            "other_image_uri": uris[1],
            "feedback": feedback,
            "user_id": rec.get("user_id"),
            "created_at": rec.get("created_at"),
            "metadata": metadata,
        }
        event, reason, message = classify_record(record, max_prompt_chars)
        if event is None:
            bad.append(QuarantinedRecord(_raw_json(rec), uri, i, reason, f"row {i}: {message}", event_id))
            continue
        rows.append(event_to_row(event))
        numbers.append(i)
    out = rows_to_table(rows, numbers, [None] * len(rows)) if rows else empty_raw_table()
    yield RawBatch(uri, storage.join(image_store, "."), out, bad)


def read_diffusion_kto_csv(
    uri: str, base_dir: str, max_prompt_chars: int, intersections: str = "desirable"
) -> Iterator[RawBatch]:
    """The reference Diffusion-KTO CSV -> like/dislike events (``intersections``: desirable, undesirable
    or exclude, see the module docstring)."""
    table, bad = read_csv_table(uri)
    names = table.column_names
    path_col = "file_name" if "file_name" in names else "file_path" if "file_path" in names else None
    label_col = "label" if "label" in names else "split" if "split" in names else None
    if path_col is None or "caption" not in names or label_col is None:
        raise ValueError(
            f"{uri}: not a Diffusion-KTO CSV; need columns file_name or file_path, caption, and label or split "
            f"(got {names})"
        )
    rows: list[dict] = []
    numbers: list[int] = []
    for i, rec in enumerate(table.to_pylist(), start=2):
        raw = json.dumps(rec, sort_keys=True)
        value = (rec.get(label_col) or "").strip().lower()
        if value == _INTERSECTIONS and intersections == "exclude":
            bad.append(
                QuarantinedRecord(
                    raw,
                    uri,
                    i,
                    "excluded_by_policy",
                    f"line {i}: field {label_col!r} is 'intersections', left out by "
                    "reference_intersections=exclude (the reference code's gt_label_w_l)",
                )
            )
            continue
        if value in _DESIRABLE or (value == _INTERSECTIONS and intersections == "desirable"):
            feedback = "like"
        elif value in _UNDESIRABLE or value == _INTERSECTIONS:
            feedback = "dislike"
        else:
            bad.append(
                QuarantinedRecord(
                    raw,
                    uri,
                    i,
                    "invalid_label",
                    f"line {i}: field {label_col!r} is {rec.get(label_col)!r}; valid: 1/0, true/false, "
                    "desirable/undesirable, like/dislike, exclusive_win/exclusive_loss/intersections",
                )
            )
            continue
        key = f"{rec.get(path_col)}\x1f{rec.get('caption')}\x1f{feedback}"
        record = {
            "event_id": "dkto-csv:" + hashlib.sha256(key.encode()).hexdigest()[:32],
            "prompt": rec.get("caption"),
            "image_uri": rec.get(path_col),
            "feedback": feedback,
            "metadata": {
                k: v for k, v in rec.items() if k not in (path_col, "caption", "label") and v is not None
            },
        }
        event, reason, message = classify_record(record, max_prompt_chars)
        if event is None:
            bad.append(
                QuarantinedRecord(
                    raw,
                    uri,
                    i,
                    reason,
                    f"line {i}: {message}".replace("'image_uri'", repr(path_col)).replace(
                        "'prompt'", "'caption'"
                    ),
                )
            )
            continue
        rows.append(event_to_row(event))
        numbers.append(i)
    out = rows_to_table(rows, numbers, [None] * len(rows)) if rows else empty_raw_table()
    yield RawBatch(uri, base_dir, out, bad)
