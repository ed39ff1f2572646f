"""Measuring a corpus batch by batch: a deterministic plan of padded batches, the measures of one batch as table
rows and partial sums, and two engines that run the plan (in this process, or on Ray Data's model actors).

The driver plans every batch before any is measured, from the texts alone: texts are sorted by token count within
windows of `WINDOW` texts (so little is padding) and cut into batches of at most `batch_tokens` padded tokens. Every
engine, and a resumed run, measures exactly these batches, so they all write the same numbers.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..analysis import Trajectory, load_for, measure_texts, reference_for
from ..attribution import BatchAttribution, attribute_batch, part_heads
from ..catalog import MEASURES
from ..clusters import check_ray_address
from ..errors import AttentionEncodingsError, InputError, ModelLoadError, OptionError
from ..metrics import moment_sums
from ..metrics.similarity import unit
from ..models import LoadedModel, set_threads, usable_cpus
from ..models.pinned import PinnedModel, pin, weights_fingerprint
from ..names import CORPUS_ENGINES
from ..settings import Settings
from ..trace import encode, length_batches
from . import words as word_classes
from .sources import Source, Word

WINDOW = 1024
"""Texts sorted by length together: long enough to batch texts of similar length, short enough to keep the plan in
input order at large."""
RAY_RETRIES = 3
"""How often Ray restarts a model actor that died, and retries the batch it held, before the run fails."""
RAY_ACTOR_CPUS = 0.5
"""What each model actor reserves from Ray: a fraction, so that Ray's own read tasks still find a CPU on a small
machine (with whole CPUs the actors take them all and the job waits forever). Each actor sets its torch threads."""


@dataclass(frozen=True)
class TextStatus:
    """What became of one input record: ok, truncated or skipped, why, and how many tokens it has."""

    status: str
    reason: str | None
    n_tokens: int | None


@dataclass(frozen=True)
class Batch:
    """One padded batch of the plan: its texts, in input order."""

    index: int
    text_indices: tuple[int, ...]
    texts: tuple[str, ...]
    sent_ids: tuple[str | None, ...]
    words: tuple[tuple[Word, ...] | None, ...]
    tokens: int


@dataclass
class Shard:
    """The measures of one batch: its rows, and the float64 sums its statistics add up from."""

    index: int
    tokens: Any
    """pyarrow Table: one row per (text, layer, token)."""
    items: dict[str, Any]
    """pyarrow Tables of the other datasets, by name: `neighbours` (one row per text, layer, token and neighbour)
    and, where the model has an output head, `predictions`, when `neighbours` > 0; `heads` (one row per text,
    layer, token and part) with attribution."""
    sums: dict[str, np.ndarray]
    text_indices: tuple[int, ...]
    n_tokens: int
    seconds: float


def check_engine(engine: str) -> str:
    if engine not in CORPUS_ENGINES:
        raise OptionError(f"unknown engine {engine!r}; choose one of: {', '.join(CORPUS_ENGINES)}")
    return engine


def check_batch_tokens(batch_tokens: int) -> int:
    if isinstance(batch_tokens, bool) or not isinstance(batch_tokens, int) or batch_tokens < 1:
        raise OptionError(f"batch_tokens must be a whole number of at least 1; got {batch_tokens!r}")
    return batch_tokens


def plan(handle: LoadedModel, settings: Settings, source: Source, batch_tokens: int) -> tuple[list[TextStatus], list[Batch]]:
    """Every record's status, and the batches that measure the ones that can be measured. A record that `encode`
    refuses (empty, over the model's limit without truncation, only special tokens) is skipped with its reason."""
    statuses: list[TextStatus] = []
    lengths: dict[int, int] = {}
    for index, record in enumerate(source.records):
        if record.text is None:
            statuses.append(TextStatus("skipped", record.reason, None))
            continue
        try:
            encoding = encode(handle, record.text, truncate=settings.truncate)
        except InputError as error:
            statuses.append(TextStatus("skipped", str(error), None))
            continue
        lengths[index] = len(encoding)
        if encoding.dropped:
            whole = len(encoding) + encoding.dropped
            statuses.append(TextStatus("truncated", f"cut from {whole} to {len(encoding)} tokens", len(encoding)))
        else:
            statuses.append(TextStatus("ok", None, len(encoding)))
    measured = list(lengths)
    batches: list[Batch] = []
    for start in range(0, len(measured), WINDOW):
        window = measured[start : start + WINDOW]
        for group in length_batches([lengths[i] for i in window], batch_tokens):
            batches.append(_batch(len(batches), [window[i] for i in group], source, lengths))
    return statuses, batches


def _batch(number: int, indices: list[int], source: Source, lengths: dict[int, int]) -> Batch:
    ordered = sorted(indices)
    records = [source.records[i] for i in ordered]
    return Batch(
        number,
        tuple(ordered),
        tuple(r.text or "" for r in records),
        tuple(r.sent_id for r in records),
        tuple(r.words for r in records),
        sum(lengths[i] for i in ordered),
    )


def measure_batch(
    handle: LoadedModel, settings: Settings, batch: Batch, *, tag: bool = False, ablation: bool = False
) -> Shard:
    """Measure one batch (`analysis.measure_texts`, the computation behind `analyze()`) and lay it out as rows:
    text by text in input order, then layer, then token, as `Analysis.to_frame()` does for one text; `tag` gives
    texts without gold words spaCy's. With `settings.attribution`, the `heads` rows too (`ablation`: with each
    head's ablation rank)."""
    import pyarrow as pa

    start = time.perf_counter()
    encodings = [encode(handle, text, truncate=settings.truncate) for text in batch.texts]
    measured = measure_texts(handle, settings, encodings)
    layers = measured.neighbour_ids.shape[0]
    lengths = np.array([len(e) for e in encodings])
    total = int(lengths.sum())
    text_of = np.repeat(np.arange(len(encodings)), lengths)
    position = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    ids = torch.cat([e.input_ids for e in encodings]).cpu().numpy()
    special = np.isin(ids, handle.tokenizer.all_special_ids)
    word_of, upos_of = _word_columns(handle, batch, encodings, tag)

    layer_grid = np.repeat(np.arange(layers), total)
    token_grid = np.tile(np.arange(total), layers)
    order = np.lexsort((token_grid, layer_grid, text_of[token_grid]))
    """Rows text by text, then layer, then token: indices into the layer-major (layers × total) values."""
    rows = token_grid[order]
    words_of_rows = word_of[rows]
    columns: dict[str, Any] = {
        "text_index": np.asarray(batch.text_indices, dtype=np.int64)[text_of[rows]],
        "sent_id": pd.array(np.array(batch.sent_ids, dtype=object)[text_of[rows]], dtype="string"),
        "token_index": position[rows],
        "token_id": ids[rows],
        "token": pd.array(np.array(handle.token_texts(ids.tolist()), dtype=object)[rows], dtype="string"),
        "special": special[rows],
        "word_index": pd.array(np.where(words_of_rows < 0, 0, words_of_rows), dtype="Int64"),
        "upos": pd.array(upos_of[rows], dtype="string"),
        "layer": layer_grid[order],
    }
    columns["word_index"][words_of_rows < 0] = pd.NA
    layer_labels = tuple(range(layers))
    for name, values in measured.values.items():
        info = MEASURES[name]
        trajectory = Trajectory(info, layer_labels[:-1] if info.steps else layer_labels, values.numpy())
        columns[info.column] = trajectory.column(layers)[order]
    table = pa.Table.from_pandas(pd.DataFrame(columns), preserve_index=False)
    items = {}
    if settings.neighbours:
        items["neighbours"] = _item_rows(handle, "neighbour", measured.neighbour_ids, "cosine", measured.neighbour_cosines, order, columns)
        if measured.prediction_ids is not None and measured.prediction_probabilities is not None:
            items["predictions"] = _item_rows(
                handle, "prediction", measured.prediction_ids, "probability", measured.prediction_probabilities, order, columns
            )
    if measured.trace is not None:
        space = reference_for(handle, settings.reference, measured.normalization)
        found = attribute_batch(handle, measured.trace, settings.tap, space, measured.normalization, ablation=ablation)
        items["heads"] = _head_rows(found, np.asarray(batch.text_indices, dtype=np.int64), text_of, position)
    sums = _sums(measured.states, torch.from_numpy(~special), torch.from_numpy(text_of), len(encodings))
    return Shard(batch.index, table, items, sums, batch.text_indices, total, time.perf_counter() - start)


def _word_columns(handle: LoadedModel, batch: Batch, encodings: Sequence[Any], tag: bool) -> tuple[np.ndarray, np.ndarray]:
    """Each packed token's word index (-1 for none) and that word's UPOS (None for none)."""
    total = sum(len(e) for e in encodings)
    word_of = np.full(total, -1, dtype=np.int64)
    upos_of = np.full(total, None, dtype=object)
    words = list(batch.words)
    if tag:
        tagged = iter(word_classes.tag([t for t, w in zip(batch.texts, words) if w is None]))
        words = [w if w is not None else next(tagged) for w in words]
    if not handle.tokenizer.is_fast or all(w is None for w in words):
        return word_of, upos_of
    found = handle.tokenizer(
        list(batch.texts),
        add_special_tokens=True,
        return_offsets_mapping=True,
        truncation=True,
        max_length=handle.max_tokens,
        verbose=False,
    )
    start = 0
    for text, encoding, offsets, ids, text_words in zip(
        batch.texts, encodings, found["offset_mapping"], found["input_ids"], words
    ):
        stop = start + len(encoding)
        if text_words is not None and ids == encoding.input_ids.tolist():
            owners = word_classes.token_words(text, offsets, text_words)
            word_of[start:stop] = owners
            tags = np.array([w.upos for w in text_words] + [None], dtype=object)
            upos_of[start:stop] = tags[owners]
        start = stop
    return word_of, upos_of


def _item_rows(
    handle: LoadedModel,
    item: str,
    ids: torch.Tensor,
    score: str,
    scores: torch.Tensor,
    order: np.ndarray,
    columns: dict[str, Any],
):
    """One row per (text, layer, token, item) of a ranked list of vocabulary items ((layers, tokens, n) `ids`
    and `scores`), in the order of the token rows, with the columns of `Analysis._items_frame`."""
    import pyarrow as pa

    n = ids.shape[2]
    flat = (order[:, None] * n + np.arange(n)).reshape(-1)
    near = ids.numpy().reshape(-1)[flat]
    unique = np.unique(near)
    texts = np.array(handle.token_texts(unique.tolist()), dtype=object)
    frame = pd.DataFrame(
        {
            "text_index": np.repeat(columns["text_index"], n),
            "token_index": np.repeat(columns["token_index"], n),
            "layer": np.repeat(columns["layer"], n),
            item: np.tile(np.arange(1, n + 1), len(order)),
            f"{item}_id": near,
            f"{item}_text": pd.array(texts[np.searchsorted(unique, near)], dtype="string"),
            score: scores.numpy().reshape(-1)[flat],
        }
    )
    return pa.Table.from_pandas(frame, preserve_index=False)


def _head_rows(found: BatchAttribution, text_indices: np.ndarray, text_of: np.ndarray, position: np.ndarray):
    """One row per (text, layer 1..N, token, part) of a batch's attribution, text by text in input order, then
    layer, token and part: the share, and for heads the attention entropy (bits) and, where computed, the ablation
    rank (null for the other parts)."""
    import pyarrow as pa

    layers, parts, total = found.shares.shape
    grids = np.meshgrid(np.arange(layers), np.arange(parts), np.arange(total), indexing="ij")
    layer, part, token = (grid.reshape(-1) for grid in grids)
    # The tokens are packed text by text, so each (layer, part, token) row's place follows from its text's first
    # token and length: no sort.
    lengths = np.bincount(text_of, minlength=len(text_indices))
    starts = np.cumsum(lengths) - lengths
    text = text_of[token]
    place = (starts[text] * layers + layer * lengths[text]) * parts + (token - starts[text]) * parts + part
    order = np.empty_like(place)
    order[place] = np.arange(place.size)
    layer, part, token = layer[order], part[order], token[order]
    head = part_heads(part, found.num_heads)
    other = head < 0
    at = (layer, np.where(other, 0, head), token)
    columns = {
        "text_index": pa.array(text_indices[text_of[token]]),
        "token_index": pa.array(position[token]),
        "layer": pa.array(layer + 1),
        "component": pa.DictionaryArray.from_arrays(pa.array(part.astype(np.int32)), pa.array(list(found.components))),
        "share": pa.array(found.shares.cpu().numpy().reshape(-1)[order]),
        "attention_entropy": pa.array(found.entropy.cpu().numpy()[at], mask=other),
    }
    if found.ablation_rank is not None:
        columns["ablation_rank"] = pa.array(found.ablation_rank.cpu().numpy().astype(np.int64)[at], mask=other)
    return pa.table(columns)


def _sums(states: torch.Tensor, keep: torch.Tensor, text_of: torch.Tensor, texts: int) -> dict[str, np.ndarray]:
    """Float64 sums over one batch's non-special tokens, from which `stats.npz` and the cross-text anisotropy add
    up exactly: Σx and Σx² per layer and dimension, the count; Σu over unit vectors u, Σ_t |Σ_{p∈t} u_p|² over
    texts t, and Σ_t n_t²."""
    keep = keep.to(states.device)
    kept = states[:, keep]
    u = unit(kept).double()
    owners = text_of.to(states.device)[keep]
    per_text = torch.zeros(u.shape[0], texts, u.shape[2], dtype=torch.float64, device=u.device).index_add_(1, owners, u)
    counts = torch.bincount(owners, minlength=texts).double()
    return {
        **{name: total.cpu().numpy() for name, total in moment_sums(kept).items()},
        "unit_sum": u.sum(dim=1).cpu().numpy(),
        "text_unit_sq": per_text.pow(2).sum(dim=(1, 2)).cpu().numpy(),
        "text_count_sq": np.array(float(counts.pow(2).sum())),
    }


Work = Callable[..., Shard]
"""What an engine does with each batch: `work(handle, settings, batch, tag=...)`, `measure_batch` by default (a
picklable top-level function, for Ray's actors)."""


def run_local(
    handle: LoadedModel, settings: Settings, batches: Sequence[Batch], *, tag: bool, work: Work = measure_batch
) -> Iterator[Shard]:
    """The local engine: each batch in turn, in this process, on the loaded model."""
    for batch in batches:
        yield work(handle, settings, batch, tag=tag)


class _Measurer:
    """A Ray Data model actor: loads exactly the driver's model once (`PinnedModel`), proves it by the weights'
    fingerprint, then measures the batches it is handed."""

    def __init__(self, pinned: PinnedModel, settings: Settings, tag: bool, threads: int, work: Work = measure_batch) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        set_threads(threads)
        self.settings, self.tag, self.work = settings, tag, work
        try:
            self.handle = pinned.load(settings.device)
        except ModelLoadError as error:
            raise ModelLoadError(f"on Ray node {_node()}: {error}") from None
        found = weights_fingerprint(self.handle.model)
        if found != pinned.fingerprint:
            raise ModelLoadError(
                f"on Ray node {_node()}, {pinned.location} has other weights than the driver's {pinned.name} "
                f"(fingerprint {found}, the driver's {pinned.fingerprint}); install the same model there"
            )

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shards = [pickle.dumps(self.work(self.handle, self.settings, pickle.loads(b), tag=self.tag)) for b in rows["batch"]]
        return {"shard": np.array(shards, dtype=object)}


def _node() -> str:
    """This Ray worker's node, as a person finds it: its address and host name."""
    import ray

    return f"{ray.util.get_node_ip_address()} ({socket.gethostname()})"


def run_ray(
    handle: LoadedModel,
    settings: Settings,
    batches: Sequence[Batch],
    *,
    tag: bool,
    address: str | None,
    on_start: Callable[[str], None] | None = None,
    work: Work = measure_batch,
) -> Iterator[Shard]:
    """The Ray engine: Ray Data over the batch descriptors, `map_batches` over a pool of model actors (each loads
    exactly `handle`'s weights, pinned), results back to this process, which writes them. Starts a local Ray for
    the run unless `address` names a cluster (`auto`, `host:port`, `ray://host:10001`). Every Ray failure is one
    line (`InputError`, or the worker's own `ModelLoadError`); an actor that dies is restarted and its batch
    retried, up to `RAY_RETRIES` times."""
    try:
        import ray
    except ImportError as error:
        raise InputError("the ray engine needs Ray: pip install 'attention-encodings[ray]'") from error
    if not batches:
        return
    _quiet(ray)
    pinned = pin(handle)
    started = not ray.is_initialized()
    if started:
        _connect(ray, address)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        threads = settings.threads or 1
        gpu = settings.device.startswith("cuda")
        resources = ray.cluster_resources()
        slots = int(resources.get("GPU", 0)) if gpu else int(resources.get("CPU", 1)) // threads
        actors = max(1, min(len(batches), slots))
        if on_start is not None:
            on_start(
                f"ray: {actors} model actor{'s' if actors > 1 else ''} on "
                f"{'a cluster at ' + address if address else 'a local Ray'}"
            )
        items = [{"batch": pickle.dumps(b)} for b in batches]
        with warnings.catch_warnings():
            # Bounded retries have no named parameter in Ray 2.60 (its default is to retry for ever, which would
            # hang on a batch that kills every actor), so they go through the deprecated `ray_remote_args`.
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                _Measurer,
                fn_constructor_kwargs={"pinned": pinned, "settings": settings, "tag": tag, "threads": threads, "work": work},
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=RAY_ACTOR_CPUS,
                num_gpus=1 if gpu else None,
                max_restarts=RAY_RETRIES,
                max_task_retries=RAY_RETRIES,
            )
        try:
            for row in dataset.iter_rows():
                yield pickle.loads(row["shard"])
        except (AttentionEncodingsError, GeneratorExit, KeyboardInterrupt):
            raise
        except Exception as error:  # Ray wraps what failed in its own exceptions, of many kinds
            raise _ray_failure(error) from None
    finally:
        if started:
            ray.shutdown()


