"""Which heads moved the token: `Attribution`, the exact split of every layer's tapped vector into the residual,
each attention head, the MLP and the norms' biases, as shares of the token's cosine, with where each head
looked (its attention weights, and each source token's share and norm) and the rank with one head removed.

`analyze(..., attribution=True)` attaches one to its `Analysis`; the definitions are in `metrics.attribution`
and in the README ("Which heads moved it"). The ablation rank is local: the block is recomputed from the
changed vector, later blocks are not re-run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import InputError
from .metrics import Normalization, ReferenceSpace
from .metrics.attribution import (
    Blocks,
    Norms,
    ablated,
    ablation_rank,
    attention_entropy,
    decompose,
    head_vectors,
    route,
    shares,
    source_terms,
    source_vectors,
)
from .models import LoadedModel, norm_parts
from .trace import Trace

if TYPE_CHECKING:
    import pandas as pd

    from .analysis import Token

DETAIL_TOKENS = 64
"""Texts up to this many tokens get every token's attention, per-source terms and ablation ranks; longer ones
only those of the tokens asked for (`focus`), since they grow with tokens² and the ranks with tokens × heads."""
TOP_SOURCES = 3
"""Source tokens listed per head by `Attribution.heads`."""
BATCH_PART_FLOATS = 64 << 20
"""`attribute_batch` takes a corpus batch's texts a group at a time, so that a group's head vectors, parts and
ablated vectors (each N × about H × tokens × d) come to about this many floats (256 MB); a larger text is a group."""


def part_heads(parts: np.ndarray, num_heads: int) -> np.ndarray:
    """The head each part (its index among the components: residual, head 0..H-1, then the rest) is, -1 for the
    parts that are not heads."""
    head = np.asarray(parts) - 1
    return np.where((head >= 0) & (head < num_heads), head, -1)


@dataclass(frozen=True)
class Source:
    """A token a head read from, for one target token: its attention weight, and the signed share toward the
    target's reference row and the norm of what it contributed, as they reach the tap."""

    index: int
    text: str
    weight: float
    share: float
    norm: float


@dataclass(frozen=True)
class HeadShare:
    """One head at one layer, for one token: its share of the cosine, the rank with it removed (against `rank`,
    the real one; None where not computed) and the sources it drew from most."""

    layer: int
    head: int
    share: float
    ablation_rank: int | None
    rank: int
    sources: tuple[Source, ...]


