"""`analyze_corpus()`: a corpus measured batch by batch into an output folder, resumable, and its result object."""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._version import __version__
from ..analysis import lens_for, load_for, settings_for
from ..catalog import MEASURES
from ..display import brief, layer_span
from ..errors import OptionError
from ..metrics import Stats
from ..models import LoadedModel
from ..names import DEFAULT_BATCH_TOKENS, DEFAULT_REFERENCE, DEFAULT_TAP
from ..settings import DEFAULT_TOP_K, Settings
from ..stats import read_stats, write_stats
from . import store, words
from ..clusters import check_ray_address
from .engine import check_batch_tokens, check_engine, measure_batch, plan, run_local, run_ray
from .report import report_html
from .separation import separating_heads
from .sources import Source, read_source
from .summary import anisotropy_rows, ordered, summarise

CorpusProgress = Callable[[int, int, int], None]
"""Called as progress(texts_done, texts_total, tokens_done) after each shard, and once before the first."""


@dataclass(frozen=True)
class CorpusAnalysis:
    """A corpus run's output folder (see the README's folder contract), read back as DataFrames."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def manifest(self) -> dict[str, Any]:
        """Settings, model, package version, input path and SHA-256, counts and timings."""
        return store.RunFolder(self.path).read_manifest()

    def about(self) -> dict[str, str]:
        """What the run is, in a few words each (its repr and its notebook display): the folder, the model, tap
        and reference, the counts, layers, measures and status; the folder alone while it holds no run."""
        try:
            manifest = self.manifest
        except (OSError, ValueError):
            return {"path": repr(str(self.path))}
        settings, counts = manifest["settings"], manifest["counts"]
        return {
            "path": repr(str(self.path)),
            "model": manifest["model"]["label"],
            "tap": settings["tap"],
            "reference": settings["reference"],
            "texts": f"{counts['texts']:,}",
            "tokens": f"{counts['tokens']:,}",
            "layers": layer_span(manifest["layers"]),
            "measures": ", ".join(manifest["measures"]),
            "status": manifest["status"],
        }

    def __repr__(self) -> str:
        return brief("CorpusAnalysis", **self.about())

    def tokens(self) -> pd.DataFrame:
        """Every (text, layer, token) row, in input order (the whole table: for large corpora, query
        `path / "tokens"` with DuckDB or pyarrow instead)."""
        return self._dataset(store.TOKENS, ["text_index", "layer", "token_index"])

    def neighbours(self) -> pd.DataFrame:
        """Every (text, layer, token, neighbour) row, when the run kept neighbours (`neighbours` > 0)."""
        return self._dataset(store.NEIGHBOURS, ["text_index", "layer", "token_index", "neighbour"])

    def predictions(self) -> pd.DataFrame:
        """Every (text, layer, token, prediction) row of the output head's most probable items, when the run kept
        neighbours (`neighbours` > 0, the same count) and the model has a head."""
        return self._dataset(store.PREDICTIONS, ["text_index", "layer", "token_index", "prediction"])

    def heads(self) -> pd.DataFrame:
        """Every (text, token, layer, part) row of the attribution, when the run had it (`attribution=True`):
        share, and for heads attention_entropy and, with `ablation=True`, ablation_rank."""
        return self._dataset(store.HEADS, ["text_index", "layer", "token_index"])

    def separating_heads(self) -> pd.DataFrame:
        """`heads.csv`: per layer, every head's mean share for function words minus content words, with its
        bootstrap 95 % interval over texts, largest difference first; empty without attribution."""
        path = self.path / store.HEADS_CSV
        return pd.read_csv(path) if path.is_file() else pd.DataFrame()

    def texts(self) -> pd.DataFrame:
        """Every input record: text_index, sent_id, text, n_tokens, status (ok, truncated, skipped), reason."""
        return pd.read_parquet(self.path / store.TEXTS)

    def summary(self) -> pd.DataFrame:
        """One row per (group, layer, measure), and with attribution per (group, layer, component) of `share`:
        n, mean, std, q10, q25, median, q75, q90."""
        return pd.read_parquet(self.path / store.SUMMARY_PARQUET)

    def stats(self) -> Stats:
        """`stats.npz`: per layer, the mean and std of the tapped vectors over non-special tokens ((N+1, d) each),
        their count and the tap; what `analyze(..., normalize=..., stats=...)` takes as it is."""
        return read_stats(self.path / store.STATS)

    def _dataset(self, name: str, keys: list[str]) -> pd.DataFrame:
        folder = self.path / name
        if not folder.is_dir() or not any(folder.glob("*.parquet")):
            return pd.DataFrame()
        frame = pd.read_parquet(folder)
        return frame.sort_values(keys, kind="stable").reset_index(drop=True)


def analyze_corpus(
    source: str | os.PathLike[str] | Iterable[str],
    out: str | os.PathLike[str],
    model: str | os.PathLike[str] | LoadedModel | None = None,
    tap: str = DEFAULT_TAP,
    reference: str = DEFAULT_REFERENCE,
    top_k: int = DEFAULT_TOP_K,
    neighbours: int = 0,
    *,
    limit: int | None = None,
    engine: str = "local",
    text_field: str = "text",
    format: str = "auto",
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    truncate: bool = False,
    device: str | None = None,
    dtype: str | None = None,
    ray_address: str | None = None,
    overwrite: bool = False,
    progress: CorpusProgress | None = None,
    lens: str | os.PathLike[str] | None = None,
    attribution: bool = False,
    ablation: bool = False,
) -> CorpusAnalysis:
    """Measure every text of `source` (a path: .txt, .jsonl, .parquet, .conllu; `"-"` for standard input;
    `"sample"` for the bundled UD English-EWT sentences; or an iterable of strings) and write the results to the
    folder `out`. Rerunning the same call on the same folder resumes an interrupted run.

    The measures are `analyze()`'s, computed in padded batches of at most `batch_tokens` tokens; `engine="ray"`
    runs them on Ray Data (a local Ray, or the cluster at `ray_address`). Bad records are skipped and listed in
    `texts.parquet`; an unusable input raises `InputError` before any work. `lens` (a folder fit-lens wrote) adds
    its measures' columns. `attribution` adds the `heads` dataset, its summary rows and `heads.csv`; `ablation`
    also each head's ablation rank (about H times the scan's work).
    """
    settings, handle = settings_for(
        model, tap=tap, reference=reference, top_k=top_k, neighbours=neighbours, truncate=truncate, device=device, dtype=dtype,
        lens=None if lens is None else os.fspath(lens), attribution=attribution,
    )
    return run_corpus(
        settings,
        source,
        Path(out),
        handle,
        limit=limit,
        engine=engine,
        text_field=text_field,
        format=format,
        batch_tokens=batch_tokens,
        ray_address=ray_address,
        overwrite=overwrite,
        progress=progress,
        ablation=ablation,
    )


def run_corpus(
    settings: Settings,
    source: str | os.PathLike[str] | Iterable[str],
    out: Path,
    model: LoadedModel | None = None,
    *,
    limit: int | None = None,
    engine: str = "local",
    text_field: str = "text",
    format: str = "auto",
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    ray_address: str | None = None,
    overwrite: bool = False,
    progress: CorpusProgress | None = None,
    on_model: Callable[[LoadedModel], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    ablation: bool = False,
) -> CorpusAnalysis:
    """`analyze_corpus()` driven by a `Settings`, as the command line calls it; `on_model` hears which model was
    loaded and `on_note` each note for the user."""
    check_engine(engine)
    if ablation and not settings.attribution:
        raise OptionError("ablation ranks are part of the attribution; add --attribution (attribution=True in Python)")
    check_batch_tokens(batch_tokens)
    if engine == "ray":
        check_ray_address(ray_address)
    read = read_source(
        source if isinstance(source, (str, Path)) or not isinstance(source, os.PathLike) else os.fspath(source),
        format=format,
        text_field=text_field,
        limit=limit,
    )
    handle = load_for(settings, model)
    if on_model is not None:
        on_model(handle)
    lens_for(handle, settings)  # a lens that does not fit is refused before any work
    settings = settings.replace(model=handle.name)
    tag = not read.gold and words.spacy_available()
    word_classes = "gold UPOS (CoNLL-U)" if read.gold else (words.spacy_version() if tag else None)
    identity = _identity(
        settings, handle, read, batch_tokens=batch_tokens, limit=limit, text_field=text_field, word_classes=word_classes,
        ablation=ablation,
    )
    folder = store.RunFolder(out)
    folder.open(identity, overwrite=overwrite)
    statuses, batches = plan(handle, settings, read, batch_tokens)
    _write_texts(folder, read, statuses)

    done = folder.done()
    pending = [b for b in batches if done.get(b.index) != b.text_indices]
    total_texts = sum(len(b.text_indices) for b in batches)
    texts_done = total_texts - sum(len(b.text_indices) for b in pending)
    tokens_done = sum(b.tokens for b in batches if b not in pending)
    if progress is not None:
        progress(texts_done, total_texts, tokens_done)
    manifest = _manifest(folder, identity, settings, handle, read, statuses, batch_tokens, limit, engine, word_classes)
    folder.write_manifest(manifest)
    if word_classes is None and on_note is not None:
        on_note(
            "no parts of speech: plain text without the pos extra (pip install 'attention-encodings[pos]'); "
            "only the groups all and special are summarised"
        )

    if ablation and pending and on_note is not None:
        heads = int(handle.model.config.num_attention_heads)
        on_note(
            f"ablation ranks every head's ablated vector: about {heads} times the scan's work, "
            "so the run takes that much longer"
        )
    work = functools.partial(measure_batch, ablation=True) if ablation else measure_batch
    started, measured = time.perf_counter(), 0
    shards = (
        run_local(handle, settings, pending, tag=tag, work=work)
        if engine == "local"
        else run_ray(handle, settings, pending, tag=tag, address=ray_address, on_start=on_note, work=work)
    )
    for shard in shards:
        folder.write(shard)
        measured += shard.n_tokens
        texts_done += len(shard.text_indices)
        tokens_done += shard.n_tokens
        if progress is not None:
            progress(texts_done, total_texts, tokens_done)
    if pending:
        manifest["sessions"].append(
            {
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "engine": engine,
                "batches": len(pending),
                "tokens": measured,
                "seconds": round(time.perf_counter() - started, 3),
            }
        )
    _finish(folder, manifest, settings, [b.index for b in batches])
    return CorpusAnalysis(folder.path)


def _identity(settings: Settings, handle: LoadedModel, read: Source, **run: Any) -> dict[str, Any]:
    """Everything that decides a run's numbers: a folder resumes only a run with exactly these."""
    chosen = {k: v for k, v in dataclasses.asdict(settings).items() if k != "threads"}
    chosen |= {"device": str(handle.device), "dtype": str(handle.model.dtype).removeprefix("torch.")}
    return {**chosen, **run, "format": read.format, "input_sha256": read.sha256, "version": __version__}


