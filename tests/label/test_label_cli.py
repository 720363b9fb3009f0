"""`dkto ingest` and `dkto label` from the command line: --config, --set, the printed summary."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from pipelines.cli import app


def test_ingest_then_label_cli(tmp_path: Path) -> None:
    Image.new("RGB", (32, 32), "red").save(tmp_path / "a.png")
    Image.new("RGB", (32, 32), "blue").save(tmp_path / "b.png")
    (tmp_path / "f.jsonl").write_text(
        json.dumps({"event_id": "1", "prompt": "p", "image_uri": "a.png", "feedback": "like"})
        + "\n"
        + json.dumps({"event_id": "2", "prompt": "p", "image_uri": "b.png", "feedback": "dislike"})
        + "\n"
    )
    (tmp_path / "ingest.yaml").write_text(f"sources: ['{tmp_path}/f.jsonl']\noutput_dir: {tmp_path}/ev\n")
    runner = CliRunner()
    out = runner.invoke(
        app, ["ingest", "--config", str(tmp_path / "ingest.yaml"), "--set", "image_check_workers=2"]
    )
    assert out.exit_code == 0, out.output
    assert "read 2 = accepted 2 + duplicates 0 + quarantined 0" in out.output
    out = runner.invoke(
        app,
        [
            "label",
            "--set",
            f"events={tmp_path}/ev",
            "--set",
            f"output_dir={tmp_path}/lab",
            "--set",
            "val_fraction=0",
        ],
    )
    assert out.exit_code == 0, out.output
    assert "train {'desirable': 1, 'undesirable': 1}" in out.output
    bad = runner.invoke(
        app, ["label", "--set", f"events={tmp_path}/ev", "--set", "output_dir=x", "--set", "policy=coin_flip"]
    )
    assert bad.exit_code == 2 and "policy" in bad.output
