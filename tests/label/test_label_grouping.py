"""The vectorised label internals against independent references: Arrow's own group-by, the one-prompt
split function, and a plain-Python recount of random events through run()."""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from components.ingest.schema import EVENTS_SCHEMA
from components.label.grouping import group_images
from components.label.split import prompt_in_val, prompts_in_val
from components.label.step import LabelConfig, run

AGGREGATES = [
    ("like", "sum"),
    ("dislike", "sum"),
    ("win", "sum"),
    ("loss", "sum"),
    ("tie", "sum"),
    ("score", "mean"),
    ("image_uri", "min"),
    ("image_sha256", "min"),
    ("key", "count"),
]


def _random_sides(rng: np.random.Generator, case: int) -> pa.Table:
    """Sides with null and shared URIs, SHA-256 all/none/some known (some empty), and a one-prompt-per-image
    variant (the fast path); count columns boolean or integer; score with nulls."""
    n = int(rng.integers(0, 300))
    n_images = int(rng.integers(1, 50))
    uris = [None if rng.random() < 0.03 else f"/img/{rng.integers(n_images)}é.png" for _ in range(n)]
    if case % 3 == 1:
        uris = [u or "/img/none.png" for u in uris]
        prompts: list[str | None] = [f"prompt of {u}" for u in uris]
    else:
        prompts = [None if rng.random() < 0.02 else f"p{rng.integers(12)}" for _ in range(n)]
    kind = case % 4
    shas: list[str | None]
    if kind == 0:
        shas = [None] * n
    elif kind == 1:
        shas = [f"sha{rng.integers(n_images // 2 + 1)}" for _ in range(n)]
    else:
        choices = [None, None, "", "/img/1é.png"]
        shas = [
            choices[int(rng.integers(len(choices)))] if rng.random() < 0.8 else f"sha{rng.integers(9)}"
            for _ in range(n)
        ]
    columns: dict[str, pa.Array] = {
        "prompt": pa.array(prompts, pa.string()),
        "image_uri": pa.array(uris, pa.string()),
        "image_sha256": pa.array(shas, pa.string()),
    }
    for name in ("like", "dislike", "win", "loss", "tie"):
        bits = rng.integers(0, 2, n)
        columns[name] = pa.array(bits.astype(bool)) if case % 2 else pa.array(bits * 3, pa.int64())
    scores = rng.normal(size=n) * 10.0 ** rng.integers(-3, 8, n)
    columns["score"] = pa.array(scores, mask=rng.random(n) < 0.3)
    table = pa.table(columns)
    if case % 5 == 0 and n > 2:
        table = pa.concat_tables([table.slice(0, n // 3), table.slice(n // 3)])
    return table


@pytest.mark.parametrize("case", range(120))
def test_group_images_equals_arrow_group_by(case: int) -> None:
    sides = _random_sides(np.random.default_rng(case), case)
    key = pc.coalesce(sides.column("image_sha256"), sides.column("image_uri"))
    with_key = sides.append_column("key", key)
    for name in ("like", "dislike", "win", "loss", "tie"):
        with_key = with_key.set_column(
            with_key.schema.get_field_index(name), name, pc.cast(with_key.column(name), pa.int64())
        )
    expected = with_key.group_by(["prompt", "key"], use_threads=False).aggregate(AGGREGATES)
    got = group_images(sides).table
    by = [("prompt", "ascending"), ("key", "ascending")]
    assert got.sort_by(by).to_pylist() == expected.sort_by(by).to_pylist()
    first_seen = list(dict.fromkeys(zip(sides.column("prompt").to_pylist(), key.to_pylist(), strict=True)))
    assert (
        list(zip(got.column("prompt").to_pylist(), got.column("key").to_pylist(), strict=True)) == first_seen
    )


@pytest.mark.parametrize("val_fraction", [0.0, 0.1, 0.5, 0.97])
def test_prompts_in_val_equals_prompt_in_val(val_fraction: float) -> None:
    rng = random.Random(7)
    alphabet = "abc xyz,.-éß漢字🙂\x1f"
    prompts = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(40))) for _ in range(5000)]
    got = prompts_in_val(pa.array(prompts), val_fraction, "salt-1")
    assert got.tolist() == [prompt_in_val(p, val_fraction, "salt-1") for p in prompts]


def test_run_equals_a_plain_python_recount(tmp_path: Path) -> None:
    rng = random.Random(3)
    now = datetime(2026, 11, 1, tzinfo=timezone.utc)
    rows = []
    for i in range(2000):
        image = rng.randrange(300)
        rows.append(
            dict(
                event_id=str(i),
                source="test",
                prompt=f"prompt {image % 70}",
                image_uri=f"gs://b/{image}.png",
                image_sha256=f"{image:064x}" if image % 3 == 0 else None,
                feedback=rng.choice(["like", "dislike", "like", "score"]),
                score=None,
                other_image_uri=None,
                other_image_sha256=None,
                user_id="u",
                created_at=now,
                model_version=None,
                metadata=None,
            )
        )
    path = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=EVENTS_SCHEMA), path)
    result = run(LabelConfig(events=str(path), output_dir=str(tmp_path / "out"), val_fraction=0.3))

    votes: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        if r["feedback"] in ("like", "dislike"):
            votes[(r["prompt"], r["image_uri"])][r["feedback"] == "dislike"] += 1
    expected = {}
    for (prompt, uri), (likes, dislikes) in votes.items():
        if likes == dislikes:
            continue
        image = int(uri.split("/")[-1].split(".")[0])
        sample_id = f"{image:064x}" if image % 3 == 0 else hashlib.sha256(uri.encode()).hexdigest()
        split = "val" if prompt_in_val(prompt, 0.3, "dkto-split-v1") else "train"
        expected[sample_id] = (prompt, uri, likes > dislikes, likes, dislikes, likes + dislikes, split)
    written = []
    for uri in (result.train_uri, result.val_uri):
        table = pq.read_table(uri)
        keys = list(
            zip(table.column("prompt").to_pylist(), table.column("sample_id").to_pylist(), strict=True)
        )
        assert keys == sorted(keys)
        written += table.to_pylist()
    got = {
        r["sample_id"]: (
            r["prompt"],
            r["image_uri"],
            r["desirable"],
            r["n_likes"],
            r["n_dislikes"],
            r["n_events"],
            r["split"],
        )
        for r in written
    }
    assert len(written) == len(got) and got == expected
    assert result.dropped_by_reason["images_tie"] == sum(1 for lk, dl in votes.values() if lk == dl)
