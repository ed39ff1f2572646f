"""Attribution, as pure tensor functions: every tapped vector split exactly into named parts (the residual, each
attention head, the attention bias, the MLP, the norms' biases, the normalisation), each part's share of the
token's cosine, each head's split over the source tokens it read, and the rank with one head removed.

For block l, token p and query head h, with z the attention output projection's input and W_O^h its slice:
- c_{l,h,p} = z_{l,h,p} W_O^h, so that Σ_h c + b_O is the projection's output;
- resid_mid = residual + Σ_h c_h + b_O; pre-norm resid_post = resid_mid + mlp; post-norm
  resid_post = LN2(attn_ln + mlp);
- a norm between a part and the tap maps each part linearly with the σ the whole vector had (frozen):
  x → γ ⊙ (x − mean x) / σ (RMSNorm: γ ⊙ x / σ), and its β is a part of its own (`norm_bias`);
- share_k = y^(k) · r / (|y| |r|), with r the token's own reference row, so Σ_k share_k = cos(y, r);
- c_{l,h,p←q} = A[p, q] · v_q W_O^h sum over q to c_{l,h,p}; through the frozen norms, their shares sum to the
  head's share.
Every map from the attention's output to a tap is one p-independent linear map K followed by a division by the
product s_p of the frozen σ's, so the per-source terms are one batched product, never a vector per source.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..models import NormParts
from .lens import Lens
from .measures import scan
from .normalize import Normalization

_TINY = 1e-12


@dataclass(frozen=True)
class Norms:
    """One norm of every block, its parameters stacked over the N blocks."""

    weight: Tensor
    """(N, d) γ."""
    bias: Tensor | None
    """(N, d) β, or None (RMSNorm, or a LayerNorm without bias)."""
    eps: float
    centred: bool
    """LayerNorm (centres, then divides by the std) or RMSNorm (divides by the root mean square)."""

    @classmethod
    def stack(cls, parts: list[NormParts]) -> Norms:
        bias = None if parts[0].bias is None else torch.stack([p.bias.float() for p in parts])  # type: ignore[union-attr]
        return cls(torch.stack([p.weight.float() for p in parts]), bias, parts[0].eps, parts[0].centred)

    def sigma(self, inputs: Tensor) -> Tensor:
        """(N, T) the σ each input vector (N, T, d) has under this norm: √(population variance + ε) or √(mean
        square + ε)."""
        x = inputs.float()
        spread = x.var(dim=-1, unbiased=False) if self.centred else x.pow(2).mean(dim=-1)
        return (spread + self.eps).sqrt()

    def linear(self, x: Tensor) -> Tensor:
        """γ ⊙ (x − mean x) (RMSNorm: γ ⊙ x) for parts x (N, K, T, d): the norm's map without its σ or β."""
        centred = x - x.mean(dim=-1, keepdim=True) if self.centred else x
        return centred * self.weight[:, None, None, :]


@dataclass(frozen=True)
class Blocks:
    """What one forward pass's blocks held, for one text (N blocks, T tokens, H query heads), float32."""

    residual: Tensor
    """(N, T, d) each block's input."""
    heads: Tensor
    """(N, H, T, d) each head's vector c = z W_O^h."""
    attn_bias: Tensor | None
    """(N, d) b_O, or None where the projection has no bias."""
    mlp: Tensor
    """(N, T, d) the MLP's output."""
    mid_input: Tensor
    """(N, T, d) resid_mid: the input of the norm after attention."""
    mid_norm: Norms
    out_input: Tensor | None
    """(N, T, d) post-norm: the input of the block's last norm (attn_ln + mlp); None for pre-norm."""
    out_norm: Norms | None
    weights: Tensor | None
    """(N, H, T, T) post-softmax attention, [query][key]; None where the token axis packs several texts."""
    sources: Tensor | None
    """(N, H, T, d) each source token's value through the head's W_O: v_{h,q} W_O^h (its group's values for
    grouped-query attention), so that c_{h,p←q} = A[h, p, q] · sources[h, q]; None as `weights`."""

    @property
    def post_norm(self) -> bool:
        return self.out_norm is not None


def head_vectors(z: Tensor, w_o: Tensor) -> Tensor:
    """c (N, H, T, d) from z (N, T, H·d_head) and W_O (N, H, d_head, d): one batched product."""
    n, t, _ = z.shape
    per_head = z.float().view(n, t, w_o.shape[1], -1).transpose(1, 2)
    return per_head @ w_o.float()


