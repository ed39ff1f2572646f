"""Tap parity: the hooked taps are exactly what the real model computes."""

from __future__ import annotations

import pytest
import torch
from conftest import CORPUS, DECODERS, FAMILIES, SEED

from attention_encodings import InputError, load_model
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
    traced = trace(handle, encoding)
    taps = {tap: traced.states(tap) for tap in TAPS}
    hidden = _hidden_states(handle, encoding)
    layers = handle.num_layers + 1
    assert all(taps[tap].shape == (layers, len(encoding.input_ids), hidden.shape[-1]) for tap in TAPS)
    # layer 0 of every tap is the embedding output, hidden_states[0], exactly.
    assert all(torch.equal(taps[tap][0], hidden[0]) for tap in TAPS)
    if handle.adapter.block_kind == "post_norm":  # resid_post is hidden_states exactly
        assert torch.equal(taps["resid_post"], hidden)
    else:  # pre-norm: hidden_states[N] carries the final norm; resid_post[N] is the block's own output
        assert torch.equal(taps["resid_post"][:-1], hidden[:-1])
        with torch.no_grad():
            assert torch.equal(handle.adapter.final_norm(handle.model)(taps["resid_post"][-1]), hidden[-1])
        assert not torch.allclose(taps["resid_post"][-1], hidden[-1], atol=1e-3)
    # attn_ln is the mid norm (attention LayerNorm, or the norm before the MLP) applied to resid_mid.
    for layer, block in enumerate(handle.adapter.blocks(handle.model), start=1):
        norm = handle.adapter.mid_norm(block)
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
    expected_start = handle.model.config.pad_token_id + 1 if family in {"roberta", "roberta-mlm", "xlm-roberta", "camembert"} else 0
    assert encoding.position_ids[0].item() == expected_start


@pytest.mark.parametrize("family", [*FAMILIES, "minilm"])
def test_a_padded_batch_traces_each_text_as_alone(tiny_dirs, bundled, family):
    """Texts of different lengths traced together (padded, with an attention mask) give each text's own
    states (to float32 rounding: masked attention over padding rounds differently from unmasked, by about 1e-5 of
    a state's size), and only the taps asked for are captured."""
    handle = _handles(tiny_dirs, bundled)[family]
    texts = [CORPUS[1], SEED, "Fruit flies."]
    encodings = [encode(handle, text) for text in texts]
    batch = trace(handle, encodings, taps=("resid_mid", "resid_post"))
    assert set(batch.taps) == {"resid_mid", "resid_post"}
    with pytest.raises(InputError, match="was not captured"):
        batch.states("attn_ln")
    for item, encoding in enumerate(encodings):
        alone = trace(handle, encoding)
        for tap in ("resid_mid", "resid_post"):
            together, single = batch.states(tap, item), alone.states(tap)
            assert torch.all((together - single).norm(dim=-1) <= 1e-5 * single.norm(dim=-1)), (tap, item)
    packed = batch.packed("resid_mid")
    assert packed.shape[1] == sum(len(e) for e in encodings)
    assert torch.equal(packed[:, len(encodings[0]) : len(encodings[0]) + len(encodings[1])], batch.states("resid_mid", 1))


@pytest.mark.parametrize("family", DECODERS)
def test_decoders_load_with_their_output_head(tiny_dirs, family):
    handle = load_model(str(tiny_dirs[family]))
    assert handle.adapter.block_kind == "pre_norm" and handle.adapter.objective == "causal"
    logits = handle.adapter.head(handle.model)
    hidden = torch.randn(2, handle.model.config.hidden_size)
    with torch.no_grad():
        expected = handle.model.lm_head(handle.adapter.final_norm(handle.model)(hidden))
    assert torch.equal(logits(hidden), expected)


def test_tiny_layers_really_move_the_vectors(tiny_roberta):
    """The fixture's initialiser is large enough that the measures have something to measure."""
    handle = load_model(str(tiny_roberta))
    states = trace(handle, encode(handle, SEED)).states("resid_mid")
    cos = torch.nn.functional.cosine_similarity(states[-1], states[0], dim=-1)
    assert cos.max() < 0.9
