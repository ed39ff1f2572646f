"""Reference spaces: what "the original vocabulary encodings" are, and the cosine of a hidden vector to each.

A `ReferenceSpace` is a lens onto the vocabulary: given the hidden vectors of some tokens, it returns their
cosine to every vocabulary item's reference encoding.

- `embedding`: at token slot p, item v as the embedding layer would encode it there,
  `R_p[v] = proj(Norm(E[v] + c_p))` with `c_p = P[pos(p)] + T[type(p)]`. Norm is the embedding LayerNorm
  (the identity for GPT-2 and Llama, which have none) and proj the identity except for ELECTRA. A token's own
  row is then exactly its layer-0 encoding. Where the embedding adds nothing per slot and has no norm (Llama:
  its positions are rotary, inside attention), this is the `word` space itself.
- `word`: the raw word-embedding rows, `R[v] = E[v]`, the same at every slot.

The embedding space is never built as a V×d matrix per slot. LayerNorm's mean and variance of `E[v] + c_p`,
and the dot products with x, all follow from one GEMM of the vectors against the centred E, plus a
(V × 2t) GEMM for the t slots in hand and per-row constants of E computed once per model.

Either space may be normalised (`normalize.Normalization`): every row R → (R − shift) · gain, elementwise. For
`word` that is done to the V rows once; for `embedding` it is one more affine map after the LayerNorm, folded
into the one the space already applies, so still nothing is built per slot.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError, OptionError
from ..models import EmbeddingParts
from ..names import REFERENCES
from .lens import Lens, padded_rows
from .normalize import Normalization

_TINY = 1e-12
SLOT_MEMO_FLOATS = 4 << 20
"""The embedding space keeps the per-slot tables of its last call when they hold at most this many floats (16 MB),
so a second scan of the same tokens (a learned lens's, after the measures') does not build them again."""


def check_reference(name: str) -> str:
    """Return `name` if it names a reference space, else raise a one-line `InputError`."""
    if name not in REFERENCES:
        raise OptionError(f"unknown reference {name!r}; choose one of: {', '.join(REFERENCES)}")
    return name


class ReferenceSpace(Lens):
    """A lens whose scores are the cosines of hidden vectors to every vocabulary item's reference encoding in
    each token's slot."""

    def unit_rows(self, ids: Tensor, offsets: Tensor) -> Tensor:
        """(t, h) float32: the reference encodings R_p[ids[p]] of items `ids` (t,) in the slots `offsets` (t, e),
        scaled to unit length (the direction each token's cosine is taken against)."""
        raise NotImplementedError


class WordReference(ReferenceSpace):
    """`R[v] = E[v]`: the raw word embeddings, with no position or LayerNorm (normalised: (E[v] − shift) · gain)."""

    name = "word"

    def __init__(self, parts: EmbeddingParts, normalization: Normalization | None = None) -> None:
        word = parts.word.float()
        super().__init__(word.shape[0])
        if parts.projection_weight is not None:
            raise InputError(
                f"the word reference needs hidden vectors the size of the word embeddings ({word.shape[1]}), "
                f"but this model projects them to {parts.projection_weight.shape[0]}; use the embedding reference"
            )
        if normalization is not None:
            word = word - normalization.row_shift
            if normalization.row_gain is not None:
                word = word * normalization.row_gain
        self.unit_t = (word / word.norm(dim=-1, keepdim=True).clamp_min(_TINY)).T.contiguous()
        """(h, V): unit rows, transposed so that x @ Eᵀ is a plain NN product (faster for unaligned rows)."""

    def unit_rows(self, ids: Tensor, offsets: Tensor) -> Tensor:
        return self.unit_t[:, ids].T

    def scores(self, states: Tensor, offsets: Tensor, out: Tensor | None = None) -> Tensor:
        t, r, h = states.shape
        unit = states.float() / states.float().norm(dim=-1, keepdim=True).clamp_min(_TINY)
        return _gemm(unit.reshape(t * r, h), self.unit_t, out).view(t, r, -1)


