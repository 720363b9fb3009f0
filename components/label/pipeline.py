"""Orchestration of one label run: events -> per-image sides -> aggregate -> policy -> split -> cap -> write."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# pq.read_table imports pyarrow.dataset, and pandas with it, on its first call (~0.15-0.25 s): load them
# with this module, once, rather than inside the first run() of a process.
import pyarrow.dataset  # noqa: F401
import pyarrow.parquet  # noqa: F401

from components.label.datacard import render_data_card
from components.label.grouping import fill_sha256, group_images
from components.label.policies import class_weights, pairwise_to_binary, score_to_binary, votes_to_binary
from components.label.split import cap_per_prompt, prompts_in_val
from components.label.step import LabelConfig, LabelResult
from components.shared import storage
from components.shared.telemetry import StepTelemetry

SAMPLES_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("prompt", pa.string()),
        ("image_uri", pa.string()),
        ("image_sha256", pa.string()),
        ("desirable", pa.bool_()),
        ("n_events", pa.int64()),
        ("n_likes", pa.int64()),
        ("n_dislikes", pa.int64()),
        ("n_wins", pa.int64()),
        ("n_losses", pa.int64()),
        ("n_ties", pa.int64()),
        ("score", pa.float64()),
        ("policy", pa.string()),
        ("split", pa.string()),
    ]
)
POLICY_COLUMNS = {
    "votes": [],
    "pairwise": ["other_image_uri", "other_image_sha256"],
    "score_threshold": ["score"],
}
MAX_EXAMPLES = 3
CLASS_WEIGHTS_NOTE = (
    "desirable_weight and undesirable_weight assume images are drawn uniformly from train; a sampler that "
    "already draws desirable images at a set rate (the trainer's desirable_ratio) changes the class balance "
    "itself, and these weights do not apply on top of it"
)


class LabelError(RuntimeError):
    """The events cannot be labeled as configured; the message says why."""


def _columns_for(config: LabelConfig) -> list[str]:
    """The events.parquet columns the configured policy reads."""
    base = ["prompt", "image_uri", "image_sha256", "feedback"]
    if config.policy == "user_filter":
        return [*base, "user_id", *POLICY_COLUMNS[config.user_filter.then]]
    return [*base, *POLICY_COLUMNS[config.policy]]


def _examples(table: pa.Table, mask: np.ndarray, columns: list[str]) -> list[dict[str, Any]]:
    idx = np.flatnonzero(mask)[:MAX_EXAMPLES]
    return table.select(columns).take(pa.array(idx, pa.int64())).to_pylist() if len(idx) else []


class Sides(NamedTuple):
    """What :func:`_sides` makes of the events."""

    table: pa.Table
    used: np.ndarray
    same_image: np.ndarray | None
    event_of_row: np.ndarray | None


def _sides(events: pa.Table, policy: str) -> Sides:
    """One row per (event, image) the policy uses, with that image's contribution.

    A contribution is a boolean column per kind of count (like, dislike, win, loss, tie) that is true
    where the row counts once; kinds a policy never counts are left out (the group-by reads them as 0).
    Also returned: the events used (mask); for pairwise, the comparisons of an image with itself (mask, not
    used) and the event of each row (else row i is the i-th used event).
    """
    fb = events.column("feedback")

    def side(mask: pa.ChunkedArray, uri: str, sha: str, score: bool = False, **counts: Any) -> pa.Table:
        sub = events.select(["prompt", uri, sha, *(["score"] if score else [])])
        all_rows = pc.all(pc.fill_null(mask, False)).as_py()
        if not all_rows:
            sub = sub.filter(mask)
        cols = {"prompt": sub.column("prompt"), "image_uri": sub.column(uri), "image_sha256": sub.column(sha)}
        for name, value in counts.items():
            cols[name] = value if all_rows else value.filter(mask)
        if score:
            cols["score"] = sub.column("score")
        return pa.table(cols)

    same_image = event_of_row = None
    if policy == "votes":
        likes, dislikes = pc.equal(fb, "like"), pc.equal(fb, "dislike")
        used = pc.or_(likes, dislikes)
        parts = [side(used, "image_uri", "image_sha256", like=likes, dislike=dislikes)]
    elif policy == "pairwise":
        compared = pc.fill_null(pc.is_in(fb, pa.array(["pairwise", "pairwise_tie"])), False)
        # One image compared with itself (one URI twice, or identical bytes under two URIs) states no
        # preference, yet would give that image a win and a loss: such events are dropped, counted.
        same = pc.or_(
            pc.equal(
                pc.coalesce(events.column("image_sha256"), events.column("image_uri")),
                pc.coalesce(events.column("other_image_sha256"), events.column("other_image_uri")),
            ),
            pc.equal(events.column("image_uri"), events.column("other_image_uri")),
        )
        same_mask = pc.and_(compared, pc.fill_null(same, False))
        real = pc.invert(same_mask)
        wins = pc.and_(pc.equal(fb, "pairwise"), real)
        ties = pc.and_(pc.equal(fb, "pairwise_tie"), real)
        used = pc.or_(wins, ties)
        parts = [
            side(wins, "image_uri", "image_sha256", win=wins),
            side(wins, "other_image_uri", "other_image_sha256", loss=wins),
            side(ties, "image_uri", "image_sha256", tie=ties),
            side(ties, "other_image_uri", "other_image_sha256", tie=ties),
        ]
        same_image = same_mask.to_numpy(zero_copy_only=False)
        won = np.flatnonzero(pc.fill_null(wins, False).to_numpy(zero_copy_only=False))
        tied = np.flatnonzero(pc.fill_null(ties, False).to_numpy(zero_copy_only=False))
        event_of_row = np.concatenate([won, won, tied, tied])
    else:
        used = pc.equal(fb, "score")
        parts = [side(used, "image_uri", "image_sha256", score=True)]
    sides = pa.concat_tables(parts, promote_options="default")
    return Sides(sides, pc.fill_null(used, False).to_numpy(zero_copy_only=False), same_image, event_of_row)


def _distinct(codes: np.ndarray, n_values: int) -> int:
    """Number of distinct values among ``codes`` (-1, no value, not counted)."""
    return int(np.count_nonzero(np.bincount(codes[codes >= 0], minlength=n_values)))


def _sample_ids(agg: pa.Table, rows: np.ndarray) -> pa.Array:
    """Stable id of each image in ``rows``: its SHA-256 where known, else the sha256 of its URI.

    Only labeled images are passed (dropped images never appear in train/val); one hashlib call per image
    whose hash is unknown is the cost here.
    """
    shas = agg.column("image_sha256_min")
    if shas.null_count == len(shas):
        ids = pa.nulls(len(rows), pa.string())
    else:
        ids = shas.take(pa.array(rows)).combine_chunks()
        if pc.any(pc.equal(ids, "")).as_py():
            ids = pc.if_else(pc.equal(ids, ""), pa.scalar(None, pa.string()), ids)
    need = np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))
    if not len(need):
        return ids
    sha256 = hashlib.sha256
    uris = pc.cast(agg.column("image_uri_min").take(pa.array(rows[need])), pa.binary()).to_pylist()
    hashed = pa.array([sha256(u).hexdigest() for u in uris], pa.string())
    if len(need) == len(rows):
        return hashed
    index = np.full(len(rows), -1, dtype=np.int64)
    index[need] = np.arange(len(need))
    return pc.coalesce(ids, hashed.take(pa.array(index, mask=index < 0)))


def label(config: LabelConfig) -> LabelResult:
    """Run the label step (see :mod:`components.label.step`)."""
    telemetry = StepTelemetry("label", run_id=config.run_id, pushgateway=config.pushgateway)
    log = telemetry.log
    events_uri = (
        config.events if config.events.endswith(".parquet") else storage.join(config.events, "events.parquet")
    )
    # only the columns this policy uses (event ids, metadata, timestamps and sources are never decoded)
    needed = _columns_for(config)
    try:
        events = storage.read_parquet(events_uri, columns=needed)
    except (pa.ArrowInvalid, KeyError):
        events = storage.read_parquet(events_uri)
    missing = [c for c in needed if c not in events.column_names]
    if missing:
        raise LabelError(f"{events_uri}: not an events.parquet from ingest, missing columns {missing}")
    events = events.select(needed)
    # Before anything keys an image: events of one URI from runs with and without image checks are one image.
    sha_columns = [
        (u, h)
        for u, h in (("image_uri", "image_sha256"), ("other_image_uri", "other_image_sha256"))
        if u in needed
    ]
    filled = fill_sha256([(events.column(u), events.column(h)) for u, h in sha_columns])
    for (_, h), column in zip(sha_columns, filled.columns, strict=True):
        if column is not events.column(h):
            events = events.set_column(events.schema.get_field_index(h), h, column)
    dropped: dict[str, int] = defaultdict(int)
    examples: dict[str, list[dict[str, Any]]] = {}
    policy = config.policy
    n_events_in = events.num_rows

    if policy == "user_filter":
        keep = pc.fill_null(pc.is_in(events.column("user_id"), pa.array(config.user_filter.user_ids)), False)
        other = ~keep.to_numpy(zero_copy_only=False)
        if other.any():
            dropped["events_other_users"] = int(other.sum())
            examples["events_other_users"] = _examples(events, other, ["prompt", "image_uri", "user_id"])
        events = events.filter(keep)
        policy = config.user_filter.then

    sides = _sides(events, policy)
    used = sides.used
    unused = ~used
    if sides.same_image is not None and sides.same_image.any():
        same = sides.same_image
        unused = unused & ~same
        dropped["events_pairwise_same_image"] = int(same.sum())
        examples["events_pairwise_same_image"] = _examples(
            events, same, ["prompt", "image_uri", "other_image_uri", "feedback"]
        )
    if unused.any():
        fb = events.column("feedback").to_numpy(zero_copy_only=False)
        for kind in np.unique(fb[unused]):
            drop_reason = (
                "events_pairwise_unlabeled"
                if kind == "pairwise_unlabeled"
                else f"events_{kind}_not_used_by_{policy}"
            )
            mask = unused & (fb == kind)
            dropped[drop_reason] += int(mask.sum())
            examples[drop_reason] = _examples(events, mask, ["prompt", "image_uri", "feedback"])

    # One image = one (prompt, image) pair; identical bytes under several URIs are one image (by SHA-256).
    groups = group_images(sides.table)
    agg = groups.table
    likes = agg.column("like_sum").to_numpy()
    dislikes = agg.column("dislike_sum").to_numpy()
    wins = agg.column("win_sum").to_numpy()
    losses = agg.column("loss_sum").to_numpy()
    ties = agg.column("tie_sum").to_numpy()
    scores = agg.column("score_mean").to_numpy(zero_copy_only=False).astype(float)
    thresholds: dict[str, float] = {}
    settings: dict[str, Any]
    if policy == "votes":
        desirable, reason = votes_to_binary(likes, dislikes, config.votes)
        settings = config.votes.model_dump()
    elif policy == "pairwise":
        desirable, reason = pairwise_to_binary(wins, losses, ties, config.pairwise)
        settings = config.pairwise.model_dump()
    else:
        desirable, reason, high, low = score_to_binary(scores, config.score_threshold)
        thresholds = {"desirable_at_or_above": high, "undesirable_below": low}
        settings = config.score_threshold.model_dump()
    if config.policy == "user_filter":
        settings = {"user_ids": config.user_filter.user_ids, "then": policy, policy: settings}

    n_events = agg.column("key_count").to_numpy()
    labeled = reason == ""
    rows = np.flatnonzero(labeled)
    sample_ids = _sample_ids(agg, rows)
    if config.max_images_per_prompt is not None and len(rows):
        keep = cap_per_prompt(
            agg.column("prompt").take(pa.array(rows)),
            n_events[rows],
            sample_ids,
            config.max_images_per_prompt,
        )
        reason[rows[~keep]] = "images_over_max_per_prompt"
        labeled = reason == ""
        rows, sample_ids = rows[keep], sample_ids.filter(pa.array(keep))
    agg_view = pa.table(
        {
            "prompt": agg.column("prompt"),
            "image_uri": agg.column("image_uri_min"),
            "n_likes": likes,
            "n_dislikes": dislikes,
            "n_wins": wins,
            "n_losses": losses,
            "n_ties": ties,
            "score": scores,
        }
    )
    # Each event the policy used either counted toward an image in train/val or only toward dropped ones.
    row_labeled = labeled[groups.row_group]
    if sides.event_of_row is None:
        events_used = int(np.count_nonzero(row_labeled))
    else:
        event_labeled = np.zeros(events.num_rows, dtype=bool)
        event_labeled[sides.event_of_row[row_labeled]] = True
        events_used = int(np.count_nonzero(event_labeled))
    events_of_dropped_images = int(np.count_nonzero(used)) - events_used
    for r in sorted(set(reason[~labeled])):
        mask = reason == r
        dropped[r] += int(mask.sum())
        examples[r] = _examples(agg_view, mask, agg_view.column_names)

    # Each distinct prompt is hashed once, and only if one of its images is labeled.
    prompt_code = groups.prompt_code
    labeled_prompts = prompt_code[rows]
    hashed = np.flatnonzero(np.bincount(labeled_prompts[labeled_prompts >= 0], minlength=len(groups.prompts)))
    prompt_in_val = np.zeros(len(groups.prompts) + 1, dtype=bool)  # the extra last entry: no prompt
    # Rows in the order they are written, (split, prompt, sample_id): prompts compare by their rank among
    # the distinct prompts (no prompt last), so only images of one prompt compare sample ids.
    prompt_rank = np.full(len(groups.prompts) + 1, len(groups.prompts), dtype=np.int64)
    prompt_rank[pc.sort_indices(groups.prompts).to_numpy()] = np.arange(len(groups.prompts))
    with ThreadPoolExecutor(max_workers=1) as pool:
        # hashlib holds the GIL and Arrow's sort does not: hash the prompts while the rows are sorted.
        split = pool.submit(
            prompts_in_val, groups.prompts.take(pa.array(hashed)), config.val_fraction, config.split_salt
        )
        order = pc.sort_indices(
            pa.table({"prompt": prompt_rank[prompt_code[rows]], "sample_id": sample_ids}),
            sort_keys=[("prompt", "ascending"), ("sample_id", "ascending")],
        ).to_numpy()
        prompt_in_val[hashed] = split.result()
    order_in_val = prompt_in_val[prompt_code[rows[order]]]
    samples = pa.table(
        {
            "prompt": agg.column("prompt"),
            "image_uri": agg.column("image_uri_min"),
            "image_sha256": agg.column("image_sha256_min"),
            "desirable": pa.array(desirable.astype(bool)),
            "n_events": pa.array(n_events.astype(np.int64)),
            "n_likes": pa.array(likes.astype(np.int64)),
            "n_dislikes": pa.array(dislikes.astype(np.int64)),
            "n_wins": pa.array(wins.astype(np.int64)),
            "n_losses": pa.array(losses.astype(np.int64)),
            "n_ties": pa.array(ties.astype(np.int64)),
            "score": pa.array(scores, pa.float64(), from_pandas=True),
        }
    )

    def split_table(picked: np.ndarray, split: str) -> pa.Table:
        """The labeled images at positions ``picked`` of ``rows``, as one split's table."""
        part = samples.take(pa.array(rows[picked]))
        part = part.add_column(0, "sample_id", sample_ids.take(pa.array(picked)))
        part = part.append_column("policy", pa.repeat(pa.scalar(config.policy, pa.string()), len(picked)))
        return part.append_column("split", pa.repeat(pa.scalar(split, pa.string()), len(picked))).cast(
            SAMPLES_SCHEMA
        )

    train_picked, val_picked = order[~order_in_val], order[order_in_val]
    train, val = split_table(train_picked, "train"), split_table(val_picked, "val")

    def counts(t: pa.Table) -> dict[str, int]:
        d = int(pc.sum(t.column("desirable")).as_py() or 0)
        return {"desirable": d, "undesirable": t.num_rows - d}

    train_counts, val_counts = counts(train), counts(val)
    w_d, w_u = class_weights(
        train_counts["desirable"], train_counts["undesirable"], config.desirable_ratio_range
    )
    warnings = []
    if filled.ambiguous_uris:
        warnings.append(
            f"{filled.ambiguous_uris} image URIs have events with different image_sha256 (the file changed); "
            "their events without image_sha256 are kept apart, keyed by the URI"
        )
    if min(train_counts.values()) == 0:
        warnings.append(
            f"train has {train_counts['desirable']} desirable and {train_counts['undesirable']} undesirable images; "
            "Diffusion-KTO needs both classes to learn a preference"
        )
    out = config.output_dir
    train_uri, val_uri = storage.join(out, "train.parquet"), storage.join(out, "val.parquet")
    stats_uri, card_uri = storage.join(out, "stats.json"), storage.join(out, "data_card.md")
    stats: dict[str, Any] = {
        "policy": config.policy,
        "policy_settings": settings,
        "train": train_counts,
        "val": val_counts,
        "dropped_by_reason": dict(sorted(dropped.items())),
        "desirable_weight": w_d,
        "undesirable_weight": w_u,
        "weighted_ratio": (w_d * train_counts["desirable"]) / (w_u * train_counts["undesirable"])
        if train_counts["undesirable"]
        else None,
        "desirable_ratio_range": list(config.desirable_ratio_range),
        "class_weights_note": CLASS_WEIGHTS_NOTE,
        "thresholds": thresholds,
        "events_read": n_events_in,
        "events_used": events_used,
        "events_of_dropped_images": events_of_dropped_images,
        "images_labeled": len(rows),
        "images_considered": len(agg),
        "train_prompts": _distinct(prompt_code[rows[train_picked]], len(groups.prompts)),
        "val_prompts": _distinct(prompt_code[rows[val_picked]], len(groups.prompts)),
        "val_fraction": config.val_fraction,
        "split_salt": config.split_salt,
        "max_images_per_prompt": config.max_images_per_prompt,
        "events_uri": events_uri,
        "warnings": warnings,
        "config_hash": config.config_hash(),
    }
    with ThreadPoolExecutor(max_workers=1) as pool:
        # Parquet encoding releases the GIL: the two splits are written side by side.
        val_written = pool.submit(storage.write_parquet, val, val_uri)
        storage.write_parquet(train, train_uri)
        val_written.result()
    storage.write_json(stats_uri, stats)
    storage.write_text(card_uri, render_data_card(stats, examples))

    gauge = telemetry.gauge("samples", "Labeled images per split and class", ("split", "label"))
    for split_name, c in (("train", train_counts), ("val", val_counts)):
        for cls, v in c.items():
            gauge.labels(split=split_name, label=cls).set(v)
    dropped_c = telemetry.counter("dropped_total", "Events or images not used, by reason", ("reason",))
    for r, v in dropped.items():
        dropped_c.labels(reason=r).inc(v)
    telemetry.gauge("desirable_weight", "λ_D for the trainer").set(w_d)
    telemetry.gauge("undesirable_weight", "λ_U for the trainer").set(w_u)
    telemetry.push()
    for w in warnings:
        log.warning(w)
    log.info(
        "label (%s): train %s, val %s, dropped %s -> %s",
        config.policy,
        train_counts,
        val_counts,
        dict(dropped),
        out,
    )
    return LabelResult(
        train_uri=train_uri,
        val_uri=val_uri,
        stats_uri=stats_uri,
        data_card_uri=card_uri,
        policy=config.policy,
        train=train_counts,
        val=val_counts,
        dropped_by_reason=dict(sorted(dropped.items())),
        desirable_weight=w_d,
        undesirable_weight=w_u,
    )
