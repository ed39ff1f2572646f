"""Reference spaces: what "the original vocabulary encodings" are, and the cosine of a hidden vector to each.

A `ReferenceSpace` is a small lens onto the vocabulary (in the spirit of tuned-lens's `Lens`): given the
hidden vectors of some tokens, it returns their cosine to every vocabulary item's reference encoding.

- `embedding`: at token slot p, item v as the embedding layer would encode it there,
  `R_p[v] = proj(LayerNorm(E[v] + c_p))` with `c_p = P[pos(p)] + T[type(p)]` (proj is the identity except
  for ELECTRA). A token's own row is then exactly its layer-0 encoding.
- `word`: the raw word-embedding rows, `R[v] = E[v]`, the same at every slot.

The embedding space is never built as a V×d matrix per slot. LayerNorm's mean and variance of `E[v] + c_p`,
and the dot products with x, all follow from one GEMM of the vectors against the centred E, plus a
(V × 2t) GEMM for the t slots in hand and per-row constants of E computed once per model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from ..errors import InputError
from ..models import EmbeddingParts

REFERENCES: tuple[str, ...] = ("embedding", "word")
DEFAULT_REFERENCE = "embedding"
ROW_FLOATS = 64
"""Score rows are laid out padded to a multiple of this many floats: MKL writes a GEMM result whose rows have
an odd length (roberta-base's 50,265) about 30 % slower than one with aligned rows."""
_TINY = 1e-12


def check_reference(name: str) -> str:
    """Return `name` if it names a reference space, else raise a one-line `InputError`."""
    if name not in REFERENCES:
        raise InputError(f"unknown reference {name!r}; choose one of: {', '.join(REFERENCES)}")
    return name


class ReferenceSpace(ABC):
    """Cosine similarity of hidden vectors to every vocabulary item's reference encoding."""

    name: str

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    @abstractmethod
    def cosine(self, states: Tensor, offsets: Tensor, out: Tensor | None = None) -> Tensor:
        """Cosines (t, r, V) of `states` (t, r, h): r vectors for each of t tokens, against the reference
        rows of that token's slot; `offsets` (t, e) is each token's `c_p = P[pos] + T[type]`. Written into
        `out` (t × r × V float32, rows contiguous, the row stride free) when given, so that chunked callers
        reuse one buffer with padded rows; else into a new one laid out that way."""


class WordReference(ReferenceSpace):
    """`R[v] = E[v]`: the raw word embeddings, with no position or LayerNorm."""

    name = "word"

    def __init__(self, parts: EmbeddingParts) -> None:
        word = parts.word.float()
        super().__init__(word.shape[0])
        if parts.projection_weight is not None:
            raise InputError(
                f"the word reference needs hidden vectors the size of the word embeddings ({word.shape[1]}), "
                f"but this model projects them to {parts.projection_weight.shape[0]}; use the embedding reference"
            )
        self.unit_t = (word / word.norm(dim=-1, keepdim=True).clamp_min(_TINY)).T.contiguous()
        """(h, V): unit rows, transposed so that x @ Eᵀ is a plain NN product (faster for unaligned rows)."""

    def cosine(self, states: Tensor, offsets: Tensor, out: Tensor | None = None) -> Tensor:
        t, r, h = states.shape
        unit = states.float() / states.float().norm(dim=-1, keepdim=True).clamp_min(_TINY)
        return _gemm(unit.reshape(t * r, h), self.unit_t, out).view(t, r, -1)


class EmbeddingReference(ReferenceSpace):
    """`R_p[v] = A·(E[v] + c_p − mean) / std + b`: the embedding layer's own encoding of v in slot p.

    With the LayerNorm gain γ, bias β and an optional projection (W, b_W) after it, A = W·diag(γ) and
    b = W·β + b_W (A = diag(γ), b = β without a projection).
    """

    name = "embedding"

    def __init__(self, parts: EmbeddingParts) -> None:
        word = parts.word.float()
        super().__init__(word.shape[0])
        self.width = word.shape[1]
        self.eps = parts.norm_eps
        centred = word - word.mean(dim=-1, keepdim=True)
        self.variance = centred.pow(2).mean(dim=-1)
        self.gamma = parts.norm_weight.float()
        beta = parts.norm_bias.float()
        if parts.projection_weight is None:
            self.matrix = None
            self.bias = beta
            self.row_sq = (centred * self.gamma).pow(2).sum(dim=-1)
        else:
            self.matrix = parts.projection_weight.float() * self.gamma
            self.bias = parts.projection_weight.float() @ beta + parts.projection_bias.float()
            self.row_sq = (centred @ self.matrix.T).pow(2).sum(dim=-1)
        self.bias_back = self._transpose_map(self.bias)
        self.row_bias = centred @ self.bias_back
        self.centred_t = centred.T.contiguous()
        """(e, V): the centred E, transposed so that x @ Eᵀ is a plain NN product (faster for unaligned rows)."""
        self.bias_sq = self.bias @ self.bias

    def _transpose_map(self, x: Tensor) -> Tensor:
        """Aᵀx, for x of width h (last dimension)."""
        return x * self.gamma if self.matrix is None else x @ self.matrix

    def _gram(self, c: Tensor) -> Tensor:
        """AᵀA·c, for c of width e (last dimension)."""
        return c * self.gamma.pow(2) if self.matrix is None else (c @ self.matrix.T) @ self.matrix

    def cosine(self, states: Tensor, offsets: Tensor, out: Tensor | None = None) -> Tensor:
        t, r, _ = states.shape
        x = states.float()
        inv_norm = x.norm(dim=-1).clamp_min(_TINY).reciprocal()
        pulled = self._transpose_map(x) * inv_norm[..., None]
        centred_offsets = offsets.float() - offsets.float().mean(dim=-1, keepdim=True)
        gram_offsets = self._gram(centred_offsets)
        cross, cross_gram = _gemm(torch.cat((centred_offsets, gram_offsets)), self.centred_t).split(t)
        variance = self.variance + centred_offsets.pow(2).mean(dim=-1, keepdim=True) + (2 / self.width) * cross
        inv_std = (variance + self.eps).rsqrt()
        offset_sq = (centred_offsets * gram_offsets).sum(dim=-1, keepdim=True)
        norm_sq = (self.row_sq + 2 * cross_gram + offset_sq) * inv_std.pow(2)
        norm_sq += 2 * (self.row_bias + (centred_offsets @ self.bias_back)[:, None]) * inv_std + self.bias_sq
        inv_ref_norm = norm_sq.clamp_min(_TINY).rsqrt()
        shift = (pulled * centred_offsets[:, None, :]).sum(dim=-1)
        lift = (x @ self.bias) * inv_norm
        scores = _gemm(pulled.reshape(t * r, -1), self.centred_t, out, shift.reshape(t * r, 1))
        scores = scores.view(t, r, -1).mul_((inv_std * inv_ref_norm)[:, None, :])
        return scores.addcmul_(lift[..., None], inv_ref_norm[:, None, :])


def padded_rows(rows: int, width: int, device: torch.device) -> Tensor:
    """An uninitialised (rows, width) float32 matrix whose rows are padded to a multiple of ROW_FLOATS."""
    return torch.empty(rows, -(-width // ROW_FLOATS) * ROW_FLOATS, device=device)[:, :width]


def _gemm(a: Tensor, b: Tensor, out: Tensor | None = None, shift: Tensor | None = None) -> Tensor:
    """`a @ b (+ shift)`, written into `out` (any shape of a·b's size) or into new padded rows."""
    target = padded_rows(a.shape[0], b.shape[1], a.device) if out is None else out.view(-1, b.shape[1])
    return torch.mm(a, b, out=target) if shift is None else torch.addmm(shift, a, b, out=target)


def reference_space(name: str, parts: EmbeddingParts) -> ReferenceSpace:
    """Build the named reference space from a model's embedding parts."""
    kinds: dict[str, type[ReferenceSpace]] = {"embedding": EmbeddingReference, "word": WordReference}
    return kinds[check_reference(name)](parts)
