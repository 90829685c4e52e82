"""trainer.grpo against hand-computed values (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from trainer import grpo  # noqa: E402

LN2 = math.log(2.0)


def close(actual: torch.Tensor, expected: list[float] | float, tol: float = 1e-4) -> None:
    expected_t = torch.as_tensor(expected, dtype=actual.dtype)
    assert actual.shape == expected_t.shape, (actual.shape, expected_t.shape)
    assert torch.allclose(actual, expected_t, atol=tol, rtol=0), (actual, expected_t)


# ------------------------------------------------------------------------------- advantages


def test_group_advantages_divide_by_the_unbiased_group_std() -> None:
    # [1, 0, 0, 0]: mean 0.25; deviations 0.75, -0.25 x3; unbiased variance
    # (0.5625 + 3 * 0.0625) / 3 = 0.25, std 0.5 -> 1.5, -0.5, -0.5, -0.5.
    # [1, 1, 0, 0]: mean 0.5; variance 4 * 0.25 / 3 = 1/3, std 0.57735 -> +-0.5 / 0.57735.
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    close(
        grpo.group_advantages(rewards),
        [[1.5, -0.5, -0.5, -0.5], [0.86603, 0.86603, -0.86603, -0.86603]],
    )


def test_group_advantages_biased_std_and_no_std() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    # Population variance 0.75 / 4 = 0.1875, std 0.43301: 0.75 / 0.43301 = sqrt(3).
    s3 = math.sqrt(3.0)
    close(grpo.group_advantages(rewards, unbiased=False), [[s3, -1 / s3, -1 / s3, -1 / s3]])
    # Dr. GRPO: r - mean only.
    close(grpo.group_advantages(rewards, scale_by_std=False), [[0.75, -0.25, -0.25, -0.25]])


def test_group_of_identical_rewards_has_zero_advantage_not_nan() -> None:
    rewards = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.3, 0.3, 0.3, 0.3]])
    advantages = grpo.group_advantages(rewards)
    assert torch.isfinite(advantages).all()
    close(advantages, [[0.0] * 4] * 3)


def test_invalid_samples_leave_the_group_statistics_and_get_zero_advantage() -> None:
    # Sample 3 came back `error` (its 0.5 is not a reward). Valid: [1, 0, 0], mean 1/3,
    # deviations 2/3, -1/3, -1/3; unbiased variance (4/9 + 1/9 + 1/9) / 2 = 1/3,
    # std 0.57735 -> 1.15470, -0.57735, -0.57735, and 0 for the invalid one.
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.5]])
    valid = torch.tensor([[True, True, True, False]])
    close(grpo.group_advantages(rewards, valid), [[1.15470, -0.57735, -0.57735, 0.0]])


def test_group_with_one_valid_sample_gets_zero() -> None:
    rewards = torch.tensor([[1.0, 0.0]])
    valid = torch.tensor([[True, False]])
    close(grpo.group_advantages(rewards, valid), [[0.0, 0.0]])
    with pytest.raises(ValueError, match="groups, n"):
        grpo.group_advantages(torch.tensor([1.0, 0.0]))


def test_token_advantages_broadcast_over_response_tokens() -> None:
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    close(grpo.token_advantages(torch.tensor([2.0, -1.0]), mask), [[2, 2, 0], [-1, 0, 0]])


# ----------------------------------------------------------------------------------- losses


def _ratios_to_logp(ratios: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    old = torch.full((len(ratios), len(ratios[0])), -1.0)
    logp = (old + torch.log(torch.tensor(ratios))).requires_grad_(True)
    return logp, old


def test_dapo_decoupled_clipping_token_by_token() -> None:
    # Row 0 has A = +1, row 1 has A = -1 (its last token is padding). Clip range [0.8, 1.4].
    #   (0,0) rho 1.5, A+: min(1.5, 1.4) = 1.4      -> L = -1.4  (clipped high)
    #   (0,1) rho 1.2, A+: min(1.2, 1.2) = 1.2      -> L = -1.2
    #   (0,2) rho 0.5, A+: min(0.5, 0.8) = 0.5      -> L = -0.5  (below 0.8 but A > 0: kept)
    #   (1,0) rho 0.5, A-: min(-0.5, -0.8) = -0.8   -> L = 0.8   (clipped low)
    #   (1,1) rho 1.5, A-: min(-1.5, -1.4) = -1.5   -> L = 1.5   (pessimistic: unclipped)
    # token mean over the 5 valid tokens: (-1.4 - 1.2 - 0.5 + 0.8 + 1.5) / 5 = -0.16
    logp, old = _ratios_to_logp([[1.5, 1.2, 0.5], [0.5, 1.5, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    out = grpo.dapo_policy_loss(logp, old, torch.tensor([1.0, -1.0]), mask)
    close(out.per_token[mask.bool()].detach(), [-1.4, -1.2, -0.5, 0.8, 1.5])
    close(out.loss.detach(), -0.16)
    close(out.clip_fraction, 0.4)  # tokens (0,0) and (1,0)
    close(out.clip_low_fraction, 0.2)
    close(out.clip_high_fraction, 0.2)
    # d L / d logp_t = -rho_t * A_t / 5 where the unclipped term is taken, 0 where clipped:
    # (0,1): -1.2/5 = -0.24, (0,2): -0.5/5 = -0.1, (1,1): 1.5/5 = 0.3.
    out.loss.backward()
    close(logp.grad, [[0.0, -0.24, -0.1], [0.0, 0.3, 0.0]])


def test_clip_higher_differs_from_symmetric_ppo() -> None:
    logp, old = _ratios_to_logp([[1.5]])
    mask = torch.ones(1, 1)
    advantage = torch.tensor([1.0])
    close(grpo.dapo_policy_loss(logp, old, advantage, mask).loss.detach(), -1.4)
    symmetric = grpo.dapo_policy_loss(logp, old, advantage, mask, clip_high=0.2)
    close(symmetric.loss.detach(), -1.2)


def test_token_mean_versus_sequence_mean() -> None:
    # Per-token losses [1, 2, 3] (3 tokens) and [4] (1 token):
    #   token-mean           (1 + 2 + 3 + 4) / 4     = 2.5
    #   seq-mean-token-mean  (6/3 + 4/1) / 2         = 3.0
    #   seq-mean-token-sum   (6 + 4) / 2             = 5.0
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    close(grpo.aggregate(values, mask, "token-mean"), 2.5)
    close(grpo.aggregate(values, mask, "seq-mean-token-mean"), 3.0)
    close(grpo.aggregate(values, mask, "seq-mean-token-sum"), 5.0)
    with pytest.raises(ValueError, match="unknown"):
        grpo.aggregate(values, mask, "nope")  # type: ignore[arg-type]


def test_sequence_mean_leaves_out_samples_without_tokens() -> None:
    # Row 1 has no valid token: seq-mean-token-mean is row 0's mean alone, (1 + 3) / 2 = 2.
    values = torch.tensor([[1.0, 3.0], [100.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    close(grpo.aggregate(values, mask, "seq-mean-token-mean"), 2.0)


def test_all_tokens_masked_gives_zero_loss_and_zero_gradients() -> None:
    logp, old = _ratios_to_logp([[1.5, 0.5], [1.0, 2.0]])
    mask = torch.zeros(2, 2)
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum"):
        out = grpo.prorl_loss(
            logp, old, old, torch.tensor([1.0, -1.0]), mask, aggregation=mode, kl_coef=0.1
        )
        close(out.loss.detach(), 0.0)
        logp.grad = None
        out.loss.backward()
        assert logp.grad is not None
        close(logp.grad, [[0.0, 0.0], [0.0, 0.0]])
        close(out.policy.clip_fraction, 0.0)


def test_padding_holding_inf_or_nan_does_not_poison_the_loss() -> None:
    values = torch.tensor([[1.0, -math.inf], [3.0, math.nan]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    close(grpo.aggregate(values, mask), 2.0)
    close(grpo.aggregate(values, mask, "seq-mean-token-mean"), 2.0)


# ---------------------------------------------------------------------------------------- KL


def test_k3_hand_values() -> None:
    # d = ref - logp:  d = ln 2:  e^d - d - 1 = 2 - 0.693147 - 1   = 0.306853
    #                  d = -ln 2:              0.5 + 0.693147 - 1 = 0.193147
    #                  d = 0:                  1 - 0 - 1          = 0
    logp = torch.zeros(1, 3)
    ref = torch.tensor([[LN2, -LN2, 0.0]])
    close(grpo.k3_kl(logp, ref), [[0.306853, 0.193147, 0.0]], tol=1e-6)
    # With coefficient 1e-4, token mean: (0.306853 + 0.193147 + 0) / 3 = 0.5 / 3.
    term, kl = grpo.kl_penalty(logp, ref, torch.ones(1, 3), coef=1e-4)
    close(kl, 0.5 / 3, tol=1e-6)
    close(term, 1e-4 * 0.5 / 3, tol=1e-9)


def test_k3_is_an_unbiased_estimate_of_the_kl() -> None:
    # pi = [0.5, 0.5], pi_ref = [0.25, 0.75]: KL(pi || ref) = 0.5 ln 2 + 0.5 ln(2/3)
    # = 0.5 ln(4/3) = 0.143841. E_pi[k3] over the two (equally likely) tokens:
    # (0.5 - ln 0.5 - 1 + 1.5 - ln 1.5 - 1) / 2 = (0.193147 + 0.094535) / 2 = 0.143841.
    logp = torch.log(torch.tensor([[0.5, 0.5]]))
    ref = torch.log(torch.tensor([[0.25, 0.75]]))
    close(grpo.k3_kl(logp, ref).mean(), 0.5 * math.log(4 / 3), tol=1e-6)


def test_k3_clamp_and_its_gradient() -> None:
    logp = torch.tensor([[0.0, 0.0]], requires_grad=True)
    ref = torch.tensor([[20.0, LN2]])
    kl = grpo.k3_kl(logp, ref)
    close(kl.detach(), [[math.exp(10) - 10 - 1, 0.306853]], tol=1e-3)
    kl.sum().backward()
    # d k3 / d logp = 1 - e^d: 0 where clamped, 1 - 2 = -1 at d = ln 2.
    close(logp.grad, [[0.0, -1.0]])
    unclamped = grpo.k3_kl(logp, ref, clamp=None)[0, 0].item()
    assert unclamped == pytest.approx(math.exp(20) - 21, rel=1e-5)


def test_prorl_loss_adds_the_weighted_kl() -> None:
    # Ratio 1 everywhere, so the policy loss is the token mean of -A over the valid tokens
    # (0,0), (0,1) with A = 1 and (1,0) with A = -1: (-1 - 1 + 1) / 3 = -1/3. Their KL, with
    # d = ln 2, 0, -ln 2: (0.306853 + 0 + 0.193147) / 3 = 1/6; loss = -1/3 + 0.1 * 1/6.
    logp = torch.zeros(2, 2)
    ref = torch.tensor([[LN2, 0.0], [-LN2, 5.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    out = grpo.prorl_loss(logp, logp, ref, torch.tensor([1.0, -1.0]), mask, kl_coef=0.1)
    close(out.kl, 1 / 6, tol=1e-6)
    close(out.loss, -1 / 3 + 0.1 / 6, tol=1e-6)
    no_kl = grpo.prorl_loss(logp, logp, None, torch.tensor([1.0, -1.0]), mask)
    close(no_kl.loss, -1 / 3, tol=1e-6)


def test_token_log_probs() -> None:
    logits = torch.zeros(1, 2, 4)  # uniform over 4 tokens
    logits[0, 1, 2] = math.log(3.0)  # token 2: 3 / (3 + 1 + 1 + 1) = 0.5
    close(grpo.token_log_probs(logits, torch.tensor([[1, 2]])), [[math.log(0.25), -LN2]])


# --------------------------------------------------------------- validity, truncation, DAPO


def test_valid_mask_and_masked_tokens() -> None:
    valid = grpo.valid_mask(["ok", "timeout", "error", "invalid"])
    assert valid.tolist() == [True, True, False, False]
    mask = torch.ones(4, 2)
    close(grpo.mask_invalid_tokens(mask, valid), [[1, 1], [1, 1], [0, 0], [0, 0]])


def test_an_error_sample_contributes_no_loss_and_no_gradient() -> None:
    # Sample 1's status was `error`: its reward (0) must not push its tokens down.
    rewards = torch.tensor([[1.0, 0.0, 0.0]])
    valid = grpo.valid_mask(["ok", "error", "ok"])
    advantages = grpo.group_advantages(rewards, valid.unsqueeze(0)).squeeze(0)
    # Valid [1, 0]: mean 0.5, unbiased std 0.70711 -> 0.70711, (error) 0, -0.70711.
    close(advantages, [0.70711, 0.0, -0.70711])
    logp = torch.zeros(3, 2, requires_grad=True)
    mask = grpo.mask_invalid_tokens(torch.ones(3, 2), valid)
    out = grpo.prorl_loss(logp, logp.detach(), logp.detach() + 1.0, advantages, mask)
    out.loss.backward()
    assert logp.grad is not None
    close(logp.grad[1], [0.0, 0.0])
    assert (logp.grad[0] != 0).all() and (logp.grad[2] != 0).all()


def test_truncation_penalty() -> None:
    rewards = torch.tensor([1.0, 0.5, 0.0])
    truncated = torch.tensor([True, False, True])
    close(grpo.apply_truncation_penalty(rewards, truncated, -0.5), [-0.5, 0.5, -0.5])
    close(grpo.apply_truncation_penalty(rewards, truncated), [0.0, 0.5, 0.0])
    close(rewards, [1.0, 0.5, 0.0])  # not modified in place


def test_informative_groups() -> None:
    rewards = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0],  # all wrong: dropped
            [1.0, 1.0, 1.0, 1.0],  # all right: dropped
            [1.0, 0.0, 0.0, 0.0],  # kept
            [0.5, 0.5, 0.5, 0.5],  # equal partial scores: dropped
            [1.0, 0.0, 1.0, 1.0],  # equal once the invalid sample 1 is left out: dropped
            [1.0, 0.0, 0.0, 0.0],  # only sample 0 valid: dropped
        ]
    )
    valid = torch.ones_like(rewards, dtype=torch.bool)
    valid[4, 1] = False
    valid[5, 1:] = False
    assert grpo.informative_groups(rewards).tolist() == [False, False, True, False, True, True]
    assert grpo.informative_groups(rewards, valid).tolist() == [
        False,
        False,
        True,
        False,
        False,
        False,
    ]


def test_group_filter_decides_each_group_when_its_last_reward_arrives() -> None:
    f = grpo.GroupFilter(group_size=3)
    # Rewards arrive out of order, interleaved between groups.
    assert f.add("a", 2, 1.0) is None
    assert f.add("b", 0, 0.0) is None
    assert f.add("a", 0, 1.0) is None
    assert f.pending == 2
    assert f.add("b", 1, 0.0) is None
    assert f.add("b", 2, 0.0) is False  # all 0
    assert f.add("a", 1, 0.0) is True
    assert f.add("c", 0, 1.0) is None
    assert f.add("c", 1, 0.0, valid=False) is None
    assert f.add("c", 2, 1.0) is False  # the valid ones are all 1
    assert f.kept == ["a"] and f.dropped == ["b", "c"] and f.pending == 0
    with pytest.raises(ValueError, match="already decided"):
        f.add("a", 0, 1.0)
    with pytest.raises(ValueError, match="outside"):
        f.add("d", 3, 1.0)
    f.add("d", 0, 1.0)
    with pytest.raises(ValueError, match="already added"):
        f.add("d", 0, 1.0)


# ------------------------------------------------------------------------------------ resets


def _linear(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 2)


def test_reset_reference_copies_the_actor() -> None:
    actor, reference = _linear(0), _linear(1)
    assert not torch.equal(actor.weight, reference.weight)
    grpo.reset_reference(actor, reference)
    for a, r in zip(actor.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, r) and a.data_ptr() != r.data_ptr()
    with torch.no_grad():
        actor.weight.add_(1.0)  # a copy, not an alias
    assert not torch.equal(actor.weight, reference.weight)


def _adam_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()


def test_reset_optimizer_state_makes_the_next_step_a_first_step() -> None:
    trained, fresh = _linear(0), _linear(0)
    opt_trained = torch.optim.Adam(trained.parameters(), lr=0.1)
    for _ in range(3):
        _adam_step(trained, opt_trained)
    assert len(opt_trained.state) == 2
    grpo.reset_optimizer_state(opt_trained)
    assert len(opt_trained.state) == 0
    assert opt_trained.param_groups[0]["lr"] == 0.1
    fresh.load_state_dict(trained.state_dict())
    opt_fresh = torch.optim.Adam(fresh.parameters(), lr=0.1)
    _adam_step(trained, opt_trained)
    _adam_step(fresh, opt_fresh)
    # Adam's first step moves every weight by lr * sign(grad): both models moved alike.
    for a, b in zip(trained.parameters(), fresh.parameters(), strict=True):
        assert torch.allclose(a, b)


def test_hard_reset_does_both() -> None:
    actor, reference = _linear(0), _linear(1)
    optimizer = torch.optim.AdamW(actor.parameters(), lr=0.1)
    _adam_step(actor, optimizer)
    grpo.hard_reset(actor, reference, optimizer)
    assert torch.equal(actor.weight, reference.weight) and not optimizer.state


def test_reset_policy_every_n_steps() -> None:
    policy = grpo.ResetPolicy(every_n_steps=4)
    resets = [s for s in range(1, 11) if policy.update(s, {"kl": 0.0})]
    assert resets == [4, 8]
    assert policy.history == [(4, ["every 4 steps"]), (8, ["every 4 steps"])]


def test_reset_policy_on_kl_spike_with_a_minimum_gap() -> None:
    # Training starts as a reset at step 0. Step 2 spikes, 2 steps after it: reset; step 3
    # spikes again but only 1 step after that reset: suppressed.
    policy = grpo.ResetPolicy(kl_threshold=0.3, min_steps_between=2)
    decisions = [policy.update(s, {"kl": kl}) for s, kl in enumerate([0.1, 0.5, 0.6, 0.2], 1)]
    assert [bool(d) for d in decisions] == [False, True, False, False]
    assert decisions[1].reasons == ["kl 0.5 > 0.3"]
    assert policy.update(5, {"kl": 0.9})  # 3 steps after the reset
    assert not grpo.ResetPolicy(kl_threshold=0.3, min_steps_between=3).update(2, {"kl": 0.5})
    assert policy.update(9, {}).reasons == []  # no metrics, no trigger


def test_reset_policy_on_validation_drop() -> None:
    policy = grpo.ResetPolicy(val_drop=0.1)
    assert not policy.update(1, {"val_score": 0.5})
    assert not policy.update(2, {})  # no validation this step
    assert not policy.update(3, {"val_score": 0.7})  # best 0.7
    assert not policy.update(4, {"val_score": 0.65})  # 0.05 below the best
    decision = policy.update(5, {"val_score": 0.55})  # 0.15 below 0.7
    assert decision and "dropped" in decision.reasons[0]
    # The best is forgotten at a reset: 0.4 is the new baseline, not a further drop.
    assert not policy.update(6, {"val_score": 0.4})
    assert policy.update(7, {"val_score": 0.25})  # 0.15 below 0.4
