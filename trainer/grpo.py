"""The loss pieces of the ProRL recipe (GRPO + DAPO + k3 KL + reference resets), torch only.

Every function is pure (tensors in, tensors out; nothing is modified in place) except the
two reset helpers, whose job is to modify a model and an optimizer. Shapes use ``B`` for the
samples of a batch (groups laid out one after the other: ``B = G * n``), ``G`` for groups
(one prompt's ``n`` rollouts), ``T`` for response tokens.

The recipe, in the notation used below (``r`` a sample's reward, ``pi`` the policy being
trained, ``pi_old`` the policy that generated the rollouts, ``pi_ref`` the reference)::

    A_i      = (r_i - mean_group(r)) / (std_group(r) + eps)       # GRPO, one value per sample
    rho_t    = pi(y_t) / pi_old(y_t) = exp(logp_t - old_logp_t)
    L_pg,t   = -min(rho_t * A, clip(rho_t, 1 - eps_low, 1 + eps_high) * A)   # DAPO: 0.2 / 0.4
    KL_t     = exp(ref_logp_t - logp_t) - (ref_logp_t - logp_t) - 1        # k3 estimator
    L        = token_mean(L_pg + beta * KL)     # over every valid token of the batch (DAPO)

plus dynamic sampling (groups whose rewards are all equal carry no gradient and are dropped),
a fixed reward for responses that did not terminate, masking of samples the reward service
answered ``error``/``invalid``, and periodic hard resets of ``pi_ref`` and the optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch

# Statuses of the reward service whose reward the trainer may learn from (trainer.client's
# ScoreResult.valid): `timeout` is a real 0 by definition, `error`/`invalid` are not rewards.
VALID_STATUSES = frozenset({"ok", "timeout"})

LossAggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]


# --------------------------------------------------------------------------------------------
# Rewards: validity, termination penalty, dynamic sampling
# --------------------------------------------------------------------------------------------


def valid_mask(statuses: Iterable[str]) -> torch.Tensor:
    """``[B]`` bool: True where the reward service's status lets the trainer learn from the
    sample (``ok`` or ``timeout``); False for ``error`` (infrastructure failure) and
    ``invalid`` (a malformed request), whose reward of 0 is not a real reward."""
    return torch.tensor([s in VALID_STATUSES for s in statuses], dtype=torch.bool)


def mask_invalid_tokens(response_mask: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``response_mask[b, t] * valid[b]``: the tokens of invalid samples leave the loss.

    ``response_mask`` is ``[B, T]`` (1 for a generated token, 0 for padding), ``valid`` is
    ``[B]``; the result has ``response_mask``'s dtype.
    """
    return response_mask * valid.to(response_mask.dtype).unsqueeze(-1)


def apply_truncation_penalty(
    rewards: torch.Tensor, truncated: torch.Tensor, penalty_reward: float = 0.0
) -> torch.Tensor:
    """``r'_i = penalty_reward if truncated_i else r_i``.

    A response that hit the length limit without an end-of-sequence token gets a fixed
    reward whatever its content (ProRL's penalty for improper termination), so that the
    policy cannot earn reward by rambling past the budget. The reward service applies the
    same rule itself when it is configured with ``--truncated-reward`` and the request says
    ``truncated=true``; this function is for rewards from elsewhere.
    """
    penalty = torch.full_like(rewards, penalty_reward)
    return torch.where(truncated.to(torch.bool), penalty, rewards)


def informative_groups(
    rewards: torch.Tensor, valid: torch.Tensor | None = None, atol: float = 1e-6
) -> torch.Tensor:
    """DAPO dynamic sampling: ``[G]`` bool, False for groups whose rewards are all equal.

    ``rewards`` is ``[G, n]``. A group whose valid rewards are all equal (all 0: too hard;
    all 1: solved) has every advantage equal to 0, so it adds nothing to the policy gradient
    but dilutes the token mean: DAPO drops it and samples more prompts instead. A group is
    kept iff ``max(r) - min(r) > atol`` over its valid samples; a group with fewer than two
    valid samples is dropped.
    """
    if valid is None:
        valid = torch.ones_like(rewards, dtype=torch.bool)
    valid = valid.to(torch.bool)
    high = torch.where(valid, rewards, torch.full_like(rewards, -math.inf)).amax(dim=-1)
    low = torch.where(valid, rewards, torch.full_like(rewards, math.inf)).amin(dim=-1)
    enough = valid.sum(dim=-1) >= 2
    return enough & ((high - low) > atol)


