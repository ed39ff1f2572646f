"""The result of tracing one text: `analyze()` and the `Analysis` object, with tidy tables and JSON.

Every measure of the tokens takes one shape, a `Trajectory` (layers × tokens) that carries its definition
(`catalog.MeasureInfo`), so tables, JSON and charts treat every measure alike; a measure of the whole text (the
anisotropy baseline) is one value per layer. The token-to-token similarity, asked for with `similarity=True`, is
not a measure of one token but of two: a `Similarity` (layers × tokens × tokens), and `Analysis.pair(p, q)`
follows one pair of tokens through the layers.
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .attribution import Attribution, attribute
from .catalog import HEAD_MEASURES, LENS_MEASURES, MEASURES, SIMILARITY, TEXT_MEASURES, MeasureInfo
from .display import brief, layer_span, listing, shown, typed
from .errors import InputError, MeasureUnavailableError, TokenError
from .metrics import (
    DEFAULT_REFERENCE,
    HeadLens,
    Normalization,
    Progress,
    ReferenceSpace,
    Stats,
    anisotropy,
    check_reference,
    embedding_is_word,
    measure,
    normalization,
    reference_space,
    scan,
    token_similarity,
)
from .models import DEFAULT_DEVICE, DEFAULT_DTYPE, LoadedModel, load_model
from .settings import DEFAULT_NEIGHBOURS, DEFAULT_TOP_K, Settings
from .stats import load_stats
from .trace import DEFAULT_TAP, Encoding, Trace, encode, trace
from .tuned_lens import LearnedLens, check_lens, lens_values, read_lens

if TYPE_CHECKING:  # pandas loads with the first table asked for, not with every analysis
    import pandas as pd


@dataclass(frozen=True)
class Token:
    """One input token: its position, vocabulary id, readable text, and whether it is special (`<s>`, `[CLS]`…)."""

    index: int
    id: int
    text: str
    special: bool

    @property
    def shown(self) -> str:
        """The text as tables, charts and messages show it (`␣flies`, see `display.shown`)."""
        return shown(self.text)


@dataclass(frozen=True)
class Neighbour:
    """A vocabulary item near a token's representation, with its cosine."""

    id: int
    text: str
    cosine: float


@dataclass(frozen=True)
class Prediction:
    """A vocabulary item the model's output head predicts from a token's representation, with its probability."""

    id: int
    text: str
    probability: float


@dataclass(frozen=True)
class Trajectory:
    """One measure over layers × tokens (the shape of tuned-lens's `TrajectoryStatistic`), with its definition."""

    info: MeasureInfo
    layers: tuple[int, ...]
    """Row labels: layers 0..N, or for a layer-pair measure the first layer l of each pair (l, l + 1)."""
    values: np.ndarray
    """(len(layers), T), indexed [layer][token]. Integer measures mark a missing value with -1, float ones NaN."""

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def description(self) -> str:
        return self.info.description

    def __repr__(self) -> str:
        return brief("Trajectory", measure=self.name, layers=layer_span(self.layers), tokens=self.values.shape[1], dtype=self.values.dtype)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return np.array(self.values, dtype=dtype, copy=copy)

    def take(self, tokens: slice) -> Trajectory:
        """The same measure for a slice of the tokens."""
        return replace(self, values=self.values[:, tokens])

    def missing(self) -> np.ndarray:
        """Where a value is missing (a head-lens target past the last token), as a boolean array."""
        return self.values < 0 if self.info.integer else np.isnan(self.values)

    def column(self, layers: int) -> pd.api.extensions.ExtensionArray | np.ndarray:
        """The values as one tidy-frame column over `layers` rows per token, layer-major. A layer-pair measure
        (null at the last layer) or a nullable one is a nullable Int64 or Float32 column (float32 as computed)."""
        import pandas as pd

        full = np.zeros((layers, self.values.shape[1]), dtype=self.values.dtype)
        null = np.ones(full.shape, dtype=bool)
        full[: len(self.layers)] = self.values
        null[: len(self.layers)] = self.missing()
        if not (self.info.steps or self.info.nullable):
            return full.reshape(-1)
        column = pd.array(full.reshape(-1), dtype="Int64" if self.info.integer else "Float32")
        column[null.reshape(-1)] = pd.NA
        return column

    def to_list(self) -> list[list[Any]]:
        """The values as nested lists for JSON, missing ones as null."""
        return np.where(self.missing(), None, self.values.astype(object)).tolist()


