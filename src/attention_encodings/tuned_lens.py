"""A learned lens on disk (`fit-lens` writes it) and its measures: what `--lens LENS_DIR` adds to an analysis.

A lens folder holds `lens.safetensors` (for every layer l = 0..N, `delta.{l}` (d × d) and `bias.{l}` (d,), float32,
so that `T_l(x) = x + x @ delta.{l}.T + bias.{l}`) and `lens.json` (the model's name and weight fingerprint, the
tap, the reference, the target, λ per layer, token counts, the corpus and the package version). Two targets:
- `final`: T_l(x) reads as the last layer's vector, through the model's own output head: `tuned_rank` (the rank of
  the head's target, as `head_rank`) and `tuned_kl` (KL from the model's final distribution, in bits);
- `embedding`: T_l(x) reads as the token's own reference row: `probe_cosine` and `probe_rank`, as `cosine` and
  `rank` are of x.
The lens reads the model's own vectors, never normalised ones (as the head lens does).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .catalog import LENS_MEASURES
from .errors import InputError, OptionError
from .metrics import HeadLens, ReferenceSpace, scan
from .metrics.tuned import TranslatedLens, kl_bits
from .models import LoadedModel
from .stats import fingerprint

LENS_FILE = "lens.safetensors"
LENS_JSON = "lens.json"
LENS_FORMAT = "attention-encodings lens"
TARGETS: tuple[str, ...] = ("final", "embedding")
"""`final`: the last layer's vector as the head reads it (the tuned lens proper); `embedding`: the token's own
reference row (a probe back to the input)."""


@dataclass(frozen=True)
class LearnedLens:
    """A fitted lens: per-layer translators and what they were fitted on."""

    delta: Tensor
    """(N+1, d, d) float32."""
    bias: Tensor
    """(N+1, d) float32."""
    meta: dict[str, Any] = field(default_factory=dict)
    """`lens.json`."""
    source: str = ""
    """Where it was read from, as given (for messages)."""

    @property
    def target(self) -> str:
        return str(self.meta["target"])

    @property
    def tap(self) -> str:
        return str(self.meta["tap"])

    @property
    def reference(self) -> str:
        return str(self.meta["reference"])

    @property
    def measures(self) -> tuple[str, ...]:
        return LENS_MEASURES[self.target]

    def untrained(self) -> LearnedLens:
        """The same lens with Δ = 0 and b = 0: the identity, today's (untrained) reading."""
        return LearnedLens(torch.zeros_like(self.delta), torch.zeros_like(self.bias), self.meta, self.source)

    def to(self, device: torch.device) -> LearnedLens:
        return LearnedLens(self.delta.to(device), self.bias.to(device), self.meta, self.source)


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise OptionError(f"unknown target {target!r}; choose one of: {', '.join(TARGETS)}")
    return target


def read_lens(path: str | os.PathLike[str]) -> LearnedLens:
    """The lens in folder `path`, or a one-line `InputError` saying what is wrong. Read once per folder and
    modification time."""
    folder = Path(path)
    files = (folder / LENS_FILE, folder / LENS_JSON)
    if not folder.is_dir() or not all(f.is_file() for f in files):
        raise InputError(f"{os.fspath(path)} is not a lens folder (fit-lens --out writes {LENS_FILE} and {LENS_JSON})")
    return _read(os.fspath(path), tuple(f.stat().st_mtime_ns for f in files))


@lru_cache(maxsize=8)
def _read(shown: str, stamps: tuple[int, ...]) -> LearnedLens:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(shown)
    try:
        meta = json.loads((folder / LENS_JSON).read_text(encoding="utf-8"))
        tensors = load_file(str(folder / LENS_FILE))
    except (OSError, ValueError, SafetensorError) as error:
        raise InputError(f"cannot read lens {shown}: {str(error).splitlines()[0]}") from error
    if not isinstance(meta, dict) or meta.get("format") != LENS_FORMAT or meta.get("target") not in TARGETS:
        raise InputError(f"{shown}/{LENS_JSON} does not describe a lens ({LENS_FORMAT!r} with a target)")
    layers = int(meta.get("layers", -1)) + 1
    try:
        delta = torch.stack([tensors[f"delta.{l}"] for l in range(layers)]).float()
        bias = torch.stack([tensors[f"bias.{l}"] for l in range(layers)]).float()
    except (KeyError, RuntimeError) as error:
        raise InputError(f"lens {shown}: {LENS_FILE} lacks a delta.l or bias.l for some layer 0..{layers - 1}") from error
    if delta.shape[1:] != (delta.shape[2], delta.shape[2]) or bias.shape != delta.shape[:2]:
        raise InputError(f"lens {shown}: delta must be d × d and bias d per layer; got {tuple(delta.shape)} and {tuple(bias.shape)}")
    if not (torch.isfinite(delta).all() and torch.isfinite(bias).all()):
        raise InputError(f"lens {shown} has values that are not finite")
    return LearnedLens(delta, bias, meta, shown)