@dataclass(frozen=True)
class Attribution:
    """The split of one analysis's tap at layers 1..N. Token axes follow the analysis's tokens (one after
    `select`); the source axis is every token of the text."""

    tokens: tuple[Token, ...]
    sources: tuple[Token, ...]
    """Every token of the text: the source axis."""
    components: tuple[str, ...]
    """The part names: residual, head 0..H-1, then attn_bias, mlp, norm_bias, normalization where they apply."""
    num_heads: int
    shares: np.ndarray
    """(N, K, T) each part's share of the cosine: y^(k) · r / (|y| |r|); they sum to the cosine."""
    cosine: np.ndarray
    """(N+1, T) the analysis's cosine, layer 0 first."""
    rank: np.ndarray
    """(N+1, T) the analysis's rank (what ablation ranks compare with)."""
    attention: np.ndarray | None = None
    """(N, H, T, S) post-softmax weights, [layer][head][token][source]; None where not computed (see `note`)."""
    source_shares: np.ndarray | None = None
    """(N, H, T, S) each source's signed share of the cosine; they sum over sources to the head's share."""
    source_norms: np.ndarray | None = None
    """(N, H, T, S) the norm of each source's contribution at the tap (Kobayashi et al., 2020)."""
    ablation_rank: np.ndarray | None = None
    """(N, H, T) the rank with head h removed in block l only (later blocks are not re-run)."""
    note: str | None = None
    """Why the per-token detail (attention, sources, ablation ranks) is absent, if it is."""

    @property
    def layers(self) -> tuple[int, ...]:
        """1..N: the blocks (layer 0, the embedding output, has no parts)."""
        return tuple(range(1, self.shares.shape[0] + 1))

    @property
    def has_detail(self) -> bool:
        return self.attention is not None

    def _row(self, token: int | str) -> int:
        """The row of the token `token` names (an index or a text, as `Analysis.select` takes it)."""
        from .analysis import token_index  # the analysis layer's token rules; imported late (it imports this module)

        index = token_index(self.tokens, token)
        return next(row for row, t in enumerate(self.tokens) if t.index == index)

    def select(self, token: int | str) -> Attribution:
        """Narrowed to the one token `token` names (sources stay whole)."""
        row = self._row(token)
        keep = slice(row, row + 1)

        def cut(values: np.ndarray | None, axis: int) -> np.ndarray | None:
            return None if values is None else np.take(values, range(row, row + 1), axis=axis)

        return replace(
            self,
            tokens=self.tokens[keep],
            shares=self.shares[:, :, keep],
            cosine=self.cosine[:, keep],
            rank=self.rank[:, keep],
            attention=cut(self.attention, 2),
            source_shares=cut(self.source_shares, 2),
            source_norms=cut(self.source_norms, 2),
            ablation_rank=cut(self.ablation_rank, 2),
        )

    def terms(self) -> np.ndarray:
        """(N, K, T) every token's cosine change at layers 1..N split by part, as `delta` defines it (each part's
        share; for `residual`, share_residual − cosine[l−1]), in float64."""
        terms = self.shares.astype(np.float64)
        terms[:, 0] -= self.cosine[:-1]
        return terms

    def delta(self, token: int | str) -> pd.DataFrame:
        """Per layer 1..N, the cosine's change from the previous layer split by part: each part's share, except
        `residual`, which is share_residual − cosine[l−1], the residual's own change (what happened between the
        previous layer's tap and the vector this block receives, plus the renormalisation). The parts sum to
        `change`."""
        import pandas as pd

        row = self._row(token)
        terms = self.terms()[:, :, row]
        frame = pd.DataFrame(terms, columns=list(self.components), index=pd.Index(self.layers, name="layer"))
        frame.insert(0, "change", self.cosine[1:, row] - self.cosine[:-1, row])
        frame.insert(0, "cosine", self.cosine[1:, row])
        return frame

    def heads(self, layer: int, token: int | str) -> list[HeadShare]:
        """The heads of block `layer` (1..N) for one token, largest |share| first, each with its ablation rank and
        the sources it drew from most (by attention weight)."""
        if layer not in self.layers:
            raise InputError(f"layer must be one of 1..{len(self.layers)} (the blocks); got {layer}")
        row, at = self._row(token), layer - 1
        values = self.shares[at, 1 : 1 + self.num_heads, row]
        found = []
        for head in np.argsort(-np.abs(values), kind="stable"):
            listed: tuple[Source, ...] = ()
            if self.attention is not None and self.source_shares is not None and self.source_norms is not None:
                weights = self.attention[at, head, row]
                listed = tuple(
                    Source(int(q), self.sources[q].text, float(weights[q]), float(self.source_shares[at, head, row, q]),
                           float(self.source_norms[at, head, row, q]))
                    for q in np.argsort(-weights, kind="stable")[:TOP_SOURCES]
                )
            ablation = None if self.ablation_rank is None else int(self.ablation_rank[at, head, row])
            found.append(HeadShare(layer, int(head), float(values[head]), ablation, int(self.rank[layer, row]), listed))
        return found

    def to_frame(self) -> pd.DataFrame:
        """Tidy table: one row per (layer, component, token), in that order, with `share` and, for heads,
        `ablation_rank` (null for the other parts, and where it was not computed)."""
        import pandas as pd

        layers, parts, tokens = self.shares.shape
        layer, part, token = np.meshgrid(np.arange(layers), np.arange(parts), np.arange(tokens), indexing="ij")
        layer, part, token = layer.reshape(-1), part.reshape(-1), token.reshape(-1)
        head = part_heads(part, self.num_heads)
        is_head = head >= 0
        ablation = pd.array([pd.NA] * len(layer), dtype="Int64")
        if self.ablation_rank is not None:
            ablation[is_head] = self.ablation_rank[layer[is_head], head[is_head], token[is_head]]
        return pd.DataFrame(
            {
                "layer": layer + 1,
                "token_index": np.array([t.index for t in self.tokens])[token],
                "token": np.array([t.text for t in self.tokens], dtype=object)[token],
                "component": np.array(self.components, dtype=object)[part],
                "share": self.shares.reshape(-1),
                "ablation_rank": ablation,
            }
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract's `attribution` key: components, layers (1..N), shares [layer][component][token] (null
        where a part does not apply), heads (H) and, where computed, attention, source_shares and source_norms
        [layer][head][token][source] and ablation_rank [layer][head][token]; else a `note` saying why not."""
        found: dict[str, Any] = {
            "components": list(self.components),
            "layers": list(self.layers),
            "shares": _listed(self.shares),
            "heads": self.num_heads,
        }
        for name in ("attention", "source_shares", "source_norms", "ablation_rank"):
            values = getattr(self, name)
            if values is not None:
                found[name] = values.tolist() if name == "ablation_rank" else _listed(values)
        if self.note:
            found["note"] = self.note
        return found


def _listed(values: np.ndarray) -> list[Any]:
    """Float values as nested lists for JSON, NaN as null."""
    return np.where(np.isnan(values), None, values.astype(object)).tolist()


def blocks_of(handle: LoadedModel, traced: Trace, item: int | None = 0) -> Blocks:
    """What attribution needs from one encoding of a trace taken with `heads=True`, in float32; `item=None`: every
    encoding's tokens packed along one token axis, without the attention weights and sources (they are per text)."""
    if traced.heads is None:
        raise ValueError("this trace has no heads; trace with heads=True")
    adapter, model, captured = handle.adapter, handle.model, traced.heads
    blocks = adapter.blocks(model)
    heads = int(model.config.num_attention_heads)
    projections = [adapter.out_projection(block, heads) for block in blocks]
    w_o = torch.stack([matrix.float() for matrix, _ in projections])
    biases = [bias for _, bias in projections]
    out_norms = [adapter.out_norm(block) for block in blocks]
    states = traced.packed if item is None else (lambda tap: traced.states(tap, item))
    one = None if item is None else captured.item(item, len(traced.encodings[item]))
    return Blocks(
        residual=states("resid_post")[:-1].float(),
        heads=head_vectors(unpadded(captured.z, traced, item), w_o),
        attn_bias=None if biases[0] is None else torch.stack([b.float() for b in biases]),  # type: ignore[union-attr]
        mlp=unpadded(captured.mlp, traced, item).float(),
        mid_input=states("resid_mid")[1:].float(),
        mid_norm=Norms.stack([norm_parts(adapter.mid_norm(block), adapter.family) for block in blocks]),
        out_input=None if captured.out_norm_input is None else unpadded(captured.out_norm_input, traced, item).float(),
        out_norm=None if out_norms[0] is None else Norms.stack([norm_parts(n, adapter.family) for n in out_norms]),
        weights=None if one is None else one.weights.float(),
        sources=None if one is None else source_vectors(one.values, w_o),
    )


