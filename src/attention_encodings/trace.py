"""Running the model: tokenise texts, run one forward pass with hooks, and keep the taps asked for.

Taps are read off the real modules with forward hooks, so they are exactly what the model computes.
Names follow TransformerLens: layer 0 is the embedding output (`resid_pre` of the first block); for each
block l = 1..N there are three taps. Several texts trace in one padded batch with an attention mask.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from .errors import InputError, OptionError, UnsupportedArchitectureError
from .models import Adapter, LoadedModel, get_module
from .names import DEFAULT_TAP, TAPS

__all__ = ["DEFAULT_TAP", "TAPS", "Encoding", "HeadCapture", "Trace", "check_tap", "encode", "trace"]


@dataclass(frozen=True)
class Encoding:
    """One tokenised text with the positions and token types the model will see."""

    input_ids: Tensor
    """(T,) token ids, special tokens included."""
    position_ids: Tensor
    token_type_ids: Tensor | None
    dropped: int = 0
    """How many tokens `truncate=True` cut off the end."""

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass(frozen=True)
class HeadCapture:
    """What attribution reads inside every block of one forward pass, (B, N, ...) like the taps (B texts, N
    blocks, T the longest text; padding after each text's end)."""

    z: Tensor
    """(B, N, T, H·d_head): the attention output projection's input, every query head's output, head-major."""
    weights: Tensor
    """(B, N, H, T, T): the post-softmax attention weights the model used, [query][key]."""
    values: Tensor
    """(B, N, T, H_kv·d_head): the value projection's output, bias included."""
    mlp: Tensor
    """(B, N, T, d): the MLP's output."""
    out_norm_input: Tensor | None
    """(B, N, T, d): post-norm blocks' last norm's input (mid norm output + MLP output); None for pre-norm."""

    def item(self, item: int, length: int) -> HeadCapture:
        """One encoding's capture, (N, ...), without padding."""
        t = length
        return HeadCapture(
            z=self.z[item, :, :t],
            weights=self.weights[item, :, :, :t, :t],
            values=self.values[item, :, :t],
            mlp=self.mlp[item, :, :t],
            out_norm_input=None if self.out_norm_input is None else self.out_norm_input[item, :, :t],
        )


@dataclass(frozen=True)
class Trace:
    """The captured taps of one forward pass over one or more encodings.

    Each tap is a (B, N+1, T, d) tensor, T the longest encoding (shorter ones are padded after their end);
    layer 0 is the embedding output.
    """

    encodings: tuple[Encoding, ...]
    taps: dict[str, Tensor]
    heads: HeadCapture | None = None
    """What attribution reads inside the blocks, when asked for (`trace(..., heads=True)`)."""

    def states(self, tap: str, item: int = 0) -> Tensor:
        """The (N+1, T_item, d) states of one tap for one encoding, without padding."""
        return self._tap(tap)[item, :, : len(self.encodings[item])]

    def packed(self, tap: str) -> Tensor:
        """The (N+1, ΣT, d) states of one tap for every encoding's tokens, in order, without padding."""
        return self.unpad(self._tap(tap))

    def unpad(self, values: Tensor, axis: int = 1) -> Tensor:
        """A capture (B, ...) padded after each encoding's end, with every encoding's tokens one after another along
        its token axis (`axis`, counted once B is gone) and no padding: one masked gather."""
        lengths = torch.tensor([len(e) for e in self.encodings], device=values.device)
        real = torch.arange(values.shape[axis + 1], device=values.device) < lengths[:, None]  # (B, T)
        return values.movedim(0, axis)[(slice(None),) * axis + (real,)]

    def texts(self, start: int, stop: int) -> Trace:
        """The same trace narrowed to encodings start..stop-1 (views of its tensors, nothing copied)."""
        heads = self.heads
        return Trace(
            encodings=self.encodings[start:stop],
            taps={name: values[start:stop] for name, values in self.taps.items()},
            heads=None if heads is None else HeadCapture(**{
                field.name: None if (values := getattr(heads, field.name)) is None else values[start:stop]
                for field in fields(HeadCapture)
            }),
        )

    def _tap(self, tap: str) -> Tensor:
        if check_tap(tap) not in self.taps:
            raise InputError(f"tap {tap!r} was not captured; this trace holds {', '.join(self.taps)}")
        return self.taps[tap]


def check_tap(tap: str) -> str:
    """Return `tap` if it names a tap, else raise a one-line `InputError`."""
    if tap not in TAPS:
        raise OptionError(f"unknown tap {tap!r}; choose one of: {', '.join(TAPS)}")
    return tap


def check_text(text: object) -> str:
    """`text` if it is a string of valid Unicode (no lone surrogates), else a one-line `InputError`."""
    if not isinstance(text, str):
        raise InputError(f"text must be a string, not {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InputError(f"text is not valid Unicode: {error.reason} at character {error.start}") from error
    return text


def encode(handle: LoadedModel, text: str, *, truncate: bool = False) -> Encoding:
    """Tokenise `text` for `handle`, refusing empty text and, unless `truncate`, text over the model's limit."""
    check_text(text)
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


def _pad(rows: Sequence[Tensor], value: int) -> Tensor:
    """Stack 1-d tensors into (B, T_max), padding each after its end."""
    return torch.nn.utils.rnn.pad_sequence(list(rows), batch_first=True, padding_value=value)


def length_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices into `lengths`, shortest first (ties in index order), cut into batches whose padded size (how many
    times the longest) stays within `budget` tokens, so that little of a batched trace is padding."""
    batches: list[list[int]] = []
    group: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (lengths[i], i)):
        if group and (len(group) + 1) * lengths[index] > budget:
            batches.append(group)
            group = []
        group.append(index)
    return batches + [group] if group else batches


def trace(
    handle: LoadedModel, encodings: Encoding | Sequence[Encoding], taps: Sequence[str] = TAPS, *, heads: bool = False
) -> Trace:
    """Run one forward pass over `encodings` (one, or several padded into a batch with an attention mask) and
    capture layer 0 and, per block, the `taps` asked for (default: all three). With `heads`, every tap and
    what attribution reads inside each block (`HeadCapture`); the attention then runs in the model's eager
    implementation, the one that returns its weights, for this pass only."""
    batch = (encodings,) if isinstance(encodings, Encoding) else tuple(encodings)
    if not batch:
        raise InputError("nothing to trace: no encodings were given")
    wanted = TAPS if heads else tuple(dict.fromkeys(check_tap(tap) for tap in taps))
    adapter = handle.adapter
    blocks = adapter.blocks(handle.model)
    captured: dict[str, list[Tensor | None]] = {tap: [None] * len(blocks) for tap in wanted}
    embedded: list[Tensor] = []

    def keep(tap: str, layer: int):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            captured[tap][layer] = _first(output)

        return hook

    def keep_norm_input(layer: int):
        def hook(module: nn.Module, args: tuple) -> None:
            captured["resid_mid"][layer] = args[0]

        return hook

    def keep_embedding(module: nn.Module, args: tuple, kwargs: dict) -> None:
        embedded.append(args[0] if args else kwargs["hidden_states"])

    lengths = torch.tensor([len(e) for e in batch], device=handle.device)
    mask = (torch.arange(int(lengths.max()), device=handle.device) < lengths[:, None]).long()
    pad = handle.model.config.pad_token_id or 0
    types = None if batch[0].token_type_ids is None else _pad([e.token_type_ids for e in batch], 0)
    inputs = adapter.forward_inputs(
        _pad([e.input_ids for e in batch], pad), _pad([e.position_ids for e in batch], pad), types, mask
    )
    inside: dict[str, list[Tensor | None]] = {}
    with handle.lock:
        handles = [blocks[0].register_forward_pre_hook(keep_embedding, with_kwargs=True)]
        for layer, block in enumerate(blocks):
            norm = adapter.mid_norm(block)
            if "resid_mid" in wanted:
                handles.append(norm.register_forward_pre_hook(keep_norm_input(layer)))
            if "attn_ln" in wanted:
                handles.append(norm.register_forward_hook(keep("attn_ln", layer)))
            if "resid_post" in wanted:
                handles.append(block.register_forward_hook(keep("resid_post", layer)))
        if heads:
            inside = {name: [None] * len(blocks) for name in ("z", "weights", "values", "mlp", "out_norm_input")}
            handles += _head_hooks(adapter, blocks, inside)
        try:
            with torch.inference_mode(), _eager(handle) if heads else nullcontext():
                adapter.base(handle.model)(**inputs)
        finally:
            for hook_handle in handles:
                hook_handle.remove()
    layer0 = embedded[0]
    captured_heads = None
    if heads:
        if any(w is None for w in inside["weights"]):
            raise UnsupportedArchitectureError(
                f"{adapter.family} model did not return its attention weights, so attribution cannot split it into heads"
            )
        stacked = {name: torch.stack(rows, dim=1) if rows[0] is not None else None for name, rows in inside.items()}
        captured_heads = HeadCapture(**stacked)
    return Trace(batch, {tap: torch.stack([layer0, *captured[tap]], dim=1) for tap in wanted}, captured_heads)


def _head_hooks(adapter: Adapter, blocks: Sequence[nn.Module], inside: dict[str, list[Tensor | None]]) -> list[Any]:
    """Hooks that keep, per block, what `HeadCapture` holds, into `inside`."""
    paths = adapter.head_paths_or_raise()
    chunk, chunks = paths.value_chunk

    def keep(name: str, layer: int, pre: bool = False):
        def hook(module: nn.Module, args: tuple, output: Any = None) -> None:
            if pre:
                inside[name][layer] = args[0]
            elif name == "weights":
                inside[name][layer] = output[1]
            elif name == "values":
                inside[name][layer] = output.chunk(chunks, dim=-1)[chunk]
            else:
                inside[name][layer] = _first(output)

        return hook

    handles = []
    for layer, block in enumerate(blocks):
        handles.append(get_module(block, paths.out_projection).register_forward_pre_hook(keep("z", layer, pre=True)))
        handles.append(get_module(block, paths.attention).register_forward_hook(keep("weights", layer)))
        handles.append(get_module(block, paths.value).register_forward_hook(keep("values", layer)))
        handles.append(get_module(block, paths.mlp[-1]).register_forward_hook(keep("mlp", layer)))
        if paths.out_norm is not None:
            norm = get_module(block, paths.out_norm)
            handles.append(norm.register_forward_pre_hook(keep("out_norm_input", layer, pre=True)))
    return handles


@contextmanager
def _eager(handle: LoadedModel) -> Iterator[None]:
    """The model's attention switched to its eager implementation (which returns the weights) for one pass."""
    model = handle.model
    before = model.config._attn_implementation
    if before != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if before != "eager":
            model.set_attn_implementation(before)
