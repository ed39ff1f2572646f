"""The three measures of the seed post, as pure tensor functions over tapped states.

For token p at layer l, with x = states[l, p], R_p its reference rows and id_p its token id:
- cosine[l, p] = cos(x, R_p[id_p])
- rank[l, p] = #{v : cos(x, R_p[v]) > cos(x, R_p[id_p])}   (a count, never a sort)
- overlap[l, p] = |top_k(states[l, p]) ∩ top_k(states[l + 1, p])|
- neighbours: the n items of highest cosine, with their cosines.

Tokens are processed in chunks so that the (tokens × layers × V) score matrix is never held whole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .reference import ReferenceSpace

DEFAULT_CHUNK_BYTES = 192 << 20
"""Upper bound on the float32 score block held at once: large enough for an efficient GEMM (about a thousand
rows for roberta-base), small enough to keep peak memory far below a whole (L·T) × V score matrix."""

Progress = Callable[[int, int], None]
"""Called as progress(tokens_done, tokens_total) after each chunk."""


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
) -> Measures:
    """Cosine, rank, top-k overlap and neighbours of `states` (N+1, T, h) for tokens `token_ids` (T,).

    `offsets` (T, e) are the tokens' slot offsets, passed through to the reference space.
    """
    layers, tokens, _ = states.shape
    keep = max(top_k, neighbours)
    chunks = -(-tokens * layers * reference.vocab_size * 4 // chunk_bytes)
    step = -(-tokens // min(tokens, chunks))
    block = torch.empty(step, layers, reference.vocab_size, device=states.device)
    by_token = states.transpose(0, 1)
    pieces = []
    for start in range(0, tokens, step):
        stop = min(tokens, start + step)
        scores = reference.cosine(by_token[start:stop], offsets[start:stop], out=block[: stop - start])
        own = scores.gather(-1, token_ids[start:stop, None, None].expand(-1, layers, 1))
        top = scores.topk(keep, dim=-1)
        rank = scores.gt_(own).sum(dim=-1)  # overwrites the scores with 0/1, so it comes last; exact below 2**24
        pieces.append((own.squeeze(-1), rank.long(), top.values, top.indices))
        if progress is not None:
            progress(stop, tokens)
    own, rank, values, ids = (torch.cat(part).transpose(0, 1) for part in zip(*pieces))
    return Measures(
        cosine=own,
        rank=rank,
        overlap=top_k_overlap(ids[..., :top_k]),
        neighbour_ids=ids[..., :neighbours],
        neighbour_cosines=values[..., :neighbours],
    )


def top_k_overlap(ids: Tensor) -> Tensor:
    """Size of the intersection of consecutive top-k id sets: ids (L, ..., k) → (L - 1, ...)."""
    current, following = ids[:-1].contiguous(), ids[1:].sort(dim=-1).values.contiguous()
    at = torch.searchsorted(following, current).clamp_max(ids.shape[-1] - 1)
    return (following.gather(-1, at) == current).sum(dim=-1)