def token_matches(tokens: Sequence[Token], query: int | str) -> list[int]:
    """Indices of the `tokens` that `query` names: an index, else tokens whose text matches (exactly, then
    ignoring surrounding space and case); `␣` stands for a space, as tables show it."""
    if isinstance(query, int) or (isinstance(query, str) and query.strip().isdigit()):
        return [t.index for t in tokens if t.index == int(query)]
    query = typed(query)
    for key in (lambda s: s, lambda s: s.strip(), lambda s: s.strip().casefold()):
        found = [t.index for t in tokens if key(t.text) == key(query)]
        if found:
            return found
    return []


def token_index(tokens: Sequence[Token], query: int | str, other_than: int | None = None) -> int:
    """The first of `tokens` that `query` names (one other than `other_than` if `query` names several), or an
    `InputError` listing the tokens."""
    found = token_matches(tokens, query)
    if not found:
        listing = " ".join(f"{t.index}:{t.shown}" for t in tokens)
        raise TokenError(f"no token matches {query!r}; tokens are {listing}")
    return next((index for index in found if index != other_than), found[0])


@dataclass(frozen=True)
class Similarity:
    """Every token's cosine to every token of the text at each layer, at the analysis's tap:
    `values[l, i, j] = cos(x_l[rows[i]], x_l[columns[j]])`. Rows follow the analysis's tokens (one token after
    `Analysis.select`); columns are every token of the text, so column j is token index j."""

    rows: tuple[Token, ...]
    columns: tuple[Token, ...]
    values: np.ndarray
    """(N+1, len(rows), len(columns)) float32."""

    def __repr__(self) -> str:
        rows, columns = (listing([t.text for t in tokens]) for tokens in (self.rows, self.columns))
        return brief("Similarity", layers=layer_span(range(len(self.values))), rows=rows, columns=columns)

    def take(self, rows: slice) -> Similarity:
        """The same similarity for a slice of the rows."""
        return replace(self, rows=self.rows[rows], values=self.values[:, rows])

    def to_frame(self) -> pd.DataFrame:
        """Tidy table: one row per (layer, token, other token), with both tokens' indices and texts."""
        import pandas as pd

        layers, rows, columns = self.values.shape
        layer, row, column = np.meshgrid(np.arange(layers), np.arange(rows), np.arange(columns), indexing="ij")
        row, column = row.reshape(-1), column.reshape(-1)
        texts = np.array([t.text for t in self.columns], dtype=object)
        return pd.DataFrame(
            {
                "layer": layer.reshape(-1),
                "token_index": np.array([t.index for t in self.rows])[row],
                "token": np.array([t.text for t in self.rows], dtype=object)[row],
                "other_index": column,
                "other": texts[column],
                "similarity": self.values.reshape(-1),
            }
        )


@dataclass(frozen=True)
class Pair:
    """Two tokens' similarity at each layer (`values[l] = cos(x_l[first], x_l[second])`): where they part ways."""

    first: Token
    second: Token
    values: np.ndarray
    """(N+1,), layer 0 first."""
    info: MeasureInfo = SIMILARITY

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(range(len(self.values)))

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return np.array(self.values, dtype=dtype, copy=copy)

    def __repr__(self) -> str:
        tokens = f"{self.first.index} {self.first.shown}, {self.second.index} {self.second.shown}"
        return brief("Pair", tokens=tokens, layers=layer_span(self.layers))