class EmbeddingReference(ReferenceSpace):
    """`R_p[v] = A·(E[v] + c_p − mean) / std + b`: the embedding layer's own encoding of v in slot p.

    With the LayerNorm gain γ, bias β and an optional projection (W, b_W) after it, A = W·diag(γ) and
    b = W·β + b_W (A = diag(γ), b = β without a projection). Without an embedding LayerNorm (GPT-2) there is
    no centring or scaling: `R_p[v] = E[v] + c_p`, that is A = I and b = 0. A normalisation R → D·(R − m), with
    D = diag(gain), makes that A' = D·A and b' = D·(b − m): still diagonal where A was.
    """

    name = "embedding"

    def __init__(self, parts: EmbeddingParts, normalization: Normalization | None = None) -> None:
        word = parts.word.float()
        super().__init__(word.shape[0])
        self.width = word.shape[1]
        self.eps = parts.norm_eps
        self.layer_norm = parts.norm_weight is not None
        centred = word - word.mean(dim=-1, keepdim=True) if self.layer_norm else word
        self.variance = centred.pow(2).mean(dim=-1) if self.layer_norm else None
        self.gamma = parts.norm_weight.float() if self.layer_norm else torch.ones(self.width, device=word.device)
        beta = parts.norm_bias.float() if self.layer_norm else torch.zeros(self.width, device=word.device)
        if parts.projection_weight is None:
            self.matrix = None
            self.bias = beta
        else:
            self.matrix = parts.projection_weight.float() * self.gamma
            self.bias = parts.projection_weight.float() @ beta + parts.projection_bias.float()
        if normalization is not None:
            self.bias = self.bias - normalization.row_shift
            gain = normalization.row_gain
            if gain is not None:
                self.bias = self.bias * gain
                if self.matrix is None:
                    self.gamma = self.gamma * gain
                else:
                    self.matrix = self.matrix * gain[:, None]
        if self.matrix is None:
            self.row_sq = (centred * self.gamma).pow(2).sum(dim=-1)
        else:
            self.row_sq = (centred @ self.matrix.T).pow(2).sum(dim=-1)
        self.bias_back = self._transpose_map(self.bias)
        self.row_bias = centred @ self.bias_back
        self.centred_t = centred.T.contiguous()
        """(e, V): the centred E (E itself without a LayerNorm), transposed so that x @ Eᵀ is a plain NN product
        (faster for unaligned rows)."""
        self.bias_sq = self.bias @ self.bias
        self._memo: tuple[Tensor, Tensor, Tensor] | None = None
        """(centred slots, 1/std, 1/|R|) of the last call, when small (SLOT_MEMO_FLOATS); replaced whole, so
        threads sharing the space read either the old entry or the new one."""

    def unit_rows(self, ids: Tensor, offsets: Tensor) -> Tensor:
        slotted = self.centred_t[:, ids].T + offsets.float()  # E[v] (centred) + c: centring again leaves E's share
        if self.layer_norm:
            slotted = slotted - slotted.mean(dim=-1, keepdim=True)
            slotted = slotted * (slotted.pow(2).mean(dim=-1, keepdim=True) + self.eps).rsqrt()
        rows = (slotted * self.gamma if self.matrix is None else slotted @ self.matrix.T) + self.bias
        return rows / rows.norm(dim=-1, keepdim=True).clamp_min(_TINY)

    def _transpose_map(self, x: Tensor) -> Tensor:
        """Aᵀx, for x of width h (last dimension)."""
        return x * self.gamma if self.matrix is None else x @ self.matrix

    def _gram(self, c: Tensor) -> Tensor:
        """AᵀA·c, for c of width e (last dimension)."""
        return c * self.gamma.pow(2) if self.matrix is None else (c @ self.matrix.T) @ self.matrix

    def scores(self, states: Tensor, offsets: Tensor, out: Tensor | None = None) -> Tensor:
        t, r, _ = states.shape
        x = states.float()
        inv_norm = x.norm(dim=-1).clamp_min(_TINY).reciprocal()
        pulled = self._transpose_map(x) * inv_norm[..., None]
        # Tokens in the same slot (position and token type) share their reference rows: the per-slot tables
        # (a GEMM against E and a few passes over V) are built once per distinct slot, which in a batch of many
        # texts is a small fraction of its tokens.
        slots, slot_of = torch.unique(offsets.float(), dim=0, return_inverse=True)
        centred_slots = slots - slots.mean(dim=-1, keepdim=True) if self.layer_norm else slots
        inv_std, inv_ref_norm = self._remembered_scales(centred_slots)
        centred_offsets = centred_slots[slot_of]
        shift = (pulled * centred_offsets[:, None, :]).sum(dim=-1)
        lift = (x @ self.bias) * inv_norm
        scores = _gemm(pulled.reshape(t * r, -1), self.centred_t, out, shift.reshape(t * r, 1))
        scores = scores.view(t, r, -1).mul_((inv_std * inv_ref_norm)[slot_of][:, None, :])
        return scores.addcmul_(lift[..., None], inv_ref_norm[slot_of][:, None, :])

    def _remembered_scales(self, centred_slots: Tensor) -> tuple[Tensor, Tensor]:
        """`_slot_scales`, reused when the last call had exactly these slots."""
        memo = self._memo
        if memo is not None and memo[0].shape == centred_slots.shape and torch.equal(memo[0], centred_slots):
            return memo[1], memo[2]
        inv_std, inv_ref_norm = self._slot_scales(centred_slots)
        small = inv_std.numel() <= SLOT_MEMO_FLOATS
        self._memo = (centred_slots, inv_std, inv_ref_norm) if small else None
        return inv_std, inv_ref_norm

    def _slot_scales(self, centred_slots: Tensor) -> tuple[Tensor, Tensor]:
        """Per slot (rows of its centred offset c) and vocabulary item: 1/std of E[v] + c (the embedding
        LayerNorm's scale; 1 without one) and 1/|R[v]|, each (slots, V)."""
        gram_slots = self._gram(centred_slots)
        if self.layer_norm:
            cross, cross_gram = _gemm(torch.cat((centred_slots, gram_slots)), self.centred_t).split(len(centred_slots))
            variance = self.variance + centred_slots.pow(2).mean(dim=-1, keepdim=True) + (2 / self.width) * cross
            inv_std = (variance + self.eps).rsqrt()
        else:
            cross_gram = _gemm(gram_slots, self.centred_t)
            inv_std = torch.ones_like(cross_gram)
        slot_sq = (centred_slots * gram_slots).sum(dim=-1, keepdim=True)
        norm_sq = (self.row_sq + 2 * cross_gram + slot_sq) * inv_std.pow(2)
        norm_sq += 2 * (self.row_bias + (centred_slots @ self.bias_back)[:, None]) * inv_std + self.bias_sq
        return inv_std, norm_sq.clamp_min(_TINY).rsqrt()


def _gemm(a: Tensor, b: Tensor, out: Tensor | None = None, shift: Tensor | None = None) -> Tensor:
    """`a @ b (+ shift)`, written into `out` (any shape of a·b's size) or into new padded rows."""
    target = padded_rows(a.shape[0], b.shape[1], a.device) if out is None else out.view(-1, b.shape[1])
    return torch.mm(a, b, out=target) if shift is None else torch.addmm(shift, a, b, out=target)


def embedding_is_word(parts: EmbeddingParts) -> bool:
    """Whether the `embedding` reference equals `word` for this model: no norm, projection or per-slot vectors."""
    return parts.norm_weight is None and parts.projection_weight is None and not parts.slotted


def reference_space(name: str, parts: EmbeddingParts, normalization: Normalization | None = None) -> ReferenceSpace:
    """Build the named reference space from a model's embedding parts, its rows normalised if asked."""
    if check_reference(name) == "word" or embedding_is_word(parts):
        return WordReference(parts, normalization)
    return EmbeddingReference(parts, normalization)
