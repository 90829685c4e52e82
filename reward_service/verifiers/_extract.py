"""Text helpers shared by the verifiers: where a reasoning model's final answer lives."""

from __future__ import annotations

import re

_THINK_END = "</think>"
# `\boxed{`, `\fbox{` and the brace-less `\boxed 5`; the name must end there (not `\boxedfoo`).
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BARE_TOKEN_RE = re.compile(r"[^\s$]+")
# "Answer: 5", "**Final answer:** 5", "The answer is 5." at the start of a line.
_ANSWER_LINE_RE = re.compile(
    r"^[\s>#*_-]*(?:(?:so|thus|therefore|hence)[\s,]+)?(?:the\s+)?(?:final\s+)?answer"
    r"(?:\s+is\b\s*:?|\s*:)(.*)$",
    re.I,
)
# "... so the answer is 5.", "... final answer: 5" anywhere in a line.
_FINAL_ANSWER_RE = re.compile(
    r"\b(?:final\s+answer(?:\s+is\b\s*:?|\s*:)|answer\s+is\b\s*:?)(.*)$", re.I
)
_MARKDOWN_EMPHASIS_RE = re.compile(r"\*\*|__")
_MATH_WRAPPERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


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


def clean_answer(text: str) -> str:
    """An answer without surrounding emphasis, math delimiters and a closing full stop."""
    text = text.strip().rstrip(".").strip()
    for opening, closing in _MATH_WRAPPERS:
        if len(text) > len(opening) + len(closing) and text.startswith(opening):
            if text.endswith(closing):
                text = text[len(opening) : -len(closing)].strip()
            break
    return text.rstrip(".").strip()


def answer_line(text: str) -> str | None:
    """The answer stated on the last "Answer: ..." / "final answer is ..." line of ``text``.

    Looks at lines from the end; the first that states an answer wins. "Answer:" alone on its
    line takes the next non-empty line as its answer. ``None`` if no line states one.
    """
    lines = [_MARKDOWN_EMPHASIS_RE.sub("", line) for line in text.splitlines()]
    for index in range(len(lines) - 1, -1, -1):
        match = _ANSWER_LINE_RE.match(lines[index]) or _FINAL_ANSWER_RE.search(lines[index])
        if match is None:
            continue
        answer = clean_answer(match.group(1))
        if not answer:
            following = [line for line in lines[index + 1 :] if line.strip()]
            answer = clean_answer(following[0]) if following else ""
        if answer:
            return answer
    return None


def stated_answer(response: str) -> str | None:
    """The final answer a response states after its reasoning, or ``None``.

    In order: the last ``\\boxed{}``, the last ``<answer>...</answer>``, the last "Answer: ..."
    / "final answer is ..." line (:func:`answer_line`), all after any ``</think>``.
    """
    text = after_think(response)
    for found in (last_boxed(text), last_tagged(text, "answer")):
        if found is not None and found.strip():
            return found.strip()
    return answer_line(text)