@dataclass(frozen=True)
class Analysis:
    """Every measure and the neighbours of every token at every layer of one text."""

    model: str
    """The model's name (`LoadedModel.name`): a hub id or a local directory as given, never an install path."""
    model_label: str
    model_reason: str
    settings: Settings
    tokens: tuple[Token, ...]
    measures: dict[str, Trajectory]
    """Every measure computed, by name, in the order of `metrics.MEASURES`."""
    text_measures: dict[str, np.ndarray]
    """Every measure of the whole text (`metrics.TEXT_MEASURES`), by name: (N+1,) per layer, NaN where missing."""
    neighbour_ids: np.ndarray
    """(N+1, T, n) vocabulary ids, nearest first."""
    neighbour_cosines: np.ndarray
    """(N+1, T, n)."""
    neighbour_texts: np.ndarray
    """(N+1, T, n) readable text of each neighbour id."""
    dropped: int = 0
    """Tokens cut off the end by truncation."""
    similarity: Similarity | None = None
    """Token-to-token cosines, when asked for (`similarity=True`); None otherwise."""
    text: str = ""
    """The text analysed (what comparisons name when runs differ in it)."""
    head_targets: np.ndarray | None = None
    """(T,) what the output head should predict at each token (the token itself, or the next one for a causal
    model), -1 where nothing (after the last token); None where the model has no head."""
    prediction_ids: np.ndarray | None = None
    """(N+1, T, n) the head's most probable vocabulary ids, most probable first; None without a head."""
    prediction_probabilities: np.ndarray | None = None
    """(N+1, T, n) their probabilities (softmax over the whole vocabulary)."""
    prediction_texts: np.ndarray | None = None
    """(N+1, T, n) readable text of each predicted id."""
    absent: dict[str, str] = field(default_factory=dict)
    """Measures this model cannot give, each with the reason (head_rank where there is no output head)."""
    attribution: Attribution | None = None
    """Which heads moved each token (`attribution=True`); None otherwise."""

    def __getattr__(self, name: str) -> Trajectory | np.ndarray:
        """A measure by name: `result.cosine`, `result.rank`, `result.zscore`, `result.head_rank`… (a `Trajectory`),
        or a measure of the text, `result.anisotropy` (an array over layers)."""
        if name in MEASURES:
            return self.measure(name)
        found = self.__dict__.get("text_measures") or {}
        if name in found:
            return found[name]
        raise AttributeError(f"{type(self).__name__!r} has no attribute or measure {name!r}")

    def measure(self, name: str) -> Trajectory:
        """The measure `name`, or a one-line `MeasureUnavailableError` saying why this analysis lacks it."""
        measures = self.__dict__.get("measures") or {}
        if name in measures:
            return measures[name]
        why = (self.__dict__.get("absent") or {}).get(name) or f"it has {', '.join(measures)}"
        raise MeasureUnavailableError(f"this analysis has no {name!r} measure: {why}")

    def __repr__(self) -> str:
        return brief(
            "Analysis",
            model=self.model_label,
            tap=self.tap,
            reference=self.reference,
            normalize=self.settings.normalize,
            tokens=f"{len(self.tokens)} {listing([t.text for t in self.tokens])}",
            layers=layer_span(self.layers),
            measures=", ".join([*self.measures, *self.text_measures]),
        )

    @property
    def has_head(self) -> bool:
        """Whether the model's output head was read (head_rank and the head's predictions)."""
        return self.prediction_ids is not None

    @property
    def charted(self) -> list[Trajectory]:
        """The measures with a chart, a heatmap and a table of their own (`MeasureInfo.charted`), in catalog order;
        the others are baselines drawn inside those."""
        return [m for m in self.measures.values() if m.info.charted]

    @property
    def tap(self) -> str:
        return self.settings.tap

    @property
    def reference(self) -> str:
        return self.settings.reference

    @property
    def top_k(self) -> int:
        return self.settings.top_k

    @property
    def layers(self) -> tuple[int, ...]:
        """0..N: the embedding output, then one layer per block."""
        return tuple(range(self.neighbour_ids.shape[0]))

    def neighbours(self, layer: int, token: int) -> list[Neighbour]:
        """The nearest vocabulary items to `token`'s representation at `layer`."""
        return [
            Neighbour(int(i), str(text), float(c))
            for i, text, c in zip(
                self.neighbour_ids[layer, token], self.neighbour_texts[layer, token], self.neighbour_cosines[layer, token]
            )
        ]

    def predictions(self, layer: int, token: int) -> list[Prediction]:
        """The output head's most probable vocabulary items from `token`'s representation at `layer`."""
        ids, probabilities, texts = self._predictions()
        return [
            Prediction(int(i), str(text), float(p))
            for i, text, p in zip(ids[layer, token], texts[layer, token], probabilities[layer, token])
        ]

    def _predictions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.prediction_ids is None or self.prediction_probabilities is None or self.prediction_texts is None:
            self.measure(HEAD_MEASURES[0])  # raises, saying why
        return self.prediction_ids, self.prediction_probabilities, self.prediction_texts  # type: ignore[return-value]

    def token_matches(self, query: int | str) -> list[int]:
        """Indices of the tokens `query` names: an index, else tokens whose text matches (exactly, then
        ignoring surrounding space and case)."""
        return token_matches(self.tokens, query)

    def token_index(self, query: int | str) -> int:
        """The first token `query` names, or an `InputError` listing the tokens."""
        return token_index(self.tokens, query)

    def select(self, token: int | str) -> Analysis:
        """This analysis narrowed to the one token `token` names (its original index is kept; its similarity
        keeps the token's row, against every token of the text)."""
        index = self.token_index(token)
        keep = slice(index, index + 1)
        return replace(
            self,
            tokens=self.tokens[keep],
            measures={name: trajectory.take(keep) for name, trajectory in self.measures.items()},
            neighbour_ids=self.neighbour_ids[:, keep],
            neighbour_cosines=self.neighbour_cosines[:, keep],
            neighbour_texts=self.neighbour_texts[:, keep],
            similarity=None if self.similarity is None else self.similarity.take(keep),
            **{
                name: None if getattr(self, name) is None else getattr(self, name)[:, keep]
                for name in ("prediction_ids", "prediction_probabilities", "prediction_texts")
            },
            head_targets=None if self.head_targets is None else self.head_targets[keep],
            attribution=None if self.attribution is None else self.attribution.select(index),
        )

    def pair(self, first: int | str, second: int | str) -> Pair:
        """The similarity of two tokens (indices or texts, as `select` takes them) at each layer. When both name
        the same text, the second is its next occurrence: `pair("flies", "flies")` compares the two "flies"."""
        similarity = self.similarity
        if similarity is None:
            raise InputError("this analysis has no token-to-token similarity; analyse with similarity=True (--similarity)")
        p = self.token_index(first)
        q = token_index(similarity.columns, second, other_than=p)
        row = next(i for i, t in enumerate(similarity.rows) if t.index == p)
        return Pair(similarity.rows[row], similarity.columns[q], similarity.values[:, row, q])

    def to_frame(self) -> pd.DataFrame:
        """Tidy table: one row per (token, layer), a column per measure (a layer-pair measure such as overlap is
        named for the step to the next layer, `overlap_next`, and is null at the last layer), then a column per
        measure of the text (`anisotropy`: the text's value at that layer, the same on every token's row)."""
        import pandas as pd

        layers, tokens = len(self.layers), len(self.tokens)
        columns = {
            "token_index": np.tile([t.index for t in self.tokens], layers),
            "token_id": np.tile([t.id for t in self.tokens], layers),
            "token": np.tile(np.array([t.text for t in self.tokens], dtype=object), layers),
            "special": np.tile([t.special for t in self.tokens], layers),
            "layer": np.repeat(self.layers, tokens),
        }
        columns |= {t.info.column: t.column(layers) for t in self.measures.values()}
        columns |= {name: pd.array(np.repeat(values, tokens), dtype="Float32") for name, values in self.text_measures.items()}
        return pd.DataFrame(columns)

    def neighbours_frame(self) -> pd.DataFrame:
        """Tidy table of neighbours: one row per (token, layer, neighbour)."""
        return self._items_frame("neighbour", self.neighbour_ids, self.neighbour_texts, "cosine", self.neighbour_cosines)

    def predictions_frame(self) -> pd.DataFrame:
        """Tidy table of the output head's predictions: one row per (token, layer, prediction), most probable
        first."""
        ids, probabilities, texts = self._predictions()
        return self._items_frame("prediction", ids, texts, "probability", probabilities)

    def _items_frame(self, item: str, ids: np.ndarray, texts: np.ndarray, score: str, scores: np.ndarray) -> pd.DataFrame:
        """One row per (token, layer, item) of a ranked list of vocabulary items."""
        import pandas as pd

        layers, tokens, n = ids.shape
        layer, token, place = np.meshgrid(np.arange(layers), np.arange(tokens), np.arange(n), indexing="ij")
        index = np.array([t.index for t in self.tokens])
        return pd.DataFrame(
            {
                "token_index": index[token.reshape(-1)],
                "layer": layer.reshape(-1),
                item: place.reshape(-1) + 1,
                f"{item}_id": ids.reshape(-1),
                f"{item}_text": texts.reshape(-1),
                score: scores.reshape(-1),
            }
        )

    def similarity_frame(self) -> pd.DataFrame:
        """The token-to-token similarity as a tidy table (see `Similarity.to_frame`); an `InputError` when the
        analysis has none."""
        if self.similarity is None:
            raise InputError("this analysis has no token-to-token similarity; analyse with similarity=True (--similarity)")
        return self.similarity.to_frame()

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract: model, tap, reference, top_k, normalize, stats, tokens, layers, every measure
        ([layer][token]), every measure of the text ([layer]), neighbours and, when asked for, similarity
        ([layer][token][every token of the text]), and, where the model has an output head, its predictions."""
        layers, tokens, _ = self.neighbour_ids.shape
        extra = {} if self.similarity is None else {"similarity": self.similarity.values.tolist()}
        if self.attribution is not None:
            extra["attribution"] = self.attribution.to_dict()
        if self.has_head:
            extra["predictions"] = [
                [[p.__dict__ for p in self.predictions(layer, token)] for token in range(tokens)] for layer in range(layers)
            ]
        return {
            "model": self.model,
            "tap": self.tap,
            "reference": self.reference,
            "top_k": self.top_k,
            "normalize": self.settings.normalize,
            "stats": self.settings.stats,
            "tokens": [t.__dict__ for t in self.tokens],
            "layers": list(self.layers),
            **{name: trajectory.to_list() for name, trajectory in self.measures.items()},
            **{name: [None if np.isnan(v) else float(v) for v in values] for name, values in self.text_measures.items()},
            "neighbours": [
                [[n.__dict__ for n in self.neighbours(layer, token)] for token in range(tokens)]
                for layer in range(layers)
            ],
            **extra,
        }

    def to_json(self, indent: int | None = None) -> str:
        """`to_dict()` as JSON text (UTF-8 characters kept as they are)."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)


