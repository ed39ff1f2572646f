"""Corpus statistics files (`stats.npz`): reading them, checked, for `--normalize`.

The format is what corpus mode writes: arrays `mean` and `std`, each (N+1, d) float32 (the per-layer mean and
population standard deviation of the tapped vectors over a corpus's non-special tokens), plus `count`, the number
of tokens. An optional string entry `tap` says where the vectors were taken; when present it is checked too.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .metrics import Stats
from .names import SAMPLE_STATS


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
    """Write `stats` as a `stats.npz` file that `read_stats` reads back."""
    extra = {} if stats.tap is None else {"tap": np.array(stats.tap)}
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as stream:
        np.savez(stream, mean=stats.mean.cpu().numpy(), std=stats.std.cpu().numpy(), count=np.array(stats.count), **extra)


def load_stats(source: str) -> Stats:
    """The statistics `source` names: a `stats.npz` path (`sample`, the bundled corpus, needs corpus mode)."""
    if source == SAMPLE_STATS:
        raise InputError(
            "--stats sample needs the bundled sample corpus, which comes with corpus mode (not in this version); "
            "give a stats.npz file"
        )
    return read_stats(source)
