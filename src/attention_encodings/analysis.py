"""The result of tracing one text: `analyze()` and the `Analysis` object, with tidy tables and JSON.

Every measure takes one shape, a `Trajectory` (layers × tokens), so tables, JSON and charts treat
cosine, rank and overlap alike.
"""

from __future__ import annotations

import json
import os
import weakref
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from .errors import InputError
from .metrics import DEFAULT_REFERENCE, Progress, ReferenceSpace, check_reference, measure, reference_space
from .models import DEFAULT_DEVICE, DEFAULT_DTYPE, LoadedModel, load_model
from .trace import DEFAULT_TAP, check_tap, encode, trace

DEFAULT_TOP_K = 100
DEFAULT_NEIGHBOURS = 15


@dataclass(frozen=True)
class Token:
    """One input token: its position, vocabulary id, readable text, and whether it is special (`<s>`, `[CLS]`…)."""

    index: int
    id: int
    text: str
    special: bool


@dataclass(frozen=True)
class Neighbour:
    """A vocabulary item near a token's representation, with its cosine."""

    id: int
    text: str
    cosine: float


@dataclass(frozen=True)
class Trajectory:
    """One measure over layers × tokens (the shape of tuned-lens's `TrajectoryStatistic`)."""

    name: str
    layers: tuple[int, ...]
    """Row labels: layers 0..N, or for overlap the first layer l of each pair (l, l + 1)."""
    values: np.ndarray
    """(len(layers), T), indexed [layer][token]."""
    description: str

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return np.array(self.values, dtype=dtype, copy=copy)

    def take(self, tokens: slice) -> Trajectory:
        """The same measure for a slice of the tokens."""
        return replace(self, values=self.values[:, tokens])


