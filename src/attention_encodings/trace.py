"""Running the model: tokenise a text, run one forward pass with hooks, and keep every tap.

Taps are read off the real modules with forward hooks, so they are exactly what the model computes.
Names follow TransformerLens: layer 0 is the embedding output (`resid_pre` of the first block); for each
block l = 1..N there are three taps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .errors import InputError
from .models import LoadedModel

TAPS: tuple[str, ...] = ("resid_mid", "attn_ln", "resid_post")
"""`resid_mid`: attention output + residual, before the attention LayerNorm (the seed's measuring point).
`attn_ln`: the same vector after that LayerNorm. `resid_post`: the block output, i.e. `hidden_states[l]`."""
DEFAULT_TAP = "resid_mid"


@dataclass(frozen=True)
class Encoding:
    """One tokenised text with the positions and token types the model will see."""

    input_ids: Tensor
    """(T,) token ids, special tokens included."""
    position_ids: Tensor
    token_type_ids: Tensor | None
    dropped: int = 0
    """How many tokens `truncate=True` cut off the end."""


@dataclass(frozen=True)
class Trace:
    """All taps of one forward pass, each an (N+1, T, d) tensor whose row 0 is the embedding output."""

    encoding: Encoding
    taps: dict[str, Tensor]

    def states(self, tap: str) -> Tensor:
        """The (N+1, T, d) states of one tap."""
        return self.taps[check_tap(tap)]


def check_tap(tap: str) -> str:
    """Return `tap` if it names a tap, else raise a one-line `InputError`."""
    if tap not in TAPS:
        raise InputError(f"unknown tap {tap!r}; choose one of: {', '.join(TAPS)}")
    return tap


def encode(handle: LoadedModel, text: str, *, truncate: bool = False) -> Encoding:
    """Tokenise `text` for `handle`, refusing empty text and, unless `truncate`, text over the model's limit."""
    if not isinstance(text, str):
        raise InputError(f"text must be a string, not {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InputError(f"text is not valid Unicode: {error.reason} at character {error.start}") from error
    if not text.strip():
        raise InputError("text is empty; give a sentence to analyse")
    ids = handle.tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"]
    limit = handle.max_tokens
    dropped = max(0, len(ids) - limit)
    if dropped:
        if not truncate:
            raise InputError(
                f"text is {len(ids)} tokens long but {handle.label} accepts at most {limit}; "
                "shorten it or turn on truncation (--truncate)"
            )
        ids = handle.tokenizer(text, truncation=True, max_length=limit, verbose=False)["input_ids"]
    if set(ids) <= set(handle.tokenizer.all_special_ids):
        raise InputError("text has no tokens besides special tokens")
    input_ids = torch.tensor(ids, dtype=torch.long, device=handle.device)
    adapter = handle.adapter
    return Encoding(
        input_ids=input_ids,
        position_ids=adapter.position_ids(input_ids, handle.model.config),
        token_type_ids=adapter.token_type_ids(input_ids),
        dropped=dropped,
    )


def _first(value: Any) -> Tensor:
    return value[0] if isinstance(value, tuple) else value


def trace(handle: LoadedModel, encoding: Encoding) -> Trace:
    """Run one forward pass and capture layer 0 and, per block, `resid_mid`, `attn_ln` and `resid_post`."""
    adapter = handle.adapter
    blocks = adapter.blocks(handle.model)
    captured: dict[str, list[Tensor | None]] = {tap: [None] * len(blocks) for tap in TAPS}
    embedded: list[Tensor] = []

    def keep(tap: str, layer: int):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            captured[tap][layer] = _first(output)[0]

        return hook

    def keep_norm_input(layer: int):
        def hook(module: nn.Module, args: tuple) -> None:
            captured["resid_mid"][layer] = args[0][0]

        return hook

    def keep_embedding(module: nn.Module, args: tuple, kwargs: dict) -> None:
        embedded.append((args[0] if args else kwargs["hidden_states"])[0])

    with handle.lock:
        handles = [blocks[0].register_forward_pre_hook(keep_embedding, with_kwargs=True)]
        for layer, block in enumerate(blocks):
            norm = adapter.attn_norm(block)
            handles += [
                norm.register_forward_pre_hook(keep_norm_input(layer)),
                norm.register_forward_hook(keep("attn_ln", layer)),
                block.register_forward_hook(keep("resid_post", layer)),
            ]
        try:
            inputs = adapter.forward_inputs(
                encoding.input_ids[None], encoding.position_ids[None], _batch(encoding.token_type_ids)
            )
            with torch.inference_mode():
                handle.model(**inputs)
        finally:
            for hook_handle in handles:
                hook_handle.remove()
    layer0 = embedded[0]
    taps = {tap: torch.stack([layer0, *captured[tap]]) for tap in TAPS}
    return Trace(encoding=encoding, taps=taps)


def _batch(ids: Tensor | None) -> Tensor | None:
    return None if ids is None else ids[None]