def unpadded(values: torch.Tensor, traced: Trace, item: int | None) -> torch.Tensor:
    """A capture (B, N, T, ...) padded after each text, without its padding: encoding `item`'s tokens, or
    (`item=None`) every encoding's one after another (`Trace.unpad`)."""
    return traced.unpad(values) if item is None else values[item, :, : len(traced.encodings[item])]


def _cosine_shares(
    blocks: Blocks, tapped: torch.Tensor, tap: str, space: ReferenceSpace, normalized: Normalization | None,
    token_ids: torch.Tensor, offsets: torch.Tensor,
) -> tuple[tuple[str, ...], torch.Tensor, torch.Tensor, torch.Tensor]:
    """The part names, the shares (N, K, T), the tapped vectors y at layers 1..N (normalised as the measures were)
    and the tokens' unit reference rows: what `attribute` and `attribute_batch` share."""
    if normalized is not None:
        tapped = normalized.states(tapped)
    y = tapped[1:].float()
    unit = space.unit_rows(token_ids, offsets)
    names, parts = decompose(blocks, tap, normalized)
    return names, shares(parts, y, unit), y, unit


def attribute(
    handle: LoadedModel,
    traced: Trace,
    tap: str,
    space: ReferenceSpace,
    normalized: Normalization | None,
    tokens: Sequence[Token],
    cosine: np.ndarray,
    rank: np.ndarray,
    focus: Sequence[int] | None = None,
    ablation: bool = True,
) -> Attribution:
    """The attribution of one traced text (`trace(..., heads=True)`) at `tap`, against `space` (normalised by
    `normalized`, as the measures were). The detail (attention, sources, ablation ranks) covers every token of
    a text of up to DETAIL_TOKENS tokens; beyond that, only the token indices in `focus` (none without);
    `ablation=False` leaves out the ablation ranks (one more scan, of H vectors per token and layer)."""
    blocks = blocks_of(handle, traced)
    encoding = traced.encodings[0]
    offsets = handle.adapter.slot_offsets(handle.model, encoding.position_ids, encoding.token_type_ids)
    names, found_shares, y, unit = _cosine_shares(blocks, traced.states(tap), tap, space, normalized, encoding.input_ids, offsets)
    found = {"shares": found_shares.cpu().numpy()}
    count = len(encoding)
    rows = list(range(count)) if count <= DETAIL_TOKENS else sorted(set(focus or ()))
    note = None
    if count > DETAIL_TOKENS and not rows:
        note = (
            f"the text has {count} tokens: attention, source_shares, source_norms and ablation_rank come for texts "
            f"of up to {DETAIL_TOKENS} tokens, or for one token (--token)"
        )
    if rows:
        chosen = torch.tensor(rows, device=y.device)
        signed, sizes = source_terms(blocks, route(blocks, tap, normalized), y, unit, chosen)
        found |= {
            "attention": blocks.weights[:, :, chosen].cpu().numpy(),  # type: ignore[index]
            "source_shares": signed.cpu().numpy(),
            "source_norms": sizes.cpu().numpy(),
        }
        if ablation:
            ranks = head_ablation_ranks(handle, blocks, tap, chosen, space, normalized, encoding.input_ids, offsets)
            found["ablation_rank"] = ranks.cpu().numpy()
    result = Attribution(
        tokens=tuple(tokens),
        sources=tuple(tokens),
        components=names,
        num_heads=blocks.heads.shape[1],
        cosine=cosine,
        rank=rank,
        note=note,
        **found,
    )
    if rows and len(rows) < count:  # the detail of a few tokens of a long text: keep those tokens' rows whole
        return _only(result, rows)
    return result


