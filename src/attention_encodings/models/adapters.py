"""Architecture adapters: where each supported family keeps each part the tool reads, keyed by role.

A family is one registered `Adapter` entry (in the spirit of TransformerLens's per-architecture component
mapping): the embedding parts, the blocks, the norm that follows attention plus the residual, whether blocks
are post-norm (BERT) or pre-norm (GPT-2, Llama), the final norm, and the output head. Tracing, the reference
spaces and the head lens ask an adapter for a role, so no other module names a module path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel

from ..errors import UnsupportedArchitectureError

PositionRule = Literal["absolute", "after_padding"]
BlockKind = Literal["post_norm", "pre_norm"]
Objective = Literal["masked", "causal"]


@dataclass(frozen=True)
class EmbeddingParts:
    """The pieces of an embedding layer `proj(Norm(E[v] + P[pos] + T[type]))` that reference spaces read.

    Tensors are the model's own parameters (detached), so nothing is copied or re-derived. Families without an
    embedding LayerNorm (GPT-2, Llama) have no norm parameters; families without a projection have none.
    """

    word: Tensor
    """(V, e) word-embedding matrix E."""
    norm_weight: Tensor | None = None
    """(e,) embedding LayerNorm gain γ, or None where the embedding has no norm."""
    norm_bias: Tensor | None = None
    """(e,) LayerNorm bias β."""
    norm_eps: float = 0.0
    projection_weight: Tensor | None = None
    """(h, e) linear map after the LayerNorm (ELECTRA's `embeddings_project`), if any."""
    projection_bias: Tensor | None = None
    slotted: bool = False
    """Whether the embedding adds position or token-type vectors, so that a token's slot changes its encoding."""


def get_module(root: nn.Module, path: str) -> nn.Module:
    """The submodule of `root` at a dotted `path`."""
    module = root
    for part in path.split("."):
        module = getattr(module, part)
    return module


@dataclass(frozen=True)
class HeadPaths:
    """Where a block keeps what attribution reads, as paths from the block."""

    attention: str
    """The attention module whose output is (result, weights): its weights are the post-softmax probabilities
    under the eager implementation."""
    out_projection: str
    """The attention output projection; its input is every head's `z`, head-major."""
    value: str
    """The value projection (its output, bias included, is every key/value head's values)."""
    mlp: tuple[str, ...]
    """The modules that map the mid norm's output to the MLP's output, in order; the last one's output is it."""
    out_norm: str | None = None
    """Post-norm blocks: the norm over (mid norm output + MLP output), whose output is the block's."""
    value_chunk: tuple[int, int] = (0, 1)
    """(i, n): the values are the i-th of n equal chunks of the value module's output (GPT-2's fused `c_attn`)."""


@dataclass(frozen=True)
class NormParts:
    """A LayerNorm or RMSNorm's parameters: `γ ⊙ (x − centre) / √(var + ε) + β` (RMSNorm: no centring, no β)."""

    weight: Tensor
    bias: Tensor | None
    eps: float
    centred: bool


@dataclass(frozen=True)
class Adapter:
    """One family inside transformers, by role: module paths (from the base model unless noted) and input rules."""

    family: str
    model_types: tuple[str, ...]
    examples: tuple[str, ...]
    blocks_path: str
    """The list of blocks; block l produces layer l + 1."""
    mid_norm_path: str
    """From a block: the norm applied to (attention output + residual). Its input is the `resid_mid` tap and its
    output the `attn_ln` tap: BERT's `attention.output.LayerNorm`, GPT-2's `ln_2`, Llama's
    `post_attention_layernorm`."""
    block_kind: BlockKind
    """`post_norm` (BERT: a block's output is normalised) or `pre_norm` (GPT-2, Llama: the residual stream is not)."""
    word_path: str
    positions_path: str | None
    """Absolute position embeddings, or None (Llama: rotary positions inside attention)."""
    token_types_path: str | None
    """Token-type (segment) embeddings, or None; a single text is segment 0."""
    embedding_norm_path: str | None
    """The LayerNorm over the summed embeddings, or None (GPT-2, Llama)."""
    position_rule: PositionRule
    """`absolute`: position ids count from 0. `after_padding`: fairseq style, from padding_idx + 1 (RoBERTa)."""
    objective: Objective
    """What the output head predicts at a position: the token itself (`masked`) or the next one (`causal`)."""
    head_paths: tuple[str, ...]
    """From the model with its head: the modules applied, in order, to a hidden vector to get logits. For causal
    families the final norm comes first (see `final_norm_path`)."""
    head_architectures: tuple[str, ...]
    """Suffixes of `config.architectures` that say a checkpoint carries that head (`ForMaskedLM`, `LMHeadModel`)."""
    projection_path: str | None = None
    """A linear map after the embedding norm (ELECTRA's `embeddings_project`), or None."""
    final_norm_path: str | None = None
    """The norm after the last block (GPT-2's `ln_f`, Llama's `norm`); `hidden_states[-1]` already carries it."""
    heads: HeadPaths | None = None
    """Where a block keeps its attention heads and MLP, for attribution (`HeadPaths`)."""

    def base(self, model: PreTrainedModel) -> nn.Module:
        """The model without its head, where every path but `head_paths` starts."""
        return model.base_model

    def blocks(self, model: PreTrainedModel) -> list[nn.Module]:
        """The blocks, in order; block l produces layer l + 1."""
        return list(get_module(self.base(model), self.blocks_path))

    def mid_norm(self, block: nn.Module) -> nn.Module:
        """The norm whose input is the `resid_mid` tap and whose output is the `attn_ln` tap."""
        return get_module(block, self.mid_norm_path)

    def head_paths_or_raise(self) -> HeadPaths:
        """Where this family keeps its heads, or a one-line `UnsupportedArchitectureError`."""
        if self.heads is None:
            raise UnsupportedArchitectureError(f"attribution to attention heads is not supported for {self.family} models")
        return self.heads

    def out_projection(self, block: nn.Module, heads: int) -> tuple[Tensor, Tensor | None]:
        """W_O per head, (H, d_head, d) such that head h's vector is `z_h @ W[h]`, and its bias b_O (or None):
        an `nn.Linear`'s weight is (out, in), so its columns; GPT-2's `Conv1D` is (in, out), so its rows."""
        module = get_module(block, self.head_paths_or_raise().out_projection)
        weight = module.weight.detach()
        matrix = weight.T if isinstance(module, nn.Linear) else weight
        bias = getattr(module, "bias", None)
        return matrix.reshape(heads, -1, matrix.shape[-1]), None if bias is None else bias.detach()

    def mlp(self, block: nn.Module) -> Callable[[Tensor], Tensor]:
        """The block's MLP as a function of the mid norm's output."""
        modules = [get_module(block, path) for path in self.head_paths_or_raise().mlp]

        def apply(hidden: Tensor) -> Tensor:
            for module in modules:
                hidden = module(hidden)
            return hidden

        return apply

    def out_norm(self, block: nn.Module) -> nn.Module | None:
        """The norm a post-norm block applies last, or None (pre-norm)."""
        path = self.head_paths_or_raise().out_norm
        return None if path is None else get_module(block, path)

    def after_attention(self, block: nn.Module, mid: Tensor, tap: str) -> Tensor:
        """The block's `tap` recomputed from a changed `resid_mid` vector (attention output + residual), with
        the block's own modules: its norms (σ recomputed) and, where the tap follows it, its MLP."""
        if tap == "resid_mid":
            return mid
        normed = self.mid_norm(block)(mid)
        if tap == "attn_ln":
            return normed
        out = self.mlp(block)(normed)
        last = self.out_norm(block)
        return mid + out if last is None else last(normed + out)

    def final_norm(self, model: PreTrainedModel) -> nn.Module | None:
        """The norm after the last block, or None (post-norm encoders)."""
        return None if self.final_norm_path is None else get_module(self.base(model), self.final_norm_path)

    def _optional(self, model: PreTrainedModel, path: str | None) -> nn.Module | None:
        """The base model's module at `path`, or None where the role is absent (no path, or not in this model:
        ELECTRA has `embeddings_project` only when its embedding and hidden sizes differ)."""
        try:
            return None if path is None else get_module(self.base(model), path)
        except AttributeError:
            return None

    def embedding_parts(self, model: PreTrainedModel) -> EmbeddingParts:
        """The embedding layer's parameters, checked to have the shape the reference spaces assume."""
        norm = self._optional(model, self.embedding_norm_path)
        if norm is not None and not isinstance(norm, nn.LayerNorm):
            raise UnsupportedArchitectureError(
                f"{self.family} model has an embedding norm of type {type(norm).__name__}, not LayerNorm"
            )
        projection = self._optional(model, self.projection_path)
        slotted = any(self._optional(model, path) is not None for path in (self.positions_path, self.token_types_path))
        return EmbeddingParts(
            word=get_module(self.base(model), self.word_path).weight.detach(),
            norm_weight=None if norm is None else norm.weight.detach(),
            norm_bias=None if norm is None else norm.bias.detach(),
            norm_eps=0.0 if norm is None else float(norm.eps),
            projection_weight=None if projection is None else projection.weight.detach(),
            projection_bias=None if projection is None else projection.bias.detach(),
            slotted=slotted,
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
        return None if self.token_types_path is None else torch.zeros_like(input_ids)

    def slot_offsets(self, model: PreTrainedModel, position_ids: Tensor, token_type_ids: Tensor | None) -> Tensor:
        """`P[pos] + T[type]` per token (T, e): what the embedding layer adds to a word vector in each slot;
        zeros where the family adds neither."""
        word = get_module(self.base(model), self.word_path).weight
        offsets = torch.zeros(*position_ids.shape, word.shape[1], device=word.device, dtype=word.dtype)
        positions = self._optional(model, self.positions_path)
        types = self._optional(model, self.token_types_path)
        with torch.no_grad():
            if positions is not None:
                offsets = offsets + positions(position_ids)
            if types is not None and token_type_ids is not None:
                offsets = offsets + types(token_type_ids)
        return offsets

    def forward_inputs(
        self, input_ids: Tensor, position_ids: Tensor, token_type_ids: Tensor | None, attention_mask: Tensor | None = None
    ) -> dict[str, Tensor | bool]:
        """Keyword arguments for the base model's forward pass, with positions and types made explicit."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        inputs: dict[str, Tensor | bool] = {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        if self.objective == "causal":
            inputs["use_cache"] = False
        return inputs

    def max_tokens(self, config: PretrainedConfig) -> int:
        """The longest input (special tokens included) the position table can encode."""
        offset = config.pad_token_id + 1 if self.position_rule == "after_padding" else 0
        return int(config.max_position_embeddings) - offset

    def carries_head(self, config: PretrainedConfig) -> bool:
        """Whether the checkpoint's own architectures include this family's output head."""
        return any(name.endswith(self.head_architectures) for name in getattr(config, "architectures", None) or ())

    def head(self, model: PreTrainedModel) -> Callable[[Tensor], Tensor] | None:
        """The model's own output head as a function of hidden vectors (..., h) → logits (..., V): the final norm
        (causal families), then the head modules; None where the loaded model has no head."""
        if model is self.base(model):
            return None
        modules = [get_module(model, path) for path in self.head_paths]
        final = self.final_norm(model) if self.objective == "causal" else None
        steps = ([final] if final is not None else []) + modules

        def logits(hidden: Tensor) -> Tensor:
            with torch.inference_mode():
                for step in steps:
                    hidden = step(hidden)
            return hidden

        return logits


def norm_parts(norm: nn.Module, family: str) -> NormParts:
    """A block norm's parameters: `nn.LayerNorm`, or an RMSNorm (a `weight` and a `variance_epsilon` or `eps`, as
    Llama's); anything else is a one-line `UnsupportedArchitectureError` naming the family."""
    if isinstance(norm, nn.LayerNorm):
        bias = None if norm.bias is None else norm.bias.detach()
        return NormParts(norm.weight.detach(), bias, float(norm.eps), centred=True)
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    if "RMSNorm" in type(norm).__name__ and eps is not None and getattr(norm, "weight", None) is not None:
        return NormParts(norm.weight.detach(), None, float(eps), centred=False)
    raise UnsupportedArchitectureError(f"{family} model has a norm of type {type(norm).__name__}, which attribution cannot split")


_BERT_HEADS = HeadPaths(
    attention="attention.self",
    out_projection="attention.output.dense",
    value="attention.self.value",
    mlp=("intermediate", "output.dense"),
    out_norm="output.LayerNorm",
)

_ENCODER = {
    "blocks_path": "encoder.layer",
    "mid_norm_path": "attention.output.LayerNorm",
    "block_kind": "post_norm",
    "word_path": "embeddings.word_embeddings",
    "positions_path": "embeddings.position_embeddings",
    "token_types_path": "embeddings.token_type_embeddings",
    "embedding_norm_path": "embeddings.LayerNorm",
    "objective": "masked",
    "head_architectures": ("ForMaskedLM",),
    "heads": _BERT_HEADS,
}

ADAPTERS: tuple[Adapter, ...] = (
    Adapter(
        "RoBERTa",
        ("roberta",),
        ("roberta-base", "roberta-large", "distilroberta-base"),
        position_rule="after_padding",
        head_paths=("lm_head",),
        **_ENCODER,
    ),
    Adapter(
        "BERT",
        ("bert",),
        ("bert-base-uncased", "sentence-transformers/all-MiniLM-L6-v2"),
        position_rule="absolute",
        head_paths=("cls",),
        **_ENCODER,
    ),
    Adapter(
        "XLM-RoBERTa / CamemBERT",
        ("xlm-roberta", "camembert"),
        ("xlm-roberta-base", "camembert-base"),
        position_rule="after_padding",
        head_paths=("lm_head",),
        **_ENCODER,
    ),
    Adapter(
        "DistilBERT",
        ("distilbert",),
        ("distilbert-base-uncased",),
        position_rule="absolute",
        head_paths=("vocab_transform", "activation", "vocab_layer_norm", "vocab_projector"),
        **{
            **_ENCODER,
            "blocks_path": "transformer.layer",
            "mid_norm_path": "sa_layer_norm",
            "token_types_path": None,
            "heads": HeadPaths("attention", "attention.out_lin", "attention.v_lin", ("ffn",), "output_layer_norm"),
        },
    ),
    Adapter(
        "ELECTRA",
        ("electra",),
        ("google/electra-base-discriminator", "google/electra-small-generator"),
        position_rule="absolute",
        head_paths=("generator_predictions", "generator_lm_head"),
        projection_path="embeddings_project",
        **_ENCODER,
    ),
    Adapter(
        "GPT-2",
        ("gpt2",),
        ("openai-community/gpt2", "distilgpt2"),
        blocks_path="h",
        mid_norm_path="ln_2",
        block_kind="pre_norm",
        word_path="wte",
        positions_path="wpe",
        token_types_path=None,
        embedding_norm_path=None,
        position_rule="absolute",
        objective="causal",
        head_paths=("lm_head",),
        head_architectures=("LMHeadModel", "ForCausalLM"),
        final_norm_path="ln_f",
        heads=HeadPaths("attn", "attn.c_proj", "attn.c_attn", ("mlp",), value_chunk=(2, 3)),
    ),
    Adapter(
        "Llama (Llama, SmolLM2, Qwen2/3, Mistral)",
        ("llama", "qwen2", "qwen3", "mistral"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "Qwen/Qwen2.5-0.5B", "meta-llama/Llama-3.2-1B"),
        blocks_path="layers",
        mid_norm_path="post_attention_layernorm",
        block_kind="pre_norm",
        word_path="embed_tokens",
        positions_path=None,
        token_types_path=None,
        embedding_norm_path=None,
        position_rule="absolute",
        objective="causal",
        head_paths=("lm_head",),
        head_architectures=("ForCausalLM",),
        final_norm_path="norm",
        heads=HeadPaths("self_attn", "self_attn.o_proj", "self_attn.v_proj", ("mlp",)),
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