_references: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], ReferenceSpace]] = weakref.WeakKeyDictionary()
NORMALIZED_SPACES = 4
"""Normalised reference spaces kept per model (the most recently built), besides the plain ones."""


def reference_for(handle: LoadedModel, name: str, normalized: Normalization | None = None) -> ReferenceSpace:
    """The named reference space of a loaded model (its rows normalised by `normalized`, if given), built once
    and kept while the model lives."""
    check_reference(name)
    key = (name, "" if normalized is None else normalized.key)
    with handle.lock:
        spaces = _references.setdefault(handle.model, {})
        if key not in spaces:
            kept = [other for other in spaces if other[1]]
            for old in kept[: max(0, len(kept) - NORMALIZED_SPACES + 1)] if normalized is not None else ():
                del spaces[old]
            spaces[key] = reference_space(name, handle.adapter.embedding_parts(handle.model), normalized)
        return spaces[key]


_heads: weakref.WeakKeyDictionary[Any, HeadLens | None] = weakref.WeakKeyDictionary()


def head_lens_for(handle: LoadedModel) -> HeadLens | None:
    """The model's output head as a lens, built once per model; None where the loaded model has no head."""
    with handle.lock:
        if handle.model not in _heads:
            head = handle.adapter.head(handle.model)
            vocab = handle.model.get_output_embeddings().weight.shape[0] if head is not None else 0
            _heads[handle.model] = None if head is None else HeadLens(head, int(vocab))
        return _heads[handle.model]


