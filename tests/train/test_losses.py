"""Diffusion-KTO, SFT and Diffusion-DPO losses against numbers worked out by hand.

The inputs are chosen as binary fractions (exact in float32) so every intermediate value below is exact
and the comments can carry the arithmetic. The common batch (B = 4)::

    policy_mse    m = [0.5,   0.25,  0.75,  1.0 ]
    reference_mse r = [0.625, 0.125, 0.875, 1.25]
    desirable       = [T,     F,     T,     F   ]      s = [+1, −1, +1, −1]
    g = r − m       = [0.125, −0.125, 0.125, 0.25]
    z = clamp(mean g, 0) = 0.375 / 4 = 0.09375
    g − z           = [0.03125, −0.21875, 0.03125, 0.15625]
    s·(g − z)       = [0.03125,  0.21875, 0.03125, −0.15625]   -> 3 of 4 positive: accuracy 0.75
    β = 8: x = s·β·(g − z) = [0.25, 1.75, 0.25, −1.25]
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from components.train.losses import (
    KTOLoss,
    batch_mean_reference_point,
    class_mean_reference_point,
    diffusion_dpo_loss,
    diffusion_kto_loss,
    per_sample_mse,
    sft_loss,
    unpaired_reference_point,
)

POLICY = [0.5, 0.25, 0.75, 1.0]
REFERENCE = [0.625, 0.125, 0.875, 1.25]
DESIRABLE = [True, False, True, False]
X_AT_BETA_8 = [0.25, 1.75, 0.25, -1.25]


def sigmoid(x: float) -> float:
    """σ(x) in plain Python, independent of torch."""
    return 1.0 / (1.0 + math.exp(-x))


def batch(requires_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The common batch of the module docstring."""
    policy = torch.tensor(POLICY, requires_grad=requires_grad)
    return policy, torch.tensor(REFERENCE), torch.tensor(DESIRABLE)


# --- utilities, batch-mean reference point -----------------------------------------------------------


def test_kahneman_tversky_matches_hand_computation() -> None:
    # loss_i = 1 − σ(x_i): σ(0.25) = 0.562177, σ(1.75) = 0.851953, σ(−1.25) = 0.222700
    # -> [0.437823, 0.148047, 0.437823, 0.777300], mean 1.800994 / 4 = 0.450249
    out = diffusion_kto_loss(*batch(), beta=8.0)
    expected = [1 - sigmoid(x) for x in X_AT_BETA_8]
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-6)
    assert out.loss.item() == pytest.approx(0.4502485, abs=1e-6)
    assert out.reference_point.item() == 0.09375
    assert out.rewards.tolist() == [0.125, -0.125, 0.125, 0.25]
    assert out.reward_accuracy.item() == 0.75
    # class means of g: desirable (0.125 + 0.125) / 2, undesirable (−0.125 + 0.25) / 2
    assert out.desirable_reward_mean.item() == 0.125
    assert out.undesirable_reward_mean.item() == 0.0625
    assert out.reward_margin.item() == 0.0625
    assert (out.n_desirable, out.n_undesirable) == (2, 2)


def test_loss_averse_matches_hand_computation() -> None:
    # loss_i = 1 − log σ(x_i): log σ(0.25) = −0.575939, log σ(1.75) = −0.160224, log σ(−1.25) = −1.501929
    # -> [1.575939, 1.160224, 1.575939, 2.501929], mean 1.703508
    out = diffusion_kto_loss(*batch(), beta=8.0, utility="loss_averse")
    expected = [1 - math.log(sigmoid(x)) for x in X_AT_BETA_8]
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-5)
    assert out.loss.item() == pytest.approx(1.7035080, abs=1e-5)


def test_risk_seeking_matches_hand_computation() -> None:
    # loss_i = 1 + log σ(−x_i) = 1 − log(1 + e^{x_i}): log(1 + e^0.25) = 0.825939, log(1 + e^1.75) = 1.910224,
    # log(1 + e^−1.25) = 0.251929 -> [0.174061, −0.910224, 0.174061, 0.748071], mean 0.046492
    out = diffusion_kto_loss(*batch(), beta=8.0, utility="risk_seeking")
    expected = [1 - math.log(1 + math.exp(x)) for x in X_AT_BETA_8]
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-5)
    assert out.loss.item() == pytest.approx(0.0464920, abs=1e-5)


