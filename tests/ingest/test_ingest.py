"""Ingest: every source format (local and gs://), the count invariant on broken records, idempotent and
incremental runs, the quarantine limit, image checks."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from ingest_fixtures import good_records, write_records  # type: ignore[import-not-found]

from components.ingest.pipeline import IngestError
from components.ingest.step import IngestConfig, run
from components.shared import storage


def _check_invariant(result) -> None:
    assert result.read == result.accepted + result.duplicates + result.quarantined
    stats = storage.read_json(result.stats_uri)
    assert stats["read"] == stats["accepted"] + stats["duplicates"] + stats["quarantined"]
    assert sum(stats["quarantined_by_reason"].values()) == stats["quarantined"]


@pytest.mark.parametrize("ext", ["jsonl", "parquet", "csv"])
def test_each_format_from_local_files(tmp_path: Path, images: Path, ext: str) -> None:
    src = write_records(tmp_path / f"feedback.{ext}", good_records())
    result = run(IngestConfig(sources=[str(src)], output_dir=str(tmp_path / "out")))
    _check_invariant(result)
    assert (result.read, result.accepted, result.quarantined) == (4, 4, 0)
    events = pq.read_table(result.events_uri).to_pylist()
    by_id = {e["event_id"]: e for e in events}
    assert by_id["e1"]["image_uri"] == str(images / "red.png")
    assert by_id["e4"]["other_image_uri"] == str(images / "red.png")
    assert by_id["e3"]["score"] == 0.75 and by_id["e3"]["model_version"] == "v1"
    # +01:00 is normalised to UTC; unknown fields are kept in metadata
    assert by_id["e2"]["created_at"].isoformat() == "2026-11-01T10:00:00+00:00"
    assert json.loads(by_id["e4"]["metadata"]) == {"seed": "7" if ext == "csv" else 7}  # CSV cells are text
    # identical bytes under two URIs get one hash
    red_sha = storage.sha256_file(images / "red.png")
    assert by_id["e1"]["image_sha256"] == red_sha == by_id["e4"]["other_image_sha256"]


@pytest.mark.parametrize("ext", ["jsonl", "parquet", "csv"])
def test_each_format_from_gcs(tmp_path: Path, images: Path, gcs_bucket: str, ext: str) -> None:
    local = write_records(tmp_path / f"feedback.{ext}", good_records())
    storage.write_bytes(f"{gcs_bucket}/exports/feedback.{ext}", local.read_bytes())
    for name in ("red.png", "blue.png"):
        storage.write_bytes(f"{gcs_bucket}/exports/images/{name}", (images / name).read_bytes())
    result = run(IngestConfig(sources=[f"{gcs_bucket}/exports/"], output_dir=f"{gcs_bucket}/out"))
    _check_invariant(result)
    assert (result.accepted, result.quarantined) == (4, 0)
    events = storage.read_parquet(result.events_uri).to_pylist()
    assert {e["image_uri"] for e in events} == {
        f"{gcs_bucket}/exports/images/red.png",
        f"{gcs_bucket}/exports/images/blue.png",
    }
    assert all(e["image_sha256"] for e in events)
    assert storage.exists(f"{gcs_bucket}/out/quarantine.parquet")


# One file per kind of breakage: (file name, records or raw text, expected reason of each broken record).
BROKEN = {
    "malformed_json.jsonl": ('{"event_id": "m1", "prompt": "x"\nnot json at all\n', "malformed_record", 2),
    "not_an_object.jsonl": ('[1, 2]\n"text"\n', "not_an_object", 2),
    "missing_field.jsonl": (
        [
            {"event_id": "mf1", "prompt": "p", "feedback": "like"},
            {"prompt": "p", "image_uri": "images/red.png", "feedback": "like"},
        ],
        "missing_field",
        2,
    ),
    "wrong_type.jsonl": (
        [
            {"event_id": "wt1", "prompt": 5, "image_uri": "images/red.png", "feedback": "like"},
            {
                "event_id": "wt2",
                "prompt": "p",
                "image_uri": "images/red.png",
                "feedback": "score",
                "score": "high",
            },
        ],
        "wrong_type",
        2,
    ),
    "empty_prompt.jsonl": (
        [{"event_id": "ep1", "prompt": "  ", "image_uri": "images/red.png", "feedback": "like"}],
        "empty_prompt",
        1,
    ),
    "prompt_too_long.jsonl": (
        [{"event_id": "pl1", "prompt": "x" * 101, "image_uri": "images/red.png", "feedback": "like"}],
        "prompt_too_long",
        1,
    ),
    "invalid_feedback.jsonl": (
        [{"event_id": "if1", "prompt": "p", "image_uri": "images/red.png", "feedback": "love"}],
        "invalid_feedback",
        1,
    ),
    "missing_score.jsonl": (
        [{"event_id": "ms1", "prompt": "p", "image_uri": "images/red.png", "feedback": "score"}],
        "missing_score",
        1,
    ),
    "missing_other_image.jsonl": (
        [{"event_id": "mo1", "prompt": "p", "image_uri": "images/red.png", "feedback": "pairwise"}],
        "missing_other_image",
        1,
    ),
    "invalid_timestamp.jsonl": (
        [
            {
                "event_id": "it1",
                "prompt": "p",
                "image_uri": "images/red.png",
                "feedback": "like",
                "created_at": "yesterday",
            }
        ],
        "invalid_timestamp",
        1,
    ),
    "uri_escape.jsonl": (
        [
            {"event_id": "ue1", "prompt": "p", "image_uri": "../../etc/passwd", "feedback": "like"},
            {"event_id": "ue2", "prompt": "p", "image_uri": "file:///etc/shadow", "feedback": "like"},
            {"event_id": "ue3", "prompt": "p", "image_uri": "http://example.com/a.png", "feedback": "like"},
        ],
        "uri_not_allowed",
        3,
    ),
    "image_missing.jsonl": (
        [{"event_id": "im1", "prompt": "p", "image_uri": "images/nope.png", "feedback": "like"}],
        "image_missing",
        1,
    ),
    "image_truncated.jsonl": (
        [{"event_id": "iu1", "prompt": "p", "image_uri": "images/truncated.png", "feedback": "like"}],
        "image_undecodable",
        1,
    ),
    "image_too_small.jsonl": (
        [{"event_id": "is1", "prompt": "p", "image_uri": "images/tiny.png", "feedback": "like"}],
        "image_size_out_of_bounds",
        1,
    ),
    "conflict.jsonl": (
        [
            {"event_id": "c1", "prompt": "p", "image_uri": "images/red.png", "feedback": "like"},
            {"event_id": "c1", "prompt": "p", "image_uri": "images/red.png", "feedback": "dislike"},
        ],
        "conflicting_event_id",
        2,
    ),
    "bad_row.csv": (
        "event_id,prompt,image_uri,feedback\nr1,p,images/red.png,like,extra\nr2,p,images/red.png,like\n",
        "malformed_record",
        1,
    ),
    "bad_score.csv": (
        "event_id,prompt,image_uri,feedback,score\ns1,p,images/red.png,score,abc\n",
        "wrong_type",
        1,
    ),
}


def _write_broken_corpus(root: Path) -> dict[str, int]:
    expected: dict[str, int] = {}
    for i, (name, (content, reason, n_bad)) in enumerate(BROKEN.items()):
        path = root / name
        if isinstance(content, str):
            path.write_text(content)
        else:
            # every JSONL file also holds one good record, so a bad one never hides a good one
            write_records(
                path,
                [
                    *content,
                    {
                        "event_id": f"good-{i}",
                        "prompt": "fine",
                        "image_uri": "images/red.png",
                        "feedback": "like",
                    },
                ],
            )
        expected[reason] = expected.get(reason, 0) + n_bad
    return expected


def test_count_invariant_on_broken_records(tmp_path: Path, images: Path) -> None:
    expected = _write_broken_corpus(tmp_path)
    result = run(
        IngestConfig(
            sources=[str(tmp_path / "*.jsonl"), str(tmp_path / "*.csv")],
            output_dir=str(tmp_path / "out"),
            max_prompt_chars=100,
            min_image_side=8,
            max_quarantined_fraction=1.0,
        )
    )
    _check_invariant(result)
    assert result.quarantined_by_reason == dict(sorted(expected.items()))
    n_good_jsonl = sum(1 for name, (c, _, _) in BROKEN.items() if not isinstance(c, str))
    assert result.accepted == n_good_jsonl + 1  # + r2 of bad_row.csv
    quarantine = pq.read_table(result.quarantine_uri).to_pylist()
    assert len(quarantine) == result.quarantined
    for q in quarantine:
        assert q["raw"] and q["message"] and q["source"] and q["row_number"] >= 1
    by_id = {q["event_id"]: q for q in quarantine if q["event_id"]}
    assert "'prompt'" in by_id["wt1"]["message"]
    assert "'score'" in by_id["wt2"]["message"]
    assert "'image_uri'" in by_id["ue1"]["message"] and ".." in by_id["ue1"]["message"]
    assert "system directory" in by_id["ue2"]["message"]
    assert "'created_at'" in by_id["it1"]["message"]
    assert by_id["c1"]["reason"] == "conflicting_event_id"
    assert sum(1 for q in quarantine if q["event_id"] == "c1") == 2
    # the broken JSON line is kept verbatim
    assert any(q["raw"] == "not json at all" for q in quarantine)


def test_allowed_roots(tmp_path: Path, images: Path) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "x.png").write_bytes((images / "red.png").read_bytes())
    records = [
        *good_records()[:1],
        {"event_id": "o1", "prompt": "p", "image_uri": str(other / "x.png"), "feedback": "like"},
    ]
    src = write_records(tmp_path / "f.jsonl", records)
    result = run(
        IngestConfig(
            sources=[str(src)],
            output_dir=str(tmp_path / "out"),
            allowed_roots=[str(images)],
            max_quarantined_fraction=1,
        )
    )
    assert result.accepted == 1 and result.quarantined_by_reason == {"uri_not_allowed": 1}
    q = pq.read_table(result.quarantine_uri).to_pylist()[0]
    assert "outside allowed_roots" in q["message"]


def test_idempotent_rerun(tmp_path: Path, images: Path) -> None:
    src = write_records(tmp_path / "f.jsonl", good_records() + [good_records()[0]])  # one exact re-send
    first = run(IngestConfig(sources=[str(src)], output_dir=str(tmp_path / "a")))
    second = run(IngestConfig(sources=[str(src)], output_dir=str(tmp_path / "b")))
    assert (first.accepted, first.duplicates) == (4, 1)
    assert pq.read_table(first.events_uri).equals(pq.read_table(second.events_uri))
    # re-running on the same sources with the previous output adds nothing
    again = run(
        IngestConfig(sources=[str(src)], output_dir=str(tmp_path / "c"), previous_output=str(tmp_path / "a"))
    )
    _check_invariant(again)
    assert (again.accepted, again.duplicates, again.total_events) == (0, 5, 4)
    assert pq.read_table(again.events_uri).equals(pq.read_table(first.events_uri))
    # the previous output dir itself can be the output of the new run
    inplace = run(
        IngestConfig(sources=[str(src)], output_dir=str(tmp_path / "a"), previous_output=str(tmp_path / "a"))
    )
    assert (inplace.accepted, inplace.total_events) == (0, 4)


def test_incremental_run_adds_only_new_ids(tmp_path: Path, images: Path) -> None:
    day1 = write_records(tmp_path / "day1.jsonl", good_records())
    first = run(IngestConfig(sources=[str(day1)], output_dir=str(tmp_path / "run1")))
    new = [
        {
            "event_id": "n1",
            "prompt": "a red square",
            "image_uri": "images/red.png",
            "feedback": "dislike",
            "created_at": "2026-11-05T00:00:00Z",
        },
        # late arrival: older than the watermark but a new id, so it is added
        {
            "event_id": "n2",
            "prompt": "a red square",
            "image_uri": "images/red.png",
            "feedback": "like",
            "created_at": "2026-10-01T00:00:00Z",
        },
        # an old id re-used with other content: a conflict with the previous output
        {**good_records()[0], "feedback": "dislike"},
    ]
    day2 = write_records(tmp_path / "day2.jsonl", new)
    second = run(
        IngestConfig(
            sources=[str(day2)],
            output_dir=str(tmp_path / "run2"),
            previous_output=str(tmp_path / "run1"),
            max_quarantined_fraction=0.5,
        )
    )
    _check_invariant(second)
    assert (second.read, second.accepted, second.duplicates, second.quarantined) == (3, 2, 0, 1)
    assert second.quarantined_by_reason == {"conflicting_with_previous": 1}
    assert second.total_events == 6
    assert first.watermark == "2026-11-03T00:00:00+00:00"
    assert second.watermark == "2026-11-05T00:00:00+00:00"
    ids = pq.read_table(second.events_uri).column("event_id").to_pylist()
    assert sorted(ids) == ["e1", "e2", "e3", "e4", "n1", "n2"]
    # both days together: day1 is all duplicates; e1 now has two contents in this run -> both quarantined
    third = run(
        IngestConfig(
            sources=[str(day1), str(day2)],
            output_dir=str(tmp_path / "run3"),
            previous_output=str(tmp_path / "run2"),
            max_quarantined_fraction=0.5,
        )
    )
    _check_invariant(third)
    assert (third.read, third.accepted, third.duplicates, third.quarantined) == (7, 0, 5, 2)
    assert third.quarantined_by_reason == {"conflicting_event_id": 2}


def test_quarantine_limit_fails_the_step(tmp_path: Path, images: Path) -> None:
    records = good_records()[:1] + [
        {"event_id": f"b{i}", "prompt": "", "image_uri": "images/red.png", "feedback": "like"}
        for i in range(3)
    ]
    src = write_records(tmp_path / "f.jsonl", records)
    with pytest.raises(
        IngestError, match=r"3 of 4 records \(75.0%\) were quarantined.*max_quarantined_fraction"
    ):
        run(IngestConfig(sources=[str(src)], output_dir=str(tmp_path / "out"), max_quarantined_fraction=0.5))
    assert not (tmp_path / "out" / "events.parquet").exists()
    assert pq.read_table(tmp_path / "out" / "quarantine.parquet").num_rows == 3
    assert "failed" in storage.read_json(str(tmp_path / "out" / "stats.json"))


def test_image_checks_off_and_identical_images(tmp_path: Path, images: Path) -> None:
    records = [
        {"event_id": "a", "prompt": "p", "image_uri": "images/red.png", "feedback": "like"},
        {"event_id": "b", "prompt": "p", "image_uri": "images/red_copy.png", "feedback": "like"},
        {"event_id": "c", "prompt": "p", "image_uri": "images/missing.png", "feedback": "like"},
    ]
    src = write_records(tmp_path / "f.jsonl", records)
    dry = run(IngestConfig(sources=[str(src)], output_dir=str(tmp_path / "dry"), check_images=False))
    assert dry.accepted == 3
    assert pq.read_table(dry.events_uri).column("image_sha256").null_count == 3
    checked = run(
        IngestConfig(sources=[str(src)], output_dir=str(tmp_path / "checked"), max_quarantined_fraction=0.5)
    )
    assert checked.accepted == 2 and checked.quarantined_by_reason == {"image_missing": 1}
    shas = pq.read_table(checked.events_uri).column("image_sha256").to_pylist()
    assert shas[0] == shas[1]
    assert storage.read_json(checked.stats_uri)["identical_image_groups"] == 1


def test_config_validation() -> None:
    from components.shared.config import ConfigError

    with pytest.raises(ConfigError, match="min_image_side"):
        IngestConfig.from_dict(
            {"sources": ["a"], "output_dir": "o", "min_image_side": 100, "max_image_side": 10}
        )
    with pytest.raises(ConfigError, match="sources"):
        IngestConfig.from_dict({"sources": [], "output_dir": "o"})


def test_csv_header_with_quoted_names(tmp_path: Path, images: Path) -> None:
    """A quoted column name holding a comma is one column (kept in metadata), not two."""
    src = tmp_path / "quoted.csv"
    src.write_text(
        'event_id,prompt,image_uri,feedback,"rating, 1-5",score\n'
        'q1,"a cat, sitting",images/red.png,score,4,0.5\n'
    )
    result = run(IngestConfig(sources=[str(src)], output_dir=str(tmp_path / "out")))
    _check_invariant(result)
    assert (result.accepted, result.quarantined) == (1, 0)
    event = pq.read_table(result.events_uri).to_pylist()[0]
    assert event["prompt"] == "a cat, sitting" and event["score"] == 0.5
    assert json.loads(event["metadata"]) == {"rating, 1-5": "4"}


def test_unreadable_source_file_is_one_quarantined_record(tmp_path: Path, images: Path) -> None:
    """A source that cannot be read at all is counted and named, and the other sources still load."""
    write_records(tmp_path / "good.jsonl", good_records())
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not a parquet file")
    result = run(
        IngestConfig(
            sources=[str(tmp_path / "good.jsonl"), str(tmp_path / "broken.parquet")],
            output_dir=str(tmp_path / "out"),
            max_quarantined_fraction=1.0,
        )
    )
    _check_invariant(result)
    assert (result.read, result.accepted, result.quarantined) == (5, 4, 1)
    assert result.quarantined_by_reason == {"unreadable_source": 1}
    stats = storage.read_json(result.stats_uri)
    broken = [s for s in stats["sources"] if s["uri"].endswith("broken.parquet")][0]
    assert broken["records"] == 1 and broken["error"]
    (row,) = pq.read_table(result.quarantine_uri).to_pylist()
    assert row["reason"] == "unreadable_source" and "broken.parquet" in row["message"]


def test_run_ahead_keeps_order_and_raises_where_the_source_failed() -> None:
    from components.ingest.pipeline import _run_ahead

    def source():
        yield 1
        yield 2
        raise OSError("connection reset while reading chunk 3")

    got = []
    with pytest.raises(OSError, match="chunk 3"):
        for item in _run_ahead(source()):
            got.append(item)
    assert got == [1, 2]
    assert list(_run_ahead(iter(range(5)))) == [0, 1, 2, 3, 4]


def test_timestamp_outside_python_dates_is_quarantined(tmp_path: Path) -> None:
    """0001-01-01T00:30+01:00 is a valid ISO 8601 text but year 0 in UTC: quarantined with its field,
    not a crash when the row is later read back into Python."""
    src = tmp_path / "early.jsonl"
    base = {"prompt": "p", "image_uri": "gs://b/i.png", "feedback": "like"}
    src.write_text(
        json.dumps({**base, "event_id": "a", "created_at": "0001-01-01T00:30:00+01:00"})
        + "\n"
        + json.dumps({**base, "event_id": "a", "created_at": "2026-11-01T00:00:00Z"})
        + "\n"
        + json.dumps({**base, "event_id": "b", "created_at": "9999-12-31T23:30:00-01:00"})
        + "\n"
    )
    result = run(
        IngestConfig(
            sources=[str(src)],
            output_dir=str(tmp_path / "out"),
            check_images=False,
            max_quarantined_fraction=1.0,
        )
    )
    _check_invariant(result)
    assert result.accepted == 1 and result.quarantined_by_reason == {"invalid_timestamp": 2}
    messages = [q["message"] for q in pq.read_table(result.quarantine_uri).to_pylist()]
    assert all("'created_at'" in m for m in messages)
