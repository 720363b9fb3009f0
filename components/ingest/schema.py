"""The feedback event schema (one pydantic model), the reason codes of quarantined records, and the
Arrow schemas of the ingest outputs (see /work/contracts.md and components/ingest/README.md).

The pydantic model is the single definition of a valid event. The fast path (vectorised checks in
:mod:`components.ingest.validate`) enforces the same rules column-wise and falls back to this model for
the records Arrow cannot parse, so both paths accept and reject the same records.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

FEEDBACK_KINDS = ("like", "dislike", "score", "pairwise", "pairwise_tie", "pairwise_unlabeled")
PAIRWISE_KINDS = ("pairwise", "pairwise_tie", "pairwise_unlabeled")
KNOWN_FIELDS = (
    "event_id",
    "prompt",
    "image_uri",
    "feedback",
    "score",
    "other_image_uri",
    "user_id",
    "created_at",
    "model_version",
    "metadata",
)
REQUIRED_FIELDS = ("event_id", "prompt", "image_uri", "feedback")

# Reason codes of quarantine.parquet, with what each means (the README lists them too).
REASONS: dict[str, str] = {
    "malformed_record": "the line/row is not valid JSON (or a CSV row with the wrong number of columns)",
    "not_an_object": "the JSON line is valid but not an object",
    "missing_field": "a required field is absent or null",
    "wrong_type": "a field has the wrong type",
    "empty_prompt": "the prompt is empty or only whitespace",
    "prompt_too_long": "the prompt is longer than max_prompt_chars",
    "invalid_feedback": "feedback is not one of " + ", ".join(FEEDBACK_KINDS),
    "missing_score": "feedback 'score' without a finite numeric score",
    "missing_other_image": "pairwise feedback without other_image_uri",
    "invalid_timestamp": "created_at is not an ISO 8601 timestamp",
    "uri_not_allowed": "an image URI escapes its directory, points into a system path, "
    "uses an unsupported scheme, or lies outside allowed_roots",
    "image_missing": "the image file does not exist",
    "image_undecodable": "the image cannot be decoded (corrupt or truncated)",
    "image_size_out_of_bounds": "the image is smaller than min_image_side or larger than max_image_side",
    "conflicting_event_id": "two records share an event_id but differ in content (all of them are quarantined)",
    "conflicting_with_previous": "the event_id is already in the previous output with different content",
    "invalid_label": "an importer row has a label it cannot map to feedback",
    "excluded_by_policy": "an importer row the chosen policy leaves out (reference CSV `intersections` "
    "under reference_intersections=exclude)",
    "unreadable_source": "a whole source file could not be read",
}


class FeedbackEvent(BaseModel):
    """One piece of user feedback on one generated image (or on a pair of images of one prompt).

    ``feedback`` is ``like``/``dislike`` (a binary signal), ``score`` (with a numeric ``score``), or a
    pairwise choice: ``pairwise`` (``image_uri`` preferred over ``other_image_uri``), ``pairwise_tie``
    (no preference) or ``pairwise_unlabeled`` (shown, never judged). Unknown fields are kept in ``metadata``.
    """

    model_config = ConfigDict(extra="allow", str_strip_whitespace=False)

    event_id: str = Field(description="Unique id of the event (re-sent events keep their id).")
    prompt: str = Field(description="The text prompt the image was generated from.")
    image_uri: str = Field(
        description="The image: absolute local path, gs:// URI, or a path relative to the source file's "
        "directory. For `pairwise` the preferred image."
    )
    feedback: Literal["like", "dislike", "score", "pairwise", "pairwise_tie", "pairwise_unlabeled"] = Field(
        description="Kind of feedback."
    )
    score: float | None = Field(None, description="Numeric score, required for feedback `score`.")
    other_image_uri: str | None = Field(None, description="The second image of a pairwise comparison.")
    user_id: str | None = Field(None, description="Who gave the feedback.")
    created_at: datetime | None = Field(None, description="When (ISO 8601; default: ingest time).")
    model_version: str | None = Field(None, description="Model version that generated the image.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Free-form extra information.")

    @field_validator("event_id", "user_id", "model_version", mode="before")
    @classmethod
    def _ids_are_text(cls, value: Any) -> Any:
        # Integers are common ids in exports (Pick-a-Pic's user_id); accept them as text, reject others.
        if isinstance(value, bool):
            raise ValueError("expected a string, got a boolean")
        if isinstance(value, int):
            return str(value)
        return value

    @field_validator("score", mode="before")
    @classmethod
    def _score_is_a_number(cls, value: Any) -> Any:
        # pydantic's lax mode reads true as 1.0; a boolean is no score (a numeric text like "0.5" is one).
        if isinstance(value, bool):
            raise ValueError("expected a number, got a boolean")
        return value

    @model_validator(mode="after")
    def _feedback_fields(self) -> FeedbackEvent:
        if self.feedback == "score" and (self.score is None or not math.isfinite(self.score)):
            raise ValueError("missing_score: feedback 'score' needs a finite numeric field 'score'")
        if self.feedback in PAIRWISE_KINDS and not self.other_image_uri:
            raise ValueError(f"missing_other_image: feedback {self.feedback!r} needs field 'other_image_uri'")
        return self


def classify_record(record: Any, max_prompt_chars: int) -> tuple[FeedbackEvent | None, str, str]:
    """Validate one decoded record: ``(event, "", "")`` or ``(None, reason_code, message naming the field)``."""
    if not isinstance(record, dict):
        return None, "not_an_object", f"expected a JSON object, got {type(record).__name__}"
    for name in REQUIRED_FIELDS:
        if record.get(name) is None:
            return None, "missing_field", f"field {name!r} is required (one of {', '.join(REQUIRED_FIELDS)})"
    try:
        event = FeedbackEvent.model_validate(record)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(record)"
        msg = first["msg"]
        if "missing_score" in msg:
            return None, "missing_score", "field 'score' must be a finite number when feedback is 'score'"
        if "missing_other_image" in msg:
            return (
                None,
                "missing_other_image",
                f"field 'other_image_uri' is required: {msg.split(': ', 1)[-1]}",
            )
        if field == "feedback":
            return (
                None,
                "invalid_feedback",
                f"field 'feedback' is {record.get('feedback')!r}; valid: {', '.join(FEEDBACK_KINDS)}",
            )
        if field == "created_at":
            return (
                None,
                "invalid_timestamp",
                f"field 'created_at' is {record.get('created_at')!r}, not ISO 8601",
            )
        return None, "wrong_type", f"field {field!r}: {msg} (got {first.get('input')!r})"
    for name in ("event_id", "image_uri"):
        if not getattr(event, name):
            return None, "missing_field", f"field {name!r} is empty"
    if not event.prompt.strip():
        return None, "empty_prompt", "field 'prompt' is empty"
    if len(event.prompt) > max_prompt_chars:
        return (
            None,
            "prompt_too_long",
            f"field 'prompt' has {len(event.prompt)} characters, more than max_prompt_chars={max_prompt_chars}",
        )
    return event, "", ""


def event_to_row(event: FeedbackEvent) -> dict[str, Any]:
    """A validated event as a row of the intermediate table (metadata as a JSON object string)."""
    metadata = dict(event.metadata)
    metadata.update(event.model_extra or {})
    created = event.created_at
    if created is not None and created.tzinfo is None:
        created = created.replace(tzinfo=timezone.utc)
    return {
        "event_id": event.event_id,
        "prompt": event.prompt,
        "image_uri": event.image_uri,
        "feedback": event.feedback,
        "score": event.score,
        "other_image_uri": event.other_image_uri,
        "user_id": event.user_id,
        "created_at": created.astimezone(timezone.utc).isoformat() if created else None,
        "model_version": event.model_version,
        "metadata": json.dumps(metadata, sort_keys=True, default=str) if metadata else None,
    }


# The intermediate table every reader produces (created_at still text; URIs not yet resolved).
RAW_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("prompt", pa.string()),
        ("image_uri", pa.string()),
        ("feedback", pa.string()),
        ("score", pa.float64()),
        ("other_image_uri", pa.string()),
        ("user_id", pa.string()),
        ("created_at", pa.string()),
        ("model_version", pa.string()),
        ("metadata", pa.string()),
    ]
)

EVENTS_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("source", pa.string()),
        ("prompt", pa.string()),
        ("image_uri", pa.string()),
        ("image_sha256", pa.string()),
        ("feedback", pa.string()),
        ("score", pa.float64()),
        ("other_image_uri", pa.string()),
        ("other_image_sha256", pa.string()),
        ("user_id", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("model_version", pa.string()),
        ("metadata", pa.string()),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        ("raw", pa.string()),
        ("source", pa.string()),
        ("row_number", pa.int64()),
        ("reason", pa.string()),
        ("message", pa.string()),
        ("event_id", pa.string()),
    ]
)


def utc_now() -> datetime:
    """The ingest time, used as ``created_at`` for events that do not carry one."""
    return datetime.now(timezone.utc)
