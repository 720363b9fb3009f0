"""The JSONL reader's three paths (Arrow over a chunk, Arrow block by block, the per-line pydantic path)
accept and reject exactly what the per-line path alone does, line by line, on a corpus built to slip past
the byte-level type screen, to break Arrow's blocks, and to sit across chunk boundaries."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from components.ingest import readers
from components.ingest.step import IngestConfig, run


def _event(i: int, **extra: object) -> dict[str, object]:
    return {
        "event_id": f"ev-{i}",
        "prompt": f"a cat, style {i}",
        "image_uri": f"gs://b/{i}.png",
        "feedback": "like",
        **extra,
    }


def _corpus() -> tuple[list[bytes], dict[int, str]]:
    """Lines, and the reason expected for each rejected line number (1-based); the rest are accepted."""
    lines: list[bytes] = []
    bad: dict[int, str] = {}

    def add(line: str | bytes, reason: str | None = None) -> None:
        lines.append(line.encode() if isinstance(line, str) else line)
        if reason:
            bad[len(lines)] = reason

    for i in range(40):
        add(json.dumps(_event(i)))
    add(json.dumps(_event(100, prompt=5)), "wrong_type")  # the screen catches it
    add(json.dumps(_event(101)).replace('"ev-101"', "101"))  # numeric id: legal, becomes "101"
    add(json.dumps(_event(102, extra=1)))  # an unknown field whose type changes: Arrow fails the call
    add(json.dumps(_event(103, extra="one")))
    add(json.dumps(_event(104))[:-1] + ', "flag": tru}', "malformed_record")  # in braces, not JSON
    add(json.dumps(_event(105)) + "\r")  # CRLF
    add("   ")
    add("")
    add("  " + json.dumps(_event(106)))  # leading whitespace is valid JSON
    add(json.dumps(_event(107)).encode()[:-1] + b', "note": "\xff"}', "malformed_record")  # not UTF-8
    add(json.dumps(_event(108, prompt='say "hi"\n\ttwice')))  # escapes
    add(json.dumps(_event(109, feedback="score", score="0.5")))  # pydantic reads a numeric text as a number
    add(json.dumps(_event(110, metadata="text")), "wrong_type")
    add(json.dumps(_event(111, metadata={"prompt": 5, "seed": 3})))  # flagged by the screen, still valid
    add(json.dumps({"prompt": "x"}), "missing_field")
    add(
        json.dumps(_event(112, feedback="score")).replace('"score"}', '"score", "score": NaN}'),
        "missing_score",
    )
    add(json.dumps(_event(113, feedback="love")), "invalid_feedback")
    add(json.dumps([_event(114)]), "not_an_object")
    add(json.dumps(_event(115, score=1.5, feedback="score", user_id=7)))
    add(json.dumps(_event(116, created_at="yesterday")), "invalid_timestamp")
    for i in range(200, 240):
        add(json.dumps(_event(i)))
    return lines, bad


def test_every_path_agrees_with_the_per_line_path(tmp_path: Path) -> None:
    lines, bad = _corpus()
    src = tmp_path / "feedback.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    result = run(
        IngestConfig(
            sources=[str(src)],
            output_dir=str(tmp_path / "out"),
            check_images=False,
            max_quarantined_fraction=1.0,
        )
    )
    # the reader blanks lines for Arrow in its private copy-on-write map, never in the file
    assert src.read_bytes() == b"\n".join(lines) + b"\n"
    quarantine = pq.read_table(result.quarantine_uri).to_pylist()
    assert {q["row_number"]: q["reason"] for q in quarantine} == bad
    blank = 2
    assert result.read == len(lines) - blank == result.accepted + result.quarantined
    events = {e["event_id"]: e for e in pq.read_table(result.events_uri).to_pylist()}
    # each accepted line reads as the per-line path (json.loads + pydantic) reads it
    for number, line in enumerate(lines, start=1):
        if number in bad or not line.strip():
            continue
        row, problem = readers._per_line(line.decode(), str(src), number, 2000)
        assert problem is None and row is not None
        event = events[row["event_id"]]
        for name in ("prompt", "image_uri", "feedback", "score", "user_id"):
            assert event[name] == row[name], (number, name)
        assert json.loads(event["metadata"] or "{}") == json.loads(row["metadata"] or "{}"), number
    assert events["101"]["prompt"] == "a cat, style 101"
    assert events["ev-109"]["score"] == 0.5
    assert json.loads(events["ev-102"]["metadata"]) == {"extra": 1}
    assert json.loads(events["ev-103"]["metadata"]) == {"extra": "one"}
    # the verbatim line is kept for a line Arrow rejected and for one the screen sent to the per-line path
    raw = {q["row_number"]: q["raw"] for q in quarantine}
    assert raw[41] == lines[40].decode()
    assert raw[45] == lines[44].decode()


def test_chunk_boundaries_do_not_change_the_result(tmp_path: Path) -> None:
    lines, bad = _corpus()
    src = tmp_path / "feedback.jsonl"
    src.write_bytes(b"\n".join(lines))  # no newline after the last line
    whole = list(readers.read_jsonl(str(src), str(tmp_path), 2000))
    small = list(readers.read_jsonl(str(src), str(tmp_path), 2000, chunk_bytes=300))
    assert len(small) > 5
    # chunks shorter than a line: every chunk runs on to the end of its line
    tiny = list(readers.read_jsonl(str(src), str(tmp_path), 2000, chunk_bytes=10))
    assert len(tiny) > 50

    def summary(batches: list[readers.RawBatch]) -> tuple[list[int], dict[int, str], int]:
        rows = sorted(r for b in batches for r in b.table.column("_row").to_pylist())
        rejected = {q.row_number: q.reason for b in batches for q in b.quarantined}
        return rows, rejected, sum(b.blank_lines for b in batches)

    assert summary(small) == summary(whole) == summary(tiny)
    rows, rejected, blank = summary(whole)
    assert len(rows) + len(rejected) + blank == len(lines)
    assert set(rejected) <= set(bad)


def test_key_colons_finds_every_quote_colon_at_odd_and_even_offsets() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    for length in (0, 1, 2, 3, 17, 4096):
        view = rng.choice(np.frombuffer(b'":a ', dtype=np.uint8), size=length)
        expected = [i + 1 for i in range(length - 1) if view[i] == ord('"') and view[i + 1] == ord(":")]
        found = readers._key_colons(view, readers.ByteMask())
        assert sorted(found.tolist()) == expected, length


def test_sources_hold_no_file_descriptors_and_survive_truncation(tmp_path: Path) -> None:
    """Many small files under a low open-file limit all load, and a source truncated while it is read
    yields fewer rows, never a crash (a memory-mapped reader would keep one descriptor per file and die of
    SIGBUS on the truncated one). Run in a child process: it lowers its own RLIMIT_NOFILE."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import json, resource
        from pathlib import Path
        from components.ingest import readers
        from components.ingest.step import IngestConfig, run

        root = Path({str(tmp_path)!r})
        for i in range(300):
            event = {{"event_id": f"e{{i}}", "prompt": "p", "image_uri": "gs://b/i.png", "feedback": "like"}}
            (root / f"f{{i:04d}}.jsonl").write_text(json.dumps(event) + "\\n")
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        result = run(IngestConfig(sources=[str(root / "*.jsonl")], output_dir=str(root / "out"),
                                  check_images=False))
        print("accepted", result.accepted, "quarantined", result.quarantined)

        big = root / "big.jsonl"
        line = json.dumps({{"event_id": "x", "prompt": "p", "image_uri": "gs://b/i.png", "feedback": "like"}})
        big.write_text((line + "\\n") * 2000)
        batches = readers.read_jsonl(str(big), str(root), 2000, chunk_bytes=4096)
        first = next(batches)
        big.write_text("")  # truncated by another process while ingest reads it
        rest = sum(b.table.num_rows for b in batches)
        print("first line", first.raw_line(1) == line, "rows after truncation", rest)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert "accepted 300 quarantined 0" in lines
    assert lines[-1].startswith("first line True rows after truncation ")