def _quiet(ray: Any) -> None:
    """Ray's own console lines off, since the run reports its progress itself: Ray Data's INFO and WARNING lines,
    and its usage poller, which asks a Prometheus that is not there and at exit logs into a closed file."""
    os.environ.setdefault("RAY_DATA_USAGE_DISABLED", "1")
    for handler in logging.getLogger(ray.data.__name__).handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setLevel(logging.ERROR)


def _connect(ray: Any, address: str | None) -> None:
    """Start a local Ray, or join the cluster at `address`, within `RAY_CONNECT_TIMEOUT_S` or a one-line error
    (Ray itself waits on an address where nothing listens for minutes)."""
    where = address or "a new local instance"
    check_ray_address(address)
    local = {"num_cpus": usable_cpus(), "object_store_memory": 512 << 20} if address is None else {}
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR", **local)
    except Exception as error:  # ConnectionError, RuntimeError, ValueError, and Ray's own kinds
        raise InputError(f"cannot start or reach Ray at {where}: {_first_line(error)}") from None


def _ray_failure(error: BaseException) -> AttentionEncodingsError:
    """One line for a failed Ray run: the first of our own errors behind Ray's wrappers (a worker that could not
    load the model), else what Ray says, first line only."""
    seen: list[BaseException] = []
    waiting: list[BaseException] = [error]
    while waiting:
        current = waiting.pop()
        if current in seen:
            continue
        seen.append(current)
        linked = (getattr(current, "cause", None), current.__cause__, current.__context__)
        waiting.extend(e for e in linked if isinstance(e, BaseException))
    ours = next((e for e in reversed(seen) if isinstance(e, AttentionEncodingsError) and e.args), None)
    if ours is not None:
        kind = ModelLoadError if isinstance(ours, ModelLoadError) else InputError
        return kind(str(ours.args[0]).splitlines()[0])
    for current in seen:  # an actor that died in its constructor passes on only the traceback's text
        found = _OUR_ERROR.search(str(current))
        if found is not None:
            return (ModelLoadError if found["kind"] in _LOAD_ERRORS else InputError)(found["message"].strip())
    return InputError(f"the Ray run failed: {_first_line(error)}")


_OUR_ERROR = re.compile(r"^attention_encodings\.errors\.(?P<kind>\w+): (?P<message>.+)$", re.MULTILINE)
_LOAD_ERRORS = ("ModelLoadError", "UnsupportedArchitectureError")


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