@dataclass(frozen=True)
class BatchAttribution:
    """The attribution of a batch of texts, their tokens packed along one axis (corpus mode): every part's share of
    every token's cosine, each head's attention entropy and, when asked, the rank with each head removed."""

    components: tuple[str, ...]
    num_heads: int
    shares: torch.Tensor
    """(N, K, ΣT) as `Attribution.shares`."""
    entropy: torch.Tensor
    """(N, H, ΣT) the entropy of each head's attention row, in bits."""
    ablation_rank: torch.Tensor | None
    """(N, H, ΣT) as `Attribution.ablation_rank`, or None."""


def attribute_batch(
    handle: LoadedModel,
    traced: Trace,
    tap: str,
    space: ReferenceSpace,
    normalized: Normalization | None,
    *,
    ablation: bool = False,
) -> BatchAttribution:
    """`attribute` for every token of a batched trace (`trace(..., heads=True)` over several encodings) at once,
    without the per-source detail; `ablation` adds the ablation ranks (one scan of N·H·ΣT vectors: about H times
    the measures' own scan)."""
    if traced.heads is None:
        raise ValueError("this trace has no heads; trace with heads=True")
    pieces = [_attribute_texts(handle, traced.texts(start, stop), tap, space, normalized, ablation)
              for start, stop in _text_groups(handle, traced)]
    first = pieces[0]
    ranks = None if first.ablation_rank is None else torch.cat([p.ablation_rank for p in pieces], dim=2)  # type: ignore[misc]
    return BatchAttribution(
        first.components,
        first.num_heads,
        torch.cat([p.shares for p in pieces], dim=2),
        torch.cat([p.entropy for p in pieces], dim=2),
        ranks,
    )


