"""GRPO on a CPU in a few minutes: a tiny transformer learns single-digit sums, rewarded by
the running reward service.

The task: the prompt ``3+4=\\boxed{`` (the prompt ends with the answer opener, as a chat
template may prefill ``<think>``), the model writes ``7}``; the response sent to the service
is ``\\boxed{7}``, scored by the ``math`` domain against ``{"ground_truth": "7"}``. ``}`` is
the stop token: a response that does not produce it within ``--max-new-tokens`` did not
terminate and is sent with ``truncated=true`` (the service applies its termination penalty
when it is configured with one; an unclosed box scores 0 anyway). No reward is computed here.

The loop is the ProRL recipe at toy scale (``trainer/grpo.py``): rollouts of ``--n`` samples
per prompt, each response submitted on the reward stream the moment it stops while the rest
of the batch is still decoding; old and reference log-probs computed while the rewards are
in flight; DAPO dynamic sampling (groups whose rewards are all equal are dropped as their
last reward arrives, and more prompts are sampled until the batch is full or
``--max-rounds`` is reached); group-normalised advantages; DAPO's decoupled clip (0.2/0.4);
token-mean loss; k3 KL to the reference (``--kl-coef``); mini-batch updates; and hard resets
of the reference and the optimizer decided by :class:`trainer.grpo.ResetPolicy` (every
``--reset-every`` steps, on a KL spike, on a drop of the greedy validation accuracy, which
the service scores too).

Run it against a running service, or let it start one in-process::

    .venv/bin/reward-service serve &
    .venv/bin/python -m trainer.examples.tiny_grpo --target localhost:50051 --steps 200
    .venv/bin/python -m trainer.examples.tiny_grpo --embedded --steps 200 --timeline t.json

It prints the mean reward of each step and writes a JSON timeline (per step: generation,
reward submit and gather times, log-prob times, the reward wait left exposed, the update).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer import grpo
from trainer.client import AsyncRewardClient, ScoreResult

# --------------------------------------------------------------------------------------------
# Tokenizer: a handful of characters plus the answer opener, built here (nothing downloaded)
# --------------------------------------------------------------------------------------------

PAD, BOS = "<pad>", "<bos>"
BOXED, STOP = "\\boxed{", "}"
SPECIAL_TOKENS = 2  # PAD and BOS: ids 0 and 1, never generated


class Tokenizer:
    """Greedy longest-match over a fixed vocabulary: digits, ``+``, ``=``, ``\\boxed{``, ``}``."""

    def __init__(self) -> None:
        self.tokens = [PAD, BOS, *"0123456789", "+", "=", BOXED, STOP]  # PAD, BOS first
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        self.pad_id, self.bos_id, self.stop_id = self.ids[PAD], self.ids[BOS], self.ids[STOP]
        self._by_length = sorted(self.tokens[2:], key=len, reverse=True)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        out, i = [], 0
        while i < len(text):
            token = next((t for t in self._by_length if text.startswith(t, i)), None)
            if token is None:
                raise ValueError(f"no token for {text[i:]!r}")
            out.append(self.ids[token])
            i += len(token)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.tokens[i] for i in ids if i not in (self.pad_id, self.bos_id))


STOP_ID = Tokenizer().stop_id

# --------------------------------------------------------------------------------------------
# Model: a pre-norm causal transformer from torch.nn building blocks
# --------------------------------------------------------------------------------------------


class TinyGPT(nn.Module):
    def __init__(self, vocab: int, d_model: int, layers: int, heads: int, max_len: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, heads, 4 * d_model, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` token ids -> ``[B, L, V]`` next-token logits."""
        length = ids.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(length)
        h = self.tok(ids) + self.pos(torch.arange(length, device=ids.device))
        h = self.blocks(h, mask=causal, is_causal=True)
        return self.head(self.norm(h))


# --------------------------------------------------------------------------------------------
# Task
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    a: int
    b: int

    @property
    def prompt(self) -> str:
        return f"{self.a}+{self.b}={BOXED}"

    @property
    def answer(self) -> str:
        return str(self.a + self.b)


def all_problems(max_operand: int = 9, max_sum: int = 9) -> list[Problem]:
    """Every ``a+b`` with ``0 <= a, b <= max_operand`` and ``a + b <= max_sum``.

    The default keeps the answers to one digit (55 problems): a tiny policy that has learned
    to close the box after one digit almost never samples a correct two-digit answer, so the
    sums of 10 to 18 (``--max-sum 18``) stay unsolved for much longer than a demo lasts.
    """
    return [
        Problem(a, b)
        for a in range(max_operand + 1)
        for b in range(max_operand + 1)
        if a + b <= max_sum
    ]