@dataclass
class GroupFilter:
    """Dynamic sampling that decides each group the moment its last reward arrives.

    Feed rewards in any order with :meth:`add` (e.g. from a reward future's callback);
    it returns None while the group is incomplete and then, once, whether the group is kept
    (same rule as :func:`informative_groups`). :attr:`kept` lists kept groups in completion
    order, so a trainer can stop generating as soon as it has enough of them.
    """

    group_size: int
    atol: float = 1e-6
    kept: list[Hashable] = field(default_factory=list)
    dropped: list[Hashable] = field(default_factory=list)
    _pending: dict[Hashable, dict[int, tuple[float, bool]]] = field(
        default_factory=dict, repr=False
    )
    _decided: set[Hashable] = field(default_factory=set, repr=False)

    def add(self, group: Hashable, index: int, reward: float, valid: bool = True) -> bool | None:
        """Record sample ``index`` of ``group``; the group's verdict once it is complete."""
        if not 0 <= index < self.group_size:
            raise ValueError(f"sample index {index} outside a group of {self.group_size}")
        if group in self._decided:
            raise ValueError(f"group {group!r} is already decided")
        samples = self._pending.setdefault(group, {})
        if index in samples:
            raise ValueError(f"sample {index} of group {group!r} was already added")
        samples[index] = (float(reward), bool(valid))
        if len(samples) < self.group_size:
            return None
        del self._pending[group]
        rewards = [r for r, ok in samples.values() if ok]
        keep = len(rewards) >= 2 and max(rewards) - min(rewards) > self.atol
        (self.kept if keep else self.dropped).append(group)
        self._decided.add(group)
        return keep

    @property
    def pending(self) -> int:
        """Groups with some but not all of their rewards in."""
        return len(self._pending)


# --------------------------------------------------------------------------------------------
# Advantages
# --------------------------------------------------------------------------------------------


def group_advantages(
    rewards: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    scale_by_std: bool = True,
    eps: float = 1e-6,
    unbiased: bool = True,
) -> torch.Tensor:
    """GRPO's outcome advantage, one value per sample: ``[G, n]`` -> ``[G, n]``.

    ``A_i = (r_i - mean_g) / (std_g + eps)`` where ``mean_g`` and ``std_g`` are taken over
    the valid samples of ``i``'s group (``std`` with Bessel's correction when ``unbiased``,
    as ``torch.std``, verl and TRL do). ``scale_by_std=False`` gives ``A_i = r_i - mean_g``
    (Dr. GRPO: no division, so that near-solved groups are not up-weighted). Invalid samples
    get ``A = 0``; a group of identical rewards gets 0 everywhere; a group with a single valid
    sample gets ``A = 0`` for it (its std is undefined).
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [groups, n], got shape {tuple(rewards.shape)}")
    rewards = rewards.to(torch.float32) if not rewards.is_floating_point() else rewards
    if valid is None:
        valid = torch.ones_like(rewards, dtype=torch.bool)
    weight = valid.to(rewards.dtype)
    count = weight.sum(dim=-1, keepdim=True)
    mean = (rewards * weight).sum(dim=-1, keepdim=True) / count.clamp(min=1)
    centred = (rewards - mean) * weight
    if not scale_by_std:
        return centred
    dof = (count - 1) if unbiased else count
    var = (centred**2).sum(dim=-1, keepdim=True) / dof.clamp(min=1)
    return torch.where(count >= 2, centred / (var.sqrt() + eps), torch.zeros_like(centred))


def token_advantages(advantages: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Broadcast per-sample advantages ``[B]`` over response tokens ``[B, T]`` (0 on padding):
    an outcome reward credits every token of its response equally."""
    return advantages.reshape(-1, 1) * response_mask.to(advantages.dtype)


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def aggregate(
    values: torch.Tensor, mask: torch.Tensor, mode: LossAggregation = "token-mean"
) -> torch.Tensor:
    """Reduce per-token values ``[B, T]`` to a scalar over the tokens where ``mask`` is 1.

    - ``token-mean`` (DAPO, ProRL): ``sum_{b,t} m*v / sum_{b,t} m``: every valid token of the
      batch weighs the same, so long responses are not down-weighted.
    - ``seq-mean-token-mean`` (original GRPO): mean over samples of each sample's token mean;
      samples without a valid token are left out of the outer mean.
    - ``seq-mean-token-sum``: mean over samples of each sample's token sum.

    With no valid token at all the result is 0 (still attached to the graph of ``values``, so
    ``backward()`` works and gives zero gradients).
    """
    # where(), not values * mask: a padded position may hold inf or nan (log-prob of a token
    # with probability 0), and 0 * inf would poison the sum.
    masked = torch.where(mask.to(torch.bool), values, torch.zeros_like(values))
    mask = mask.to(values.dtype)
    if mode == "token-mean":
        return masked.sum() / mask.sum().clamp(min=1.0)
    per_seq_tokens = mask.sum(dim=-1)
    if mode == "seq-mean-token-mean":
        per_seq = masked.sum(dim=-1) / per_seq_tokens.clamp(min=1.0)
    elif mode == "seq-mean-token-sum":
        per_seq = masked.sum(dim=-1)
    else:
        raise ValueError(f"unknown loss aggregation {mode!r}")
    has_tokens = (per_seq_tokens > 0).to(values.dtype)
    return (per_seq * has_tokens).sum() / has_tokens.sum().clamp(min=1.0)


