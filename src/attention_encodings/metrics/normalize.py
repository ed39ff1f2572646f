"""Normalising by corpus statistics, so that a few rogue dimensions shared by every vector stop dominating cosines
(Timkey & van Schijndel, 2021).

With per-layer statistics mean[l] and std[l] (each (N+1, d), over a corpus's non-special tokens):
- center: x_l → x_l − mean[l], and every reference row R → R − mean[0] (reference rows live where layer 0 does);
- standardize: also divide elementwise by std[l] (std[0] for the reference rows).

Every measure is then computed as before on the normalised vectors. Only the tapped vectors and the reference
rows are normalised, never anything inside the model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from ..names import NORMALIZATIONS


@dataclass(frozen=True)
class Stats:
    """Per-layer statistics of tapped vectors over a corpus: what corpus mode writes to `stats.npz`."""

    mean: Tensor
    """(N+1, d) float32."""
    std: Tensor
    """(N+1, d) float32, the population standard deviation."""
    count: int
    """How many tokens the statistics are over (0 where the file does not say)."""
    source: str
    """Where they came from (a path, or `sample`), for messages."""
    tap: str | None = None
    """The tap they were taken at, where the file says."""

    @classmethod
    def from_sums(cls, sums: Mapping[str, Tensor | np.ndarray], source: str, tap: str | None = None) -> Stats:
        """The statistics of `moment_sums` (added up over batches, as tensors or arrays): mean and population std
        per layer."""
        count = float(sums["count"])
        mean = torch.as_tensor(sums["sum"], dtype=torch.float64) / count
        variance = (torch.as_tensor(sums["sum_sq"], dtype=torch.float64) / count - mean.square()).clamp_min(0)
        return cls(mean=mean.float(), std=variance.sqrt().float(), count=int(count), source=source, tap=tap)

    def check_fits(self, layers: int, width: int, model: str, tap: str) -> None:
        """A one-line `InputError` unless these statistics fit `layers` × `width` vectors taken at `tap`."""
        if tuple(self.mean.shape) != (layers, width):
            rows, columns = self.mean.shape
            raise InputError(
                f"statistics {self.source} are for {rows - 1} layers of width {columns}, but {model} at {tap} has "
                f"{layers - 1} layers of width {width}"
            )
        if self.tap is not None and self.tap != tap:
            raise InputError(f"statistics {self.source} were taken at tap {self.tap}, not {tap}")


@dataclass(frozen=True)
class Normalization:
    """x_l → (x_l − shift[l]) · gain[l] per layer; reference rows take layer 0's shift and gain."""

    mode: str
    shift: Tensor
    """(N+1, d) float32: the corpus mean."""
    gain: Tensor | None
    """(N+1, d) float32: 1 / std for standardize; None (1) for center."""
    key: str = field(default="", compare=False)
    """Identifies the layer-0 map, for caching the reference spaces built with it."""

    def states(self, states: Tensor) -> Tensor:
        """`states` (N+1, T, d) normalised, in float32."""
        shifted = states.float() - self.shift[:, None, :]
        return shifted if self.gain is None else shifted * self.gain[:, None, :]

    @property
    def row_shift(self) -> Tensor:
        """(d,) what is subtracted from every reference row."""
        return self.shift[0]

    @property
    def row_gain(self) -> Tensor | None:
        """(d,) what every reference row is then multiplied by, elementwise (None: 1)."""
        return None if self.gain is None else self.gain[0]


def moment_sums(vectors: Tensor) -> dict[str, Tensor]:
    """Float64 sums over the tokens of `vectors` (N+1, n, d), of the vectors and of their squares, per layer and
    dimension, and their count: what `Stats.from_sums` turns into a mean and std, added up over batches exactly
    (a float32 sum of squares would lose the small variances of rogue-free dimensions)."""
    x = vectors.double()
    return {"sum": x.sum(dim=1), "sum_sq": x.square().sum(dim=1), "count": torch.tensor(float(x.shape[1]), dtype=torch.float64)}


def normalization(mode: str, stats: Stats | None, device: torch.device) -> Normalization | None:
    """The normalisation `mode` names, built from `stats` on `device`; None for `none`. A one-line `InputError`
    when statistics are missing or cannot standardize (a zero standard deviation)."""
    if mode == "none":
        return None
    if mode not in NORMALIZATIONS:
        raise InputError(f"unknown normalization {mode!r}; choose one of: {', '.join(NORMALIZATIONS)}")
    if stats is None:
        raise InputError(f"normalize {mode} needs statistics: a stats.npz file or 'sample'")
    shift = stats.mean.to(device=device, dtype=torch.float32)
    gain = None
    if mode == "standardize":
        zero = (stats.std <= 0).nonzero()
        if len(zero):
            layer, dimension = zero[0].tolist()
            raise InputError(
                f"cannot standardize with statistics {stats.source}: the standard deviation of dimension {dimension} "
                f"is 0 at layer {layer} ({len(zero)} such entries); use --normalize center"
            )
        gain = stats.std.to(device=device, dtype=torch.float32).reciprocal()
    digest = hashlib.sha256(mode.encode())
    for row in (shift[0],) if gain is None else (shift[0], gain[0]):
        digest.update(row.cpu().numpy().tobytes())
    return Normalization(mode, shift, gain, key=digest.hexdigest())