def _text_groups(handle: LoadedModel, traced: Trace) -> list[tuple[int, int]]:
    """Consecutive runs of the trace's texts whose head vectors, parts and ablated vectors fit BATCH_PART_FLOATS."""
    assert traced.heads is not None
    _, layers, _, width = traced.heads.mlp.shape
    per_token = layers * 3 * (int(handle.model.config.num_attention_heads) + 4) * width  # heads, parts, ablated
    budget = max(1, BATCH_PART_FLOATS // per_token)
    groups, start, held = [], 0, 0
    for index, encoding in enumerate(traced.encodings):
        if held and held + len(encoding) > budget:
            groups.append((start, index))
            start, held = index, 0
        held += len(encoding)
    return [*groups, (start, len(traced.encodings))]


def _attribute_texts(
    handle: LoadedModel, traced: Trace, tap: str, space: ReferenceSpace, normalized: Normalization | None, ablation: bool
) -> BatchAttribution:
    """`attribute_batch` for one group of texts, all their tokens at once."""
    assert traced.heads is not None
    blocks = blocks_of(handle, traced, None)
    adapter = handle.adapter
    token_ids = torch.cat([e.input_ids for e in traced.encodings])
    offsets = torch.cat([adapter.slot_offsets(handle.model, e.position_ids, e.token_type_ids) for e in traced.encodings])
    names, found, _, _ = _cosine_shares(blocks, traced.packed(tap), tap, space, normalized, token_ids, offsets)
    entropy = traced.unpad(attention_entropy(traced.heads.weights), axis=2)  # (B, N, H, T) → (N, H, ΣT)
    ranks = None
    if ablation:
        every = torch.arange(token_ids.shape[0], device=token_ids.device)
        ranks = head_ablation_ranks(handle, blocks, tap, every, space, normalized, token_ids, offsets)
    return BatchAttribution(names, blocks.heads.shape[1], found, entropy, ranks)


def head_ablation_ranks(
    handle: LoadedModel,
    blocks: Blocks,
    tap: str,
    rows: torch.Tensor,
    space: ReferenceSpace,
    normalized: Normalization | None,
    token_ids: torch.Tensor,
    offsets: torch.Tensor,
) -> torch.Tensor:
    """(N, H, t) the rank of each of the tokens `rows` with each head removed, its block recomputed by the
    block's own modules (`Adapter.after_attention`), all N·H·t vectors in one scan."""
    adapter = handle.adapter
    modules = adapter.blocks(handle.model)
    dtype = handle.model.dtype

    def after(layer: int, mid: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return adapter.after_attention(modules[layer], mid.to(dtype), tap)

    with handle.lock:
        vectors = ablated(blocks, rows, after)
    return ablation_rank(vectors, token_ids[rows], offsets[rows], space, normalized)


def _only(result: Attribution, rows: list[int]) -> Attribution:
    """A long text's attribution narrowed to the tokens whose detail was computed."""
    return replace(
        result,
        tokens=tuple(result.tokens[r] for r in rows),
        shares=result.shares[:, :, rows],
        cosine=result.cosine[:, rows],
        rank=result.rank[:, rows],
    )
