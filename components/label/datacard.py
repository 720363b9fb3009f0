"""The Markdown data card of a labeled data set: counts per class and split, policy, drops with examples."""

from __future__ import annotations

import json
from typing import Any

_POLICY_HELP = {
    "votes": "likes and dislikes on each image, aggregated",
    "pairwise": "pairwise preferences turned into per-image labels (Diffusion-KTO, Li et al. 2024)",
    "score_threshold": "a numeric score per image, thresholded; the middle is dropped",
    "user_filter": "one user's or cohort's feedback only, then another policy",
}


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."


def render_data_card(stats: dict[str, Any], examples: dict[str, list[dict[str, Any]]]) -> str:
    """Render the card from label's stats.json and up to a few examples per drop reason."""
    tr, va = stats["train"], stats["val"]
    events_dropped = sum(v for k, v in stats["dropped_by_reason"].items() if k.startswith("events_"))
    lines = [
        "# Data card: Diffusion-KTO training set",
        "",
        f"Labeling policy: **{stats['policy']}** ({_POLICY_HELP.get(stats['policy'], '')}).",
        "",
        f"Settings: `{json.dumps(stats['policy_settings'], default=str)}`",
        "",
        f"Source: `{stats['events_uri']}` ({stats['events_read']} events, {stats['images_considered']} images considered).",
        "",
        f"Events: {stats['events_read']} read = {stats['events_used']} used (counted toward an image in train "
        f"or val) + {events_dropped} dropped as events (`events_*` below) + {stats['events_of_dropped_images']} "
        "counted only toward dropped images (`images_*` below).",
        "",
        "## Samples",
        "",
        "| split | prompts | desirable | undesirable | total |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| train | {stats['train_prompts']} | {tr['desirable']} | {tr['undesirable']} | {tr['desirable'] + tr['undesirable']} |",
        f"| val | {stats['val_prompts']} | {va['desirable']} | {va['undesirable']} | {va['desirable'] + va['undesirable']} |",
        "",
        f"Split: whole prompts, by a salted SHA-256 of the prompt (salt `{stats['split_salt']}`, "
        f"val fraction {stats['val_fraction']}); no prompt is in both. "
        f"Images per prompt capped at: {stats['max_images_per_prompt'] or 'no cap'}.",
        "",
        "## Class balance",
        "",
        f"Weights for the trainer: λ_D = {stats['desirable_weight']:.4g}, λ_U = {stats['undesirable_weight']:.4g}; "
        f"λ_D·n_D / λ_U·n_U = {stats['weighted_ratio'] if stats['weighted_ratio'] is None else round(stats['weighted_ratio'], 4)} "
        f"(target {stats['desirable_ratio_range']}, KTO paper, Ethayarajh et al. 2024). "
        f"Note: {stats['class_weights_note']}.",
        "",
    ]
    if stats.get("thresholds"):
        lines += [f"Score thresholds used: `{json.dumps(stats['thresholds'])}`", ""]
    for w in stats.get("warnings", []):
        lines += [f"> **Warning:** {w}", ""]
    lines += ["## Dropped", ""]
    if not stats["dropped_by_reason"]:
        lines += ["Nothing was dropped.", ""]
    for reason, count in stats["dropped_by_reason"].items():
        lines += [f"### {reason}: {count}", ""]
        rows = examples.get(reason, [])
        if rows:
            cols = list(rows[0])
            lines += ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
            lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
            lines.append("")
    return "\n".join(lines)
