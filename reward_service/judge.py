"""A client of an OpenAI-compatible chat-completions endpoint used as an answer judge.

Used by the ``stem`` verifier (for answers that rules cannot settle) and by
``reward-service filter-stem`` (the data filter of the reference recipe). The contract:
:meth:`Judge.judge` returns a :class:`Judgement`, or raises :class:`JudgeError` when no
verdict could be had (unreachable, persistent 429/5xx, timeouts, unparsable replies): callers
turn that into status ``error`` or a row to retry, never into a silent "no".
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections import OrderedDict
from dataclasses import dataclass

import httpx

SYSTEM_PROMPT = (
    "You grade answers to science, technology, engineering and mathematics problems. Decide "
    "whether the candidate's final answer is equivalent to the reference answer: the same "
    "value (allowing rounding to the precision given and equivalent units or notation) or the "
    "same option. Ignore the reasoning; judge only the final answer. Reply with one JSON "
    'object: {"equivalent": true or false, "reason": "<one sentence>"}.'
)
RETRY_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504}
MAX_RETRY_AFTER_S = 30.0


class JudgeError(RuntimeError):
    """No verdict could be obtained from the judge."""


@dataclass(frozen=True, slots=True)
class Judgement:
    equivalent: bool
    reason: str


def parse_verdict(text: str) -> Judgement:
    """The verdict in a judge's reply: a JSON object, else a leading yes/no."""
    match = re.search(r"\{.*\}", text, re.S)
    if match:
        try:
            data = json.loads(match.group(0))
            if isinstance(data.get("equivalent"), bool):
                return Judgement(data["equivalent"], str(data.get("reason", "")).strip())
        except (json.JSONDecodeError, AttributeError):
            pass
    word = re.match(r"\s*\W*(yes|no|true|false|equivalent|not equivalent)\b", text, re.I)
    if word:
        return Judgement(word.group(1).lower() in ("yes", "true", "equivalent"), text.strip())
    raise JudgeError(f"unparsable judge reply: {text[:200]!r}")


class Judge:
    """Asks the judge model, with a timeout per attempt, retries with exponential backoff
    (honouring ``Retry-After``) on 429, 5xx and transport errors, a limit on concurrent
    requests, and an in-memory LRU cache of verdicts."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        concurrency: int = 8,
        cache_size: int = 10_000,
    ) -> None:
        if not base_url:
            raise ValueError("the judge needs a base URL (--judge-base-url)")
        if not model:
            raise ValueError("the judge needs a model name (--judge-model)")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.concurrency = concurrency
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str, str], Judgement] = OrderedDict()
        self._gate: asyncio.Semaphore | None = None
        self._client: httpx.AsyncClient | None = None
        self.requests_sent = 0

    def _messages(self, question: str, reference: str, answer: str) -> list[dict[str, str]]:
        parts = [f"Problem:\n{question}\n"] if question else []
        parts += [f"Reference answer:\n{reference}\n", f"Candidate's final answer:\n{answer}\n"]
        return [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": "\n".join(parts)},
        ]

    async def judge(self, question: str, reference: str, answer: str) -> Judgement:
        key = (question, reference, answer)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        if self._gate is None:
            self._gate = asyncio.Semaphore(self.concurrency)
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._client = httpx.AsyncClient(timeout=self.timeout_s, headers=headers)
        async with self._gate:
            reply = await self._complete(self._messages(question, reference, answer))
        judgement = parse_verdict(reply)
        self._cache[key] = judgement
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return judgement

    async def _complete(self, messages: list[dict[str, str]]) -> str:
        assert self._client is not None
        body = {"model": self.model, "messages": messages, "temperature": 0.0}
        problem = "no attempt made"
        delay = self.backoff_s
        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(delay)
                delay = self.backoff_s * 2**attempt
            try:
                self.requests_sent += 1
                response = await self._client.post(f"{self.base_url}/chat/completions", json=body)
            except httpx.TimeoutException:
                problem = f"no answer within {self.timeout_s:g} s"
                continue
            except httpx.TransportError as exc:
                problem = f"cannot reach {self.base_url}: {exc}"
                continue
            if response.status_code in RETRY_STATUSES:
                problem = f"HTTP {response.status_code}"
                retry_after = response.headers.get("retry-after", "")
                if retry_after.replace(".", "", 1).isdigit():
                    delay = min(float(retry_after), MAX_RETRY_AFTER_S)
                continue
            if response.status_code != 200:
                raise JudgeError(
                    f"judge refused the request: HTTP {response.status_code}: {response.text[:200]}"
                )
            try:
                return str(response.json()["choices"][0]["message"]["content"])
            except (ValueError, KeyError, IndexError, TypeError):
                raise JudgeError(f"malformed judge response: {response.text[:200]!r}") from None
        raise JudgeError(f"judge unavailable after {self.max_retries + 1} attempts: {problem}")

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
            self._gate = None
