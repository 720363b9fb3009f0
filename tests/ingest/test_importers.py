"""The Pick-a-Pic v2 and Diffusion-KTO CSV importers, on small files built here in those exact schemas."""

from __future__ import annotations

import io
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from components.ingest.step import IngestConfig, run
from components.label.step import LabelConfig
from components.label.step import run as label

# Pick-a-Pic v2's columns and types (the Hugging Face dataset's Parquet shards).
PICKAPIC_SCHEMA = pa.schema(
    [
        ("are_different", pa.bool_()),
        ("best_image_uid", pa.string()),
        ("caption", pa.string()),
        ("created_at", pa.timestamp("ns")),
        ("has_label", pa.bool_()),
        ("image_0_uid", pa.string()),
        ("image_0_url", pa.string()),
        ("image_1_uid", pa.string()),
        ("image_1_url", pa.string()),
        ("jpg_0", pa.binary()),
        ("jpg_1", pa.binary()),
        ("label_0", pa.float64()),
        ("label_1", pa.float64()),
        ("model_0", pa.string()),
        ("model_1", pa.string()),
        ("ranking_id", pa.int64()),
        ("user_id", pa.int64()),
        ("num_example_per_prompt", pa.int64()),
    ]
)


def _jpeg(uid: str) -> bytes:
    """A distinct image per uid (identical bytes would merge into one image when labeling)."""
    buf = io.BytesIO()
    Image.new("RGB", (24, 24), (ord(uid) * 5 % 256, 80, 160)).save(buf, format="JPEG")
    return buf.getvalue()


def _row(
    rid: int, uid0: str, uid1: str, l0: float, l1: float, has_label: bool = True, jpg1: bytes | None = None
) -> dict:
    best = uid0 if l0 > l1 else uid1 if l1 > l0 else ""
    return {
        "are_different": True,
        "best_image_uid": best,
        "caption": "a lighthouse at dusk",
        "created_at": datetime(2023, 4, 1, 12, 0, rid),
        "has_label": has_label,
        "image_0_uid": uid0,
        "image_0_url": f"https://example/{uid0}.jpg",
        "image_1_uid": uid1,
        "image_1_url": f"https://example/{uid1}.jpg",
        "jpg_0": _jpeg(uid0),
        "jpg_1": _jpeg(uid1) if jpg1 is None else jpg1,
        "label_0": l0,
        "label_1": l1,
        "model_0": "sdxl",
        "model_1": "sd15",
        "ranking_id": rid,
        "user_id": 42,
        "num_example_per_prompt": 1,
    }


def test_pickapic_v2_importer(tmp_path: Path) -> None:
    rows = [
        _row(1, "A", "B", 1.0, 0.0),  # A preferred
        _row(2, "C", "A", 1.0, 0.0),  # C preferred over A
        _row(3, "D", "E", 0.0, 1.0),  # E preferred (label_1)
        _row(4, "F", "G", 0.5, 0.5),  # tie: kept as pairwise_tie
        _row(5, "H", "I", 0.0, 0.0, has_label=False),  # never judged: pairwise_unlabeled
        _row(6, "J", "K", 0.3, 0.7),  # not a valid label pair
        _row(7, "L", "M", 1.0, 0.0, jpg1=b""),  # no image bytes
    ]
    shard = tmp_path / "train-00000.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=PICKAPIC_SCHEMA), shard)
    result = run(
        IngestConfig(
            sources=[str(shard)],
            output_dir=str(tmp_path / "out"),
            source_format="pickapic_v2",
            max_quarantined_fraction=0.5,
        )
    )
    assert result.read == result.accepted + result.duplicates + result.quarantined == 7
    assert result.quarantined_by_reason == {"image_missing": 1, "invalid_label": 1}
    events = {e["event_id"]: e for e in pq.read_table(result.events_uri).to_pylist()}
    store = tmp_path / "out" / "images"
    e1, e3 = events["pickapic-v2:1:A:B"], events["pickapic-v2:3:D:E"]
    assert (
        e1["feedback"] == "pairwise"
        and e1["image_uri"] == str(store / "A.jpg")
        and e1["other_image_uri"] == str(store / "B.jpg")
    )
    assert e3["feedback"] == "pairwise" and e3["image_uri"] == str(
        store / "E.jpg"
    )  # the preferred image first
    assert events["pickapic-v2:4:F:G"]["feedback"] == "pairwise_tie"
    assert events["pickapic-v2:5:H:I"]["feedback"] == "pairwise_unlabeled"
    assert e1["user_id"] == "42" and e1["created_at"] == datetime(2023, 4, 1, 12, 0, 1, tzinfo=timezone.utc)
    assert (store / "A.jpg").read_bytes() == _jpeg("A")
    assert e1["image_sha256"] and e1["other_image_sha256"]

    # "win + intermediate" on these pairs: A (won once, lost once), C and E won; B and D only lost;
    # F and G were only in a tie; the unlabeled pair is not used.
    labeled = label(
        LabelConfig(
            events=str(tmp_path / "out"),
            output_dir=str(tmp_path / "lab"),
            policy="pairwise",
            val_fraction=0.0,
        )
    )
    train = pq.read_table(labeled.train_uri).to_pylist()
    assert {Path(r["image_uri"]).stem: r["desirable"] for r in train} == {
        "A": True,
        "C": True,
        "E": True,
        "B": False,
        "D": False,
    }
    assert labeled.dropped_by_reason == {"events_pairwise_unlabeled": 1, "images_tie_only": 2}