def test_beta_scales_the_utility_argument() -> None:
    # β = 16 doubles every x: [0.5, 3.5, 0.5, −2.5]; the reference point and accuracy do not depend on β.
    out = diffusion_kto_loss(*batch(), beta=16.0)
    expected = [1 - sigmoid(2 * x) for x in X_AT_BETA_8]
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-6)
    assert out.reference_point.item() == 0.09375
    assert out.reward_accuracy.item() == 0.75


def test_class_weights_multiply_each_class() -> None:
    # λ_D = 2 on samples 0 and 2, λ_U = 0.5 on samples 1 and 3:
    # [2·0.437823, 0.5·0.148047, 2·0.437823, 0.5·0.777300] = [0.875647, 0.074024, 0.875647, 0.388650]
    out = diffusion_kto_loss(*batch(), beta=8.0, desirable_weight=2.0, undesirable_weight=0.5)
    weights = [2.0, 0.5, 2.0, 0.5]
    expected = [w * (1 - sigmoid(x)) for w, x in zip(weights, X_AT_BETA_8, strict=True)]
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-6)
    assert out.loss.item() == pytest.approx(sum(expected) / 4, abs=1e-6)


def test_gradient_is_the_analytic_one_with_the_reference_point_detached() -> None:
    # d loss / d m_i = (1/B)·w_i·U'(x_i)·s_i·β, since x_i = s_i·β·(r_i − m_i − z) and z is detached.
    # KT: U'(x) = σ(x)(1 − σ(x)). If z were not detached, every gradient would carry an extra −mean term.
    policy, reference, desirable = batch(requires_grad=True)
    diffusion_kto_loss(policy, reference, desirable, beta=8.0).loss.backward()
    signs = [1, -1, 1, -1]
    expected = [sigmoid(x) * (1 - sigmoid(x)) * s * 8.0 / 4 for x, s in zip(X_AT_BETA_8, signs, strict=True)]
    assert policy.grad is not None
    assert policy.grad.tolist() == pytest.approx(expected, abs=1e-6)


def test_reference_mse_gets_no_gradient() -> None:
    policy, _, desirable = batch(requires_grad=True)
    reference = torch.tensor(REFERENCE, requires_grad=True)
    diffusion_kto_loss(policy, reference, desirable, beta=8.0).loss.backward()
    assert reference.grad is None


# --- reference-point modes ---------------------------------------------------------------------------


def test_batch_mean_reference_point_is_clamped_at_zero() -> None:
    # g = r − m = [−0.25, −0.25, 0.25, −0.25], mean −0.125 -> clamp(−0.125, 0) = 0
    policy = torch.tensor([0.5, 0.5, 0.25, 0.5])
    reference = torch.tensor([0.25, 0.25, 0.5, 0.25])
    assert batch_mean_reference_point(policy, reference).item() == 0.0
    out = diffusion_kto_loss(policy, reference, torch.tensor(DESIRABLE), beta=4.0)
    assert out.reference_point.item() == 0.0
    # with z = 0, x = s·β·g = [−1, 1, 1, 1]
    assert out.losses.tolist() == pytest.approx([1 - sigmoid(x) for x in [-1, 1, 1, 1]], abs=1e-6)
    # and the helper agrees with the loss on the common batch: 0.09375 as in the module docstring
    assert batch_mean_reference_point(torch.tensor(POLICY), torch.tensor(REFERENCE)).item() == 0.09375


def test_given_reference_point_is_used_as_is() -> None:
    # z = 0.125: g − z = [0, −0.25, 0, 0.125]; x = s·8·(g − z) = [0, 2, 0, −1]; accuracy: only sample 1 > 0
    out = diffusion_kto_loss(*batch(), beta=8.0, reference_point=torch.tensor(0.125))
    assert out.reference_point.item() == 0.125
    assert out.losses.tolist() == pytest.approx([1 - sigmoid(x) for x in [0, 2, 0, -1]], abs=1e-6)
    assert out.reward_accuracy.item() == 0.25


