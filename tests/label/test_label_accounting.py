"""Label's handling of what an event says about which image: comparisons of an image with itself, a SHA-256
known for some events of a URI only, and stats.json accounting for every event read."""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.ingest.schema import EVENTS_SCHEMA
from components.label.grouping import fill_sha256
from components.label.step import LabelConfig, run
from components.shared import storage

NOW = datetime(2026, 11, 1, tzinfo=timezone.utc)


def _write(tmp_path: Path, rows: list[dict[str, Any]]) -> str:
    """Write events; each row gives prompt, image_uri, feedback and any other field it sets."""
    full = []
    for i, row in enumerate(rows):
        event: dict[str, Any] = dict.fromkeys(EVENTS_SCHEMA.names)
        event.update(event_id=str(i), source="test", user_id="u", created_at=NOW)
        event.update(row)
        full.append(event)
    path = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pylist(full, schema=EVENTS_SCHEMA), path)
    return str(path)


def _rows(*uris: str) -> list[dict[str, Any]]:
    return [r for uri in uris for r in pq.read_table(uri).to_pylist()]


def _pair(
    prompt: str, a: str, b: str, fb: str = "pairwise", sha_a: str | None = None, sha_b: str | None = None
):
    return dict(
        prompt=prompt,
        image_uri=a,
        other_image_uri=b,
        feedback=fb,
        image_sha256=sha_a,
        other_image_sha256=sha_b,
    )


def _accounted(stats: dict[str, Any]) -> int:
    """Events used + dropped as events + counted only toward dropped images."""
    by_events = sum(v for k, v in stats["dropped_by_reason"].items() if k.startswith("events_"))
    return int(stats["events_used"] + by_events + stats["events_of_dropped_images"])


def test_pairwise_comparison_of_an_image_with_itself_is_dropped(tmp_path: Path) -> None:
    events = _write(
        tmp_path,
        [
            _pair("dog", "/d.jpg", "/f.jpg"),
            _pair("dog", "/d.jpg", "/d.jpg"),  # one URI twice
            _pair("dog", "/e.jpg", "/d_copy.jpg", sha_a="sha-d", sha_b="sha-d"),  # same bytes, two URIs
            _pair("dog", "/f.jpg", "/f.jpg", fb="pairwise_tie"),
            _pair("cat", "/a.jpg", "/b.jpg"),
        ],
    )
    result = run(
        LabelConfig(
            events=events,
            output_dir=str(tmp_path / "out"),
            policy="pairwise",
            pairwise={"variant": "intermediate_undesirable"},
            val_fraction=0.0,
        )
    )
    got = {
        r["image_uri"]: (r["desirable"], r["n_wins"], r["n_losses"], r["n_ties"])
        for r in _rows(result.train_uri)
    }
    assert got == {
        "/d.jpg": (True, 1, 0, 0),
        "/f.jpg": (False, 0, 1, 0),
        "/a.jpg": (True, 1, 0, 0),
        "/b.jpg": (False, 0, 1, 0),
    }
    assert result.dropped_by_reason == {"events_pairwise_same_image": 3}
    stats = storage.read_json(result.stats_uri)
    assert stats["events_used"] == 2 and stats["events_read"] == 5 == _accounted(stats)
    card = Path(result.data_card_uri).read_text()
    assert "events_pairwise_same_image: 3" in card and "/d_copy.jpg" in card


def test_sha256_known_for_some_events_of_a_uri_keys_one_image(tmp_path: Path) -> None:
    events = _write(
        tmp_path,
        [
            # an earlier run without image checks, then one with them: one image, one row
            dict(prompt="p", image_uri="/x.png", feedback="like", image_sha256="sha-x"),
            dict(prompt="p", image_uri="/x.png", feedback="dislike"),
            dict(prompt="p", image_uri="/x.png", feedback="dislike"),
            # the file at /y.png changed between runs: its unhashed event stays apart, with a warning
            dict(prompt="p", image_uri="/y.png", feedback="like", image_sha256="sha-y1"),
            dict(prompt="p", image_uri="/y.png", feedback="like", image_sha256="sha-y2"),
            dict(prompt="p", image_uri="/y.png", feedback="dislike"),
        ],
    )
    result = run(LabelConfig(events=events, output_dir=str(tmp_path / "out"), val_fraction=0.0))
    got = {
        r["sample_id"]: (r["image_uri"], r["image_sha256"], r["desirable"], r["n_likes"], r["n_dislikes"])
        for r in _rows(result.train_uri)
    }
    assert got == {
        "sha-x": ("/x.png", "sha-x", False, 1, 2),
        "sha-y1": ("/y.png", "sha-y1", True, 1, 0),
        "sha-y2": ("/y.png", "sha-y2", True, 1, 0),
        hashlib.sha256(b"/y.png").hexdigest(): ("/y.png", None, False, 0, 1),
    }
    stats = storage.read_json(result.stats_uri)
    assert any("1 image URIs have events with different image_sha256" in w for w in stats["warnings"])

    # pairwise: the SHA-256 known from one side of an event fills the other side of another event
    events = _write(tmp_path, [_pair("p", "/w.png", "/z.png", sha_b="sha-z"), _pair("p", "/z.png", "/v.png")])
    result = run(
        LabelConfig(events=events, output_dir=str(tmp_path / "pw"), policy="pairwise", val_fraction=0.0)
    )
    z = [r for r in _rows(result.train_uri) if r["image_uri"] == "/z.png"]
    assert [(r["sample_id"], r["n_wins"], r["n_losses"]) for r in z] == [("sha-z", 1, 1)]


