"""Comparing runs: one text (or two) under other models, taps, references or settings, token by token.

Runs that tokenise differently are matched by token text, in order, the way `difflib` aligns two sequences
(ignoring case, surrounding space and WordPiece's `##`; special tokens match special tokens in order, so
`[CLS]` meets `<s>`). Tokens left without a match are named in `Comparison.note()`, never an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from difflib import SequenceMatcher

import numpy as np

from .analysis import Analysis, Token
from .display import brief
from .errors import InputError
from .settings import MAX_RUNS, Settings

_IGNORED = {"model", "similarity"}
"""Settings that never set runs apart in a label: the model is named by its label, and the similarity changes
no measure."""
_TEXT_CHARS = 32


@dataclass(frozen=True)
class Comparison:
    """Runs side by side: the first is run A, whose token indices every run's tokens are matched to."""

    runs: tuple[Analysis, ...]
    labels: tuple[str, ...]
    """Per run, what sets it apart (`resid_mid`, `all-MiniLM-L6-v2 (bundled) · resid_post`)."""
    differs: str
    """What the labels name (`tap`, `model · tap`): the legend's title."""
    keys: tuple[np.ndarray, ...]
    """Per run, for each of its tokens, the index of the matching token of run A, or -1."""

    def __repr__(self) -> str:
        runs = "; ".join(self.labels)
        return brief("Comparison", runs=f"{len(self.runs)} [{runs}]", differs=self.differs, tokens=f"{len(self.runs[0].tokens)} in run A")

    def unmatched(self) -> list[tuple[str, list[Token]]]:
        """Per run with any, its label and its tokens that are not in every run."""
        shared = set.intersection(*(set(keys[keys >= 0].tolist()) for keys in self.keys))
        found = []
        for label, run, keys in zip(self.labels, self.runs, self.keys):
            missing = [token for token, key in zip(run.tokens, keys.tolist()) if key not in shared]
            if missing:
                found.append((label, missing))
        return found

    def note(self) -> str | None:
        """One line naming the tokens that are not in every run (None when every token matches)."""
        unmatched = self.unmatched()
        if not unmatched:
            return None
        listed = "; ".join(f"{label}: " + ", ".join(f"{t.index} {t.shown}" for t in tokens) for label, tokens in unmatched)
        return f"tokens are matched by text; not in every run: {listed}"


def _match_keys(tokens: Sequence[Token]) -> list[str]:
    """What a token is matched by: its text without case, surrounding space or `##`; special tokens by order."""
    keys, specials = [], 0
    for token in tokens:
        if token.special:
            keys.append(f"\0special {specials}")
            specials += 1
        else:
            keys.append(token.text.strip().removeprefix("##").casefold())
    return keys


def match_tokens(first: Sequence[Token], other: Sequence[Token]) -> np.ndarray:
    """For each of `other`'s tokens, the index of the `first` token it matches by text (in order), or -1."""
    keys = np.full(len(other), -1, dtype=np.int64)
    matcher = SequenceMatcher(None, _match_keys(first), _match_keys(other), autojunk=False)
    for start, other_start, size in matcher.get_matching_blocks():
        keys[other_start : other_start + size] = [token.index for token in first[start : start + size]]
    return keys


def _text(run: Analysis) -> str:
    words = " ".join(run.text.split())
    return f"“{words[:_TEXT_CHARS].rstrip()}…”" if len(words) > _TEXT_CHARS else f"“{words}”"


def _setting(settings: Settings, name: str, choices: bool) -> str:
    value = getattr(settings, name)
    if isinstance(value, bool):
        return name if value else f"no {name}"
    return str(value) if choices else f"{name} {value}"


def run_labels(runs: Sequence[Analysis]) -> tuple[tuple[str, ...], str]:
    """Each run's label, naming only what differs between the runs (model, text, then settings in field
    order), and what those are; runs that differ in nothing are numbered, and so are labels that come out alike
    (two texts that differ only past what a label shows)."""
    columns: list[tuple[str, list[object], list[str]]] = [
        ("model", [run.model_label for run in runs], [run.model_label for run in runs]),
        ("text", [run.text for run in runs], [_text(run) for run in runs]),
    ]
    for item in fields(Settings):
        if item.name not in _IGNORED:
            choices = bool(item.metadata["option"].choices)
            values = [getattr(run.settings, item.name) for run in runs]
            columns.append((item.name, values, [_setting(run.settings, item.name, choices) for run in runs]))
    differing = [(name, shown) for name, values, shown in columns if len(set(values)) > 1]
    if not differing:
        return tuple(f"run {number}" for number in range(1, len(runs) + 1)), "run"
    labels = [" · ".join(shown[i] for _, shown in differing) for i in range(len(runs))]
    if len(set(labels)) < len(labels):
        labels = [f"{label} (run {number})" for number, label in enumerate(labels, start=1)]
    return tuple(labels), " · ".join(name for name, _ in differing)


def compare(runs: Sequence[Analysis]) -> Comparison:
    """Line up 1 to `MAX_RUNS` analyses: label each by what differs and match every run's tokens to run A's."""
    if not 1 <= len(runs) <= MAX_RUNS:
        raise InputError(f"a comparison takes 1 to {MAX_RUNS} runs; got {len(runs)}")
    labels, differs = run_labels(runs)
    first = runs[0].tokens
    keys = tuple(np.array([t.index for t in first]) if i == 0 else match_tokens(first, run.tokens) for i, run in enumerate(runs))
    return Comparison(tuple(runs), labels, differs, keys)