def _write_texts(folder: store.RunFolder, read: Source, statuses: list[Any]) -> None:
    frame = pd.DataFrame(
        {
            "text_index": np.arange(len(read.records), dtype=np.int64),
            "sent_id": pd.array([r.sent_id for r in read.records], dtype="string"),
            "text": pd.array([r.text for r in read.records], dtype="string"),
            "n_tokens": pd.array([s.n_tokens for s in statuses], dtype="Int64"),
            "status": pd.array([s.status for s in statuses], dtype="string"),
            "reason": pd.array([s.reason for s in statuses], dtype="string"),
        }
    )
    store.atomic(folder.path / store.TEXTS, lambda p: frame.to_parquet(p, index=False))


def _manifest(folder, identity, settings, handle, read, statuses, batch_tokens, limit, engine, word_classes) -> dict[str, Any]:
    previous = folder.read_manifest() if (folder.path / store.MANIFEST).is_file() else {}
    counts = {name: sum(s.status == name for s in statuses) for name in ("ok", "truncated", "skipped")}
    return {
        "version": __version__,
        "status": "running",
        "identity": identity,
        "model": {
            "name": handle.name,
            "label": handle.label,
            "reason": handle.reason,
            "device": str(handle.device),
            "dtype": identity["dtype"],
            "layers": handle.num_layers,
            "vocab_size": handle.vocab_size,
            "max_tokens": handle.max_tokens,
        },
        "settings": {k: v for k, v in dataclasses.asdict(settings).items()},
        "run": {
            "engine": engine, "batch_tokens": batch_tokens, "limit": limit, "text_field": identity["text_field"],
            "ablation": identity["ablation"],
        },
        "input": {"path": read.path, "sha256": read.sha256, "format": read.format, "records": len(read.records)},
        "word_classes": word_classes,
        "layers": list(range(handle.num_layers + 1)),
        "measures": [],
        "counts": {"texts": len(statuses), **counts, "tokens": sum(s.n_tokens or 0 for s in statuses), "rows": 0, "shards": 0},
        "sessions": previous.get("sessions", []),
        "timing": {},
    }


