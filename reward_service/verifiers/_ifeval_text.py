"""Text analysis for the IFEval checks: word, sentence and token counts and language detection.

Everything here is offline and deterministic:

* NLTK's Punkt sentence model ships with the package (``verifiers/data/nltk_data``) and NLTK
  is pointed at it programmatically; nothing is ever downloaded.
* ``langdetect`` samples n-grams at random; a private detector factory with a fixed seed (and
  its language profiles loaded in sorted order, not directory order) makes every answer
  reproducible, without touching the library's module-level factory that other code may use.

The counting rules follow Google's ``instructions_util`` (the IFEval reference): a word is a
run of ``\\w`` characters, sentences are Punkt's English sentences, and the tokens of
``change_case:capital_word_frequency`` are ``nltk.word_tokenize``'s.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
from pathlib import Path

import nltk
from langdetect import DetectorFactory
from langdetect.lang_detect_exception import LangDetectException
from langdetect.utils.lang_profile import LangProfile

NLTK_DATA_DIR = Path(__file__).resolve().parent / "data" / "nltk_data"

_WORD_RE = re.compile(r"\w+")
_LANGDETECT_SEED = 0
_factory_lock = threading.Lock()


def _use_shipped_nltk_data() -> None:
    # First on the search path, so that a different Punkt model elsewhere (NLTK_DATA, ~/nltk_data)
    # can never change the counts.
    path = str(NLTK_DATA_DIR)
    if not nltk.data.path or nltk.data.path[0] != path:
        if path in nltk.data.path:
            nltk.data.path.remove(path)
        nltk.data.path.insert(0, path)


_use_shipped_nltk_data()


def count_words(text: str) -> int:
    """Number of maximal runs of word characters (``\\w+``) in ``text``."""
    return sum(1 for _ in _WORD_RE.finditer(text))


@functools.cache
def _sentence_tokenizer() -> nltk.tokenize.PunktTokenizer:
    _use_shipped_nltk_data()
    return nltk.tokenize.PunktTokenizer("english")


def count_sentences(text: str) -> int:
    """Number of sentences Punkt's English model finds in ``text``."""
    return len(_sentence_tokenizer().tokenize(text))


def word_tokens(text: str) -> list[str]:
    """``nltk.word_tokenize(text)``: Punkt sentences, then Treebank-style word tokens."""
    _use_shipped_nltk_data()
    return nltk.word_tokenize(text)


@functools.cache
def _language_factory() -> DetectorFactory:
    from langdetect.detector_factory import PROFILES_DIRECTORY

    factory = DetectorFactory()
    names = sorted(n for n in os.listdir(PROFILES_DIRECTORY) if not n.startswith("."))
    for index, name in enumerate(names):
        with open(os.path.join(PROFILES_DIRECTORY, name), encoding="utf-8") as f:
            factory.add_profile(LangProfile(**json.load(f)), index, len(names))
    # An instance attribute: the class attribute (the library's global switch) stays untouched.
    factory.seed = _LANGDETECT_SEED
    return factory


def supported_languages() -> frozenset[str]:
    """The language codes :func:`detect_language` can answer (langdetect's 55 profiles)."""
    with _factory_lock:
        return frozenset(_language_factory().get_lang_list())


@functools.lru_cache(maxsize=64)
def detect_language(text: str) -> str | None:
    """The most probable language code of ``text``, or ``None`` if it has no letters to judge.

    Deterministic: the same text always gives the same answer. Cached, because several
    instructions (and loose mode's variants) often ask about the same text.
    """
    with _factory_lock:
        factory = _language_factory()
    detector = factory.create()
    detector.append(text)
    try:
        return detector.detect()
    except LangDetectException:
        return None


def warm_up() -> None:
    """Load the Punkt model, the tokenizers and langdetect's profiles (about half a second)."""
    count_sentences("Warm up. Twice.")
    word_tokens("Warm up the TOKENIZER.")
    detect_language("This sentence warms up the language detector.")
