"""Text helpers shared by the verifiers: where a reasoning model's final answer lives."""

from __future__ import annotations

import re

_THINK_END = "</think>"
# `\boxed{`, `\fbox{` and the brace-less `\boxed 5`; the name must end there (not `\boxedfoo`).
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BARE_TOKEN_RE = re.compile(r"[^\s$]+")


def after_think(response: str) -> str:
    """The text after the last ``</think>`` if the response has one, else the whole response.

    Only the part after the reasoning counts as the answer, so that answers tried and
    discarded while thinking are never graded.
    """
    return response.rsplit(_THINK_END, 1)[-1]


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` or ``\\fbox{...}`` in ``text``, or ``None``.

    Nested braces are matched (``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``); escaped braces
    ``\\{``/``\\}`` do not count. The brace-less form ``\\boxed 5`` gives its next token. An
    unbalanced last box (a truncated answer) gives ``None`` rather than an earlier box.
    """
    starts = [m.end() for m in _BOX_RE.finditer(text)]
    if not starts:
        return None
    pos = starts[-1]
    rest = text[pos:]
    stripped = rest.lstrip()
    if stripped.startswith("{"):
        return _braced(stripped)
    if not rest[:1].isspace():  # e.g. `\boxed` at the very end or followed by `$`
        return None
    token = _BARE_TOKEN_RE.match(stripped)
    if token is None:
        return None
    # A sentence ending right after the answer leaves its full stop on the token.
    return token.group().rstrip(".,;:") or None


def _braced(text: str) -> str | None:
    """Content of the brace group opening ``text``; ``None`` if it never closes."""
    depth = 0
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2  # skips `\{`, `\}` and `\\` alike
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[1:i]
        i += 1
    return None


_FENCE_RE = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+#.-]*)[^\n]*\n(.*?)^[ \t]*```", re.M | re.S)


def last_fenced_block(text: str) -> tuple[str, str] | None:
    """``(language tag, code)`` of the last fenced code block (```` ``` ````, with or without a
    language tag) in ``text``, or ``None``. The tag is lower-cased, "" when absent."""
    blocks = _FENCE_RE.findall(text)
    if not blocks:
        return None
    tag, code = blocks[-1]
    return tag.lower(), code


def last_tagged(text: str, tag: str) -> str | None:
    """Content of the last ``<tag>...</tag>`` in ``text`` (stripped), or ``None``."""
    end = text.rfind(f"</{tag}>")
    if end < 0:
        return None
    start = text.rfind(f"<{tag}>", 0, end)
    if start < 0:
        return None
    return text[start + len(tag) + 2 : end].strip()
