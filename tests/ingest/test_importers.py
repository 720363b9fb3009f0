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
