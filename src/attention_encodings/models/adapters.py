"""Architecture adapters: where each supported encoder family keeps its blocks, tap points and embeddings,
and how it numbers positions and token types.

Everything architecture-specific lives here, so the tracing and measuring code never names a module path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel

from ..errors import UnsupportedArchitectureError

PositionRule = Literal["absolute", "after_padding"]


@dataclass(frozen=True)
class EmbeddingParts:
    """The pieces of an embedding layer `proj(LayerNorm(E[v] + P[pos] + T[type]))` that reference spaces read.

    Tensors are the model's own parameters (detached), so nothing is copied or re-derived.
    """

    word: Tensor
    """(V, e) word-embedding matrix E."""
    norm_weight: Tensor
    """(e,) LayerNorm gain γ."""
    norm_bias: Tensor
    """(e,) LayerNorm bias β."""
    norm_eps: float
    projection_weight: Tensor | None = None
    """(h, e) linear map after the LayerNorm (ELECTRA's `embeddings_project`), if any."""
    projection_bias: Tensor | None = None


def _get(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in path.split("."):
        module = getattr(module, part)
    return module


@dataclass(frozen=True)
class Adapter:
    """What one encoder family looks like inside transformers: module paths and input conventions."""

    family: str
    model_types: tuple[str, ...]
    examples: tuple[str, ...]
    blocks_path: str
    """Dotted path from the base model to its list of encoder blocks."""
    attn_norm_path: str
    """Dotted path from a block to the LayerNorm applied to (attention output + residual)."""
    position_rule: PositionRule
    """`absolute`: positions count from 0. `after_padding`: fairseq style, from padding_idx + 1 (RoBERTa)."""
    token_types: bool
    """Whether the embedding layer adds a token-type (segment) embedding; a single text is segment 0."""

    def blocks(self, model: PreTrainedModel) -> list[nn.Module]:
        """The encoder blocks, in order; block l produces layer l + 1."""
        return list(_get(model, self.blocks_path))

    def attn_norm(self, block: nn.Module) -> nn.LayerNorm:
        """The LayerNorm whose input is the `resid_mid` tap and whose output is the `attn_ln` tap."""
        return _get(block, self.attn_norm_path)

    def embedding_parts(self, model: PreTrainedModel) -> EmbeddingParts:
        """The embedding layer's parameters, checked to have the shape the reference spaces assume."""
        emb = model.embeddings
        norm = emb.LayerNorm
        if not isinstance(norm, nn.LayerNorm):
            raise UnsupportedArchitectureError(
                f"{self.family} model has an embedding norm of type {type(norm).__name__}, not LayerNorm"
            )
        projection = getattr(model, "embeddings_project", None)
        return EmbeddingParts(
            word=emb.word_embeddings.weight.detach(),
            norm_weight=norm.weight.detach(),
            norm_bias=norm.bias.detach(),
            norm_eps=float(norm.eps),
            projection_weight=None if projection is None else projection.weight.detach(),
            projection_bias=None if projection is None else projection.bias.detach(),
        )

    def position_ids(self, input_ids: Tensor, config: PretrainedConfig) -> Tensor:
        """Position ids as the model itself would make them for `input_ids` (..., T)."""
        if self.position_rule == "absolute":
            return torch.arange(input_ids.shape[-1], device=input_ids.device).expand_as(input_ids)
        pad = config.pad_token_id
        mask = (input_ids != pad).long()
        return torch.cumsum(mask, dim=-1) * mask + pad

    def token_type_ids(self, input_ids: Tensor) -> Tensor | None:
        """Segment ids for one text (all 0), or None where the family has no token types."""
        return torch.zeros_like(input_ids) if self.token_types else None

    def slot_offsets(self, model: PreTrainedModel, position_ids: Tensor, token_type_ids: Tensor | None) -> Tensor:
        """`P[pos] + T[type]` per token: what the embedding layer adds to a word vector in each slot."""
        emb = model.embeddings
        with torch.no_grad():
            offsets = emb.position_embeddings(position_ids)
            if token_type_ids is not None:
                offsets = offsets + emb.token_type_embeddings(token_type_ids)
        return offsets

    def forward_inputs(
        self, input_ids: Tensor, position_ids: Tensor, token_type_ids: Tensor | None
    ) -> dict[str, Tensor]:
        """Keyword arguments for the model's forward pass, with positions and types made explicit."""
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "position_ids": position_ids}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        return inputs

    def max_tokens(self, config: PretrainedConfig) -> int:
        """The longest input (special tokens included) the position table can encode."""
        offset = config.pad_token_id + 1 if self.position_rule == "after_padding" else 0
        return int(config.max_position_embeddings) - offset


_BERT_LIKE = {"blocks_path": "encoder.layer", "attn_norm_path": "attention.output.LayerNorm"}

ADAPTERS: tuple[Adapter, ...] = (
    Adapter(
        "RoBERTa",
        ("roberta",),
        ("roberta-base", "roberta-large", "distilroberta-base"),
        position_rule="after_padding",
        token_types=True,
        **_BERT_LIKE,
    ),
    Adapter(
        "BERT",
        ("bert",),
        ("bert-base-uncased", "sentence-transformers/all-MiniLM-L6-v2"),
        position_rule="absolute",
        token_types=True,
        **_BERT_LIKE,
    ),
    Adapter(
        "XLM-RoBERTa / CamemBERT",
        ("xlm-roberta", "camembert"),
        ("xlm-roberta-base", "camembert-base"),
        position_rule="after_padding",
        token_types=True,
        **_BERT_LIKE,
    ),
    Adapter(
        "DistilBERT",
        ("distilbert",),
        ("distilbert-base-uncased",),
        blocks_path="transformer.layer",
        attn_norm_path="sa_layer_norm",
        position_rule="absolute",
        token_types=False,
    ),
    Adapter(
        "ELECTRA",
        ("electra",),
        ("google/electra-base-discriminator", "google/electra-small-discriminator"),
        position_rule="absolute",
        token_types=True,
        **_BERT_LIKE,
    ),
)


def supported_families() -> str:
    """The supported families as one human-readable list, for error messages and help."""
    return ", ".join(adapter.family for adapter in ADAPTERS)


def adapter_for(config: PretrainedConfig) -> Adapter:
    """The adapter for a model config, or a clear error naming what is supported."""
    model_type = getattr(config, "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise UnsupportedArchitectureError(
        f"unsupported architecture {model_type!r}; supported families: {supported_families()}"
    )