def head_targets(handle: LoadedModel, encodings: Sequence[Encoding]) -> torch.Tensor:
    """(ΣT,) what the head should predict at each packed token: the token itself (masked LM) or the next token
    of the same text (causal LM), -1 after each text's last token."""
    if handle.adapter.objective == "masked":
        return torch.cat([e.input_ids for e in encodings])
    end = torch.full((1,), -1, dtype=torch.long, device=handle.device)
    return torch.cat([torch.cat((e.input_ids[1:], end)) for e in encodings])


def model_notes(handle: LoadedModel) -> tuple[str, ...]:
    """What a reader of this model's numbers should know about the model: said on its model line (command
    line, page) beside the reason it is in use."""
    notes = []
    if embedding_is_word(handle.adapter.embedding_parts(handle.model)):
        notes.append("the embedding reference equals word here (no absolute positions or embedding norm)")
    if head_lens_for(handle) is None:
        notes.append(missing_head(handle))
    return tuple(notes)


def missing_head(handle: LoadedModel) -> str:
    """Why the head measures are absent for a model loaded without an output head."""
    return (
        f"{handle.label} has no output head (it loads as {type(handle.model).__name__}), "
        f"so {', '.join(HEAD_MEASURES)} and the head's predictions are absent"
    )


def _check_at_most_vocabulary(settings: Settings, handle: LoadedModel) -> None:
    for name in ("top_k", "neighbours"):
        value = getattr(settings, name)
        if value > handle.vocab_size:
            minimum = 1 if name == "top_k" else 0
            raise InputError(f"{name} must be at least {minimum} and at most the vocabulary size, {handle.vocab_size}; got {value}")


def load_for(settings: Settings, model: LoadedModel | None = None) -> LoadedModel:
    """The model an analysis with `settings` runs on: `model` when given (it keeps its own device and dtype),
    else `settings.model` loaded on `settings.device` in `settings.dtype`."""
    if model is not None:
        return model
    return load_model(settings.model, device=settings.device, dtype=settings.dtype)


