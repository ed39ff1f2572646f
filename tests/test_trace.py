"""Tap parity: the hooked taps are exactly what the real model computes."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, SEED

from attention_encodings import load_model
from attention_encodings.trace import TAPS, encode, trace


def _hidden_states(handle, encoding) -> torch.Tensor:
    """`output_hidden_states` with the model's own default positions and token types."""
    with torch.no_grad():
        out = handle.model(input_ids=encoding.input_ids[None], output_hidden_states=True)
    return torch.stack(out.hidden_states)[:, 0]


def _handles(tiny_dirs, bundled):
    return {**{family: load_model(str(path)) for family, path in tiny_dirs.items()}, "minilm": bundled}


@pytest.mark.parametrize("family", [*FAMILIES, "minilm"])
def test_taps_match_the_model(tiny_dirs, bundled, family):
    handle = _handles(tiny_dirs, bundled)[family]
    encoding = encode(handle, SEED)
    taps = trace(handle, encoding).taps
    hidden = _hidden_states(handle, encoding)
    layers = handle.num_layers + 1
    assert all(taps[tap].shape == (layers, len(encoding.input_ids), hidden.shape[-1]) for tap in TAPS)
    # resid_post is hidden_states exactly (and so is layer 0 of every tap: the embedding output).
    assert torch.equal(taps["resid_post"], hidden)
    assert all(torch.equal(taps[tap][0], hidden[0]) for tap in TAPS)
    # attn_ln is the attention LayerNorm applied to resid_mid.
    for layer, block in enumerate(handle.adapter.blocks(handle.model), start=1):
        norm = handle.adapter.attn_norm(block)
        with torch.no_grad():
            assert torch.equal(norm(taps["resid_mid"][layer]), taps["attn_ln"][layer])
        assert not torch.allclose(taps["resid_mid"][layer], taps["resid_post"][layer])


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_positions_and_types_are_the_models_own(tiny_dirs, family):
    """Passing the adapter's explicit position and token-type ids changes nothing."""
    handle = load_model(str(tiny_dirs[family]))
    encoding = encode(handle, SEED)
    inputs = handle.adapter.forward_inputs(
        encoding.input_ids[None],
        encoding.position_ids[None],
        None if encoding.token_type_ids is None else encoding.token_type_ids[None],
    )
    with torch.no_grad():
        explicit = torch.stack(handle.model(**inputs, output_hidden_states=True).hidden_states)[:, 0]
    assert torch.equal(explicit, _hidden_states(handle, encoding))
    expected_start = handle.model.config.pad_token_id + 1 if family in {"roberta", "xlm-roberta", "camembert"} else 0
    assert encoding.position_ids[0].item() == expected_start


def test_tiny_layers_really_move_the_vectors(tiny_roberta):
    """The fixture's initialiser is large enough that the measures have something to measure."""
    handle = load_model(str(tiny_roberta))
    states = trace(handle, encode(handle, SEED)).states("resid_mid")
    cos = torch.nn.functional.cosine_similarity(states[-1], states[0], dim=-1)
    assert cos.max() < 0.9
