"""The low-precision scan: bfloat16 candidate scores, verified in float32 wherever they could change an answer.

A lens that offers it (`LowPrecisionLens`) scores float32 rows x against items r_v as x·r_v. Its bfloat16 product
rounds x to x′ and r_v to r′_v, multiplies exactly (8-bit significands), accumulates in float32 and rounds the
result to bfloat16: a_v = bf16(y_v). With u = 2⁻²⁴ and γ_n = n·u / (1 − n·u), and e_v the float32 score the lens
computes for one (row, item) pair (`exact`), every bound below is from the actual roundings of this row and item:

    |y_v − x′·r′_v| ≤ γ_2h ‖x′‖‖r′_v‖                      (float32 accumulation; 2h covers paired dot steps)
    |x′·r′_v − x·r_v| ≤ ‖x′−x‖‖r_v‖ + ‖x‖‖r′_v−r_v‖ + ‖x′−x‖‖r′_v−r_v‖
    |e_v − x·r_v| ≤ γ_h ‖x‖‖r_v‖                            (the float32 check itself)
    |a_v − y_v| ≤ w|a_v| + η,  w = 2⁻⁸ / (1 − 2⁻⁸)          (bfloat16 output rounding; η covers subnormals)

`bound` sums the first three with the row's ‖x′−x‖, ‖x‖ and the largest ‖r_v‖, ‖r′_v−r_v‖, ‖r′_v‖ over items
(E). An item with |a_v − e_t| > H = (E + η + w|e_t|) / (1 − w) is on the same side of the target's score e_t
as in float32; only the items inside that band are rechecked in float32 (`exact`), which makes the rank the
count of e_v > e_t. The top-k is settled the same way from the a-intervals [a − w|a| − η − E, a + w|a| + η + E]:
items whose interval can still cross the k-th are rescored in float32. Rows the band or the top-k cannot settle
within `LIMIT` rechecks are scored whole in float32. The vocabulary mean and spread are never scanned: the lens
gives them in closed form (`spread`).

Equal up to float32's rounding: the float32 path's GEMM and `exact` sum x·r_v in different orders, each within
γ_h‖x‖‖r_v‖ of the exact value, so an item whose float32 score is within 2γ_h of the target's (at most 9.2e-5
for h = 768 and unit rows; about √h·u = 1.7e-6 in practice) may be counted by one path and not the other.
Beyond that the rank, top-k ids, their float32 cosines and hence the overlap are identical.

The word reference offers this scan. The embedding reference does not yet: its spread over V needs every score
to float32 accuracy (bfloat16's output rounding alone moves a std by ~1e-5, and the Gram that would avoid it is
d × d per slot), nor does the head lens, whose log-partition needs every logit; both scan in float32 under
every setting, and the model line says so.
"""

from __future__ import annotations

import functools
from abc import abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from ..names import SCANS
from .lens import ROW_FLOATS, Lens

UNIT = 2.0**-24
"""float32's unit roundoff."""
OUTPUT = 2.0**-8 / (1 - 2.0**-8)
"""w: a bfloat16 result a is within w·|a| of the float32 value it rounds."""
SUBNORMAL = 2.0**-126
"""η: the absolute error a flush to zero or a subnormal may add."""
MARGIN = 64
"""Items kept past the top-k from the candidate scores, so that a near-tie at the k-th is settled without a
second pass."""
LIMIT = 4096
"""At most this many float32 rechecks per row; a row needing more is scored whole in float32."""
BLOCKS = 1 << 12
"""Blocks of candidate scores read per batch by the rank count (1 MiB as float32)."""
ROWS = 128
"""Rows settled together after the product."""


def gamma(n: int) -> float:
    """γ_n: the relative error bound of a float32 sum of n products."""
    return n * UNIT / (1 - n * UNIT)