def check_lens(lens: LearnedLens, handle: LoadedModel, tap: str, reference: str) -> LearnedLens:
    """`lens` if it was fitted for this model (its weights and precision), tap and (for an `embedding` lens)
    reference, else a one-line `InputError` that names the mismatch."""
    if lens.tap != tap:
        raise InputError(f"lens {lens.source} was fitted at tap {lens.tap}, not {tap}")
    if lens.target == "embedding" and lens.reference != reference:
        raise InputError(f"lens {lens.source} was fitted to the {lens.reference} reference, not {reference}")
    if lens.meta.get("fingerprint") != fingerprint(handle, tap):
        raise InputError(
            f"lens {lens.source} was fitted on {lens.meta.get('model')!r} ({lens.meta.get('dtype', 'its precision')}), "
            f"not on these weights of {handle.name!r} in {str(handle.model.dtype).removeprefix('torch.')}"
        )
    if lens.target == "final" and handle.adapter.head(handle.model) is None:
        raise InputError(f"lens {lens.source} reads through an output head, and {handle.label} has none")
    return lens


def offered_lenses_of(paths: Sequence[str]) -> dict[str, LearnedLens]:
    """The lenses a server offers, read now, by folder name (a request names one; it never opens a path); two
    folders of one name are a one-line `InputError`."""
    offered: dict[str, LearnedLens] = {}
    for path in paths:
        name = Path(path).resolve().name
        if name in offered:
            raise InputError(f"two lenses are named {name!r} ({offered[name].source} and {path}); rename one folder")
        offered[name] = read_lens(path)
    return offered


def check_offered(lenses: dict[str, LearnedLens], handles: Sequence[LoadedModel]) -> None:
    """A one-line `InputError` for a lens that fits none of `handles` (its model, precision and tap)."""
    for lens in lenses.values():
        if not any(lens.meta.get("fingerprint") == fingerprint(handle, lens.tap) for handle in handles):
            served = ", ".join(repr(handle.name) for handle in handles)
            raise InputError(f"lens {lens.source} was fitted on {lens.meta.get('model')!r}, which this server does not run ({served})")


@dataclass(frozen=True)
class Readout:
    """What a learned lens reads from the model's vectors, per (layer, token)."""

    rank: Tensor
    """(N+1, T) the target's rank among the scores of `T_l(x)` (-1 where a token has no target)."""
    own: Tensor
    """(N+1, T) the target's score (the probe cosine, for a reference space)."""
    top: Tensor
    """(N+1, T) the best-scoring item's id."""
    kl: Tensor | None = None
    """(N+1, T) KL from the final distribution, in bits (through the head only)."""
    final_top: Tensor | None = None
    """(T,) the model's final prediction (through the head only)."""


def readout(
    lens: LearnedLens,
    tapped: Tensor,
    final: Tensor | None,
    targets: Tensor,
    offsets: Tensor,
    inner: HeadLens | ReferenceSpace,
) -> Readout:
    """Read `tapped` (N+1, T, d), the model's own vectors, through `lens`: into the head (`inner` a `HeadLens`,
    `targets` its targets, `final` (T, d) the last layer's vector) or against a reference space (`inner`,
    unnormalised; `targets` the token ids)."""
    moved = lens.to(tapped.device)
    through = TranslatedLens(inner, moved.delta, moved.bias)
    found = scan(tapped, targets, offsets, through, keep=1)
    kl = final_top = None
    if isinstance(inner, HeadLens) and final is not None:
        kl, final_top = kl_bits(inner.head, through.translated(tapped), final)
    return Readout(found.rank, found.own, found.top_ids[..., 0], kl, final_top)


def lens_values(
    lens: LearnedLens, tapped: Tensor, final: Tensor | None, targets: Tensor, offsets: Tensor, inner: HeadLens | ReferenceSpace
) -> dict[str, Tensor]:
    """The lens's measures (`readout`), by name: tuned_rank and tuned_kl, or probe_cosine and probe_rank."""
    found = readout(lens, tapped, final, targets, offsets, inner)
    if lens.target == "embedding":
        return {"probe_cosine": found.own, "probe_rank": found.rank}
    assert found.kl is not None
    return {"tuned_rank": found.rank, "tuned_kl": found.kl}


def target_taps(tap: str, target: str) -> tuple[str, ...]:
    """The taps a fit or a readout traces: `tap`, and `resid_post` for the `final` target's last layer."""
    return tuple(dict.fromkeys((tap, "resid_post"))) if target == "final" else (tap,)


def target_rows(handle: LoadedModel, reference: str, target: str, traced: Any, tap: str, token_ids: Tensor) -> Tensor:
    """(T, d) what the lens is fitted to predict for each packed token of `traced` (a `trace.Trace` at
    `target_taps`): for `final` the last layer's vector as the head reads it (`resid_post` of the last block: the
    final norm's input in a causal LM, `hidden_states[-1]` in a masked LM); for `embedding` the token's own
    reference row (its layer-0 encoding for the `embedding` reference, the raw word-embedding row for `word`)."""
    if target == "final":
        return traced.packed("resid_post")[-1]
    if reference == "word":
        return handle.adapter.embedding_parts(handle.model).word[token_ids].to(traced.packed(tap).dtype)
    return traced.packed(tap)[0]
