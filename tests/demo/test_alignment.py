"""Short synthetic preference benchmark: Diffusion-KTO on the synthetic user's votes raises its like-rate."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.demo.alignment import ObjectiveSettings, run_benchmark
from pipelines.demo.cli import BASE_MODEL


@pytest.mark.slow
def test_kto_raises_the_like_rate_on_held_out_prompts_well_beyond_the_ci(tmp_path: Path) -> None:
    assert (BASE_MODEL / "model_index.json").exists(), "the committed base model is missing"
    out = run_benchmark(
        tmp_path,
        [ObjectiveSettings(objective="kto", beta=100.0, learning_rate=1e-4, extra={"desirable_ratio": 0.5})],
        n_feedback=512,
        max_steps=400,
        images_per_step=16,
        eval_images=120,
        seed=0,
    )
    base, kto = out["scores"]
    assert out["feedback"].n_likes > 0 and out["feedback"].n_dislikes > 0
    # The two intervals do not even touch, and the gain is large in absolute terms.
    assert kto.ci_low > base.ci_high, (base, kto)
    assert kto.rate - base.rate >= 0.15, (base, kto)
