"""The feedback simulator writes what a product would export, and ingest accepts it."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from components.evaluate.scorers.judges import ColourMatchJudge
from pipelines.demo import world
from pipelines.demo.simulate import SimulateConfig, run, training_prompts


def test_training_prompts_never_use_a_held_out_combination() -> None:
    prompts = training_prompts(200, seed=0)
    held = {s.prompt for s in world.held_out_scenes()}
    assert len(prompts) == 200 and not set(prompts) & held
    # Each training combination is used before any repeats.
    assert len(set(prompts[: len(world.train_scenes())])) == len(world.train_scenes())
    assert prompts == training_prompts(200, seed=0) != training_prompts(200, seed=1)


def test_simulated_feedback_is_valid_input_and_votes_match_the_judge(tiny_sd: Path, tmp_path: Path) -> None:
    out = tmp_path / "feedback"
    result = run(
        SimulateConfig(model=str(tiny_sd), output_dir=str(out), n_images=6, seed=3, num_inference_steps=2)
    )
    records = [json.loads(line) for line in (out / "feedback.jsonl").read_text().splitlines()]
    assert result.n_events == len(records) == 6
    assert result.n_likes + result.n_dislikes == 6 and result.n_flipped == 0
    assert len({r["event_id"] for r in records}) == 6
    judge = ColourMatchJudge()
    for r in records:
        assert {
            "event_id",
            "prompt",
            "image_uri",
            "feedback",
            "user_id",
            "created_at",
            "model_version",
        } <= set(r)
        assert r["feedback"] in {"like", "dislike"}
        image = Image.open(out / r["image_uri"])
        assert image.size == (32, 32)
        # The PNG is lossless: re-judging the exported file gives the recorded vote.
        assert judge.like(image, r["prompt"]) == (r["feedback"] == "like")
    assert sum(r["feedback"] == "like" for r in records) == result.n_likes

    from components.ingest.step import IngestConfig
    from components.ingest.step import run as ingest

    ingested = ingest(
        IngestConfig(sources=[str(out / "feedback.jsonl")], output_dir=str(tmp_path / "events"))
    )
    assert ingested.accepted == 6 and ingested.quarantined == 0
