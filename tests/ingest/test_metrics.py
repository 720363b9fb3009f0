"""Ingest pushes its counters to a real Pushgateway, and what the gateway serves matches stats.json."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from ingest_fixtures import good_records  # type: ignore[import-not-found]

from components.ingest.step import IngestConfig, run


def _samples(url: str, run_id: str) -> dict[str, float]:
    """Every ``dkto_ingest_*`` sample of one run on the gateway, keyed by name and reason label."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("dkto_ingest_") or f'run_id="{run_id}"' not in line:
            continue
        name_labels, value = line.rsplit(" ", 1)
        name = name_labels.split("{", 1)[0]
        if 'reason="' in name_labels:
            name += ":" + name_labels.split('reason="', 1)[1].split('"', 1)[0]
        out[name] = float(value)
    return out


def test_ingest_counters_reach_the_pushgateway(tmp_path: Path, images: Path, pushgateway: str) -> None:
    records = good_records()
    lines = [json.dumps(r) for r in records]
    lines += [
        lines[0],
        '{"event_id": "broken", "prompt": ',
        json.dumps({**records[1], "event_id": "x", "feedback": "love"}),
    ]
    src = tmp_path / "feedback.jsonl"
    src.write_text("\n".join(lines) + "\n")
    result = run(
        IngestConfig(
            sources=[str(src)],
            output_dir=str(tmp_path / "out"),
            run_id="metrics-test",
            pushgateway=pushgateway,
            max_quarantined_fraction=0.5,
        )
    )
    assert (result.read, result.accepted, result.duplicates, result.quarantined) == (7, 4, 1, 2)
    samples = _samples(pushgateway, "metrics-test")
    assert samples["dkto_ingest_events_read_total"] == 7
    assert samples["dkto_ingest_events_accepted_total"] == 4
    assert samples["dkto_ingest_events_duplicates_total"] == 1
    assert samples["dkto_ingest_events_quarantined_total:malformed_record"] == 1
    assert samples["dkto_ingest_events_quarantined_total:invalid_feedback"] == 1
    assert samples["dkto_ingest_events_stored"] == 4