@dataclass(frozen=True)
class PolicyLoss:
    """What :func:`dapo_policy_loss` returns: the scalar loss and diagnostics (detached)."""

    loss: torch.Tensor
    per_token: torch.Tensor  # [B, T] -min(rho*A, clip(rho)*A), before aggregation
    clip_fraction: torch.Tensor  # share of valid tokens where the clipped term was taken
    clip_low_fraction: torch.Tensor  # ... because rho < 1 - eps_low with A < 0
    clip_high_fraction: torch.Tensor  # ... because rho > 1 + eps_high with A > 0
    approx_kl_old: torch.Tensor  # token mean of k3 with d = old_logp - logp: drift since rollout


def dapo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.4,
    aggregation: LossAggregation = "token-mean",
) -> PolicyLoss:
    """DAPO's clipped surrogate with decoupled clip ranges ("clip-higher").

    Per token, with ``rho = exp(logp - old_logp)`` and ``A`` the token's advantage
    (``[B, T]``, or ``[B]`` broadcast over tokens)::

        L_t = -min(rho * A, clip(rho, 1 - clip_low, 1 + clip_high) * A)

    With ``clip_low = 0.2, clip_high = 0.4`` the ratio is clipped to ``[0.8, 1.4]``: a
    low-probability token with a positive advantage may grow further than PPO's symmetric
    0.2 allows (against entropy collapse), while the bound on decreases stays. The loss is
    reduced with :func:`aggregate` over ``mask`` (response tokens of valid samples).
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1).expand_as(logp)
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    loss = aggregate(per_token, mask, aggregation)
    with torch.no_grad():
        took_clipped = (clipped < unclipped).to(logp.dtype)
        low = took_clipped * (ratio < 1.0 - clip_low).to(logp.dtype)
        high = took_clipped * (ratio > 1.0 + clip_high).to(logp.dtype)
        log_ratio = old_logp - logp
        approx_kl = torch.exp(log_ratio) - log_ratio - 1.0
    return PolicyLoss(
        loss=loss,
        per_token=per_token,
        clip_fraction=aggregate(took_clipped, mask),
        clip_low_fraction=aggregate(low, mask),
        clip_high_fraction=aggregate(high, mask),
        approx_kl_old=aggregate(approx_kl, mask),
    )


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor, clamp: float | None = 10.0) -> torch.Tensor:
    """Schulman's k3 estimator of ``KL(pi || pi_ref)`` per token, for tokens sampled from pi:

    ``k3 = exp(ref_logp - logp) - (ref_logp - logp) - 1`` (= ``e^d - d - 1`` with
    ``d = ref_logp - logp``), which is unbiased (``E_pi[e^d] = 1``), never negative, and of
    lower variance than ``-d``. ``clamp`` bounds ``d`` to ``[-clamp, clamp]`` first (as verl's
    ``low_var_kl`` does) so that one token the reference finds impossible cannot blow up the
    loss; None disables it.
    """
    d = ref_logp - logp
    if clamp is not None:
        d = d.clamp(-clamp, clamp)
    return torch.exp(d) - d - 1.0


def kl_penalty(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    coef: float = 1e-4,
    *,
    aggregation: LossAggregation = "token-mean",
    clamp: float | None = 10.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(coef * aggregate(k3), aggregate(k3))``: the KL term added to the loss (ProRL:
    ``coef = 1e-4``) and the KL itself, for logging and for a reset policy."""
    kl = aggregate(k3_kl(logp, ref_logp, clamp), mask, aggregation)
    return coef * kl, kl


def token_log_probs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[..., token]``: ``[B, T, V]`` logits and ``[B, T]`` tokens give
    ``[B, T]`` log-probabilities (divide the logits by the sampling temperature first to get
    the probabilities of the distribution that was sampled)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


