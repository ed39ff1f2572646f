"""`--export tuned-lens DIR`: a `final` lens of a decoder in the tuned-lens package's own layout, so that
`TunedLens.from_model_and_pretrained(model, DIR)` loads it.

tuned-lens reads `hidden_states[l]` for l = 0..N−1 (our `resid_post`, layer 0 the embedding output) and applies
`h + translator_l(h)`, a `torch.nn.Linear(d, d)`, before the final norm and the unembedding: our
`T_l(x) = x + x @ delta.{l}.T + bias.{l}` is that Linear with weight `delta.{l}` and bias `bias.{l}`. It has no
translator for the last layer, which is its own target.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import InputError
from ..models import LoadedModel
from ..tuned_lens import LearnedLens
from . import store

PARAMS, CONFIG = "params.pt", "config.json"


def export_tuned_lens(lens: LearnedLens, handle: LoadedModel, folder: Path) -> None:
    """Write `params.pt` (`layer_translators`' state dict: `{l}.weight`, `{l}.bias` for l = 0..N−1) and
    `config.json` (tuned-lens's `TunedLensConfig`) into `folder`."""
    if lens.target != "final" or lens.tap != "resid_post":
        raise InputError("the tuned-lens layout reads hidden_states: export a final lens fitted at --tap resid_post")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create {folder}: {error.strerror or error}") from error
    layers = handle.num_layers
    state = {f"{l}.{name}": tensor[l].float().clone() for l in range(layers) for name, tensor in (("weight", lens.delta), ("bias", lens.bias))}
    config = {
        "base_model_name_or_path": handle.name,
        "d_model": int(lens.delta.shape[-1]),
        "num_hidden_layers": layers,
        "bias": True,
        "base_model_revision": None,
        "unembed_hash": None,
        "lens_type": "linear_tuned_lens",
    }
    store.atomic(folder / PARAMS, lambda p: torch.save(state, p))
    store.atomic(folder / CONFIG, lambda p: p.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8"))