def analyze(
    text: str,
    model: str | os.PathLike[str] | LoadedModel | None = None,
    tap: str = DEFAULT_TAP,
    reference: str = DEFAULT_REFERENCE,
    top_k: int = DEFAULT_TOP_K,
    neighbours: int = DEFAULT_NEIGHBOURS,
    *,
    truncate: bool = False,
    similarity: bool = False,
    attribution: bool = False,
    progress: Progress | None = None,
    device: str | None = None,
    dtype: str | None = None,
    normalize: str = "none",
    stats: str | os.PathLike[str] | Stats | None = None,
    lens: str | os.PathLike[str] | LearnedLens | None = None,
) -> Analysis:
    """Trace `text` through `model` and measure every token at every layer.

    `model` is a hub id, a local directory, `"bundled"`, a handle from `load_model`, or None for the
    default (roberta-base if it can be loaded, else the bundled all-MiniLM-L6-v2). `device` (cpu, cuda,
    auto) and `dtype` (float32, float16, bfloat16) say where a model loaded here runs; a handle keeps its own.
    `similarity=True` also measures every token's cosine to every other token at each layer (`Analysis.pair`).
    `attribution=True` also splits every layer into heads, MLP and residual (`Analysis.attribution`).
    `normalize` (center, standardize) normalises the tapped vectors and reference rows with `stats`: a
    `stats.npz` path, `"sample"`, or `Stats` already in memory. `lens` (a folder `fit-lens` wrote, or a
    `LearnedLens`) adds its measures: tuned_rank and tuned_kl, or probe_cosine and probe_rank.
    Bad input raises `InputError`; a model that cannot be loaded raises `ModelLoadError`.
    """
    settings, handle = settings_for(
        model, tap=tap, reference=reference, top_k=top_k, neighbours=neighbours, truncate=truncate,
        similarity=similarity, attribution=attribution, device=device, dtype=dtype, normalize=normalize,
        stats=stats.source if isinstance(stats, Stats) else (None if stats is None else os.fspath(stats)),
        lens=lens.source if isinstance(lens, LearnedLens) else (None if lens is None else os.fspath(lens)),
    )
    return analyze_with(
        settings, text, handle, progress=progress, stats=stats if isinstance(stats, Stats) else None,
        lens=lens if isinstance(lens, LearnedLens) else None,
    )


def settings_for(
    model: str | os.PathLike[str] | LoadedModel | None, *, device: str | None, dtype: str | None, **fields: Any
) -> tuple[Settings, LoadedModel | None]:
    """The `Settings` of a Python call (`analyze`, `analyze_corpus`), and the handle when `model` is one (which keeps
    its own device and dtype, so naming them too is an error)."""
    handle = model if isinstance(model, LoadedModel) else None
    if handle is not None and (device is not None or dtype is not None):
        raise InputError("device and dtype apply when the model is loaded here; pass them to load_model()")
    name = handle.name if handle is not None else (None if model is None else os.fspath(model))
    return Settings(model=name, device=device or DEFAULT_DEVICE, dtype=dtype or DEFAULT_DTYPE, **fields), handle


@dataclass(frozen=True)
class Measured:
    """Every measure of a batch of texts, packed along the token axis (the texts' tokens one after another)."""

    encodings: tuple[Encoding, ...]
    values: dict[str, torch.Tensor]
    """Each measure by name (see `metrics.MEASURES`): (N+1, ΣT), or (N, ΣT) for a layer-pair measure."""
    text_values: dict[str, torch.Tensor]
    """Each measure of the text by name (see `metrics.TEXT_MEASURES`): (B, N+1), a row per encoding."""
    neighbour_ids: torch.Tensor
    """(N+1, ΣT, n) vocabulary ids, nearest first."""
    neighbour_cosines: torch.Tensor
    """(N+1, ΣT, n)."""
    states: torch.Tensor
    """(N+1, ΣT, d) the tapped vectors, before any normalisation, on the model's device (corpus mode sums them)."""
    similarity: tuple[torch.Tensor, ...] | None = None
    """Per encoding, (N+1, T, T) token-to-token cosines, when `settings.similarity` asks for them."""
    head_targets: torch.Tensor | None = None
    """(ΣT,) the head's target at each token, -1 for none; None where the model has no output head."""
    prediction_ids: torch.Tensor | None = None
    """(N+1, ΣT, n) the head's most probable ids, most probable first; None without a head."""
    prediction_probabilities: torch.Tensor | None = None
    """(N+1, ΣT, n)."""
    trace: Trace | None = None
    """The trace, with what attribution reads inside the blocks, when `settings.attribution` asks for it."""
    normalization: Normalization | None = None
    """The normalisation the measures used, if any."""

    def tokens_of(self, item: int) -> slice:
        """Where encoding `item`'s tokens sit along the packed axis."""
        return token_spans(self.encodings)[item]