def source_vectors(values: Tensor, w_o: Tensor) -> Tensor:
    """v_{h,q} W_O^h (N, H, T, d) from the values (N, T, H_kv·d_head): query head h reads key/value head
    h // (H / H_kv), as grouped-query attention repeats each group's values."""
    n, t, _ = values.shape
    heads, d_head = w_o.shape[1], w_o.shape[2]
    groups = values.float().view(n, t, -1, d_head).transpose(1, 2)
    return groups.repeat_interleave(heads // groups.shape[1], dim=1) @ w_o.float()


def mix(weights: Tensor, values: Tensor, d_head: int) -> Tensor:
    """A · V per query head, as z (N, T, H·d_head): what the attention computes from its weights (N, H, T, T) and
    values (N, T, H_kv·d_head); it should reproduce the captured z."""
    n, heads, t, _ = weights.shape
    groups = values.float().view(n, t, -1, d_head).transpose(1, 2)
    mixed = weights.float() @ groups.repeat_interleave(heads // groups.shape[1], dim=1)
    return mixed.transpose(1, 2).reshape(n, t, -1)


def part_names(heads: int, *, attn_bias: bool, mlp: bool, norm_bias: bool, normalization: bool) -> tuple[str, ...]:
    """The parts of a tap, in order: residual, head 0..H-1, then attn_bias, mlp, norm_bias and normalization where
    they apply."""
    optional = (("attn_bias", attn_bias), ("mlp", mlp), ("norm_bias", norm_bias), ("normalization", normalization))
    return ("residual", *(f"head {h}" for h in range(heads)), *(name for name, on in optional if on))


@dataclass(frozen=True)
class Route:
    """How a vector entering at attention's output reaches the tap: through the norms `stages` in order, each
    mapping x → γ ⊙ (x − mean x) / σ with its frozen σ, then times the standardize `gain`. The whole route is
    y = gain ⊙ K(x) / scale: K linear and the same for every token, `scale` (N, T) the product of the σ's."""

    stages: tuple[Norms, ...]
    sigmas: tuple[Tensor, ...]
    """(N, T) each stage's frozen σ."""
    ones: Tensor
    """(N, T) ones: the scale where no norm lies between."""
    gain: Tensor | None
    """(N, d) 1 / std of the normalisation, or None."""

    def scale(self, start: int = 0) -> Tensor:
        """(N, T) the product of the σ's from stage `start` on (ones where there are none)."""
        total = self.ones
        for sigma in self.sigmas[start:]:
            total = total * sigma
        return total

    def linear(self, x: Tensor, start: int = 0) -> Tensor:
        """gain ⊙ K(x) for parts x (N, K, T, d) (T may be 1), through the stages from `start` on."""
        for norm in self.stages[start:]:
            x = norm.linear(x)
        return x if self.gain is None else x * self.gain[:, None, None, :]

    def apply(self, x: Tensor, start: int = 0) -> Tensor:
        """Parts x (N, K, T, d) (T may be 1: a constant) as they reach the tap, entering at stage `start`."""
        if start >= len(self.stages):
            return self.linear(x, start).expand(-1, -1, self.ones.shape[1], -1)
        return self.linear(x, start) / self.scale(start)[:, None, :, None]


def route(blocks: Blocks, tap: str, normalization: Normalization | None) -> Route:
    """The route from attention's output to `tap` (resid_mid, attn_ln or resid_post)."""
    ones = torch.ones(blocks.residual.shape[:2], device=blocks.residual.device)
    gain = None if normalization is None or normalization.gain is None else normalization.gain[1:]
    if tap == "resid_mid" or (tap == "resid_post" and not blocks.post_norm):
        stages: tuple[Norms, ...] = ()
    elif tap == "attn_ln" or blocks.out_norm is None:
        stages = (blocks.mid_norm,)
    else:
        stages = (blocks.mid_norm, blocks.out_norm)
    inputs = (blocks.mid_input, blocks.out_input)
    return Route(stages, tuple(norm.sigma(x) for norm, x in zip(stages, inputs)), ones, gain)  # type: ignore[arg-type]


def decompose(blocks: Blocks, tap: str, normalization: Normalization | None = None) -> tuple[tuple[str, ...], Tensor]:
    """The parts of `tap` at layers 1..N, (N, K, T, d), and their names: they sum to the tapped vector (normalised
    as `normalization` says), exactly up to float rounding."""
    way = route(blocks, tap, normalization)
    entering = [blocks.residual[:, None].float(), blocks.heads]
    if blocks.attn_bias is not None:
        entering.append(blocks.attn_bias[:, None, None, :].float().expand(-1, 1, way.ones.shape[1], -1))
    parts = [way.apply(torch.cat(entering, dim=1))]
    mlp = tap == "resid_post"
    if mlp:  # the MLP's output enters after the mid norm
        parts.append(way.apply(blocks.mlp[:, None].float(), start=1))
    biases = [(norm.bias, at + 1) for at, norm in enumerate(way.stages) if norm.bias is not None]
    if biases:  # each norm's β enters after its own norm
        parts.append(sum(way.apply(beta[:, None, None, :], start) for beta, start in biases))
    if normalization is not None:
        parts.append(way.apply(-normalization.shift[1:, None, None, :], start=len(way.stages)))
    names = part_names(
        blocks.heads.shape[1],
        attn_bias=blocks.attn_bias is not None,
        mlp=mlp,
        norm_bias=bool(biases),
        normalization=normalization is not None,
    )
    return names, torch.cat(parts, dim=1)


def shares(parts: Tensor, tapped: Tensor, unit_rows: Tensor) -> Tensor:
    """share_k = y^(k) · r / (|y| |r|) (N, K, T) of parts (N, K, T, d) of the tapped vectors `tapped` (N, T, d),
    against each token's unit reference row (T, d)."""
    norm = tapped.float().norm(dim=-1).clamp_min(_TINY)
    return (parts * unit_rows).sum(dim=-1) / norm[:, None, :]


def source_terms(
    blocks: Blocks, way: Route, tapped: Tensor, unit_rows: Tensor, rows: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Per (layer, head, target token p, source q), (N, H, t, T) each for the target `rows` (t,) (default: all):
    the signed share toward r_p of c_{h,p←q} as it reaches the tap, and its norm there (Kobayashi et al., 2020,
    taken through the frozen norms)."""
    if blocks.weights is None or blocks.sources is None:
        raise ValueError("these blocks pack several texts, which have no common sources; take one text's blocks")
    rows = torch.arange(tapped.shape[1], device=tapped.device) if rows is None else rows
    mapped = way.linear(blocks.sources)  # gain ⊙ K(v_q W_O^h), the same for every target p
    scale = way.scale()[:, rows]
    divisor = scale * tapped[:, rows].float().norm(dim=-1).clamp_min(_TINY)  # (N, t)
    toward = mapped @ unit_rows[rows].T  # (N, H, T_q, t)
    weights = blocks.weights[:, :, rows].float()
    signed = weights * toward.transpose(-1, -2) / divisor[:, None, :, None]
    sizes = weights * mapped.norm(dim=-1)[:, :, None, :] / scale[:, None, :, None]
    return signed, sizes


def attention_entropy(weights: Tensor) -> Tensor:
    """The entropy in bits of each attention row (the last axis): −Σ_q A[q] log₂ A[q], with 0 log 0 = 0 (a
    padded key's weight)."""
    w = weights.float()
    return -torch.special.xlogy(w, w).sum(dim=-1) / math.log(2)


def ablated(blocks: Blocks, tokens: Tensor, after: Callable[[int, Tensor], Tensor]) -> Tensor:
    """The tap with each head removed, (N, H, t, d) for the `tokens` (t,) chosen: c_h subtracted from resid_mid,
    then `after(layer, vectors)` recomputes the rest of block `layer` (its norms, σ recomputed, and its MLP
    where the tap follows it). Later blocks are not re-run."""
    mid = blocks.mid_input[:, None, tokens].float() - blocks.heads[:, :, tokens]
    return torch.stack([after(layer, mid[layer]) for layer in range(mid.shape[0])]).float()


def ablation_rank(
    vectors: Tensor,
    token_ids: Tensor,
    offsets: Tensor,
    lens: Lens,
    normalization: Normalization | None = None,
) -> Tensor:
    """The rank (N, H, t) of each token's own item among `lens`'s scores for ablated vectors (N, H, t, d), in one
    scan of all N·H·t vectors; normalised with each vector's layer's statistics first."""
    layers, heads, tokens, width = vectors.shape
    if normalization is not None:
        shift = normalization.shift[1:, None, None, :]
        vectors = vectors - shift if normalization.gain is None else (vectors - shift) * normalization.gain[1:, None, None, :]
    found = scan(vectors.reshape(layers * heads, tokens, width), token_ids, offsets, lens, keep=1)
    return found.rank.view(layers, heads, tokens)