# --------------------------------------------------------------------------------------------
# Rollouts
# --------------------------------------------------------------------------------------------


@dataclass
class Rollouts:
    """One round of generation: ``len(problems)`` groups of ``n`` samples, laid out group by
    group (sample ``g * n + i`` is sample ``i`` of group ``g``)."""

    problems: list[Problem]
    n: int
    prompt_len: int
    sequences: torch.Tensor  # [B, P + T]: prompt then response (PAD after the stop token)
    response_mask: torch.Tensor  # [B, T] float: 1 for generated tokens up to the stop token
    truncated: torch.Tensor  # [B] bool: no stop token within the budget
    futures: list[asyncio.Future[ScoreResult]]
    submitted_at: list[float]
    answered_at: list[float] = field(default_factory=list)
    old_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    results: list[ScoreResult] = field(default_factory=list)

    @property
    def responses(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_len :]


def sampling_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The logits of the distribution that generation samples from: special tokens (PAD,
    BOS) are never generated, and the temperature divides the rest. Log-probabilities for
    the loss must come from this same distribution: otherwise the policy can move mass onto
    tokens that are never sampled, and the k3 KL of the sampled ones explodes."""
    banned = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    banned[:SPECIAL_TOKENS] = True
    return logits.masked_fill(banned, -math.inf) / temperature


def response_log_probs(
    model: nn.Module, sequences: torch.Tensor, prompt_len: int, temperature: float
) -> torch.Tensor:
    """``[B, T]`` log-probabilities of the response tokens under ``model`` (the sampling
    distribution: :func:`sampling_logits`). Padding after the stop token gets garbage
    values that the response mask removes."""
    logits = sampling_logits(model(sequences[:, :-1])[:, prompt_len - 1 :], temperature)
    targets = sequences[:, prompt_len:]
    # PAD (after the stop token) has probability 0 here; score a real token instead.
    targets = torch.where(targets < SPECIAL_TOKENS, torch.full_like(targets, STOP_ID), targets)
    return grpo.token_log_probs(logits, targets)


@torch.no_grad()
def _next_logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(ids)[:, -1]


@torch.no_grad()
def _no_grad_log_probs(
    model: nn.Module, sequences: torch.Tensor, prompt_len: int, temperature: float
) -> torch.Tensor:
    return response_log_probs(model, sequences, prompt_len, temperature)


async def generate(
    model: nn.Module,
    tok: Tokenizer,
    problems: list[Problem],
    n: int,
    *,
    max_new_tokens: int,
    temperature: float,
    greedy: bool = False,
    on_finished: Any = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Sample ``n`` responses per problem, token by token (each step in a thread, so that the
    event loop keeps the reward stream moving). ``on_finished(index, response_ids,
    truncated)`` is called for each sample the moment it stops (or runs out of budget).
    Returns ``(sequences, response_mask, truncated, prompt_len)``."""
    prompts = [[tok.bos_id, *tok.encode(p.prompt)] for p in problems]
    prompt_len = len(prompts[0])
    assert all(len(p) == prompt_len for p in prompts), "prompts of single digits share a length"
    ids = torch.tensor(prompts, dtype=torch.long).repeat_interleave(n, dim=0)
    batch = ids.shape[0]
    done = torch.zeros(batch, dtype=torch.bool)
    lengths = torch.full((batch,), max_new_tokens, dtype=torch.long)
    for t in range(max_new_tokens):
        logits = sampling_logits(await asyncio.to_thread(_next_logits, model, ids), temperature)
        if greedy:
            nxt = logits.argmax(dim=-1)
        else:
            probs = torch.softmax(logits, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        nxt = torch.where(done, torch.full_like(nxt, tok.pad_id), nxt)
        ids = torch.cat([ids, nxt.unsqueeze(-1)], dim=-1)
        stopped = (~done) & (nxt == tok.stop_id)
        lengths[stopped] = t + 1
        done |= stopped
        if on_finished is not None:
            for b in stopped.nonzero().flatten().tolist():
                on_finished(b, ids[b, prompt_len:].tolist(), False)
        if bool(done.all()):
            break
    # Every round has the same response width, so rounds can be trained on together.
    ids = nn.functional.pad(ids, (0, prompt_len + max_new_tokens - ids.shape[1]), value=tok.pad_id)
    truncated = ~done
    if on_finished is not None:
        for b in truncated.nonzero().flatten().tolist():
            on_finished(b, ids[b, prompt_len:].tolist(), True)
    positions = torch.arange(max_new_tokens).unsqueeze(0)
    response_mask = (positions < lengths.unsqueeze(-1)).float()
    return ids, response_mask, truncated, prompt_len


def response_text(tok: Tokenizer, response_ids: Sequence[int]) -> str:
    """What the service scores: the prefilled answer opener plus the generated text."""
    return BOXED + tok.decode(response_ids)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class Config:
    target: str | None
    embedded: bool
    steps: int
    seed: int
    timeline: Path | None
    prompts: int = 16
    n: int = 16
    max_rounds: int = 4
    mini_batches: int = 4
    max_operand: int = 9
    max_sum: int = 9
    max_new_tokens: int = 3
    temperature: float = 1.2
    lr: float = 1e-3
    grad_clip: float = 1.0
    clip_low: float = 0.2
    clip_high: float = 0.4
    kl_coef: float = 1e-4
    truncated_reward: float | None = None
    reset_every: int | None = 50
    reset_kl: float | None = None
    reset_val_drop: float | None = 0.2
    eval_every: int = 10
    d_model: int = 64
    layers: int = 2
    heads: int = 4
    torch_threads: int = 1
    quiet: bool = False


def _now() -> float:
    return time.perf_counter()


async def _rollout_round(
    model: nn.Module,
    reference: nn.Module,
    tok: Tokenizer,
    session: Any,
    problems: list[Problem],
    cfg: Config,
    group_base: int,
    group_filter: grpo.GroupFilter,
    t0: float,
    generator: torch.Generator,
) -> tuple[Rollouts, dict[str, float]]:
    """Generate one round, submitting each response as it stops; compute old and reference
    log-probs while the rewards are in flight; then gather. Times are relative to ``t0``."""
    n = cfg.n
    batch = len(problems) * n
    futures: list[asyncio.Future[ScoreResult] | None] = [None] * batch
    submitted_at = [0.0] * batch
    answered_at = [0.0] * batch

    def on_answer(index: int, future: asyncio.Future[ScoreResult]) -> None:
        answered_at[index] = _now() - t0
        result = future.result() if future.exception() is None else None
        group_filter.add(
            group_base + index // n,
            index % n,
            result.reward if result is not None else 0.0,
            result is not None and result.valid,
        )

    def on_finished(index: int, response_ids: list[int], truncated: bool) -> None:
        problem = problems[index // n]
        future = session.submit(
            "math",
            response_text(tok, response_ids),
            {"ground_truth": problem.answer},
            truncated=truncated,
        )
        submitted_at[index] = _now() - t0
        future.add_done_callback(lambda f, i=index: on_answer(i, f))
        futures[index] = future

    times: dict[str, float] = {"gen_start": _now() - t0}
    sequences, response_mask, truncated, prompt_len = await generate(
        model,
        tok,
        problems,
        n,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        on_finished=on_finished,
        generator=generator,
    )
    times["gen_end"] = _now() - t0
    # Work that does not need the rewards, done while the service scores.
    old_logp = await asyncio.to_thread(
        _no_grad_log_probs, model, sequences, prompt_len, cfg.temperature
    )
    times["old_logprob_end"] = _now() - t0
    ref_logp = await asyncio.to_thread(
        _no_grad_log_probs, reference, sequences, prompt_len, cfg.temperature
    )
    times["ref_logprob_end"] = _now() - t0
    done = [f for f in futures if f is not None]
    assert len(done) == batch, "every sample was submitted"
    results = list(await asyncio.gather(*done, return_exceptions=True))
    times["gather_end"] = _now() - t0
    results = [
        r
        if isinstance(r, ScoreResult)
        else ScoreResult(id="", reward=0.0, status="error", detail=str(r))
        for r in results
    ]
    times["first_submit"] = min(submitted_at)
    times["last_submit"] = max(submitted_at)
    times["last_answer"] = max(answered_at)
    times["exposed_reward_wait_s"] = times["gather_end"] - times["ref_logprob_end"]
    latencies = sorted(a - s for a, s in zip(answered_at, submitted_at, strict=True))
    times["reward_latency_p50_s"] = latencies[len(latencies) // 2]
    times["reward_latency_max_s"] = latencies[-1]
    rollouts = Rollouts(
        problems=problems,
        n=n,
        prompt_len=prompt_len,
        sequences=sequences,
        response_mask=response_mask,
        truncated=truncated,
        futures=done,
        submitted_at=submitted_at,
        answered_at=answered_at,
        old_logp=old_logp,
        ref_logp=ref_logp,
        results=results,
    )
    return rollouts, times


async def evaluate(
    model: nn.Module, tok: Tokenizer, client: AsyncRewardClient, cfg: Config
) -> tuple[float, int]:
    """Greedy accuracy on every problem, scored by the service: (mean reward, requests)."""
    problems = all_problems(cfg.max_operand, cfg.max_sum)
    sequences, _, truncated, prompt_len = await generate(
        model, tok, problems, 1, max_new_tokens=cfg.max_new_tokens, temperature=1.0, greedy=True
    )
    requests = [
        {
            "domain": "math",
            "response": response_text(tok, sequences[i, prompt_len:].tolist()),
            "reference": {"ground_truth": p.answer},
            "truncated": bool(truncated[i]),
        }
        for i, p in enumerate(problems)
    ]
    results = await client.score_batch(requests)
    valid = [r.reward for r in results if r.valid]
    return (sum(valid) / len(valid) if valid else 0.0), len(requests)


def _update(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    rollouts: list[Rollouts],
    keep_groups: list[tuple[int, int]],
    cfg: Config,
) -> dict[str, float]:
    """Advantages of the kept groups, then ``cfg.mini_batches`` optimizer steps."""
    seqs, masks, old, ref, advs = [], [], [], [], []
    for round_index, group in keep_groups:
        r = rollouts[round_index]
        sl = slice(group * r.n, (group + 1) * r.n)
        results = r.results[sl]
        rewards = torch.tensor([res.reward for res in results], dtype=torch.float32)
        if cfg.truncated_reward is not None:
            rewards = grpo.apply_truncation_penalty(rewards, r.truncated[sl], cfg.truncated_reward)
        valid = grpo.valid_mask(res.status for res in results)
        advs.append(grpo.group_advantages(rewards.unsqueeze(0), valid.unsqueeze(0)).squeeze(0))
        seqs.append(r.sequences[sl])
        masks.append(grpo.mask_invalid_tokens(r.response_mask[sl], valid))
        old.append(r.old_logp[sl])
        ref.append(r.ref_logp[sl])
    sequences, mask = torch.cat(seqs), torch.cat(masks)
    old_logp, ref_logp, advantages = torch.cat(old), torch.cat(ref), torch.cat(advs)
    prompt_len = rollouts[0].prompt_len
    order = torch.randperm(len(sequences))
    stats: Counter[str] = Counter()
    chunks = order.chunk(cfg.mini_batches)
    for idx in chunks:
        logp = response_log_probs(model, sequences[idx], prompt_len, cfg.temperature)
        out = grpo.prorl_loss(
            logp,
            old_logp[idx],
            ref_logp[idx],
            advantages[idx],
            mask[idx],
            clip_low=cfg.clip_low,
            clip_high=cfg.clip_high,
            kl_coef=cfg.kl_coef,
        )
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if cfg.grad_clip:
            stats["grad_norm"] += float(
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            ) / len(chunks)
        optimizer.step()
        stats["loss"] += out.loss.item() / len(chunks)
        stats["kl"] += out.kl.item() / len(chunks)
        stats["clip_fraction"] += out.policy.clip_fraction.item() / len(chunks)
    stats["trained_samples"] = len(sequences)
    return dict(stats)


async def train(cfg: Config, target: str) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.torch_threads)
    rng = random.Random(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    tok = Tokenizer()
    max_len = 1 + len(tok.encode(Problem(9, 9).prompt)) + cfg.max_new_tokens
    model = TinyGPT(len(tok), cfg.d_model, cfg.layers, cfg.heads, max_len)
    reference = TinyGPT(len(tok), cfg.d_model, cfg.layers, cfg.heads, max_len).eval()
    reference.requires_grad_(False)
    grpo.reset_reference(model, reference)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    policy = grpo.ResetPolicy(
        every_n_steps=cfg.reset_every,
        kl_threshold=cfg.reset_kl,
        val_drop=cfg.reset_val_drop,
        min_steps_between=5,
    )
    problems = all_problems(cfg.max_operand, cfg.max_sum)
    timeline: dict[str, Any] = {"config": _jsonable(cfg), "target": target, "steps": []}
    requests_sent = 0
    start = _now()
    async with AsyncRewardClient(target) as client:
        for step in range(1, cfg.steps + 1):
            t0 = _now()
            entry: dict[str, Any] = {"step": step, "start_s": t0 - start, "rounds": []}
            group_filter = grpo.GroupFilter(group_size=cfg.n)
            rollouts: list[Rollouts] = []
            statuses: Counter[str] = Counter()
            rewards: list[float] = []
            async with client.session() as session:
                for round_index in range(cfg.max_rounds):
                    batch_problems = [rng.choice(problems) for _ in range(cfg.prompts)]
                    r, times = await _rollout_round(
                        model,
                        reference,
                        tok,
                        session,
                        batch_problems,
                        cfg,
                        round_index * cfg.prompts,
                        group_filter,
                        t0,
                        generator,
                    )
                    rollouts.append(r)
                    requests_sent += len(r.results)
                    statuses.update(res.status for res in r.results)
                    rewards.extend(res.reward for res in r.results if res.valid)
                    times["kept_groups_so_far"] = len(group_filter.kept)
                    entry["rounds"].append(times)
                    if len(group_filter.kept) >= cfg.prompts:
                        break
            # Kept groups arrive in completion order; sorted, a run is reproducible (--seed).
            keep = [divmod(g, cfg.prompts) for g in sorted(group_filter.kept)[: cfg.prompts]]
            t_update = _now()
            stats: dict[str, float] = {}
            if keep:
                stats = await asyncio.to_thread(_update, model, optimizer, rollouts, keep, cfg)
            entry["update_s"] = _now() - t_update
            mean_reward = sum(rewards) / len(rewards) if rewards else 0.0
            metrics: dict[str, float] = {"kl": stats.get("kl", 0.0)}
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                t_eval = _now()
                metrics["val_score"], sent = await evaluate(model, tok, client, cfg)
                requests_sent += sent
                entry["eval_s"] = _now() - t_eval
            decision = policy.update(step, metrics)
            if decision:
                grpo.hard_reset(model, reference, optimizer)
            first = rollouts[0]
            entry["examples"] = [
                {
                    "prompt": first.problems[i // first.n].prompt,
                    "response": response_text(tok, first.responses[i].tolist()),
                    "ground_truth": first.problems[i // first.n].answer,
                    "truncated": bool(first.truncated[i]),
                    "reward": first.results[i].reward,
                    "status": first.results[i].status,
                }
                for i in range(0, len(first.results), first.n)[:4]
            ]
            rounds = entry["rounds"]
            entry.update(
                {
                    "mean_reward": mean_reward,
                    "samples": sum(statuses.values()),
                    "statuses": dict(statuses),
                    "kept_groups": len(keep),
                    "dropped_groups": len(group_filter.dropped),
                    "generation_s": sum(t["gen_end"] - t["gen_start"] for t in rounds),
                    "logprob_s": sum(t["ref_logprob_end"] - t["gen_end"] for t in rounds),
                    "exposed_reward_wait_s": sum(t["exposed_reward_wait_s"] for t in rounds),
                    "reset": decision.reasons,
                    **stats,
                    **({"val_score": metrics["val_score"]} if "val_score" in metrics else {}),
                    "step_s": _now() - t0,
                }
            )
            timeline["steps"].append(entry)
            if not cfg.quiet:
                val = f" val {metrics['val_score']:.2f}" if "val_score" in metrics else ""
                reset = f" RESET ({'; '.join(decision.reasons)})" if decision else ""
                print(
                    f"step {step:4d}  mean reward {mean_reward:.3f}  kept {len(keep):2d}/"
                    f"{cfg.prompts}  kl {metrics['kl']:.4f}  wait "
                    f"{entry['exposed_reward_wait_s'] * 1000:5.1f} ms  "
                    f"{entry['step_s']:.2f} s{val}{reset}",
                    flush=True,
                )
            if cfg.timeline is not None:
                _write_json(cfg.timeline, timeline)
    timeline["wall_s"] = _now() - start
    timeline["requests_sent"] = requests_sent
    if cfg.timeline is not None:
        _write_json(cfg.timeline, timeline)
    return timeline


def _jsonable(cfg: Config) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()}


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    tmp.replace(path)


# --------------------------------------------------------------------------------------------
# An in-process service (--embedded)
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def embedded_service(workers: int = 2) -> Iterator[str]:
    """A :class:`RewardServer` (math domain only) on free loopback ports, on its own event
    loop in a background thread; yields its gRPC target."""
    from reward_service.gateway.server import RewardServer
    from reward_service.settings import Settings

    settings = Settings(grpc_port=0, http_port=0, workers=workers, domains=["math"])
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="reward-service", daemon=True)
    thread.start()
    server = RewardServer(settings)
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(120)
        yield f"127.0.0.1:{server.grpc_port}"
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(grace_s=1), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def parse_args(argv: Sequence[str] | None) -> Config:
    defaults = Config(target=None, embedded=False, steps=0, seed=0, timeline=None)
    p = argparse.ArgumentParser(
        prog="python -m trainer.examples.tiny_grpo",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", help="gRPC address of a running reward service")
    where.add_argument("--embedded", action="store_true", help="start a service in-process")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeline", type=Path, help="write the per-step JSON timeline here")
    p.add_argument("--prompts", type=int, default=defaults.prompts, help="groups per batch")
    p.add_argument("--n", type=int, default=defaults.n, help="samples per prompt")
    p.add_argument(
        "--max-rounds",
        type=int,
        default=defaults.max_rounds,
        help="dynamic sampling: generation rounds per step to fill the batch",
    )
    p.add_argument("--mini-batches", type=int, default=defaults.mini_batches)
    p.add_argument("--max-operand", type=int, default=defaults.max_operand)
    p.add_argument("--max-sum", type=int, default=defaults.max_sum)
    p.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    p.add_argument("--temperature", type=float, default=defaults.temperature)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--grad-clip", type=float, default=defaults.grad_clip, help="0: none")
    p.add_argument("--clip-low", type=float, default=defaults.clip_low)
    p.add_argument("--clip-high", type=float, default=defaults.clip_high)
    p.add_argument("--kl-coef", type=float, default=defaults.kl_coef)
    p.add_argument(
        "--truncated-reward",
        type=float,
        help="apply this termination penalty here (default: leave it to the service)",
    )
    p.add_argument("--reset-every", type=int, default=defaults.reset_every)
    p.add_argument("--reset-kl", type=float, help="reset when the KL exceeds this")
    p.add_argument("--reset-val-drop", type=float, default=defaults.reset_val_drop)
    p.add_argument("--eval-every", type=int, default=defaults.eval_every)
    p.add_argument("--d-model", type=int, default=defaults.d_model)
    p.add_argument("--layers", type=int, default=defaults.layers)
    p.add_argument("--torch-threads", type=int, default=defaults.torch_threads)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    return Config(
        target=args.target,
        embedded=args.embedded,
        steps=args.steps,
        seed=args.seed,
        timeline=args.timeline,
        prompts=args.prompts,
        n=args.n,
        max_rounds=args.max_rounds,
        mini_batches=args.mini_batches,
        max_operand=args.max_operand,
        max_sum=args.max_sum,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        lr=args.lr,
        grad_clip=args.grad_clip,
        clip_low=args.clip_low,
        clip_high=args.clip_high,
        kl_coef=args.kl_coef,
        truncated_reward=args.truncated_reward,
        reset_every=args.reset_every or None,
        reset_kl=args.reset_kl,
        reset_val_drop=args.reset_val_drop,
        eval_every=args.eval_every,
        d_model=args.d_model,
        layers=args.layers,
        torch_threads=args.torch_threads,
        quiet=args.quiet,
    )


def run(cfg: Config) -> dict[str, Any]:
    """Train with ``cfg``; returns the timeline (also written to ``cfg.timeline``)."""
    if cfg.embedded:
        with embedded_service() as target:
            return asyncio.run(train(cfg, target))
    assert cfg.target is not None
    return asyncio.run(train(cfg, cfg.target))


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    timeline = run(cfg)
    steps = timeline["steps"]
    if steps:
        k = max(1, len(steps) // 10)
        first = sum(s["mean_reward"] for s in steps[:k]) / k
        last = sum(s["mean_reward"] for s in steps[-k:]) / k
        print(
            f"mean reward: first {k} steps {first:.3f}, last {k} steps {last:.3f}; "
            f"{timeline['wall_s']:.1f} s",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