def token_spans(encodings: Sequence[Encoding]) -> list[slice]:
    """Where each encoding's tokens sit along the packed token axis."""
    ends = np.cumsum([len(e) for e in encodings]).tolist()
    return [slice(end - len(e), end) for end, e in zip(ends, encodings)]


def normalization_for(
    handle: LoadedModel, settings: Settings, layers: int, width: int, stats: Stats | None = None
) -> Normalization | None:
    """The normalisation `settings` ask for, from `stats` when given (statistics already in memory, such as a
    server's) or else read from `settings.stats`, checked to fit `layers` × `width` vectors at the tap."""
    if settings.normalize == "none":
        return None
    chosen = stats if stats is not None else load_stats(settings.stats or "", handle, settings.tap)
    chosen.check_fits(layers, width, handle.label, settings.tap)
    return normalization(settings.normalize, chosen, handle.device)


def measure_texts(
    handle: LoadedModel,
    settings: Settings,
    encodings: Sequence[Encoding],
    *,
    progress: Progress | None = None,
    stats: Stats | None = None,
    lens: LearnedLens | None = None,
) -> Measured:
    """Trace `encodings` in one padded batch at `settings.tap` and compute every measure of every token, and of
    each text: the one computation behind `analyze()` and corpus mode, so a text's numbers do not depend on the
    face that asks. With `settings.normalize`, the tapped vectors and reference rows are normalised first (by
    `stats`, or the statistics `settings.stats` names).

    Where the model has an output head, a second scan reads the tapped vectors through it (the head lens, never
    normalised: the head reads the model's own vectors): head_rank and the head's `neighbours` most probable
    items. With a learned lens (`lens` in memory, else the folder `settings.lens` names; checked by the caller,
    `lens_for`), its measures too (`tuned_lens.lens_values`)."""
    _check_at_most_vocabulary(settings, handle)
    learned = lens if lens is not None or settings.lens is None else read_lens(settings.lens)
    lens = head_lens_for(handle)
    final_tap = "resid_post" if learned is not None and learned.target == "final" else settings.tap
    traced = trace(handle, encodings, taps=tuple(dict.fromkeys((settings.tap, final_tap))), heads=settings.attribution)
    tapped = traced.packed(settings.tap)
    normalized = normalization_for(handle, settings, tapped.shape[0], tapped.shape[-1], stats)
    states = tapped if normalized is None else normalized.states(tapped)
    space = reference_for(handle, settings.reference, normalized)
    adapter = handle.adapter
    offsets = torch.cat([adapter.slot_offsets(handle.model, e.position_ids, e.token_type_ids) for e in encodings])
    token_ids = torch.cat([e.input_ids for e in encodings])
    passes = 1 if lens is None else 2

    def part(first: int) -> Progress | None:
        """Progress through this pass, reported as a share of all passes."""
        return None if progress is None else lambda done, total: progress(first * total + done, passes * total)

    result = measure(
        states, token_ids, offsets, space, top_k=settings.top_k, neighbours=settings.neighbours, progress=part(0)
    )
    ordinary = ~torch.isin(token_ids, torch.tensor(handle.tokenizer.all_special_ids, device=token_ids.device))
    spans = token_spans(encodings)
    text_values = {"anisotropy": torch.stack([anisotropy(states[:, span], ordinary[span]) for span in spans])}
    similarity = None
    if settings.similarity:  # text by text, so memory is the T × T of each text, never of the padded batch
        similarity = tuple(token_similarity(states[:, span]).cpu() for span in spans)
    values = {name: getattr(result, name) for name in MEASURES if hasattr(result, name)}
    head: dict[str, torch.Tensor] = {}
    if lens is not None:
        targets = head_targets(handle, encodings)
        n = settings.neighbours
        found = scan(tapped, targets, offsets, lens, keep=max(n, 1), log_partition=True, progress=part(1))
        values["head_rank"] = found.rank
        head = {
            "head_targets": targets,
            "prediction_ids": found.top_ids[..., :n],
            "prediction_probabilities": (found.top_values[..., :n] - found.log_partition[..., None]).exp(),
        }
    if learned is not None:
        inner = lens if learned.target == "final" else reference_for(handle, settings.reference)
        targets = head["head_targets"] if learned.target == "final" else token_ids
        final = traced.packed(final_tap)[-1] if learned.target == "final" else None
        values |= lens_values(learned, tapped, final, targets, offsets, inner)  # type: ignore[arg-type]
    return Measured(
        encodings=tuple(encodings),
        values={name: values[name].cpu() for name in MEASURES if name in values},
        text_values={name: text_values[name].cpu() for name in TEXT_MEASURES},
        neighbour_ids=result.neighbour_ids.cpu(),
        neighbour_cosines=result.neighbour_cosines.cpu(),
        states=tapped,
        similarity=similarity,
        **{name: tensor.cpu() for name, tensor in head.items()},
        trace=traced if settings.attribution else None,
        normalization=normalized,
    )