class LowPrecisionLens(Lens):
    """A lens whose scores are dot products x·r_v of float32 rows with items, which it can also give from a
    bfloat16 product with the error bound of the module docstring, and per (row, item) pair in float32."""

    @abstractmethod
    def rows(self, states: Tensor, offsets: Tensor) -> Tensor:
        """The float32 rows x (n, h) for `states` (n, h) in slots `offsets` (n, e)."""

    @abstractmethod
    def low_scores(self, rows: Tensor, out: Tensor) -> Tensor:
        """The bfloat16 candidate scores a (n, V), written into `out` (n × V bfloat16, rows contiguous)."""

    @abstractmethod
    def bound(self, rows: Tensor) -> Tensor:
        """E (n,) float64: |e_v − y_v| ≤ E for every item (module docstring)."""

    @abstractmethod
    def exact(self, rows: Tensor, ids: Tensor) -> Tensor:
        """The float32 scores e (p,) of rows (p, h) against items `ids` (p,)."""

    @abstractmethod
    def exact_block(self, rows: Tensor, ids: Tensor) -> Tensor:
        """The float32 scores (n, p) of rows (n, h) against items `ids` (p,), as one product."""

    @abstractmethod
    def spread(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """The mean and population standard deviation (n,) of each row's V scores, without scoring them."""


@functools.cache
def fast_bfloat16(device_type: str, index: int | None = None) -> bool:
    """Whether `device_type` multiplies bfloat16 matrices fast: CUDA compute capability 8.0 or more; on the
    CPU, AMX or AVX-512 BF16 (its /proc/cpuinfo flags, else torch's CPU capability). Found once per device."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(index) >= (8, 0)
    if device_type != "cpu":
        return False
    return bool(_cpu_flags() & {"amx_bf16", "avx512_bf16"}) or "AMX" in torch.backends.cpu.get_cpu_capability()


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def resolve_scan(scan: str, device: torch.device | str) -> str:
    """The product `scan` (one of SCANS) runs on `device`: `auto` is bfloat16 where `fast_bfloat16`, else float32."""
    if scan not in SCANS:
        raise ValueError(f"unknown scan {scan!r}; choose one of: {', '.join(SCANS)}")
    if scan != "auto":
        return scan
    device = torch.device(device)
    return "bfloat16" if fast_bfloat16(device.type, device.index) else "float32"


def supports(lens: Lens, log_partition: bool = False) -> bool:
    """Whether the low-precision scan can stand in for the float32 one on `lens` (not yet for the logsumexp the
    head lens needs, nor for the embedding reference, whose per-slot spread has no closed form)."""
    return isinstance(lens, LowPrecisionLens) and not log_partition


def path_taken(scan: str, device: torch.device | str, lens: Lens, log_partition: bool = False) -> str:
    """The product a scan of `lens` on `device` runs with the `scan` setting: bfloat16 or float32."""
    return "bfloat16" if resolve_scan(scan, device) == "bfloat16" and supports(lens, log_partition) else "float32"


@dataclass(frozen=True)
class Chunk:
    """What the low-precision scan found for n rows."""

    own: Tensor
    rank: Tensor
    values: Tensor
    ids: Tensor
    mean: Tensor | None
    std: Tensor | None


def scan_rows(
    lens: LowPrecisionLens, states: Tensor, offsets: Tensor, targets: Tensor, *, keep: int, ordered: int,
    spread: bool, buffer: Tensor,
) -> Chunk:
    """Own score, rank, top `keep` (the first `ordered` with their float32 scores, best first; the rest as an
    exact set, scores NaN) and optionally the spread of `states` (n, h) in slots `offsets` (n, e) with `targets`
    (n,) ≥ 0, using `buffer` (≥ n rows of bfloat16, width a multiple of ROW_FLOATS, padding -inf).

    One product for all n rows; then the candidates are settled ROWS rows at a time, so that every temporary
    stays small (fresh large tensors cost page faults that outweigh the work on them)."""
    n = states.shape[0]
    rows = lens.rows(states, offsets)
    padded = buffer[:n]
    lens.low_scores(rows, padded[:, : lens.vocab_size])
    own = lens.exact(rows, targets)
    error = lens.bound(rows)
    maxima = padded.view(n, -1, ROW_FLOATS).amax(dim=-1).float()
    parts = [
        _settle(lens, states[at], offsets[at], rows[at], padded[at], maxima[at], own[at], error[at], targets[at],
                keep, ordered)
        for at in (slice(start, start + ROWS) for start in range(0, n, ROWS))
    ]
    rank, values, ids = (torch.cat(part) for part in zip(*parts))
    mean, std = lens.spread(rows) if spread else (None, None)
    return Chunk(own, rank, values, ids, mean, std)


def _settle(
    lens: LowPrecisionLens, states: Tensor, offsets: Tensor, rows: Tensor, padded: Tensor, maxima: Tensor,
    own: Tensor, error: Tensor, targets: Tensor, keep: int, ordered: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Rank and top `keep` of a few rows from their candidate scores `padded`, block `maxima`, float32 target
    scores `own` and bounds `error`; rows the candidates cannot settle are scored whole in float32."""
    vocab = lens.vocab_size
    half = (error + SUBNORMAL + OUTPUT * own.double().abs()) / (1 - OUTPUT) * (1 + 2.0**-20)
    blocks = padded.view(len(rows), -1, ROW_FLOATS)
    rank, crowded = _rank(blocks, maxima, own, half, rows, targets, lens)
    values, ids = _top_candidates(padded, maxima, min(keep + MARGIN, vocab))
    top_values, top_ids, unsettled = _settle_top(rows, values, ids, error, keep, ordered, lens)
    if unsettled.any():  # a second, wider look before scoring whole rows
        again = unsettled.nonzero().squeeze(-1)
        values, ids = _top_candidates(padded[again], maxima[again], min(keep + 8 * MARGIN, vocab))
        wider = _settle_top(rows[again], values, ids, error[again], keep, ordered, lens)
        top_values[again], top_ids[again] = wider[0], wider[1]
        unsettled[again] = wider[2]
    whole = (crowded | unsettled).nonzero().squeeze(-1)
    if len(whole):
        exact = lens.scores(states[whole, None], offsets[whole]).squeeze(1)
        best_values, best_ids = exact.topk(keep, dim=-1)
        best_values[:, ordered:] = torch.nan
        top_values[whole], top_ids[whole] = best_values, best_ids
        # The target's own score is `own` (a float32 sum in another order): it never counts above itself.
        exact.scatter_(1, targets[whole, None], -torch.inf)
        rank[whole] = exact.gt(own[whole, None]).sum(dim=-1)
    return rank, top_values, top_ids


def _top_candidates(padded: Tensor, maxima: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """The m best candidate scores (float32, best first) and ids of each row, from the m blocks of largest
    maxima (an item outside them has m larger block maxima above it)."""
    n, blocks = maxima.shape
    take = min(m, blocks)
    padded = padded.contiguous()
    chosen = maxima.topk(take, dim=-1, sorted=False).indices
    first = torch.arange(n, device=padded.device)[:, None] * blocks
    members = padded.reshape(-1, ROW_FLOATS).index_select(0, (first + chosen).view(-1)).view(n, -1).float()
    values, at = members.topk(m, dim=-1)
    ids = chosen.gather(1, at // ROW_FLOATS) * ROW_FLOATS + at % ROW_FLOATS
    return values, ids


def _interval(values: Tensor, error: Tensor) -> tuple[Tensor, Tensor]:
    """float64 bounds (lower, upper) on the float32 scores of items with candidate scores `values` (n, m)."""
    a = values.double()
    spread = OUTPUT * a.abs() + SUBNORMAL + error[:, None]
    spread = spread * (1 + 2.0**-20)
    return a - spread, a + spread


def _settle_top(
    rows: Tensor, values: Tensor, ids: Tensor, error: Tensor, keep: int, ordered: int, lens: LowPrecisionLens
) -> tuple[Tensor, Tensor, Tensor]:
    """The exact top `keep` from the m candidates per row: the first `ordered` best first with float32 scores,
    the rest an exact set (scores NaN); and the rows the candidates cannot settle (an item beyond them might
    still enter)."""
    n, m = values.shape
    lower, upper = _interval(values, error)
    beyond = upper[:, -1] >= lower[:, keep - 1] if m > keep else torch.zeros(n, dtype=torch.bool, device=rows.device)
    place = torch.arange(m, device=rows.device)
    sure_in = (place < keep) & (lower > upper[:, keep : keep + 1]) if m > keep else place < keep
    sure_out = (place >= keep) & (upper < lower[:, keep - 1 : keep])
    region = upper >= lower[:, ordered - 1 : ordered] if ordered else torch.zeros_like(sure_in)
    recheck = region | ~(sure_in | sure_out)
    beyond |= recheck.sum(dim=-1) > LIMIT
    which = recheck.nonzero()
    scores = torch.full((n, m), -torch.inf, device=rows.device)
    scores[which[:, 0], which[:, 1]] = _exact_pairs(lens, rows, which[:, 0], ids[which[:, 0], which[:, 1]])
    # The set: every sure item, then the best of the undecided by their float32 scores.
    membership = torch.where(sure_in, torch.inf, torch.where(sure_out, -torch.inf, scores))
    chosen = membership.topk(keep, dim=-1).indices
    in_set = torch.zeros((n, m), dtype=torch.bool, device=rows.device).scatter_(1, chosen, True)
    # The first `ordered`: all could-be items were rescored, so their float32 scores order them.
    first = torch.where(region, scores, -torch.inf).topk(ordered, dim=-1) if ordered else None
    order = torch.where(in_set, 0.0, -torch.inf)
    if first is not None:
        order.scatter_(1, first.indices, (ordered - torch.arange(ordered, device=rows.device, dtype=order.dtype)).expand(n, -1))
    at = order.topk(keep, dim=-1).indices
    top_ids = ids.gather(1, at)
    top_values = torch.full((n, keep), torch.nan, device=rows.device)
    if first is not None:
        top_values[:, :ordered] = first.values
    return top_values, top_ids, beyond


def _rank(
    blocks: Tensor, maxima: Tensor, own: Tensor, half: Tensor, rows: Tensor, targets: Tensor, lens: LowPrecisionLens
) -> tuple[Tensor, Tensor]:
    """Items scoring above each row's target in float32: the candidate count, with every item in the band
    |a − own| ≤ half rechecked in float32. Only the blocks whose maximum reaches the band are read; and rows
    with more than LIMIT band items (scored whole by the caller)."""
    n, count, _ = blocks.shape
    reach = maxima.double() >= (own.double() - half)[:, None]
    pairs = reach.nonzero()
    rank = torch.zeros(n, dtype=torch.long, device=rows.device)
    band_rows: list[Tensor] = []
    band_ids: list[Tensor] = []
    for start in range(0, len(pairs), BLOCKS):
        part = pairs[start : start + BLOCKS]
        members = blocks[part[:, 0], part[:, 1]].float()  # (p, ROW_FLOATS)
        above = members > own[part[:, 0], None]
        rank.index_add_(0, part[:, 0], above.sum(dim=-1))
        near = (members.double() - own[part[:, 0], None].double()).abs() <= half[part[:, 0], None]
        hit = near.nonzero()
        band_rows.append(part[hit[:, 0], 0])
        band_ids.append(part[hit[:, 0], 1] * ROW_FLOATS + hit[:, 1])
    which, ids = torch.cat(band_rows), torch.cat(band_ids)
    crowded = torch.bincount(which, minlength=n) > LIMIT
    keep = ~crowded[which] & (ids != targets[which])
    which, ids = which[keep], ids[keep]
    flat = blocks.reshape(n, -1)
    approx = flat[which, ids].float() > own[which]
    checked = _exact_pairs(lens, rows, which, ids) > own[which]
    rank.index_add_(0, which, checked.long() - approx.long())
    # The target's candidate vote is replaced by float32's: a score never exceeds itself.
    rank -= (flat.gather(1, targets[:, None]).squeeze(1).float() > own).long()
    return rank, crowded


def _exact_pairs(lens: LowPrecisionLens, rows: Tensor, which: Tensor, ids: Tensor) -> Tensor:
    """float32 scores of rows[which] against items `ids`: one small float32 product of the rows against the
    distinct items they ask for (rows that share a token or a layer ask for many of the same)."""
    if len(which) == 0:
        return torch.empty(0, device=rows.device)
    items, column = torch.unique(ids, return_inverse=True)
    scores = lens.exact_block(rows, items)
    return scores[which, column]
