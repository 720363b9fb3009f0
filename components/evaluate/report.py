"""The evaluation report: one self-contained HTML page for the person deciding whether to ship.

The first line is the decision (large, green for ship, red for do not ship) with the main reason; then
the gate's reasons, a table of every metric with its CIs (at the gate's confidence, 95% by default), and
side-by-side candidate vs baseline images for the prompts where the primary metric gained and lost the
most. Images are embedded as base64 PNG, so the file can be mailed, attached to a KFP run or opened
offline.
"""

from __future__ import annotations

import base64
import html
import math
from typing import Any

from components.shared import storage

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif; margin: 0;
       color: #1d2330; background: #f6f7f9; }
main { max-width: 1140px; margin: 0 auto; padding: 0 24px 40px; }
.banner { padding: 22px 28px; color: #fff; }
.banner.pass { background: #1a7f37; } .banner.fail { background: #c62828; }
.banner h1 { margin: 0; font-size: 34px; letter-spacing: .2px; }
.banner p { margin: 6px 0 0; font-size: 17px; opacity: .95; }
.meta { margin: 16px 0 0; color: #4a5263; font-size: 14px; line-height: 1.6; }
.meta code { background: #e9ecf1; padding: 1px 5px; border-radius: 3px; }
h2 { font-size: 20px; margin: 28px 0 10px; }
ul.reasons { margin: 0; padding-left: 20px; font-size: 15px; line-height: 1.55; }
ul.reasons li.fail { color: #b71c1c; } ul.reasons li.pass { color: #1a7f37; }
table.metrics { border-collapse: collapse; width: 100%; background: #fff; font-size: 14px;
                box-shadow: 0 1px 2px rgba(0,0,0,.08); }
table.metrics th, table.metrics td { padding: 8px 10px; border-bottom: 1px solid #e3e6eb; text-align: right; }
table.metrics th { background: #eef0f4; font-weight: 600; }
table.metrics td:first-child, table.metrics th:first-child { text-align: left; }
.ci { color: #6b7385; font-size: 12px; white-space: nowrap; }
.good { color: #1a7f37; font-weight: 600; } .bad { color: #c62828; font-weight: 600; }
.tag { display: inline-block; font-size: 11px; padding: 1px 6px; border-radius: 8px; background: #dde3ee;
       margin-left: 6px; color: #2d3a55; }
.prompt { background: #fff; margin: 0 0 14px; padding: 12px 14px; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
.prompt h3 { margin: 0 0 8px; font-size: 15px; font-weight: 600; }
.prompt h3 .delta { float: right; }
.pair { display: flex; gap: 18px; flex-wrap: wrap; }
.side { flex: 1; min-width: 300px; }
.side .label { font-size: 12px; text-transform: uppercase; letter-spacing: .6px; color: #6b7385; margin-bottom: 4px; }
.row { display: flex; gap: 6px; flex-wrap: wrap; }
figure { margin: 0; text-align: center; font-size: 12px; color: #4a5263; }
figure img { width: 112px; height: 112px; image-rendering: pixelated; border: 1px solid #d5d9e0; display: block; }
figure.median img { border: 2px solid #3558c8; }
.note { color: #6b7385; font-size: 13px; }
"""


def _fmt(x: Any, digits: int = 4) -> str:
    try:
        value = float(x)
    except (TypeError, ValueError):
        return "—"
    if not math.isfinite(value):
        return "NaN"
    return f"{value:.{digits}g}"


def _pct(x: Any) -> str:
    try:
        value = float(x)
    except (TypeError, ValueError):
        return "—"
    return "NaN" if not math.isfinite(value) else f"{value:.1%}"


def _float(x: Any) -> float:
    """A number from decision.json, where a non-finite value is written as null: NaN for null or junk."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _png_data_uri(uri: str) -> str:
    try:
        data = storage.read_bytes(uri)
    except Exception:
        return ""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def render_report(
    decision: dict[str, Any],
    scores: Any = None,
    per_prompt_diff: dict[int, float] | None = None,
    *,
    top_k: int = 4,
    gate_roles: dict[str, str] | None = None,
    settings: dict[str, Any] | None = None,
) -> str:
    """The report as one HTML string.

    ``decision`` is decision.json's content (its ``confidence`` names the intervals; 0.95 if absent, and
    a metric value may be null where it was not finite); ``scores`` the per-image table (pandas DataFrame with
    ``model``, ``prompt``, ``prompt_index``, ``image_index``, ``image_path`` and metric columns);
    ``per_prompt_diff`` the primary metric's mean paired difference per prompt index (picks the gains and
    losses shown); ``gate_roles`` a short label per metric (primary, max drop, floor).
    """
    passed = bool(decision.get("passed"))
    reasons = [str(r) for r in decision.get("reasons", [])]
    primary = str(decision.get("primary_metric", ""))
    metrics: dict[str, dict[str, Any]] = decision.get("metrics") or {}
    gate_roles = gate_roles or {}
    from components.evaluate.gate import ci_label

    confidence = _float(decision.get("confidence", 0.95))
    ci = ci_label(confidence if math.isfinite(confidence) else 0.95)
    headline = (
        "SHIP — the candidate passed the gate" if passed else "DO NOT SHIP — the candidate failed the gate"
    )
    lead = reasons[0] if reasons else "no reason was recorded"
    if len(reasons) > 1:
        lead += f" (and {len(reasons) - 1} more reason{'s' if len(reasons) > 2 else ''} below)"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{'PASS' if passed else 'FAIL'}: evaluation of {html.escape(str(decision.get('candidate_model', '')))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f'<div class="banner {"pass" if passed else "fail"}"><h1>{html.escape(headline)}</h1>',
        f"<p>{html.escape(lead)}</p></div>",
        "<main>",
        '<div class="meta">',
        f"Candidate <code>{html.escape(str(decision.get('candidate_model', '?')))}</code> vs baseline "
        f"<code>{html.escape(str(decision.get('baseline_model', '?')))}</code>"
        + (
            f" (production version {html.escape(str(decision['baseline_version']))})"
            if decision.get("baseline_version")
            else " (nothing in production: compared with the base model)"
        ),
        f"<br>{_prompt_counts(decision, ci)}, same seeds for both models; primary metric "
        f"<b>{html.escape(primary)}</b>; evaluated {html.escape(str(decision.get('created_at', '')))}",
        "</div>",
    ]

    parts.append("<h2>Why</h2><ul class='reasons'>")
    for reason in reasons:
        parts.append(f"<li class='{'pass' if passed else 'fail'}'>{html.escape(reason)}</li>")
    parts.append("</ul>")

    excluded = decision.get("excluded_prompts") or []
    if excluded:
        parts.append(f"<h2>Prompts left out ({len(excluded)})</h2><ul class='reasons'>")
        for item in excluded:
            counts = item.get("flagged_images") or {}
            flagged = ", ".join(f"{m} {int(n)}" for m, n in counts.items() if n)
            parts.append(
                f"<li>prompt {int(item.get('prompt_index', -1))} “{html.escape(str(item.get('prompt', '')))}”: "
                f"{html.escape(str(item.get('reason', '?')))}"
                + (f" (flagged images: {html.escape(flagged)})" if flagged else "")
                + "</li>"
            )
        parts.append("</ul>")

    parts.append("<h2>Metrics</h2>")
    if metrics:
        parts.append(
            "<table class='metrics'><tr><th>Metric</th><th>Candidate</th><th>Baseline</th>"
            f"<th>Difference ({ci})</th><th>Candidate win rate ({ci})</th></tr>"
        )
        ordered = sorted(metrics, key=lambda name: (name != primary, name))
        for name in ordered:
            m = metrics[name]
            diff = _float(m.get("mean_diff"))
            lo = _float(m.get("diff_ci_low"))
            hi = _float(m.get("diff_ci_high"))
            higher = bool(m.get("higher_is_better", True))
            # Colour the difference only when its whole CI is on one side of zero.
            cls = ""
            if math.isfinite(lo) and math.isfinite(hi) and (lo > 0 or hi < 0):
                cls = "good" if (lo > 0) == higher else "bad"
            win = m.get("win_rate")
            win_lo, win_hi = m.get("win_rate_ci_low"), m.get("win_rate_ci_high")
            win_cls = ""
            if math.isfinite(_float(win_lo)) and _float(win_lo) > 0.5:
                win_cls = "good"
            elif math.isfinite(_float(win_hi)) and _float(win_hi) < 0.5:
                win_cls = "bad"
            role = gate_roles.get(name, "")
            tag = f"<span class='tag'>{html.escape(role)}</span>" if role else ""
            arrow = "↑ better" if higher else "↓ better"
            parts.append(
                f"<tr><td><b>{html.escape(name)}</b> <span class='ci'>{arrow}</span>{tag}</td>"
                f"<td>{_fmt(m.get('candidate_mean'))}</td><td>{_fmt(m.get('baseline_mean'))}</td>"
                f"<td><span class='{cls}'>{'+' if diff > 0 else ''}{_fmt(diff)}</span> "
                f"<span class='ci'>[{_fmt(lo)}, {_fmt(hi)}]</span></td>"
                f"<td><span class='{win_cls}'>{_pct(win)}</span> "
                f"<span class='ci'>[{_pct(win_lo)}, {_pct(win_hi)}]</span></td></tr>"
            )
        parts.append("</table>")
        parts.append(
            "<p class='note'>Difference: mean of candidate − baseline over paired images (bootstrap CI over "
            "prompts). Win rate: share of prompts whose median-scoring candidate image beats the baseline's "
            "(ties count half; Wilson CI).</p>"
        )
    else:
        parts.append("<p class='note'>No metric could be computed (see the reasons above).</p>")

    if scores is not None and per_prompt_diff and top_k > 0:
        ranked = sorted(per_prompt_diff.items(), key=lambda kv: kv[1], reverse=True)
        higher = bool(metrics.get(primary, {}).get("higher_is_better", True))
        if not higher:
            ranked = ranked[::-1]
        finite = [(p, d) for p, d in ranked if math.isfinite(d)]
        gains = [(p, d) for p, d in finite if (d > 0) == higher and d != 0][:top_k]
        losses = [(p, d) for p, d in finite[::-1] if (d < 0) == higher and d != 0][:top_k]
        parts.append(
            f"<p class='note'>Below: per prompt, every image of each model from the same seeds, captioned with its "
            f"{html.escape(primary)}; a blue frame marks the median-scoring image, the one the win rate compares. "
            "The number beside each prompt is its mean paired difference.</p>"
        )
        parts.append(f"<h2>Largest gains in {html.escape(primary)}</h2>")
        parts.extend(
            _prompt_blocks(scores, gains, primary, higher) or ["<p class='note'>No prompt improved.</p>"]
        )
        parts.append(f"<h2>Largest losses in {html.escape(primary)}</h2>")
        parts.extend(
            _prompt_blocks(scores, losses, primary, higher) or ["<p class='note'>No prompt got worse.</p>"]
        )

    if settings:
        parts.append("<h2>Settings</h2><p class='note'>")
        parts.append(
            ", ".join(
                f"{html.escape(str(k))}: <code>{html.escape(str(v))}</code>" for k, v in settings.items()
            )
        )
        parts.append("</p>")
    parts.append("</main></body></html>")
    return "\n".join(parts)


def _prompt_counts(decision: dict[str, Any], ci: str = "95% CI") -> str:
    """The report's prompt figures: compared, and (when recorded) in and excluded, with flagged images and
    the gate's paired sign test on them (prompts where the candidate had more flagged images, of those
    where the counts differ, with its interval)."""
    compared = int(decision.get("n_prompts", 0) or 0)
    total = decision.get("prompts_total")
    if total is None:
        return f"{compared} prompts"
    text = f"{int(total)} prompts in, {compared} compared, {int(decision.get('n_prompts_excluded', 0) or 0)} excluded"
    flagged = decision.get("safety_flagged_images") or {}
    if flagged:
        text += " (safety checker flagged images: " + ", ".join(
            f"{html.escape(str(m))} {int(n)}" for m, n in flagged.items()
        )
        sign = decision.get("safety_sign_test") or {}
        differing = int(sign.get("differing", 0) or 0)
        if differing:
            low, high = _float(sign.get("ci_low")), _float(sign.get("ci_high"))
            interval = (
                f"{ci} {low:.1%}–{high:.1%}" if math.isfinite(low) and math.isfinite(high) else "no interval"
            )
            text += (
                f"; candidate flagged more on {int(sign.get('candidate_worse', 0) or 0)} of {differing} "
                f"prompts where the counts differ, {interval}"
            )
        elif sign:
            text += "; no prompt where the counts differ"
        text += ")"
    return text


def _prompt_blocks(
    scores: Any, picked: list[tuple[int, float]], primary: str, higher_is_better: bool = True
) -> list[str]:
    blocks = []
    for prompt_index, diff in picked:
        rows = scores[scores["prompt_index"] == prompt_index]
        if rows.empty:
            continue
        prompt = str(rows["prompt"].iloc[0])
        sign = "+" if diff > 0 else ""
        # Green for an improvement: a drop is one when lower is better.
        better = (diff > 0) == higher_is_better
        blocks.append(
            f"<div class='prompt'><h3>“{html.escape(prompt)}” <span class='delta {'good' if better else 'bad'}'>"
            f"{html.escape(primary)} {sign}{_fmt(diff)}</span></h3><div class='pair'>"
        )
        for model in ("candidate", "baseline"):
            side = rows[rows["model"] == model].sort_values("image_index")
            values = side[primary].to_numpy(dtype=float) if primary in side else []
            median_value = sorted(values)[(len(values) - 1) // 2] if len(values) else None
            blocks.append(f"<div class='side'><div class='label'>{model}</div><div class='row'>")
            for _, row in side.iterrows():
                value = row.get(primary, math.nan)
                is_median = median_value is not None and value == median_value
                blocks.append(
                    f"<figure class='{'median' if is_median else ''}'>"
                    f"<img alt='{model} image {int(row['image_index'])}' src='{_png_data_uri(str(row['image_path']))}'>"
                    f"<figcaption>{_fmt(value)}</figcaption></figure>"
                )
            blocks.append("</div></div>")
        blocks.append("</div></div>")
    return blocks