def analyze_with(
    settings: Settings,
    text: str,
    model: LoadedModel | None = None,
    *,
    progress: Progress | None = None,
    stats: Stats | None = None,
    lens: LearnedLens | None = None,
    focus: int | str | None = None,
) -> Analysis:
    """`analyze()` driven by a `Settings`, as every face calls it; `model` overrides `settings.model` with a
    handle that is already loaded, `stats` the statistics `settings.stats` names with ones in memory, and `lens`
    the learned lens `settings.lens` names with one in memory (either is checked to fit before any work).
    `focus` names the token whose attribution detail a long text gets (see `attribution.DETAIL_TOKENS`)."""
    handle = load_for(settings, model)
    learned = lens_for(handle, settings, lens)
    encoding = encode(handle, text, truncate=settings.truncate)
    measured = measure_texts(handle, settings, [encoding], progress=progress, stats=stats, lens=learned)
    ids = encoding.input_ids.tolist()
    special = set(handle.tokenizer.all_special_ids)
    tokens = tuple(
        Token(index, token_id, text, token_id in special)
        for index, (token_id, text) in enumerate(zip(ids, handle.token_texts(ids)))
    )
    neighbour_ids = measured.neighbour_ids.numpy()
    layers = tuple(range(neighbour_ids.shape[0]))
    head: dict[str, np.ndarray | None] = {}
    if measured.prediction_ids is not None and measured.prediction_probabilities is not None:
        head = {
            "head_targets": measured.head_targets.numpy() if measured.head_targets is not None else None,
            "prediction_ids": measured.prediction_ids.numpy(),
            "prediction_probabilities": measured.prediction_probabilities.numpy(),
            "prediction_texts": texts_of(handle, measured.prediction_ids.numpy()),
        }
    absent = {} if head else {name: missing_head(handle) for name in HEAD_MEASURES}
    absent |= {name: missing_lens(learned) for names in LENS_MEASURES.values() for name in names if name not in measured.values}
    attributed = None
    if measured.trace is not None:
        attributed = attribute(
            handle, measured.trace, settings.tap, reference_for(handle, settings.reference, measured.normalization),
            measured.normalization, tokens, measured.values["cosine"].numpy(), measured.values["rank"].numpy(),
            focus=None if focus is None else [token_index(tokens, focus)],
        )
    return Analysis(
        model=handle.name,
        model_label=handle.label,
        model_reason=handle.reason,
        settings=settings,
        tokens=tokens,
        measures={
            name: Trajectory(MEASURES[name], layers[:-1] if MEASURES[name].steps else layers, values.numpy())
            for name, values in measured.values.items()
        },
        text_measures={name: values[0].numpy() for name, values in measured.text_values.items()},
        neighbour_ids=neighbour_ids,
        neighbour_cosines=measured.neighbour_cosines.numpy(),
        neighbour_texts=texts_of(handle, neighbour_ids),
        dropped=encoding.dropped,
        similarity=None if measured.similarity is None else Similarity(tokens, tokens, measured.similarity[0].numpy()),
        text=text,
        absent=absent,
        attribution=attributed,
        **head,
    )


def lens_for(handle: LoadedModel, settings: Settings, lens: LearnedLens | None = None) -> LearnedLens | None:
    """The learned lens an analysis uses: `lens` (in memory) or the folder `settings.lens` names, checked to fit
    `handle` at `settings.tap` and `settings.reference`; None without one."""
    if lens is None and settings.lens is None:
        return None
    return check_lens(lens if lens is not None else read_lens(settings.lens or ""), handle, settings.tap, settings.reference)


def missing_lens(lens: LearnedLens | None) -> str:
    """Why a learned lens's measure is absent."""
    if lens is None:
        return "analysed without a learned lens (--lens LENS_DIR, which fit-lens writes)"
    return f"the lens {lens.source} has target {lens.target}, which gives {' and '.join(lens.measures)}"


def texts_of(handle: LoadedModel, ids: np.ndarray) -> np.ndarray:
    """The readable text of every vocabulary id in `ids`, in its shape (each distinct id decoded once)."""
    unique = np.unique(ids)
    texts = np.array(handle.token_texts(unique.tolist()), dtype=object)
    return texts[np.searchsorted(unique, ids)]