@dataclass(frozen=True)
class Analysis:
    """Cosine, rank, top-k overlap and neighbours of every token at every layer of one text."""

    model: str
    """The resolved model id or path."""
    model_label: str
    model_reason: str
    tap: str
    reference: str
    top_k: int
    tokens: tuple[Token, ...]
    cosine: Trajectory
    rank: Trajectory
    overlap: Trajectory
    neighbour_ids: np.ndarray
    """(N+1, T, n) vocabulary ids, nearest first."""
    neighbour_cosines: np.ndarray
    """(N+1, T, n)."""
    neighbour_texts: np.ndarray
    """(N+1, T, n) readable text of each neighbour id."""
    dropped: int = 0
    """Tokens cut off the end by truncation."""

    @property
    def layers(self) -> tuple[int, ...]:
        """0..N: the embedding output, then one layer per encoder block."""
        return self.cosine.layers

    @property
    def measures(self) -> dict[str, Trajectory]:
        return {t.name: t for t in (self.cosine, self.rank, self.overlap)}

    def neighbours(self, layer: int, token: int) -> list[Neighbour]:
        """The nearest vocabulary items to `token`'s representation at `layer`."""
        return [
            Neighbour(int(i), str(text), float(c))
            for i, text, c in zip(
                self.neighbour_ids[layer, token], self.neighbour_texts[layer, token], self.neighbour_cosines[layer, token]
            )
        ]

    def token_matches(self, query: int | str) -> list[int]:
        """Indices of the tokens `query` names: an index, else tokens whose text matches (exactly, then
        ignoring surrounding space and case)."""
        if isinstance(query, int) or (isinstance(query, str) and query.strip().isdigit()):
            index = int(query)
            return [index] if 0 <= index < len(self.tokens) else []
        for key in (lambda s: s, lambda s: s.strip(), lambda s: s.strip().casefold()):
            found = [t.index for t in self.tokens if key(t.text) == key(query)]
            if found:
                return found
        return []

    def token_index(self, query: int | str) -> int:
        """The first token `query` names, or an `InputError` listing the tokens."""
        found = self.token_matches(query)
        if not found:
            listing = " ".join(f"{t.index}:{t.text.strip() or t.text!r}" for t in self.tokens)
            raise InputError(f"no token matches {query!r}; tokens are {listing}")
        return found[0]

    def select(self, token: int | str) -> Analysis:
        """This analysis narrowed to the one token `token` names (its original index is kept)."""
        index = self.token_index(token)
        keep = slice(index, index + 1)
        return replace(
            self,
            tokens=self.tokens[keep],
            cosine=self.cosine.take(keep),
            rank=self.rank.take(keep),
            overlap=self.overlap.take(keep),
            neighbour_ids=self.neighbour_ids[:, keep],
            neighbour_cosines=self.neighbour_cosines[:, keep],
            neighbour_texts=self.neighbour_texts[:, keep],
        )

    def to_frame(self) -> pd.DataFrame:
        """Tidy table: one row per (token, layer) with cosine, rank and overlap with the next layer."""
        layers, tokens = self.cosine.values.shape
        overlap = np.full((layers, tokens), pd.NA, dtype=object)
        overlap[:-1] = self.overlap.values
        return pd.DataFrame(
            {
                "token_index": np.tile([t.index for t in self.tokens], layers),
                "token_id": np.tile([t.id for t in self.tokens], layers),
                "token": np.tile(np.array([t.text for t in self.tokens], dtype=object), layers),
                "special": np.tile([t.special for t in self.tokens], layers),
                "layer": np.repeat(self.layers, tokens),
                "cosine": self.cosine.values.reshape(-1),
                "rank": self.rank.values.reshape(-1),
                "overlap_next": pd.array(overlap.reshape(-1), dtype="Int64"),
            }
        )

    def neighbours_frame(self) -> pd.DataFrame:
        """Tidy table of neighbours: one row per (token, layer, neighbour)."""
        layers, tokens, n = self.neighbour_ids.shape
        layer, token, place = np.meshgrid(np.arange(layers), np.arange(tokens), np.arange(n), indexing="ij")
        index = np.array([t.index for t in self.tokens])
        return pd.DataFrame(
            {
                "token_index": index[token.reshape(-1)],
                "layer": layer.reshape(-1),
                "neighbour": place.reshape(-1) + 1,
                "neighbour_id": self.neighbour_ids.reshape(-1),
                "neighbour_text": self.neighbour_texts.reshape(-1),
                "cosine": self.neighbour_cosines.reshape(-1),
            }
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract: model, tap, reference, top_k, tokens, layers, cosine, rank, overlap, neighbours."""
        layers, tokens, _ = self.neighbour_ids.shape
        return {
            "model": self.model,
            "tap": self.tap,
            "reference": self.reference,
            "top_k": self.top_k,
            "tokens": [t.__dict__ for t in self.tokens],
            "layers": list(self.layers),
            "cosine": self.cosine.values.tolist(),
            "rank": self.rank.values.tolist(),
            "overlap": self.overlap.values.tolist(),
            "neighbours": [
                [[n.__dict__ for n in self.neighbours(layer, token)] for token in range(tokens)]
                for layer in range(layers)
            ],
        }

    def to_json(self, indent: int | None = None) -> str:
        """`to_dict()` as JSON text (UTF-8 characters kept as they are)."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)


_references: weakref.WeakKeyDictionary[Any, dict[str, ReferenceSpace]] = weakref.WeakKeyDictionary()


def reference_for(handle: LoadedModel, name: str) -> ReferenceSpace:
    """The named reference space of a loaded model, built once and kept while the model lives."""
    check_reference(name)
    with handle.lock:
        spaces = _references.setdefault(handle.model, {})
        if name not in spaces:
            spaces[name] = reference_space(name, handle.adapter.embedding_parts(handle.model))
        return spaces[name]


def _check_count(name: str, value: object, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be a whole number, not {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and at most the vocabulary size, {maximum}"
        raise InputError(f"{name} must be at least {minimum}{upper}; got {value}")
    return int(value)


def analyze(
    text: str,
    model: str | os.PathLike[str] | LoadedModel | None = None,
    tap: str = DEFAULT_TAP,
    reference: str = DEFAULT_REFERENCE,
    top_k: int = DEFAULT_TOP_K,
    neighbours: int = DEFAULT_NEIGHBOURS,
    *,
    truncate: bool = False,
    progress: Progress | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> Analysis:
    """Trace `text` through `model` and measure every token at every layer.

    `model` is a hub id, a local directory, `"bundled"`, a handle from `load_model`, or None for the
    default (roberta-base if it can be loaded, else the bundled all-MiniLM-L6-v2). `device` (cpu, cuda,
    auto) and `dtype` (float32, float16, bfloat16) say where a model loaded here runs; a handle keeps its own.
    Bad input raises `InputError`; a model that cannot be loaded raises `ModelLoadError`.
    """
    check_tap(tap)
    check_reference(reference)
    _check_count("top_k", top_k, minimum=1)
    _check_count("neighbours", neighbours, minimum=0)
    if isinstance(model, LoadedModel):
        if device is not None or dtype is not None:
            raise InputError("device and dtype apply when analyze() loads the model; pass them to load_model()")
        handle = model
    else:
        handle = load_model(model, device=device or DEFAULT_DEVICE, dtype=dtype or DEFAULT_DTYPE)
    _check_count("top_k", top_k, minimum=1, maximum=handle.vocab_size)
    _check_count("neighbours", neighbours, minimum=0, maximum=handle.vocab_size)
    space = reference_for(handle, reference)
    encoding = encode(handle, text, truncate=truncate)
    states = trace(handle, encoding).states(tap)
    offsets = handle.adapter.slot_offsets(handle.model, encoding.position_ids, encoding.token_type_ids)
    result = measure(
        states, encoding.input_ids, offsets, space, top_k=top_k, neighbours=neighbours, progress=progress
    )
    ids = encoding.input_ids.tolist()
    special = set(handle.tokenizer.all_special_ids)
    tokens = tuple(
        Token(index, token_id, text, token_id in special)
        for index, (token_id, text) in enumerate(zip(ids, handle.token_texts(ids)))
    )
    neighbour_ids = result.neighbour_ids.cpu().numpy()
    unique = np.unique(neighbour_ids)
    texts = np.array(handle.token_texts(unique.tolist()), dtype=object)
    layers = tuple(range(states.shape[0]))
    return Analysis(
        model=handle.name,
        model_label=handle.label,
        model_reason=handle.reason,
        tap=tap,
        reference=reference,
        top_k=top_k,
        tokens=tokens,
        cosine=Trajectory("cosine", layers, result.cosine.cpu().numpy(), "cosine to the token's own reference encoding"),
        rank=Trajectory("rank", layers, result.rank.cpu().numpy(), "vocabulary items closer than the token's own"),
        overlap=Trajectory(
            "overlap", layers[:-1], result.overlap.cpu().numpy(), f"top-{top_k} neighbours kept from layer l to l + 1"
        ),
        neighbour_ids=neighbour_ids,
        neighbour_cosines=result.neighbour_cosines.cpu().numpy(),
        neighbour_texts=texts[np.searchsorted(unique, neighbour_ids)],
        dropped=encoding.dropped,
    )