# --------------------------------------------------------------------------------------------
# Reference policy and optimizer resets
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def reset_reference(actor: torch.nn.Module, reference: torch.nn.Module) -> None:
    """Hard reset of the reference policy: ``pi_ref <- pi`` (copy every parameter and
    buffer of ``actor`` into ``reference``, which must have the same architecture). The KL
    term then pulls towards the current policy instead of the starting one."""
    reference.load_state_dict(actor.state_dict())


def reset_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Drop the optimizer's per-parameter state (Adam's moments and step counts); the
    parameter groups and their hyperparameters (learning rate, betas, ...) stay. The next
    ``step()`` starts from fresh state, as after construction."""
    optimizer.state.clear()


def hard_reset(
    actor: torch.nn.Module, reference: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """ProRL's periodic reset: the reference becomes the current actor and the optimizer
    starts over."""
    reset_reference(actor, reference)
    reset_optimizer_state(optimizer)


@dataclass
class ResetDecision:
    reset: bool
    reasons: list[str]

    def __bool__(self) -> bool:
        return self.reset


@dataclass
class ResetPolicy:
    """Decides from logged metrics when to hard-reset the reference and the optimizer.

    Call :meth:`update` once per training step with that step's metrics; it returns a
    :class:`ResetDecision` (truthy to reset) and, when it says reset, starts counting anew
    from that step. Triggers (each disabled when None):

    - ``every_n_steps``: ``step - last_reset >= every_n_steps``.
    - ``kl_threshold``: ``metrics[kl_key] > kl_threshold`` (a KL spike: the policy has moved
      far from its reference).
    - ``val_drop``: ``best - metrics[val_key] > val_drop``, ``best`` the highest validation
      score seen since the last reset (validation has degraded). Steps whose metrics lack
      ``val_key`` (no validation that step) do not trigger it.

    ``min_steps_between`` suppresses any trigger less than that many steps after the last
    reset, so that one spike does not cause a reset at every step.
    """

    every_n_steps: int | None = None
    kl_threshold: float | None = None
    val_drop: float | None = None
    min_steps_between: int = 1
    kl_key: str = "kl"
    val_key: str = "val_score"
    last_reset_step: int = 0
    best_val: float | None = None
    history: list[tuple[int, list[str]]] = field(default_factory=list)

    def update(self, step: int, metrics: Mapping[str, float]) -> ResetDecision:
        reasons: list[str] = []
        since = step - self.last_reset_step
        if self.every_n_steps is not None and since >= self.every_n_steps:
            reasons.append(f"every {self.every_n_steps} steps")
        kl = metrics.get(self.kl_key)
        if self.kl_threshold is not None and kl is not None and kl > self.kl_threshold:
            reasons.append(f"{self.kl_key} {kl:.4g} > {self.kl_threshold:g}")
        val = metrics.get(self.val_key)
        if val is not None:
            if (
                self.val_drop is not None
                and self.best_val is not None
                and self.best_val - val > self.val_drop
            ):
                reasons.append(
                    f"{self.val_key} {val:.4g} dropped more than {self.val_drop:g} "
                    f"below {self.best_val:.4g}"
                )
            self.best_val = val if self.best_val is None else max(self.best_val, val)
        if reasons and since < self.min_steps_between:
            reasons = []
        if reasons:
            self.last_reset_step = step
            self.best_val = None  # the next validation sets the new baseline
            self.history.append((step, reasons))
        return ResetDecision(bool(reasons), reasons)


# --------------------------------------------------------------------------------------------
# Convenience: the whole ProRL objective of one mini-batch
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProRLLoss:
    loss: torch.Tensor
    policy: PolicyLoss
    kl: torch.Tensor  # token mean of k3(pi || pi_ref), detached


def prorl_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.4,
    kl_coef: float = 1e-4,
    aggregation: LossAggregation = "token-mean",
) -> ProRLLoss:
    """``L = agg(L_pg) + kl_coef * agg(k3)`` over ``mask`` (already without the tokens of
    invalid samples: see :func:`mask_invalid_tokens`); no KL term when ``ref_logp`` is None."""
    policy = dapo_policy_loss(
        logp,
        old_logp,
        advantages,
        mask,
        clip_low=clip_low,
        clip_high=clip_high,
        aggregation=aggregation,
    )
    if ref_logp is None or kl_coef == 0:
        kl = torch.zeros((), dtype=logp.dtype)
        return ProRLLoss(policy.loss, policy, kl)
    kl_term, kl = kl_penalty(logp, ref_logp, mask, kl_coef, aggregation=aggregation)
    return ProRLLoss(policy.loss + kl_term, policy, kl.detach())
