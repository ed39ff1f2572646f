"""The measures, as pure tensor functions over tapped states and a lens.

For token p at layer l, with x = states[l, p], a lens's scores s(x)[v] over the vocabulary and a target id t_p:
- own[l, p] = s(x)[t_p]; with a reference space this is the cosine, cos(x, R_p[id_p])
- rank[l, p] = #{v : s(x)[v] > s(x)[t_p]}   (a count, never a sort)
- overlap[l, p] = |top_k(states[l, p]) ∩ top_k(states[l + 1, p])|
- neighbours: the n items of highest score, with their scores.
- vocab_mean[l, p], vocab_std[l, p]: the mean and population standard deviation of s(x)[v] over all V items, and
  zscore[l, p] = (own − vocab_mean) / vocab_std: how far the target stands above a typical item.

Tokens are processed in chunks so that the (tokens × layers × V) score matrix is never held whole. One buffer
serves every chunk, its rows padded to ROW_FLOATS (for the GEMM, and for the blocks of `blocked_top_k`); ranks
are counted in place, after the top-k and the vocabulary mean and spread have read the scores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from . import lowp
from .lens import ROW_FLOATS, Lens
from .reference import ReferenceSpace

DEFAULT_CHUNK_BYTES = 192 << 20
"""Upper bound on the float32 score blocks held at once: large enough for an efficient GEMM (about a thousand
rows for roberta-base), small enough to keep peak memory far below a whole (L·T) × V score matrix."""

SPREAD_BLOCK = 4096
"""The vocabulary mean and spread sum each row in float32 over blocks of this many items and add the blocks in
float64. A float32 sum of squares over a whole row of 50,000 scores is off by about 1e-6 of its value, which the
variance E[s²] − E[s]² multiplies by E[s²] / variance (900 when every item scores 0.6 ± 0.02): 5e-4 on the std,
against 4e-5 in blocks (and 3e-7 on rows like the bundled model's, mean 0.1 and std 0.06)."""

Progress = Callable[[int, int], None]
"""Called as progress(tokens_done, tokens_total) after each chunk."""


@dataclass(frozen=True)
class Scan:
    """What one pass over a lens's scores keeps for every (layer, token); layer-major, like `hidden_states`."""

    own: Tensor
    """(N+1, T) float32: the target's score; NaN where a token has no target (a causal model's last token)."""
    rank: Tensor
    """(N+1, T) int64: items scoring strictly above the target; -1 where a token has no target."""
    top_values: Tensor
    """(N+1, T, k) float32, best first."""
    top_ids: Tensor
    """(N+1, T, k) int64."""
    mean: Tensor | None = None
    """(N+1, T) float32: the mean score over the V items, when asked for (`spread=True`)."""
    std: Tensor | None = None
    """(N+1, T) float32: the population standard deviation of the scores over the V items, when asked for."""
    log_partition: Tensor | None = None
    """(N+1, T) float32: log Σ_v exp(score[v]), when asked for; turns the head lens's logits into probabilities,
    `exp(top_values - log_partition)`."""


@dataclass(frozen=True)
class Measures:
    """Every measure for every (layer, token); layer-major, like `hidden_states`."""

    cosine: Tensor
    """(N+1, T) float32."""
    rank: Tensor
    """(N+1, T) int64."""
    overlap: Tensor
    """(N, T) int64: overlap[l] is between layers l and l + 1."""
    neighbour_ids: Tensor
    """(N+1, T, n) int64, nearest first."""
    neighbour_cosines: Tensor
    """(N+1, T, n) float32."""
    vocab_mean: Tensor
    """(N+1, T) float32: mean cosine to every vocabulary item."""
    vocab_std: Tensor
    """(N+1, T) float32: population standard deviation of those cosines."""
    zscore: Tensor
    """(N+1, T) float32: (cosine − vocab_mean) / vocab_std."""


def scan(
    states: Tensor,
    targets: Tensor,
    offsets: Tensor,
    lens: Lens,
    *,
    keep: int,
    spread: bool = False,
    log_partition: bool = False,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: Progress | None = None,
    precision: str = "float32",
    ordered: int | None = None,
) -> Scan:
    """Score `states` (N+1, T, h) through `lens` and keep, per (layer, token), the target's score and rank,
    the `keep` best items, with `spread` the mean and standard deviation of all V scores, and with
    `log_partition` each row's logsumexp (one more pass over the scores). `targets` (T,) are vocabulary ids, -1
    for none; `offsets` (T, e) pass to the lens.

    `precision` "bfloat16" takes the low-precision scan (`lowp`) where the lens offers it, with the same
    results; there only the first `ordered` (default: all `keep`) top items come with their scores, best first,
    and the rest of the `keep` as an exact set whose scores are NaN."""
    if precision == "bfloat16" and lowp.supports(lens, log_partition):
        return _low_scan(states, targets, offsets, lens, keep, spread, chunk_bytes, progress, ordered)
    layers, tokens, _ = states.shape
    vocab = lens.vocab_size
    width = -(-vocab // ROW_FLOATS) * ROW_FLOATS
    buffers = 2 if log_partition else 1
    chunks = -(-tokens * layers * width * 4 * buffers // chunk_bytes)
    step = -(-tokens // min(tokens, chunks))
    # Scores in padded rows: the padding stays -inf, so it never counts in a rank nor enters a top-k.
    block = torch.full((step, layers, width), -torch.inf, device=states.device)
    # The logsumexp's exp(score - max) goes into a second buffer, allocated once (within `chunk_bytes`): twice
    # as fast as torch.logsumexp, whose fresh temporary per chunk costs page faults.
    scratch = torch.empty_like(block) if log_partition else None
    by_token = states.transpose(0, 1)
    has_target = targets >= 0
    pieces: list[tuple[Tensor, ...]] = []
    partitions: list[Tensor] = []
    for start in range(0, tokens, step):
        stop = min(tokens, start + step)
        padded = block[: stop - start]
        scores = lens.scores(by_token[start:stop], offsets[start:stop], out=padded[..., :vocab])
        own = scores.gather(-1, targets[start:stop].clamp_min(0)[:, None, None].expand(-1, layers, 1))
        values, ids = blocked_top_k(padded, keep)
        spreads = row_mean_std(scores) if spread else ()
        if scratch is not None:
            top = values[..., :1]  # each row's maximum: the top-k is sorted, best first
            shifted = torch.sub(scores, top, out=scratch[: stop - start, :, :vocab])
            partitions.append(shifted.exp_().sum(dim=-1).log_().add_(top.squeeze(-1)))
        rank = scores.gt_(own).sum(dim=-1)  # overwrites the scores with 0/1, so it comes last; exact below 2**24
        pieces.append((own.squeeze(-1), rank.long(), values, ids, *spreads))
        if progress is not None:
            progress(stop, tokens)
    own, rank, values, ids, *spreads = (torch.cat(part).transpose(0, 1) for part in zip(*pieces))
    mean, std = spreads or (None, None)
    return Scan(
        own=own.masked_fill(~has_target, torch.nan),
        rank=rank.masked_fill(~has_target, -1),
        top_values=values,
        top_ids=ids,
        mean=mean,
        std=std,
        log_partition=torch.cat(partitions).transpose(0, 1) if partitions else None,
    )


def _low_scan(
    states: Tensor,
    targets: Tensor,
    offsets: Tensor,
    lens: lowp.LowPrecisionLens,
    keep: int,
    spread: bool,
    chunk_bytes: int,
    progress: Progress | None,
    ordered: int | None,
) -> Scan:
    """`scan` through the low-precision product, in chunks of tokens whose bfloat16 and float32 scores fit
    `chunk_bytes`."""
    layers, tokens, h = states.shape
    vocab = lens.vocab_size
    width = -(-vocab // ROW_FLOATS) * ROW_FLOATS
    step = -(-tokens // min(tokens, -(-tokens * layers * width * 2 // chunk_bytes)))
    block = torch.full((step * layers, width), -torch.inf, dtype=torch.bfloat16, device=states.device)
    by_token = states.transpose(0, 1)
    has_target = targets >= 0
    pieces: list[lowp.Chunk] = []
    for start in range(0, tokens, step):
        stop = min(tokens, start + step)
        found = lowp.scan_rows(
            lens,
            by_token[start:stop].reshape(-1, h),
            offsets[start:stop].repeat_interleave(layers, dim=0),
            targets[start:stop].clamp_min(0).repeat_interleave(layers),
            keep=keep,
            ordered=keep if ordered is None else min(ordered, keep),
            spread=spread,
            buffer=block,
        )
        pieces.append(found)
        if progress is not None:
            progress(stop, tokens)

    def joined(name: str) -> Tensor:
        part = torch.cat([getattr(piece, name) for piece in pieces])
        return part.view(tokens, layers, *part.shape[1:]).transpose(0, 1)

    return Scan(
        own=joined("own").masked_fill(~has_target, torch.nan),
        rank=joined("rank").masked_fill(~has_target, -1),
        top_values=joined("values"),
        top_ids=joined("ids"),
        mean=joined("mean") if spread else None,
        std=joined("std") if spread else None,
    )


def row_mean_std(scores: Tensor) -> tuple[Tensor, Tensor]:
    """The mean and population standard deviation (float32) of each row of `scores` (..., V), in two read passes
    (a row sum and a row norm, which vectorise; `torch.var_mean` runs about ten times slower here), with the
    float32 partial sums over SPREAD_BLOCK items added in float64."""
    vocab = scores.shape[-1]
    cut = vocab - vocab % SPREAD_BLOCK
    parts = (scores[..., :cut].unflatten(-1, (cut // SPREAD_BLOCK, SPREAD_BLOCK)), scores[..., cut:].unsqueeze(-2))
    total = sum(part.sum(dim=-1).double().sum(dim=-1) for part in parts)
    squares = sum(torch.linalg.vector_norm(part, dim=-1).double().square().sum(dim=-1) for part in parts)
    mean = total / vocab
    variance = (squares / vocab - mean.square()).clamp_min(0)
    return mean.float(), variance.sqrt().float()


def measure(
    states: Tensor,
    token_ids: Tensor,
    offsets: Tensor,
    reference: ReferenceSpace,
    *,
    top_k: int,
    neighbours: int,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: Progress | None = None,
    precision: str = "float32",
) -> Measures:
    """Cosine, rank, top-k overlap, neighbours and the vocabulary baseline (mean, std, z-score) of `states`
    (N+1, T, h) for tokens `token_ids` (T,).

    `offsets` (T, e) are the tokens' slot offsets, passed through to the reference space; `precision` chooses
    the product (`scan`).
    """
    found = scan(
        states,
        token_ids,
        offsets,
        reference,
        keep=max(top_k, neighbours),
        spread=True,
        chunk_bytes=chunk_bytes,
        progress=progress,
        precision=precision,
        ordered=neighbours,
    )
    return Measures(
        cosine=found.own,
        rank=found.rank,
        overlap=top_k_overlap(found.top_ids[..., :top_k]),
        neighbour_ids=found.top_ids[..., :neighbours],
        neighbour_cosines=found.top_values[..., :neighbours],
        vocab_mean=found.mean,
        vocab_std=found.std,
        zscore=(found.own - found.mean) / found.std,
    )


def blocked_top_k(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest scores along the last dimension and their indices, largest first: exactly `Tensor.topk`'s
    values (the order of equal scores may differ), for contiguous `scores` whose last dimension is a multiple of
    ROW_FLOATS.

    Each row is cut into blocks of ROW_FLOATS. An item outside the k blocks with the largest maxima has k larger
    block maxima above it, so those k blocks hold a top k: one max pass, a top-k over the block maxima and one
    over k blocks' items replace a top-k over the whole row, about half the cost at roberta-base's size.
    """
    *lead, width = scores.shape
    blocks = width // ROW_FLOATS
    if blocks <= 2 * k:
        return scores.topk(k, dim=-1)
    rows = scores.reshape(-1, blocks, ROW_FLOATS)
    chosen = rows.amax(dim=-1).topk(k, dim=-1, sorted=False).indices
    first = torch.arange(rows.shape[0], device=scores.device)[:, None] * blocks
    members = rows.reshape(-1, ROW_FLOATS).index_select(0, (first + chosen).view(-1)).view(-1, k * ROW_FLOATS)
    values, at = members.topk(k, dim=-1)
    ids = chosen.gather(1, at // ROW_FLOATS) * ROW_FLOATS + at % ROW_FLOATS
    return values.view(*lead, k), ids.view(*lead, k)


def top_k_overlap(ids: Tensor) -> Tensor:
    """Size of the intersection of consecutive top-k id sets: ids (L, ..., k) → (L - 1, ...)."""
    current, following = ids[:-1].contiguous(), ids[1:].sort(dim=-1).values.contiguous()
    at = torch.searchsorted(following, current).clamp_max(ids.shape[-1] - 1)
    return (following.gather(-1, at) == current).sum(dim=-1)