def test_diffusion_kto_csv_importer(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (32, 32), "red").save(tmp_path / "imgs" / "a.png")
    Image.new("RGB", (32, 32), "blue").save(tmp_path / "imgs" / "b.png")
    (tmp_path / "data.csv").write_text(
        "file_name,caption,label\n"
        "imgs/a.png,a red square,1\n"
        "imgs/b.png,a red square,0\n"
        "imgs/b.png,a red square,0\n"  # exact duplicate row: same content-derived id
        "imgs/a.png,a red square,maybe\n"
        "imgs/a.png,,1\n"
    )
    result = run(
        IngestConfig(
            sources=[str(tmp_path / "data.csv")],
            output_dir=str(tmp_path / "out"),
            source_format="diffusion_kto_csv",
            max_quarantined_fraction=0.5,
        )
    )
    assert (result.read, result.accepted, result.duplicates, result.quarantined) == (5, 2, 1, 2)
    assert result.quarantined_by_reason == {
        "invalid_label": 1,
        "missing_field": 1,
    }  # an empty CSV cell is missing
    events = pq.read_table(result.events_uri).to_pylist()
    assert {(Path(e["image_uri"]).name, e["feedback"]) for e in events} == {
        ("a.png", "like"),
        ("b.png", "dislike"),
    }
    quarantine = pq.read_table(result.quarantine_uri).to_pylist()
    assert any("'label'" in q["message"] for q in quarantine)
    assert any("'caption'" in q["message"] for q in quarantine)
    # the `split` spelling of the label column
    (tmp_path / "split.csv").write_text(
        "file_path,caption,split\nimgs/a.png,red,desirable\nimgs/b.png,red,undesirable\n"
    )
    result = run(
        IngestConfig(
            sources=[str(tmp_path / "split.csv")],
            output_dir=str(tmp_path / "out2"),
            source_format="diffusion_kto_csv",
        )
    )
    assert result.accepted == 2


def test_reference_csv_split_values_follow_the_reference_policies(tmp_path: Path) -> None:
    """The reference code's processed Pick-a-Pic CSV labels images by `split`: exclusive_win, exclusive_loss,
    intersections. Its policies: gt_label_wi_l (intersections desirable, the default), gt_label_w_il
    (undesirable) and gt_label_w_l (left out)."""
    import json

    (tmp_path / "imgs").mkdir()
    for name, colour in (("w", "red"), ("l", "blue"), ("i", "green")):
        Image.new("RGB", (32, 32), colour).save(tmp_path / "imgs" / f"{name}.png")
    (tmp_path / "train_processed_v3.csv").write_text(
        "file_name,caption,split\n"
        "imgs/w.png,a cat,exclusive_win\n"
        "imgs/l.png,a cat,exclusive_loss\n"
        "imgs/i.png,a cat,intersections\n"
        "imgs/i.png,a cat,exclusive_draw\n"  # not a value the reference writes: quarantined, not guessed
    )
    expected = {"desirable": "like", "undesirable": "dislike", "exclude": None}
    for policy, intersection in expected.items():
        result = run(
            IngestConfig(
                sources=[str(tmp_path / "train_processed_v3.csv")],
                output_dir=str(tmp_path / policy),
                source_format="diffusion_kto_csv",
                reference_intersections=policy,  # type: ignore[arg-type]
                # the one unknown split value is 1 of 4 records; an excluded intersection does not count
                max_quarantined_fraction=0.25,
            )
        )
        assert result.read == result.accepted + result.quarantined == 4
        events = {Path(e["image_uri"]).stem: e for e in pq.read_table(result.events_uri).to_pylist()}
        assert events["w"]["feedback"] == "like" and events["l"]["feedback"] == "dislike"
        assert json.loads(events["w"]["metadata"]) == {"split": "exclusive_win"}
        reasons = {"invalid_label": 1, **({"excluded_by_policy": 1} if intersection is None else {})}
        assert result.quarantined_by_reason == reasons, policy
        if intersection is None:
            assert "i" not in events
        else:
            assert events["i"]["feedback"] == intersection