def _reference_fill(uris: list[str | None], shas: list[str | None]) -> list[str | None]:
    known: dict[str, set[str]] = defaultdict(set)
    for u, h in zip(uris, shas, strict=True):
        if u is not None and h:
            known[u].add(h)
    out = []
    for u, h in zip(uris, shas, strict=True):
        if h:
            out.append(h)
        elif u is not None and len(known[u]) == 1:
            out.append(next(iter(known[u])))
        else:
            out.append(None)
    return out


@pytest.mark.parametrize("case", range(40))
def test_fill_sha256_equals_a_plain_python_fill(case: int) -> None:
    rng = random.Random(case)
    n = rng.randrange(0, 200)
    uris = [None if rng.random() < 0.05 else f"/{rng.randrange(30)}.png" for _ in range(n)]
    shas = [rng.choice([None, None, "", f"s{rng.randrange(3)}", f"s{rng.randrange(40)}"]) for _ in range(n)]
    if case % 4 == 0:
        shas = [None] * n
    cut = n // 3
    pairs = [
        (pa.array(uris[:cut], pa.string()), pa.chunked_array([shas[:cut]], pa.string())),
        (pa.chunked_array([uris[cut:]], pa.string()), pa.array(shas[cut:], pa.string())),
    ]
    filled = fill_sha256(pairs)
    got = [v for column in filled.columns for v in column.to_pylist()]
    expected = _reference_fill(uris, shas)
    # an all-null input comes back as it is; otherwise an empty SHA-256 reads as unknown
    assert got == (shas if case % 4 == 0 else expected)
    gaps = {u for u, h in zip(uris, shas, strict=True) if u is not None and not h}
    ambiguous = {u for u in gaps if len({h for v, h in zip(uris, shas, strict=True) if v == u and h}) > 1}
    assert filled.ambiguous_uris == len(ambiguous)


