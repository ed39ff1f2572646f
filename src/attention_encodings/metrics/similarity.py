"""Token-to-token similarity at each layer, and the anisotropy baseline derived from it, as pure tensor functions.

`similarity[l, p, q] = cos(x_l[p], x_l[q])`; `anisotropy[l]` is its mean over ordered pairs p ≠ q of the chosen
tokens: how similar two unrelated tokens of the text are at that layer (Ethayarajh, 2019).
"""

from __future__ import annotations

import torch
from torch import Tensor

_TINY = 1e-12


def unit(states: Tensor) -> Tensor:
    """`states` (..., d) scaled to unit length, in float32."""
    x = states.float()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(_TINY)


def token_similarity(states: Tensor) -> Tensor:
    """Cosines (L, T, T) between every pair of tokens at each layer, from `states` (L, T, d): one batched matmul."""
    u = unit(states)
    return u @ u.transpose(-1, -2)


def anisotropy(states: Tensor, keep: Tensor) -> Tensor:
    """Mean cosine (L,) over ordered pairs p ≠ q of the tokens where `keep` (T,) is true, at each layer of
    `states` (L, T, d); NaN where fewer than two tokens are kept. Computed from sums, never the T × T matrix:
    Σ_{p≠q} u_p·u_q = |Σ_p u_p|² − Σ_p |u_p|²."""
    u = unit(states[:, keep])
    n = u.shape[1]
    if n < 2:
        return torch.full((states.shape[0],), torch.nan, device=states.device)
    total = u.sum(dim=1).pow(2).sum(dim=-1) - u.pow(2).sum(dim=(1, 2))
    return total / (n * (n - 1))