def test_pickapic_same_image_rows_and_unsafe_uids(tmp_path: Path) -> None:
    """A row with are_different false compares an image with itself: no preference (pairwise_unlabeled).
    A uid that is a path is quarantined before any image is written, so nothing lands outside the store."""
    same = _row(1, "A", "B", 1.0, 0.0)
    same["are_different"] = False
    escaping = _row(2, "C", "D", 1.0, 0.0)
    escaping["image_1_uid"] = "../../escaped"
    absolute = _row(3, "E", "F", 1.0, 0.0)
    absolute["image_0_uid"] = str(tmp_path / "absolute")
    shard = tmp_path / "train-00001.parquet"
    pq.write_table(pa.Table.from_pylist([same, escaping, absolute], schema=PICKAPIC_SCHEMA), shard)
    result = run(
        IngestConfig(
            sources=[str(shard)],
            output_dir=str(tmp_path / "out" / "run"),
            source_format="pickapic_v2",
            max_quarantined_fraction=1.0,
        )
    )
    assert result.read == result.accepted + result.quarantined == 3
    assert result.quarantined_by_reason == {"uri_not_allowed": 2}
    (event,) = pq.read_table(result.events_uri).to_pylist()
    assert event["event_id"] == "pickapic-v2:1:A:B" and event["feedback"] == "pairwise_unlabeled"
    assert not list(tmp_path.glob("**/escaped*")) and not list(tmp_path.glob("absolute*"))
    assert sorted(p.name for p in (tmp_path / "out" / "run" / "images").iterdir()) == ["A.jpg", "B.jpg"]


def test_a_boolean_is_not_a_score(tmp_path: Path) -> None:
    """pydantic's lax mode would read true as 1.0; the fast (Arrow) and per-line paths both reject it."""
    import json

    src = tmp_path / "scores.jsonl"
    base = {"prompt": "p", "image_uri": "gs://b/i.png", "feedback": "score"}
    src.write_text(
        json.dumps({**base, "event_id": "t", "score": True})
        + "\n"
        + json.dumps({**base, "event_id": "n", "score": "0.5"})  # a numeric text is a number
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
    assert result.quarantined_by_reason == {"wrong_type": 1} and result.accepted == 1


def test_pickapic_reimport_into_a_new_output_is_all_duplicates(tmp_path: Path) -> None:
    """An incremental run (previous_output set, a fresh output dir as every KFP run has) keeps writing
    images to the previous run's store, so re-imported rows are duplicates, not conflicts."""
    shard = tmp_path / "train-00002.parquet"
    pq.write_table(
        pa.Table.from_pylist(
            [_row(1, "A", "B", 1.0, 0.0), _row(2, "C", "A", 0.0, 1.0)], schema=PICKAPIC_SCHEMA
        ),
        shard,
    )
    first = run(
        IngestConfig(sources=[str(shard)], output_dir=str(tmp_path / "run1"), source_format="pickapic_v2")
    )
    assert first.accepted == 2
    again = run(
        IngestConfig(
            sources=[str(shard)],
            output_dir=str(tmp_path / "run2"),
            source_format="pickapic_v2",
            previous_output=str(tmp_path / "run1"),
        )
    )
    assert (again.accepted, again.duplicates, again.quarantined, again.total_events) == (0, 2, 0, 2)
    assert not (tmp_path / "run2" / "images").exists()