def test_unpaired_reference_point_from_mismatched_pairs() -> None:
    # mismatched MSEs: r' − m' = [0.25, 0, 0, 0] -> mean 0.0625
    policy_mm = torch.tensor([0.5, 0.5, 0.5, 0.5])
    reference_mm = torch.tensor([0.75, 0.5, 0.5, 0.5])
    assert unpaired_reference_point(policy_mm, reference_mm).item() == 0.0625
    # reference better than policy on average: r' − m' = [−0.25, 0, 0, 0] -> clamp(−0.0625, 0) = 0
    assert unpaired_reference_point(policy_mm, torch.tensor([0.25, 0.5, 0.5, 0.5])).item() == 0.0
    # through the module: z = 0.0625 on the common batch, g − z = [0.0625, −0.1875, 0.0625, 0.1875],
    # x = s·8·(g − z) = [0.5, 1.5, 0.5, −1.5]
    out = KTOLoss(beta=8.0, reference_point_mode="unpaired")(*batch(), policy_mm, reference_mm)
    assert out.reference_point.item() == 0.0625
    assert out.losses.tolist() == pytest.approx([1 - sigmoid(x) for x in [0.5, 1.5, 0.5, -1.5]], abs=1e-6)


def test_unpaired_mode_without_mismatched_mse_names_what_is_missing() -> None:
    with pytest.raises(ValueError, match="policy_mse_mismatched"):
        KTOLoss(beta=8.0, reference_point_mode="unpaired")(*batch())


def test_class_mean_reference_point() -> None:
    # g = [0.125, −0.125, 0.125, 0.25] with desirable = [T, T, T, F]:
    # mean_D = (0.125 − 0.125 + 0.125) / 3 = 0.041667, mean_U = 0.25, z = (0.041667 + 0.25) / 2 = 0.145833
    # (the plain batch mean would be 0.09375: the class mean does not weight by class size)
    rewards = torch.tensor([0.125, -0.125, 0.125, 0.25])
    desirable = torch.tensor([True, True, True, False])
    assert class_mean_reference_point(rewards, desirable).item() == pytest.approx(0.1458333, abs=1e-6)
    # through the module on the common batch (classes balanced): (0.125 + 0.0625) / 2 = 0.09375
    out = KTOLoss(beta=8.0, reference_point_mode="class_mean")(*batch())
    assert out.reference_point.item() == 0.09375


def test_class_mean_reference_point_with_an_empty_class_uses_the_other() -> None:
    rewards = torch.tensor([0.125, -0.125, 0.125, 0.25])
    # all desirable: z = mean of all = 0.375 / 4 = 0.09375
    assert class_mean_reference_point(rewards, torch.ones(4, dtype=torch.bool)).item() == 0.09375
    # all undesirable, same numbers
    assert class_mean_reference_point(rewards, torch.zeros(4, dtype=torch.bool)).item() == 0.09375
    # a negative class mean is clamped: g = [−0.25, −0.5] -> mean −0.375 -> 0
    assert class_mean_reference_point(torch.tensor([-0.25, -0.5]), torch.tensor([True, True])).item() == 0.0
    # nothing at all: 0, not NaN
    empty = torch.zeros(0)
    assert class_mean_reference_point(empty, torch.zeros(0, dtype=torch.bool)).item() == 0.0


# --- empty classes -----------------------------------------------------------------------------------


def test_batch_with_only_desirable_samples_has_finite_figures() -> None:
    policy, reference, _ = batch(requires_grad=True)
    out = diffusion_kto_loss(policy, reference, torch.ones(4, dtype=torch.bool), beta=8.0)
    # g − z = [0.03125, −0.21875, 0.03125, 0.15625], all s = +1 -> x = [0.25, −1.75, 0.25, 1.25]
    assert out.losses.tolist() == pytest.approx([1 - sigmoid(x) for x in [0.25, -1.75, 0.25, 1.25]], abs=1e-6)
    assert (out.n_desirable, out.n_undesirable) == (4, 0)
    assert out.desirable_reward_mean.item() == 0.09375
    assert out.undesirable_reward_mean.item() == 0.0
    assert out.reward_margin.item() == 0.0
    assert all(math.isfinite(v.item()) for v in (out.loss, out.reward_accuracy, out.reference_point))
    out.loss.backward()
    assert policy.grad is not None and torch.isfinite(policy.grad).all()


def test_batch_with_only_undesirable_samples_has_finite_figures() -> None:
    out = diffusion_kto_loss(*batch()[:2], torch.zeros(4, dtype=torch.bool), beta=8.0)
    assert (out.n_desirable, out.n_undesirable) == (0, 4)
    assert out.desirable_reward_mean.item() == 0.0
    assert out.undesirable_reward_mean.item() == 0.09375
    assert out.reward_margin.item() == 0.0
    assert math.isfinite(out.loss.item())


