"""Diffusion-KTO and its baselines (SFT, Diffusion-DPO) as small, tested functions.

Diffusion-KTO: Li, Kallidromitis, Gokul, Kato, Kozuka, "Aligning Diffusion Models by Optimizing Human
Utility", NeurIPS 2024 (arXiv:2404.04465); checked against the public reference code,
github.com/jacklishufan/diffusion-kto, ``train_kto_sd_v1.5.py`` (the ``halo`` / ``kl`` block of the loop).
Diffusion-DPO: Wallace et al., "Diffusion Model Alignment Using Direct Preference Optimization", CVPR 2024,
and its reference code (github.com/SalesforceAIResearch/DiffusionDPO, ``train.py``).

The math, per image i of the batch (one noise ε and one timestep t per image, same x_t for both models)::

    m_i = mean((ε_θ(x_t, t, c) − target)²)       policy MSE (has a grad graph)
    r_i = mean((ε_ref(x_t, t, c) − target)²)     reference MSE (no grad)
    g_i = r_i − m_i                              implicit reward: the log-ratio surrogate of the paper's Eq. 8
    z   = clamp(mean over the GLOBAL batch of g, min=0), detached     reference point (a KL estimate)
    s_i = +1 if desirable else −1
    loss_i = w_i · (1 − U(s_i · β · (g_i − z)))  with w_i = λ_D (desirable) or λ_U (undesirable)
    loss = mean_i loss_i

A desirable image gains utility when the policy's error on it falls below the reference's (g > z); an
undesirable one when the policy's error rises above it. The reference point is all-reduced (sum and
count) across processes whenever ``torch.distributed`` is initialised, so unequal per-rank batches give
the same z as one process holding the whole global batch.

Nothing here reads a value back to the host unless asked: the NaN/inf checks (``check_finite=True``, the
default, which raises a clear error) each cost a device-to-host sync, so the trainer turns them on only on
the steps where it reads its figures back anyway. Class counts and means are masked sums, not boolean
indexing (which syncs to learn the result's size).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

UtilityName = Literal["kahneman_tversky", "loss_averse", "risk_seeking"]
ReferencePointMode = Literal["batch_mean", "unpaired", "class_mean"]

__all__ = [
    "UTILITIES",
    "DPOLossOutput",
    "KTOLoss",
    "KTOLossOutput",
    "ReferencePointMode",
    "UtilityName",
    "batch_mean_reference_point",
    "class_mean_reference_point",
    "diffusion_dpo_loss",
    "diffusion_kto_loss",
    "global_sum_and_count",
    "per_sample_mse",
    "sft_loss",
    "unpaired_reference_point",
]


def _kahneman_tversky(x: Tensor) -> Tensor:
    """U(x) = σ(x): concave for gains, convex for losses (the paper's default and best in its ablation)."""
    return torch.sigmoid(x)


def _loss_averse(x: Tensor) -> Tensor:
    """U(x) = log σ(x): concave everywhere, punishing losses more than it rewards gains."""
    return F.logsigmoid(x)


def _risk_seeking(x: Tensor) -> Tensor:
    """U(x) = −log σ(−x) (softplus): convex everywhere; the reference code's ``risk_seeking_3``."""
    return -F.logsigmoid(-x)


UTILITIES: dict[str, Callable[[Tensor], Tensor]] = {
    "kahneman_tversky": _kahneman_tversky,
    "loss_averse": _loss_averse,
    "risk_seeking": _risk_seeking,
}


@dataclass(frozen=True)
class KTOLossOutput:
    """What one Diffusion-KTO loss evaluation returns: the loss to back-propagate and figures to log.

    Every field but ``loss`` and ``losses`` is detached. Class means are over this process's samples and
    are 0.0 (not NaN) for a class with no sample in the batch; the counts say which case it was.
    """

    loss: Tensor
    """Scalar: mean over the batch of w·(1 − U(s·β·(g − z)))."""
    losses: Tensor
    """Per-sample loss w_i·(1 − U(s_i·β·(g_i − z))), shape [B]."""
    reference_point: Tensor
    """Scalar z the rewards were compared against (detached)."""
    rewards: Tensor
    """Per-sample implicit reward g = reference MSE − policy MSE, shape [B] (detached)."""
    reward_accuracy: Tensor
    """Fraction of samples with s·(g − z) > 0: desirable above the reference point, undesirable below."""
    desirable_reward_mean: Tensor
    """Mean g over desirable samples (0.0 when there is none)."""
    undesirable_reward_mean: Tensor
    """Mean g over undesirable samples (0.0 when there is none)."""
    desirable_count: Tensor
    """Number of desirable samples in this process's batch (a device scalar: reading it syncs)."""
    undesirable_count: Tensor
    """Number of undesirable samples in this process's batch (a device scalar)."""

    @property
    def n_desirable(self) -> int:
        """Number of desirable samples, as a Python int (one host sync on an accelerator)."""
        return int(self.desirable_count)

    @property
    def n_undesirable(self) -> int:
        """Number of undesirable samples, as a Python int (one host sync on an accelerator)."""
        return int(self.undesirable_count)

    @property
    def reward_margin(self) -> Tensor:
        """Desirable minus undesirable mean reward; 0.0 unless both classes are in the batch (no host sync)."""
        both = (self.desirable_count > 0) & (self.undesirable_count > 0)
        margin = self.desirable_reward_mean - self.undesirable_reward_mean
        return torch.where(both, margin, torch.zeros_like(margin))


@dataclass(frozen=True)
class DPOLossOutput:
    """What one Diffusion-DPO loss evaluation returns (all but ``loss``/``losses`` detached)."""

    loss: Tensor
    """Scalar: mean over pairs of −log σ(0.5·β·((r_w − m_w) − (r_l − m_l)))."""
    losses: Tensor
    """Per-pair loss, shape [P]."""
    reward_margins: Tensor
    """Per-pair (r_w − m_w) − (r_l − m_l), shape [P]: the preferred image's reward minus the other's."""
    implicit_accuracy: Tensor
    """Fraction of pairs whose reward margin is > 0 (the policy already prefers the winner more than the
    reference does)."""
    chosen_rewards: Tensor
    """Per-pair r_w − m_w, shape [P]."""
    rejected_rewards: Tensor
    """Per-pair r_l − m_l, shape [P]."""


def _check_finite(name: str, value: Tensor) -> None:
    """Raise a ValueError naming ``name`` and the first bad positions if ``value`` holds NaN or ±inf."""
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        bad = (~torch.isfinite(value.detach())).nonzero().flatten()[:5].tolist()
        raise ValueError(
            f"{name} holds NaN or infinite values (first bad sample indices: {bad}); "
            "every per-sample MSE must be a finite number. A NaN here usually means the model diverged "
            "(lower the learning rate) or fp16 overflowed (use bf16)."
        )


def _check_per_sample(
    name: str, value: Tensor, batch_size: int | None = None, check_finite: bool = True
) -> None:
    """Raise a ValueError unless ``value`` is a 1-D tensor (of ``batch_size`` entries if given), finite
    when ``check_finite`` (the shape checks read metadata only; the finiteness check syncs)."""
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape [batch], got {type(value).__name__}")
    if value.ndim != 1:
        raise ValueError(f"{name} must have shape [batch] (one value per sample), got {tuple(value.shape)}")
    if batch_size is not None and value.shape[0] != batch_size:
        raise ValueError(f"{name} has {value.shape[0]} entries but the batch has {batch_size} samples")
    if check_finite:
        _check_finite(name, value)


def per_sample_mse(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean squared error per sample, in float32: mean over every dimension but the first.

    This is the m_i / r_i of the objective; computing it in float32 matches the reference code
    (``F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=[1, ...])``) and keeps the tiny
    reward differences g = r − m from vanishing in bf16.
    """
    err = F.mse_loss(prediction.float(), target.float(), reduction="none")
    return err.mean(dim=list(range(1, err.ndim)))


def global_sum_and_count(values: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Sum and count of ``values`` (where ``mask``), all-reduced over processes when distributed.

    Summing the sums and the counts (rather than averaging per-rank means, as the reference code's
    ``accelerator.reduce(..., "mean")`` does) keeps the global mean right when ranks hold unequal batches.
    Returns detached float32 scalars on ``values``' device.
    """
    values = values.detach().float()
    if mask is None:
        count = torch.full((), float(values.numel()), device=values.device)
    else:
        # A masked sum rather than values[mask]: boolean indexing syncs with the device to size its result.
        mask = mask.to(device=values.device, dtype=torch.bool)
        values = torch.where(mask, values, torch.zeros_like(values))
        count = mask.sum().float()
    stats = torch.stack([values.sum(), count])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(stats, op=torch.distributed.ReduceOp.SUM)
    return stats[0], stats[1]


def _clamped_global_mean(values: Tensor) -> Tensor:
    total, count = global_sum_and_count(values)
    # No host sync: an empty global batch gives 0 / 1 = 0 rather than NaN.
    return (total / count.clamp(min=1)).clamp(min=0).detach()


def batch_mean_reference_point(
    policy_mse: Tensor, reference_mse: Tensor, *, check_finite: bool = True
) -> Tensor:
    """z = clamp(mean over the global batch of (r − m), min=0), detached: the paper's default (Eq. 8).

    The clamp follows the reference code (``kl.clamp(min=0)``): z estimates a KL divergence, which is never
    negative. All-reduced across processes when ``torch.distributed`` is initialised.
    """
    _check_per_sample("policy_mse", policy_mse, check_finite=check_finite)
    _check_per_sample("reference_mse", reference_mse, policy_mse.shape[0], check_finite=check_finite)
    return _clamped_global_mean(reference_mse.detach() - policy_mse.detach())


def unpaired_reference_point(
    policy_mse_mismatched: Tensor, reference_mse_mismatched: Tensor, *, check_finite: bool = True
) -> Tensor:
    """z estimated from mismatched (image, prompt) pairs: clamp(global mean of (r' − m'), min=0), detached.

    The trainer rolls the prompts one place in the batch (image i is paired with prompt i+1), computes the
    policy and reference MSE on those mismatched pairs without grad, and passes them here. This is the
    "unpaired" KL estimate of the LLM KTO paper (Ethayarajh et al. 2024, §4) and of TRL's ``KTOTrainer``,
    offered by the Diffusion-KTO reference code as an alternative reference point.
    """
    _check_per_sample("policy_mse_mismatched", policy_mse_mismatched, check_finite=check_finite)
    _check_per_sample(
        "reference_mse_mismatched",
        reference_mse_mismatched,
        policy_mse_mismatched.shape[0],
        check_finite=check_finite,
    )
    return _clamped_global_mean(reference_mse_mismatched.detach() - policy_mse_mismatched.detach())


def class_mean_reference_point(rewards: Tensor, desirable: Tensor, *, check_finite: bool = True) -> Tensor:
    """z = clamp(½·(mean g over desirable + mean g over undesirable), min=0), detached.

    The class means are global (sums and counts all-reduced) so a batch skewed by the γ = 0.8 desirable
    sampler does not drag z towards the desirable class. When one class has no sample anywhere in the
    global batch, z is the other class's mean; with no samples at all, z = 0.
    """
    _check_per_sample("rewards", rewards, check_finite=check_finite)
    desirable = _as_bool_labels(desirable, rewards.shape[0])
    sum_d, count_d = global_sum_and_count(rewards, desirable)
    sum_u, count_u = global_sum_and_count(rewards, ~desirable)
    # Mean of the class means present, without reading the counts back: an absent class has weight 0.
    has_d, has_u = (count_d > 0).float(), (count_u > 0).float()
    mean_d, mean_u = sum_d / count_d.clamp(min=1), sum_u / count_u.clamp(min=1)
    z = (has_d * mean_d + has_u * mean_u) / (has_d + has_u).clamp(min=1)
    return z.clamp(min=0).detach()


def _as_bool_labels(desirable: Tensor, batch_size: int) -> Tensor:
    if not isinstance(desirable, Tensor):
        raise ValueError(f"desirable must be a torch.Tensor of bools, got {type(desirable).__name__}")
    if desirable.ndim != 1 or desirable.shape[0] != batch_size:
        raise ValueError(
            f"desirable must have shape [{batch_size}] (one label per sample), got {tuple(desirable.shape)}"
        )
    if desirable.dtype != torch.bool:
        if desirable.is_floating_point() or not bool(((desirable == 0) | (desirable == 1)).all()):
            raise ValueError("desirable must hold bools (or 0/1 integers), one per sample")
        desirable = desirable.to(torch.bool)
    return desirable


def diffusion_kto_loss(
    policy_mse: Tensor,
    reference_mse: Tensor,
    desirable: Tensor,
    *,
    beta: float,
    utility: UtilityName = "kahneman_tversky",
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    reference_point: Tensor | None = None,
    check_finite: bool = True,
) -> KTOLossOutput:
    """The Diffusion-KTO objective (Li et al. 2024, Eq. 8 with the Kahneman–Tversky utility by default).

    Args:
        policy_mse: per-sample MSE of the model being trained, shape [B], with its grad graph.
        reference_mse: per-sample MSE of the frozen reference model on the same x_t, t, c, shape [B].
            Detached here whatever the caller passes.
        desirable: bool [B]; True for a liked (desirable) image, False for a disliked one.
        beta: β, how sharply the utility reacts to the implicit reward (paper: 5000 for SD v1.5).
        utility: "kahneman_tversky" σ(x), "loss_averse" log σ(x) or "risk_seeking" −log σ(−x).
        desirable_weight, undesirable_weight: λ_D and λ_U, per-class loss weights (KTO paper §4.2).
        reference_point: None for z = clamp(global batch mean of g, min=0); a scalar tensor to use
            that z instead (from :func:`unpaired_reference_point` or :func:`class_mean_reference_point`).
        check_finite: raise on NaN/inf inputs (default). Each check reads a flag back from the device, so
            the trainer passes False on the steps where it does not sync anyway (on CUDA).

    Returns:
        A :class:`KTOLossOutput`; back-propagate ``.loss``.

    Raises:
        ValueError: on NaN/inf in any input (naming which), wrong shapes, an unknown utility, a
            non-positive beta or a negative weight.
    """
    if utility not in UTILITIES:
        raise ValueError(f"utility must be one of {sorted(UTILITIES)}, got {utility!r}")
    if not beta > 0 or beta != beta or beta == float("inf"):
        raise ValueError(f"beta must be a finite number > 0 (paper: 5000 for SD v1.5), got {beta}")
    if desirable_weight < 0 or undesirable_weight < 0:
        raise ValueError(
            f"desirable_weight and undesirable_weight must be >= 0, got {desirable_weight}, {undesirable_weight}"
        )
    _check_per_sample("policy_mse", policy_mse, check_finite=check_finite)
    batch_size = policy_mse.shape[0]
    _check_per_sample("reference_mse", reference_mse, batch_size, check_finite=check_finite)
    labels = _as_bool_labels(desirable, batch_size)

    policy_mse = policy_mse.float()
    reference_mse = reference_mse.detach().float().to(policy_mse.device)
    labels = labels.to(policy_mse.device)
    # g = r − m: with a Gaussian decoder, log p_θ(x) − log p_ref(x) ∝ −m + r (the paper's Eq. 7 surrogate).
    rewards = reference_mse - policy_mse

    if reference_point is None:
        z = _clamped_global_mean(rewards)
    else:
        if not isinstance(reference_point, Tensor) or reference_point.numel() != 1:
            raise ValueError("reference_point must be a scalar tensor (or None for the batch-mean estimate)")
        if check_finite:
            _check_finite("reference_point", reference_point)
        z = reference_point.detach().float().reshape(()).to(policy_mse.device)

    signs = labels.float() * 2 - 1
    weights = torch.where(
        labels,
        torch.full_like(rewards, float(desirable_weight)),
        torch.full_like(rewards, float(undesirable_weight)),
    )
    signed_advantage = signs * (rewards - z)
    losses = weights * (1 - UTILITIES[utility](signs * beta * (rewards - z)))

    with torch.no_grad():
        detached = rewards.detach()
        # Masked sums and device counts: no host sync (an empty class has mean 0.0, not NaN).
        n_desirable = labels.sum()
        n_undesirable = batch_size - n_desirable
        zero = torch.zeros((), device=detached.device)
        desirable_mean = torch.where(labels, detached, zero).sum() / n_desirable.clamp(min=1)
        undesirable_mean = torch.where(labels, zero, detached).sum() / n_undesirable.clamp(min=1)
        accuracy = (signed_advantage.detach() > 0).float().mean() if batch_size else zero

    return KTOLossOutput(
        loss=losses.mean() if batch_size else policy_mse.sum() * 0.0,
        losses=losses,
        reference_point=z,
        rewards=detached,
        reward_accuracy=accuracy,
        desirable_reward_mean=desirable_mean,
        undesirable_reward_mean=undesirable_mean,
        desirable_count=n_desirable,
        undesirable_count=n_undesirable,
    )


def sft_loss(policy_mse: Tensor, desirable: Tensor, *, check_finite: bool = True) -> Tensor:
    """Supervised fine-tuning baseline: mean policy MSE over the desirable samples only.

    Undesirable samples are ignored. A batch with no desirable sample gives a zero loss that still carries
    the grad graph (``0 · sum(m)``), so DDP's gradient all-reduce and ``backward()`` run as on any batch.
    """
    _check_per_sample("policy_mse", policy_mse, check_finite=check_finite)
    labels = _as_bool_labels(desirable, policy_mse.shape[0]).to(policy_mse.device)
    policy = policy_mse.float()
    # Masked sum over a clamped count: no host sync, and an all-undesirable batch gives 0 with a graph.
    return torch.where(labels, policy, torch.zeros_like(policy)).sum() / labels.sum().clamp(min=1)


def diffusion_dpo_loss(
    policy_mse_w: Tensor,
    policy_mse_l: Tensor,
    ref_mse_w: Tensor,
    ref_mse_l: Tensor,
    *,
    beta: float,
    check_finite: bool = True,
) -> DPOLossOutput:
    """Diffusion-DPO baseline (Wallace et al. 2024): −log σ(0.5·β·((r_w − m_w) − (r_l − m_l))), mean over pairs.

    ``_w`` is the preferred (desirable) image of a pair and ``_l`` the other, both noised with the same
    noise and timestep. The factor 0.5 is the reference code's (``inside_term = -0.5 * beta * (model_diff
    - ref_diff)``); the paper's β absorbs the timestep weighting. Paper setting: β = 5000 for SD v1.5.

    Arguments: the policy's MSE on the winner and on the loser, then the reference's on the winner and
    on the loser, each of shape [P] (P pairs). ``check_finite`` as in :func:`diffusion_kto_loss`.
    """
    if not beta > 0 or beta != beta or beta == float("inf"):
        raise ValueError(f"beta must be a finite number > 0 (paper: 5000 for SD v1.5), got {beta}")
    n_pairs = policy_mse_w.shape[0]
    for name, value in (
        ("policy_mse_w", policy_mse_w),
        ("policy_mse_l", policy_mse_l),
        ("ref_mse_w", ref_mse_w),
        ("ref_mse_l", ref_mse_l),
    ):
        _check_per_sample(name, value, n_pairs, check_finite=check_finite)
    chosen = ref_mse_w.detach().float() - policy_mse_w.float()
    rejected = ref_mse_l.detach().float() - policy_mse_l.float()
    margins = chosen - rejected
    losses = -F.logsigmoid(0.5 * beta * margins)
    with torch.no_grad():
        accuracy = (
            (margins.detach() > 0).float().mean() if n_pairs else torch.zeros((), device=margins.device)
        )
    return DPOLossOutput(
        loss=losses.mean() if n_pairs else policy_mse_w.float().sum() * 0.0,
        losses=losses,
        reward_margins=margins.detach(),
        implicit_accuracy=accuracy,
        chosen_rewards=chosen.detach(),
        rejected_rewards=rejected.detach(),
    )


class KTOLoss(torch.nn.Module):
    """:func:`diffusion_kto_loss` with its settings bound, as a module (the torchtune habit).

    ``reference_point_mode`` picks z: "batch_mean" (paper default), "unpaired" (pass
    ``policy_mse_mismatched`` / ``reference_mse_mismatched`` to ``forward``) or "class_mean".
    """

    def __init__(
        self,
        beta: float = 5000.0,
        utility: UtilityName = "kahneman_tversky",
        desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0,
        reference_point_mode: ReferencePointMode = "batch_mean",
    ) -> None:
        super().__init__()
        if utility not in UTILITIES:
            raise ValueError(f"utility must be one of {sorted(UTILITIES)}, got {utility!r}")
        if reference_point_mode not in get_args(ReferencePointMode):
            raise ValueError(
                f"reference_point_mode must be one of {list(get_args(ReferencePointMode))}, "
                f"got {reference_point_mode!r}"
            )
        self.beta = beta
        self.utility: UtilityName = utility
        self.desirable_weight = desirable_weight
        self.undesirable_weight = undesirable_weight
        self.reference_point_mode: ReferencePointMode = reference_point_mode

    def forward(
        self,
        policy_mse: Tensor,
        reference_mse: Tensor,
        desirable: Tensor,
        policy_mse_mismatched: Tensor | None = None,
        reference_mse_mismatched: Tensor | None = None,
        *,
        check_finite: bool = True,
    ) -> KTOLossOutput:
        """Evaluate the loss; the mismatched MSEs are required in "unpaired" mode and ignored otherwise.

        ``check_finite``: raise on NaN/inf inputs (one host sync per checked tensor); see
        :func:`diffusion_kto_loss`.
        """
        reference_point: Tensor | None = None
        if self.reference_point_mode == "unpaired":
            if policy_mse_mismatched is None or reference_mse_mismatched is None:
                raise ValueError(
                    "reference_point_mode 'unpaired' needs policy_mse_mismatched and reference_mse_mismatched "
                    "(the MSEs on images paired with prompts rolled one place in the batch)"
                )
            reference_point = unpaired_reference_point(
                policy_mse_mismatched, reference_mse_mismatched, check_finite=check_finite
            )
        elif self.reference_point_mode == "class_mean":
            _check_per_sample("policy_mse", policy_mse, check_finite=check_finite)
            _check_per_sample("reference_mse", reference_mse, policy_mse.shape[0], check_finite=check_finite)
            reference_point = class_mean_reference_point(
                reference_mse.detach().float() - policy_mse.detach().float(), desirable, check_finite=False
            )
        return diffusion_kto_loss(
            policy_mse,
            reference_mse,
            desirable,
            beta=self.beta,
            utility=self.utility,
            desirable_weight=self.desirable_weight,
            undesirable_weight=self.undesirable_weight,
            reference_point=reference_point,
            check_finite=check_finite,
        )

    def extra_repr(self) -> str:
        """Settings shown by ``print(module)``."""
        return (
            f"beta={self.beta}, utility={self.utility!r}, desirable_weight={self.desirable_weight}, "
            f"undesirable_weight={self.undesirable_weight}, reference_point_mode={self.reference_point_mode!r}"
        )
