"""Benchmark: JSONL feedback events through ingest and label, against a naive per-record loop.

    .venv/bin/python tests/benchmarks/bench_ingest.py            # 1,000,000 events, 1% malformed
    .venv/bin/python tests/benchmarks/bench_ingest.py --events 100000

Generates the events (not timed), runs ingest (image checks off) + label (votes) in a fresh child process
(so its peak RSS is its own), then the naive loop (json.loads + pydantic validation of each record + a set
for de-duplication) in this process, and prints events/s of both side by side, the speed-up, peak memory,
and whether every malformed record was quarantined with its reason. It prints figures; it asserts nothing
about time.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MALFORMED_KINDS = (
    "truncated_json",
    "invalid_feedback",
    "missing_image_uri",
    "prompt_not_text",
    "not_an_object",
)
EXPECTED_REASON = {
    "truncated_json": "malformed_record",
    "invalid_feedback": "invalid_feedback",
    "missing_image_uri": "missing_field",
    "prompt_not_text": "wrong_type",
    "not_an_object": "not_an_object",
}


def generate(path: Path, n: int, malformed_fraction: float, duplicate_fraction: float, seed: int = 0) -> dict:
    """Write ``n`` JSONL lines: valid like/dislike events, exact re-sends, and malformed records."""
    rng = random.Random(seed)
    n_prompts = max(1, n // 20)
    n_images = max(1, n // 5)
    expected: dict[str, int] = {}
    duplicates = 0
    with open(path, "w") as f:
        last = None
        for i in range(n):
            r = rng.random()
            if r < malformed_fraction:
                kind = MALFORMED_KINDS[i % len(MALFORMED_KINDS)]
                expected[EXPECTED_REASON[kind]] = expected.get(EXPECTED_REASON[kind], 0) + 1
                rec = {"event_id": f"bad-{i}", "prompt": "p", "image_uri": "gs://b/i.png", "feedback": "like"}
                if kind == "truncated_json":
                    line = json.dumps(rec)[:-7]
                elif kind == "invalid_feedback":
                    line = json.dumps({**rec, "feedback": "love"})
                elif kind == "missing_image_uri":
                    line = json.dumps({k: v for k, v in rec.items() if k != "image_uri"})
                elif kind == "prompt_not_text":
                    line = json.dumps({**rec, "prompt": 12345})
                else:
                    line = json.dumps([rec])
            elif r < malformed_fraction + duplicate_fraction and last is not None:
                line = last
                duplicates += 1
            else:
                image = rng.randrange(n_images)
                line = json.dumps(
                    {
                        "event_id": f"ev-{i:09d}",
                        "prompt": f"a photo of a cat, style {image % n_prompts}",
                        "image_uri": f"gs://feedback-bucket/images/{image:08d}.png",
                        "feedback": "like" if rng.random() < 0.45 else "dislike",
                        "user_id": f"user-{rng.randrange(5000)}",
                        "created_at": f"2026-11-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00Z",
                        "model_version": "sd15-v7",
                    }
                )
                last = line
            f.write(line + "\n")
    return {"expected_quarantined_by_reason": expected, "expected_duplicates": duplicates}


def run_pipeline(events_file: str, workdir: str) -> None:
    """Child process: ingest + label, timed; prints one JSON line of figures.

    The step modules (and pandas, which pyarrow imports lazily on its first numpy conversion) are imported
    before the clock starts, as the naive loop imports pydantic and the event model before its clock:
    one-time imports are not per-event work.
    """
    import pandas  # noqa: F401  (pyarrow imports it on its first numpy conversion: 0.3 s, once per process)

    import components.ingest.pipeline  # noqa: F401
    import components.label.pipeline  # noqa: F401
    from components.ingest.step import IngestConfig
    from components.ingest.step import run as ingest
    from components.label.step import LabelConfig
    from components.label.step import run as label

    t0, c0 = time.perf_counter(), time.process_time()
    result = ingest(IngestConfig(sources=[events_file], output_dir=f"{workdir}/ingest", check_images=False))
    t1, c1 = time.perf_counter(), time.process_time()
    labeled = label(LabelConfig(events=f"{workdir}/ingest", output_dir=f"{workdir}/label", policy="votes"))
    t2, c2 = time.perf_counter(), time.process_time()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "ingest_s": t1 - t0,
                "label_s": t2 - t1,
                "ingest_cpu_s": c1 - c0,
                "label_cpu_s": c2 - c1,
                "read": result.read,
                "accepted": result.accepted,
                "duplicates": result.duplicates,
                "quarantined": result.quarantined,
                "quarantined_by_reason": result.quarantined_by_reason,
                "train": labeled.train,
                "val": labeled.val,
                "peak_rss_mb": peak_mb,
            }
        )
    )


def naive_loop(events_file: str) -> tuple[float, float, int, int, int]:
    """json.loads + pydantic validation of each record + a Python set for de-duplication.

    Returns wall seconds, CPU seconds, accepted, duplicates, rejected.
    """
    from pydantic import ValidationError

    from components.ingest.schema import FeedbackEvent

    seen: set[str] = set()
    accepted = duplicates = bad = 0
    t0, c0 = time.perf_counter(), time.process_time()
    with open(events_file) as f:
        for line in f:
            try:
                event = FeedbackEvent.model_validate(json.loads(line))
            except (ValueError, ValidationError):
                bad += 1
                continue
            if event.event_id in seen:
                duplicates += 1
                continue
            seen.add(event.event_id)
            accepted += 1
    return time.perf_counter() - t0, time.process_time() - c0, accepted, duplicates, bad


def main() -> None:
    """Parse arguments, generate, run both, print the comparison."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--events", type=int, default=1_000_000, help="number of JSONL events (default 1,000,000)"
    )
    parser.add_argument(
        "--malformed", type=float, default=0.01, help="fraction of malformed records (default 0.01)"
    )
    parser.add_argument(
        "--duplicates", type=float, default=0.005, help="fraction of exact re-sends (default 0.005)"
    )
    parser.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        run_pipeline(*args._child)
        return
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-ingest-"))
    workdir.mkdir(parents=True, exist_ok=True)
    events_file = workdir / "events.jsonl"
    t = time.perf_counter()
    truth = generate(events_file, args.events, args.malformed, args.duplicates)
    size_mb = events_file.stat().st_size / 1e6
    print(
        f"generated {args.events:,} events ({size_mb:.0f} MB) in {time.perf_counter() - t:.1f}s: {events_file}"
    )

    child = subprocess.run(
        [sys.executable, __file__, "--_child", str(events_file), str(workdir)],
        capture_output=True,
        text=True,
        check=False,
    )
    if child.returncode != 0:
        print(child.stderr)
        raise SystemExit(f"pipeline run failed with exit code {child.returncode}")
    figures = json.loads(child.stdout.strip().splitlines()[-1])
    naive_s, naive_cpu_s, naive_accepted, naive_dups, naive_bad = naive_loop(str(events_file))

    n = args.events
    pipeline_s = figures["ingest_s"] + figures["label_s"]
    print()
    print(f"{'':34s}{'seconds':>10s}{'events/s':>14s}")
    print(
        f"{'ingest (vectorised, checks off)':34s}{figures['ingest_s']:10.2f}{n / figures['ingest_s']:14,.0f}"
    )
    print(f"{'label (votes)':34s}{figures['label_s']:10.2f}{n / figures['label_s']:14,.0f}")
    print(f"{'ingest + label':34s}{pipeline_s:10.2f}{n / pipeline_s:14,.0f}")
    print(f"{'naive loop (json+pydantic+set)':34s}{naive_s:10.2f}{n / naive_s:14,.0f}")
    print(
        f"speed-up vs naive: ingest {naive_s / figures['ingest_s']:.1f}x, ingest + label {naive_s / pipeline_s:.1f}x"
    )
    pipeline_cpu_s = figures["ingest_cpu_s"] + figures["label_cpu_s"]
    print(
        f"CPU seconds (this process's, all threads): ingest {figures['ingest_cpu_s']:.2f}, label "
        f"{figures['label_cpu_s']:.2f}, naive {naive_cpu_s:.2f}; CPU-time ratio {naive_cpu_s / pipeline_cpu_s:.1f}x "
        "(on a shared machine wall time also counts waiting for a core)"
    )
    print(f"peak RSS of the ingest + label process: {figures['peak_rss_mb']:.0f} MB")
    print()
    print(
        f"counts: read {figures['read']:,} = accepted {figures['accepted']:,} + duplicates {figures['duplicates']:,} "
        f"+ quarantined {figures['quarantined']:,}"
    )
    print(f"quarantined by reason: {figures['quarantined_by_reason']}")
    print(
        f"expected (generated):  {truth['expected_quarantined_by_reason']}, duplicates {truth['expected_duplicates']:,}"
    )
    same = figures["quarantined_by_reason"] == truth["expected_quarantined_by_reason"]
    print(f"every malformed record quarantined with its reason: {'yes' if same else 'NO'}")
    print(f"naive loop: accepted {naive_accepted:,}, duplicates {naive_dups:,}, rejected {naive_bad:,}")
    print(f"label: train {figures['train']}, val {figures['val']}")


if __name__ == "__main__":
    main()