def test_integer_labels_are_accepted_and_other_values_refused() -> None:
    ints = diffusion_kto_loss(*batch()[:2], torch.tensor([1, 0, 1, 0]), beta=8.0)
    assert ints.loss.item() == pytest.approx(0.4502485, abs=1e-6)
    with pytest.raises(ValueError, match="desirable"):
        diffusion_kto_loss(*batch()[:2], torch.tensor([2, 0, 1, 0]), beta=8.0)


# --- invalid inputs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_policy_mse_raises_naming_it(bad: float) -> None:
    policy = torch.tensor([0.5, bad, 0.75, 1.0])
    with pytest.raises(ValueError, match=r"policy_mse .*\[1\]"):
        diffusion_kto_loss(policy, torch.tensor(REFERENCE), torch.tensor(DESIRABLE), beta=8.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_reference_mse_raises_naming_it(bad: float) -> None:
    reference = torch.tensor([0.5, 0.5, 0.5, bad])
    with pytest.raises(ValueError, match=r"reference_mse .*\[3\]"):
        diffusion_kto_loss(torch.tensor(POLICY), reference, torch.tensor(DESIRABLE), beta=8.0)


def test_non_finite_reference_point_raises() -> None:
    with pytest.raises(ValueError, match="reference_point"):
        diffusion_kto_loss(*batch(), beta=8.0, reference_point=torch.tensor(float("nan")))


def test_non_finite_inputs_of_the_baselines_raise_naming_them() -> None:
    ok = torch.tensor([0.5])
    nan = torch.tensor([float("nan")])
    with pytest.raises(ValueError, match="policy_mse"):
        sft_loss(nan, torch.tensor([True]))
    with pytest.raises(ValueError, match="ref_mse_l"):
        diffusion_dpo_loss(ok, ok, ok, nan, beta=8.0)
    with pytest.raises(ValueError, match="policy_mse_mismatched"):
        unpaired_reference_point(nan, ok)
    with pytest.raises(ValueError, match="rewards"):
        class_mean_reference_point(nan, torch.tensor([True]))


def test_bad_settings_and_shapes_are_refused_with_what_would_be_valid() -> None:
    with pytest.raises(ValueError, match="kahneman_tversky"):
        diffusion_kto_loss(*batch(), beta=8.0, utility="prospect")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beta must be"):
        diffusion_kto_loss(*batch(), beta=0.0)
    with pytest.raises(ValueError, match=">= 0"):
        diffusion_kto_loss(*batch(), beta=8.0, undesirable_weight=-1.0)
    with pytest.raises(ValueError, match="reference_mse has 3 entries"):
        diffusion_kto_loss(
            torch.tensor(POLICY), torch.tensor(REFERENCE[:3]), torch.tensor(DESIRABLE), beta=8.0
        )
    with pytest.raises(ValueError, match=r"shape \[batch\]"):
        diffusion_kto_loss(torch.ones(4, 2), torch.ones(4), torch.tensor(DESIRABLE), beta=8.0)
    with pytest.raises(ValueError, match="reference_point_mode"):
        KTOLoss(reference_point_mode="median")  # type: ignore[arg-type]


# --- baselines ---------------------------------------------------------------------------------------


def test_sft_loss_is_the_mean_over_desirable_samples() -> None:
    # desirable m = [0.5, 0.75] -> 0.625; undesirable samples ignored
    assert sft_loss(torch.tensor(POLICY), torch.tensor(DESIRABLE)).item() == 0.625


def test_sft_loss_without_desirable_samples_is_zero_with_a_grad_graph() -> None:
    policy = torch.tensor(POLICY, requires_grad=True)
    loss = sft_loss(policy, torch.zeros(4, dtype=torch.bool))
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert policy.grad is not None and policy.grad.abs().sum().item() == 0.0


def test_diffusion_dpo_loss_matches_hand_computation() -> None:
    # pair 0: r_w − m_w = 0.625 − 0.5 = 0.125, r_l − m_l = 0.375 − 0.5 = −0.125, margin 0.25,
    #   0.5·β·margin = 0.5·8·0.25 = 1 -> −log σ(1) = log(1 + e^−1) = 0.313262
    # pair 1: r_w − m_w = 0, r_l − m_l = 0.75 − 0.5 = 0.25, margin −0.25 -> −log σ(−1) = log(1 + e) = 1.313262
    # mean 0.813262; implicit accuracy: 1 of 2 margins > 0
    out = diffusion_dpo_loss(
        torch.tensor([0.5, 0.5]),
        torch.tensor([0.5, 0.5]),
        torch.tensor([0.625, 0.5]),
        torch.tensor([0.375, 0.75]),
        beta=8.0,
    )
    assert out.losses.tolist() == pytest.approx([math.log(1 + math.exp(-1)), math.log(1 + math.e)], abs=1e-6)
    assert out.loss.item() == pytest.approx(0.8132617, abs=1e-6)
    assert out.reward_margins.tolist() == [0.25, -0.25]
    assert out.chosen_rewards.tolist() == [0.125, 0.0]
    assert out.rejected_rewards.tolist() == [-0.125, 0.25]
    assert out.implicit_accuracy.item() == 0.5


def test_per_sample_mse_means_over_all_but_the_batch_dimension() -> None:
    # sample 0: errors all 1 -> 1; sample 1: errors [0, 2, 0, 2, ...] -> mean of squares (0 + 4) / 2 = 2
    prediction = torch.zeros(2, 2, 2, 2)
    target = torch.ones(2, 2, 2, 2)
    target[1] = torch.tensor([0.0, 2.0]).repeat(4).reshape(2, 2, 2)
    assert per_sample_mse(prediction.bfloat16(), target).tolist() == [1.0, 2.0]


# --- the sign of the gradient on a toy denoiser ------------------------------------------------------


def toy_denoiser_step(utility: str) -> tuple[list[float], list[float]]:
    """One SGD step of Diffusion-KTO on a linear 'denoiser'; returns policy MSE per sample before/after.

    Sample 0 is desirable, sample 1 undesirable. Their inputs are orthogonal one-hot vectors, so the
    per-sample gradients of a bias-free linear layer (outer products with the input) are orthogonal and
    each sample's MSE moves only through its own gradient: the test isolates the sign of the loss.
    """
    torch.manual_seed(0)
    policy = torch.nn.Linear(4, 4, bias=False)
    reference = copy.deepcopy(policy).requires_grad_(False)
    noisy = torch.eye(4)[:2]
    target = torch.randn(2, 4)
    desirable = torch.tensor([True, False])
    optimizer = torch.optim.SGD(policy.parameters(), lr=1e-3)

    def mse() -> torch.Tensor:
        return per_sample_mse(policy(noisy), target)

    before = mse().detach().tolist()
    with torch.no_grad():
        reference_mse = per_sample_mse(reference(noisy), target)
    out = diffusion_kto_loss(mse(), reference_mse, desirable, beta=100.0, utility=utility)  # type: ignore[arg-type]
    out.loss.backward()
    optimizer.step()
    return before, mse().detach().tolist()


@pytest.mark.parametrize("utility", ["kahneman_tversky", "loss_averse", "risk_seeking"])
def test_one_step_lowers_desirable_and_raises_undesirable_policy_mse(utility: str) -> None:
    before, after = toy_denoiser_step(utility)
    assert after[0] < before[0], "the desirable sample's policy MSE should fall"
    assert after[1] > before[1], "the undesirable sample's policy MSE should rise"


def test_one_dpo_step_widens_the_margin_for_the_winner() -> None:
    torch.manual_seed(0)
    policy = torch.nn.Linear(4, 4, bias=False)
    reference = copy.deepcopy(policy).requires_grad_(False)
    winner, loser = torch.eye(4)[:1], torch.eye(4)[1:2]
    target_w, target_l = torch.randn(1, 4), torch.randn(1, 4)
    optimizer = torch.optim.SGD(policy.parameters(), lr=1e-3)
    m_w, m_l = per_sample_mse(policy(winner), target_w), per_sample_mse(policy(loser), target_l)
    with torch.no_grad():
        r_w, r_l = per_sample_mse(reference(winner), target_w), per_sample_mse(reference(loser), target_l)
    diffusion_dpo_loss(m_w, m_l, r_w, r_l, beta=100.0).loss.backward()
    optimizer.step()
    assert per_sample_mse(policy(winner), target_w).item() < m_w.item()
    assert per_sample_mse(policy(loser), target_l).item() > m_l.item()
