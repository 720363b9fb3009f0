"""The label step end to end: policies through run(), user filter, split, per-prompt cap, outputs on gs://."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.ingest.schema import EVENTS_SCHEMA
from components.label.split import prompt_in_val
from components.label.step import LabelConfig, run
from components.shared import storage
from components.shared.config import ConfigError


def _events(rows: list[tuple]) -> pa.Table:
    """(event_id, prompt, image_uri, feedback, other_image_uri, score, user_id, image_sha256) tuples."""
    now = datetime(2026, 11, 1, tzinfo=timezone.utc)
    out = []
    for eid, prompt, uri, fb, other, score, user, sha in rows:
        out.append(
            dict(
                event_id=eid,
                source="test",
                prompt=prompt,
                image_uri=uri,
                image_sha256=sha,
                feedback=fb,
                score=score,
                other_image_uri=other,
                other_image_sha256=None,
                user_id=user,
                created_at=now,
                model_version=None,
                metadata=None,
            )
        )
    return pa.Table.from_pylist(out, schema=EVENTS_SCHEMA)


def _write(tmp_path: Path, rows: list[tuple]) -> str:
    path = tmp_path / "events.parquet"
    pq.write_table(_events(rows), path)
    return str(path)


def _labels(uri: str) -> dict[str, bool]:
    return {r["image_uri"]: r["desirable"] for r in pq.read_table(uri).to_pylist()}


def test_votes_through_run_with_identical_images_merged(tmp_path: Path) -> None:
    events = _write(
        tmp_path,
        [
            ("1", "p", "/a.png", "like", None, None, "u1", "sha-a"),
            ("2", "p", "/a_copy.png", "like", None, None, "u2", "sha-a"),  # same bytes, other URI
            ("3", "p", "/a.png", "dislike", None, None, "u3", "sha-a"),
            ("4", "p", "/b.png", "dislike", None, None, "u1", "sha-b"),
            ("5", "p", "/c.png", "like", None, None, "u1", None),
            ("6", "p", "/c.png", "dislike", None, None, "u2", None),
            ("7", "p", "/d.png", "score", None, 0.3, "u1", None),
        ],
    )
    result = run(LabelConfig(events=events, output_dir=str(tmp_path / "out"), val_fraction=0.0))
    rows = pq.read_table(result.train_uri).to_pylist()
    assert {r["image_uri"]: (r["desirable"], r["n_likes"], r["n_dislikes"]) for r in rows} == {
        "/a.png": (True, 2, 1),
        "/b.png": (False, 0, 1),
    }
    assert {r["sample_id"] for r in rows} == {"sha-a", "sha-b"}
    assert result.dropped_by_reason == {"events_score_not_used_by_votes": 1, "images_tie": 1}
    stats = storage.read_json(result.stats_uri)
    assert stats["train"] == {"desirable": 1, "undesirable": 1}
    card = Path(result.data_card_uri).read_text()
    assert "images_tie: 1" in card and "/c.png" in card


def test_user_filter_keeps_one_cohort(tmp_path: Path) -> None:
    events = _write(
        tmp_path,
        [
            ("1", "p", "/a.png", "like", None, None, "alice", None),
            ("2", "p", "/a.png", "dislike", None, None, "bob", None),
            ("3", "p", "/a.png", "dislike", None, None, "carol", None),
            ("4", "p", "/b.png", "dislike", None, None, "alice", None),
        ],
    )
    result = run(
        LabelConfig(
            events=events,
            output_dir=str(tmp_path / "out"),
            policy="user_filter",
            user_filter={"user_ids": ["alice"]},
            val_fraction=0.0,
        )
    )
    assert _labels(result.train_uri) == {"/a.png": True, "/b.png": False}
    assert result.dropped_by_reason == {"events_other_users": 2}
    everyone = run(LabelConfig(events=events, output_dir=str(tmp_path / "all"), val_fraction=0.0))
    assert _labels(everyone.train_uri) == {"/a.png": False, "/b.png": False}
    with pytest.raises(ConfigError, match="user_ids"):
        LabelConfig.from_dict({"events": events, "output_dir": "o", "policy": "user_filter"})


def test_score_threshold_through_run(tmp_path: Path) -> None:
    rows = [(str(i), "p", f"/{i}.png", "score", None, float(i), "u", None) for i in range(1, 11)]
    events = _write(tmp_path, rows)
    result = run(
        LabelConfig(
            events=events,
            output_dir=str(tmp_path / "out"),
            policy="score_threshold",
            score_threshold={"mode": "absolute", "desirable_above": 8, "undesirable_below": 3},
            val_fraction=0.0,
        )
    )
    assert _labels(result.train_uri) == {
        "/1.png": False,
        "/2.png": False,
        "/8.png": True,
        "/9.png": True,
        "/10.png": True,
    }
    assert result.dropped_by_reason == {"images_middle_score": 5}


def test_split_is_prompt_level_and_stable(tmp_path: Path) -> None:
    rows = []
    for p in range(60):
        for img in range(3):
            rows.append(
                (
                    f"{p}-{img}",
                    f"prompt {p}",
                    f"/{p}/{img}.png",
                    "like" if img else "dislike",
                    None,
                    None,
                    "u",
                    None,
                )
            )
    events = _write(tmp_path, rows)
    first = run(LabelConfig(events=events, output_dir=str(tmp_path / "a"), val_fraction=0.25))
    second = run(LabelConfig(events=events, output_dir=str(tmp_path / "b"), val_fraction=0.25))
    train = pq.read_table(first.train_uri)
    val = pq.read_table(first.val_uri)
    train_prompts = set(train.column("prompt").to_pylist())
    val_prompts = set(val.column("prompt").to_pylist())
    assert train_prompts and val_prompts and not train_prompts & val_prompts
    assert len(train_prompts | val_prompts) == 60
    assert val_prompts == {
        f"prompt {p}" for p in range(60) if prompt_in_val(f"prompt {p}", 0.25, "dkto-split-v1")
    }
    assert pq.read_table(second.val_uri).equals(val)
    assert set(val.column("split").to_pylist()) == {"val"} and set(train.column("split").to_pylist()) == {
        "train"
    }


def test_max_images_per_prompt_keeps_most_voted(tmp_path: Path) -> None:
    rows = []
    for img, votes in enumerate([1, 4, 2, 3]):
        for v in range(votes):
            rows.append(
                (
                    f"{img}-{v}",
                    "p",
                    f"/{img}.png",
                    "like" if img % 2 else "dislike",
                    None,
                    None,
                    f"u{v}",
                    None,
                )
            )
    events = _write(tmp_path, rows)
    result = run(
        LabelConfig(
            events=events, output_dir=str(tmp_path / "out"), max_images_per_prompt=2, val_fraction=0.0
        )
    )
    assert _labels(result.train_uri) == {"/1.png": True, "/3.png": True}
    assert result.dropped_by_reason == {"images_over_max_per_prompt": 2}
    assert (
        result.undesirable_weight == 1.0 and result.desirable_weight == 1.0
    )  # no undesirable: weights stay 1
    assert storage.read_json(result.stats_uri)["warnings"]


def test_label_reads_and_writes_gcs(tmp_path: Path, gcs_bucket: str) -> None:
    local = _write(
        tmp_path,
        [
            ("1", "p", "gs://x/a.png", "like", None, None, "u", None),
            ("2", "p", "gs://x/b.png", "dislike", None, None, "u", None),
        ],
    )
    storage.write_bytes(f"{gcs_bucket}/ingest/events.parquet", Path(local).read_bytes())
    result = run(
        LabelConfig(events=f"{gcs_bucket}/ingest", output_dir=f"{gcs_bucket}/label", val_fraction=0.0)
    )
    assert storage.read_parquet(result.train_uri).num_rows == 2
    assert storage.read_json(f"{gcs_bucket}/label/stats.json")["train"] == {"desirable": 1, "undesirable": 1}
    assert "Data card" in storage.read_text(f"{gcs_bucket}/label/data_card.md")
