"""Corpus statistics files (`stats.npz`): reading them, checked, for `--normalize`, and the statistics of the
bundled sample corpus (`--stats sample`), computed once per model and tap and kept in the user's cache.

The format is what corpus mode writes: arrays `mean` and `std`, each (N+1, d) float32 (the per-layer mean and
population standard deviation of the tapped vectors over a corpus's non-special tokens), plus `count`, the number
of tokens. An optional string entry `tap` says where the vectors were taken; when present it is checked too.
"""

from __future__ import annotations

import hashlib
import os
import threading
import weakref
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import InputError
from .metrics import Progress, Stats, moment_sums
from .models import LoadedModel
from .models.pinned import weights_digest
from .models.smollm2 import cache_root
from .names import DEFAULT_BATCH_TOKENS, SAMPLE_CORPUS, SAMPLE_STATS
from .trace import encode, length_batches, trace

SAMPLE_STATS_VERSION = 1
"""Part of every cached sample-statistics file's name: raised when the way they are computed changes."""


def read_stats(path: str | os.PathLike[str]) -> Stats:
    """The statistics in the `stats.npz` file at `path`, or a one-line `InputError` saying what is wrong."""
    shown = os.fspath(path)
    not_stats = f"{shown} is not a stats.npz file (a NumPy .npz archive of arrays mean and std)"
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise InputError(not_stats)
        with data:
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError as error:
        raise InputError(f"cannot read statistics {shown}: no such file") from error
    except IsADirectoryError as error:
        raise InputError(f"cannot read statistics {shown}: it is a directory") from error
    except OSError as error:
        raise InputError(f"cannot read statistics {shown}: {error.strerror or error}") from error
    except (ValueError, EOFError, zipfile.BadZipFile) as error:
        raise InputError(not_stats) from error
    for key in ("mean", "std"):
        if key not in arrays:
            raise InputError(f"statistics {shown} have no {key!r} array; a stats.npz file holds mean and std, each (N+1)×d")
    mean, std = arrays["mean"], arrays["std"]
    for key, array in (("mean", mean), ("std", std)):
        if array.ndim != 2 or array.shape[0] < 1 or not np.issubdtype(array.dtype, np.floating):
            raise InputError(f"statistics {shown}: {key} must be a (N+1)×d array of floats, not {array.dtype} {array.shape}")
        if not np.isfinite(array).all():
            raise InputError(f"statistics {shown}: {key} has values that are not finite")
    if mean.shape != std.shape:
        raise InputError(f"statistics {shown}: mean is {mean.shape} but std is {std.shape}")
    if (std < 0).any():
        raise InputError(f"statistics {shown}: std has negative values")
    return Stats(
        mean=torch.from_numpy(mean.astype(np.float32)),
        std=torch.from_numpy(std.astype(np.float32)),
        count=int(np.asarray(arrays.get("count", 0)).sum()),
        source=shown,
        tap=str(arrays["tap"]) if "tap" in arrays else None,
    )


def write_stats(path: str | os.PathLike[str], stats: Stats) -> None:
    """Write `stats` as a `stats.npz` file that `read_stats` reads back, whole or not at all (through a temporary
    file and a rename)."""
    extra = {} if stats.tap is None else {"tap": np.array(stats.tap)}
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with temporary.open("wb") as stream:
        np.savez(stream, mean=stats.mean.cpu().numpy(), std=stats.std.cpu().numpy(), count=np.array(stats.count), **extra)
    os.replace(temporary, target)


def load_stats(source: str, handle: LoadedModel, tap: str, *, progress: Progress | None = None) -> Stats:
    """The statistics `source` names for `handle` at `tap`: a `stats.npz` path, or `sample` (see `sample_stats`)."""
    return sample_stats(handle, tap, progress=progress) if source == SAMPLE_STATS else read_stats(source)


def sample_texts() -> list[str]:
    """The sentences of the bundled sample corpus, in order (each CoNLL-U block's `# text =` line)."""
    prefix = "# text = "
    lines = SAMPLE_CORPUS.read_text(encoding="utf-8").splitlines()
    return [line[len(prefix) :] for line in lines if line.startswith(prefix)]


_in_memory: weakref.WeakKeyDictionary[Any, dict[str, Stats]] = weakref.WeakKeyDictionary()
_computing = threading.Lock()


def sample_stats(
    handle: LoadedModel, tap: str, *, batch_tokens: int = DEFAULT_BATCH_TOKENS, progress: Progress | None = None
) -> Stats:
    """Per-layer mean and std of `handle`'s vectors at `tap` over the non-special tokens of the bundled sample
    corpus's sentences (those the model accepts whole: what `corpus sample` puts in its stats.npz). Computed once, a
    traced batch at a time (no vocabulary scoring), then kept in memory and in the user's cache folder, under a
    name that fingerprints the model's weights; `progress(done, total)` follows the sentences."""
    with _computing:
        kept = _in_memory.setdefault(handle.model, {})
        if tap in kept:
            return kept[tap]
        path = cache_root() / "stats" / f"sample-{fingerprint(handle, tap)}.npz"
        if path.is_file():
            kept[tap] = replace(read_stats(path), source=SAMPLE_STATS)
            return kept[tap]
        encodings = []
        for text in sample_texts():
            try:
                encodings.append(encode(handle, text))
            except InputError:  # over the model's limit, or only special tokens: corpus mode skips these too
                continue
        special = torch.tensor(handle.tokenizer.all_special_ids, device=handle.device)
        sums: dict[str, torch.Tensor] = {}
        done = 0
        for batch in length_batches([len(e) for e in encodings], batch_tokens):
            chosen = [encodings[i] for i in batch]
            states = trace(handle, chosen, taps=(tap,)).packed(tap)
            keep = ~torch.isin(torch.cat([e.input_ids for e in chosen]), special)
            sums = {name: total + sums.get(name, 0) for name, total in moment_sums(states[:, keep]).items()}
            done += len(batch)
            if progress is not None:
                progress(done, len(encodings))
        kept[tap] = Stats.from_sums(sums, source=SAMPLE_STATS, tap=tap)
        write_stats(path, kept[tap])
        return kept[tap]


def fingerprint(handle: LoadedModel, tap: str) -> str:
    """A short name for (model, precision, tap) (the sample statistics' cache key, and a learned lens's check): the model's name and shape, and a strided sample of every
    parameter, so a folder whose weights changed gets new statistics."""
    digest = hashlib.sha256(f"{SAMPLE_STATS_VERSION}|{handle.name}|{handle.model.dtype}|{tap}|{handle.num_layers}".encode())
    weights_digest(handle.model, digest)
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in handle.name.rstrip("/").rsplit("/", 1)[-1])[:40]
    return f"{slug}-{tap}-{digest.hexdigest()[:16]}"