def _finish(folder: store.RunFolder, manifest: dict[str, Any], settings: Settings, shard_indices: list[int]) -> None:
    """The corpus-wide files, from the shards: stats.npz, summary.csv/.parquet (with the anisotropy), report.html,
    and the manifest marked complete."""
    columns = [info.column for info in MEASURES.values()]
    parts = sorted((folder.path / store.TOKENS).glob("*.parquet"))
    if parts:
        import pyarrow.parquet as pq

        present = set(pq.read_schema(parts[0]).names)
        columns = [c for c in columns if c in present]
        manifest["counts"]["rows"] = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
    manifest["measures"] = columns
    manifest["counts"]["shards"] = len(shard_indices)
    sums = folder.sums(shard_indices) if shard_indices else None
    summary = summarise(folder.path / store.TOKENS, columns, folder.path / ".duckdb", heads=folder.path / store.HEADS)
    separating = separating_heads(folder.path / store.HEADS, folder.path / store.TOKENS, folder.path / ".duckdb")
    if separating is not None:
        store.atomic(folder.path / store.HEADS_CSV, lambda p: separating.to_csv(p, index=False))
    if sums is not None:
        write_stats(folder.path / store.STATS, Stats.from_sums(sums, source=str(folder.path / store.STATS), tap=settings.tap))
        summary = ordered(pd.concat([summary, anisotropy_rows(sums)], ignore_index=True), columns)
    store.atomic(folder.path / store.SUMMARY_CSV, lambda p: summary.to_csv(p, index=False))
    store.atomic(folder.path / store.SUMMARY_PARQUET, lambda p: summary.to_parquet(p, index=False))
    tokens = sum(s["tokens"] for s in manifest["sessions"])
    seconds = sum(s["seconds"] for s in manifest["sessions"])
    manifest["timing"] = {"seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1) if seconds else None}
    manifest["status"] = "complete"
    html = report_html(manifest, summary, settings, separating)
    store.atomic(folder.path / store.REPORT, lambda p: p.write_text(html, encoding="utf-8"))
    folder.write_manifest(manifest)