def test_votes_every_event_is_accounted_for(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [
        dict(prompt="p", image_uri="/a.png", feedback="like"),
        dict(prompt="p", image_uri="/a.png", feedback="like"),
        dict(prompt="p", image_uri="/a.png", feedback="dislike"),
        dict(prompt="p", image_uri="/b.png", feedback="dislike"),
        dict(prompt="p", image_uri="/b.png", feedback="dislike"),
        dict(prompt="p", image_uri="/c.png", feedback="like"),  # one vote: images_too_few_votes
        dict(prompt="p", image_uri="/d.png", feedback="like"),
        dict(prompt="p", image_uri="/d.png", feedback="dislike"),  # images_tie
        dict(prompt="p", image_uri="/e.png", feedback="like"),
        dict(prompt="p", image_uri="/e.png", feedback="like"),  # third most voted: images_over_max_per_prompt
        dict(prompt="q", image_uri="/g.png", feedback="like", image_sha256="sha-g"),
        dict(prompt="q", image_uri="/g.png", feedback="like"),
        dict(prompt="p", image_uri="/a.png", feedback="score", score=0.5),  # events_score_not_used_by_votes
        dict(prompt="p", image_uri="/a.png", feedback="like", user_id="other"),  # events_other_users
    ]
    events = _write(tmp_path, rows)
    result = run(
        LabelConfig(
            events=events,
            output_dir=str(tmp_path / "out"),
            policy="user_filter",
            user_filter={"user_ids": ["u"]},
            votes={"min_votes": 2},
            max_images_per_prompt=2,
            val_fraction=0.5,
        )
    )
    stats = storage.read_json(result.stats_uri)
    assert set(stats["dropped_by_reason"]) == {
        "events_other_users",
        "events_score_not_used_by_votes",
        "images_too_few_votes",
        "images_tie",
        "images_over_max_per_prompt",
    }
    written = _rows(result.train_uri, result.val_uri)
    assert stats["images_labeled"] == len(written) == 3
    # one image per vote: the used events are the votes behind the written images
    assert stats["events_used"] == sum(r["n_events"] for r in written) == 7
    assert stats["events_of_dropped_images"] == 5
    assert stats["events_read"] == len(rows) == _accounted(stats)
    card = Path(result.data_card_uri).read_text()
    assert f"Events: {len(rows)} read = 7 used" in card
    assert "uniformly" in stats["class_weights_note"] and stats["class_weights_note"] in card


def test_pairwise_every_event_is_accounted_for(tmp_path: Path) -> None:
    rows = [
        _pair("p", "/a.png", "/b.png"),  # a won and lost: images_intermediate; b labeled
        _pair("p", "/c.png", "/a.png"),  # c labeled
        _pair("p", "/b.png", "/b.png"),  # events_pairwise_same_image
        _pair("p", "/e.png", "/f.png", fb="pairwise_tie"),  # only ties: images_tie_only (both)
        _pair("p", "/c.png", "/e.png", fb="pairwise_tie"),  # c labeled
        _pair("p", "/a.png", "/b.png", fb="pairwise_unlabeled"),  # events_pairwise_unlabeled
        dict(prompt="p", image_uri="/a.png", feedback="like"),  # events_like_not_used_by_pairwise
    ]
    events = _write(tmp_path, rows)
    result = run(
        LabelConfig(
            events=events,
            output_dir=str(tmp_path / "out"),
            policy="pairwise",
            pairwise={"variant": "win_only"},
            val_fraction=0.0,
        )
    )
    stats = storage.read_json(result.stats_uri)
    assert stats["dropped_by_reason"] == {
        "events_like_not_used_by_pairwise": 1,
        "events_pairwise_same_image": 1,
        "events_pairwise_unlabeled": 1,
        "images_intermediate": 1,
        "images_tie_only": 2,
    }
    labeled = {r["image_uri"] for r in _rows(result.train_uri)}
    assert labeled == {"/b.png", "/c.png"} and stats["images_labeled"] == 2
    # an event is used when one of its two images is written
    used = sum(
        1
        for r in rows
        if r["feedback"] in ("pairwise", "pairwise_tie")
        and r["image_uri"] != r.get("other_image_uri")
        and {r["image_uri"], r["other_image_uri"]} & labeled
    )
    assert stats["events_used"] == used == 3
    assert stats["events_of_dropped_images"] == 1
    assert stats["events_read"] == len(rows) == _accounted(stats)


def test_random_pairwise_events_equal_a_plain_python_recount(tmp_path: Path) -> None:
    """Self-comparisons, aliases (one file under two URIs) and SHA-256 known for some events only."""
    rng = random.Random(11)
    n_files = 60
    sha_of_file = {f: f"{f:064x}" for f in range(n_files)}
    uris_of_file = {
        f: [f"gs://b/{f}.png"] + ([f"gs://b/{f}-copy.png"] if f % 7 == 0 else []) for f in range(n_files)
    }
    rows = []
    for _ in range(1500):
        prompt = f"prompt {rng.randrange(6)}"
        a, b = rng.randrange(n_files), rng.randrange(n_files)
        if rng.random() < 0.1:
            b = a
        ua, ub = rng.choice(uris_of_file[a]), rng.choice(uris_of_file[b])
        rows.append(
            _pair(
                prompt,
                ua,
                ub,
                fb=rng.choice(["pairwise", "pairwise", "pairwise_tie", "pairwise_unlabeled"]),
                sha_a=sha_of_file[a] if rng.random() < 0.4 else None,
                sha_b=sha_of_file[b] if rng.random() < 0.4 else None,
            )
        )
    events = _write(tmp_path, rows)
    result = run(
        LabelConfig(events=events, output_dir=str(tmp_path / "out"), policy="pairwise", val_fraction=0.3)
    )

    known: dict[str, str] = {}
    for r in rows:
        for u, h in ((r["image_uri"], r["image_sha256"]), (r["other_image_uri"], r["other_image_sha256"])):
            if h:
                known[u] = h

    def key(uri: str) -> str:
        return known.get(uri, uri)

    counts: dict[tuple[str, str], np.ndarray] = defaultdict(lambda: np.zeros(3, dtype=np.int64))
    uris: dict[tuple[str, str], set[str]] = defaultdict(set)
    same = 0
    for r in rows:
        if r["feedback"] == "pairwise_unlabeled":
            continue
        ka, kb = key(r["image_uri"]), key(r["other_image_uri"])
        if ka == kb:
            same += 1
            continue
        win = r["feedback"] == "pairwise"
        counts[(r["prompt"], ka)] += [1, 0, 0] if win else [0, 0, 1]
        counts[(r["prompt"], kb)] += [0, 1, 0] if win else [0, 0, 1]
        uris[(r["prompt"], ka)].add(r["image_uri"])
        uris[(r["prompt"], kb)].add(r["other_image_uri"])
    expected = {}
    for (prompt, k), (wins, losses, ties) in counts.items():
        if wins or losses:
            sample_id = k if k in known.values() else hashlib.sha256(k.encode()).hexdigest()
            expected[(prompt, sample_id)] = (
                prompt,
                min(uris[(prompt, k)]),
                bool(wins),
                int(wins),
                int(losses),
                int(ties),
            )
    written = _rows(result.train_uri, result.val_uri)
    got = {
        (r["prompt"], r["sample_id"]): (
            r["prompt"],
            r["image_uri"],
            r["desirable"],
            r["n_wins"],
            r["n_losses"],
            r["n_ties"],
        )
        for r in written
    }
    assert len(got) == len(written) and got == expected
    stats = storage.read_json(result.stats_uri)
    assert stats["dropped_by_reason"]["events_pairwise_same_image"] == same > 0
    assert stats["events_read"] == len(rows) == _accounted(stats)
