"""Attribution against plain loops (tests/plain.py): attention weights from softmax(QKᵀ) by hand, heads split by
hand, frozen norms applied token by token, and the block re-run with a head zeroed; on every tiny family (with
random non-zero biases), all three taps, both references, with and without normalisation, and on the bundled
model and SmolLM2.

Tolerances: parts sum to the tap within 1e-5 of its norm; shares, attention weights and per-source terms within
1e-5; ablation ranks exactly, except for items whose cosine ties the token's within plain.TIE (1e-5): the rank
may then differ by at most the number of such ties.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CORPUS, DECODERS, ENCODERS, SEED, run_cli
from plain import BERT_LIKE, plain_attention, plain_rank, plain_stats, reference_rows, zeroed_tap

from attention_encodings import UnsupportedArchitectureError, analyze, load_model
from attention_encodings.attribution import DETAIL_TOKENS, blocks_of
from attention_encodings.metrics import Stats, normalization
from attention_encodings.metrics.attribution import decompose, mix
from attention_encodings.trace import TAPS, encode, trace

TINY = ENCODERS + DECODERS
EXACT = 1e-5


@pytest.fixture(scope="module")
def biased(tiny_dirs, tmp_path_factory):
    """Per family, a tiny model whose biases and norm gains are random and non-zero (HF initialises biases to 0,
    which would leave b_O and the β terms untested), loaded once from a copy of its folder."""
    made = {}

    def get(family: str):
        if family not in made:
            folder = tmp_path_factory.mktemp(f"biased-{family}")
            shutil.copytree(tiny_dirs[family], folder, dirs_exist_ok=True)
            handle = load_model(str(folder))
            generator = torch.Generator().manual_seed(1)
            with torch.no_grad():
                for name, parameter in handle.model.named_parameters():
                    if name.endswith("bias"):
                        parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
                    elif "norm" in name.lower() and parameter.ndim == 1:
                        parameter.copy_(1 + torch.randn(parameter.shape, generator=generator) * 0.3)
            made[family] = handle
        return made[family]

    return get


def _stats(handle, tap: str) -> Stats:
    mean, std, count = plain_stats(handle, CORPUS, tap)
    return Stats(torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32), count, "plain", tap)


def _block_norms(handle, layer: int):
    """The mid norm, the last norm (post-norm) and the MLP of block `layer`, by name in each family."""
    kind = handle.model.config.model_type
    base = handle.model.base_model
    if kind in BERT_LIKE:
        block = base.encoder.layer[layer]
        return block.attention.output.LayerNorm, block.output.LayerNorm, lambda a: block.output.dense(block.intermediate(a))
    if kind == "distilbert":
        block = base.transformer.layer[layer]
        return block.sa_layer_norm, block.output_layer_norm, block.ffn
    if kind == "gpt2":
        return base.h[layer].ln_2, None, None
    return base.layers[layer].post_attention_layernorm, None, None


def frozen_map(handle, layer: int, tap: str, taps: dict, p: int, gain: torch.Tensor | None):
    """The linear map from attention's output to `tap` for token p at block `layer`, by hand: each norm on the
    way with the σ its whole input had (√(population var + ε), or the root mean square for RMSNorm)."""
    mid, last, mlp = _block_norms(handle, layer)
    stages = []
    if tap == "attn_ln" or (tap == "resid_post" and last is not None):
        stages.append((mid, taps["resid_mid"][layer + 1][p]))
    if tap == "resid_post" and last is not None:
        a = taps["attn_ln"][layer + 1][p]
        with torch.no_grad():
            stages.append((last, a + mlp(a)))

    def apply(x: torch.Tensor) -> torch.Tensor:
        for norm, whole in stages:
            if isinstance(norm, torch.nn.LayerNorm):
                sigma = (whole.var(unbiased=False) + norm.eps).sqrt()
                x = norm.weight.detach() * (x - x.mean(dim=-1, keepdim=True)) / sigma
            else:
                sigma = (whole.pow(2).mean() + norm.variance_epsilon).sqrt()
                x = norm.weight.detach() * x / sigma
        return x if gain is None else x * gain

    return apply


def check_family(handle, layers=None) -> None:
    """Attention weights are softmax(QKᵀ) by hand, A·V reproduces the captured z, the heads split by hand are the
    product's, and per-source vectors sum to each head's vector."""
    encoding = encode(handle, SEED)
    traced = trace(handle, encoding, heads=True)
    blocks = blocks_of(handle, traced)
    captured = traced.heads.item(0, len(encoding))
    d_head = captured.z.shape[-1] // blocks.heads.shape[1]
    assert torch.allclose(mix(blocks.weights, captured.values, d_head), captured.z.float(), atol=EXACT)
    inputs = traced.states("resid_post")
    for layer in layers or range(handle.num_layers):
        plain = plain_attention(handle, inputs[layer], layer)
        assert torch.allclose(blocks.weights[layer], plain.weights, atol=EXACT), layer
        assert torch.allclose(blocks.weights[layer].sum(-1), torch.ones(()), atol=EXACT)
        assert torch.allclose(blocks.heads[layer], plain.heads, atol=EXACT * plain.heads.abs().max()), layer
        assert torch.allclose(plain.sources.sum(dim=2), plain.heads, atol=EXACT * plain.heads.abs().max())
    if handle.adapter.objective == "causal":
        assert float(blocks.weights.triu(1).abs().max()) == 0  # a decoder's token sees no later token


def check_tap(handle, tap: str, reference: str, normalize: str, stats: Stats | None, layers=None) -> None:
    """Parts sum to the tap; shares sum to the cosine (the analysis's and the plain one); each head's part, its
    sources' shares and norms are the plain frozen map's; sources' shares sum to the head's; the ablation rank is
    the real block re-run with the head zeroed."""
    result = analyze(SEED, model=handle, tap=tap, reference=reference, normalize=normalize, stats=stats, attribution=True)
    found = result.attribution
    encoding = encode(handle, SEED)
    traced = trace(handle, encoding, heads=True)
    taps = {name: traced.states(name).float() for name in TAPS}
    normalized = None if stats is None else normalization(normalize, stats, handle.device)
    names, parts = decompose(blocks_of(handle, traced), tap, normalized)
    assert names == found.components
    tapped = taps[tap] if normalized is None else normalized.states(taps[tap])
    error = (parts.sum(dim=1) - tapped[1:]).norm(dim=-1) / tapped[1:].norm(dim=-1)
    assert float(error.max()) < EXACT
    assert np.allclose(found.shares.sum(axis=1), result.cosine.values[1:], atol=EXACT)
    heads = found.num_heads
    assert np.allclose(found.source_shares.sum(axis=-1), found.shares[:, 1 : 1 + heads], atol=EXACT)
    ids = encoding.input_ids.tolist()
    shift = None if stats is None else stats.mean
    scale = None if normalize != "standardize" else stats.std
    chosen = list(layers or range(handle.num_layers))
    attentions = {layer: plain_attention(handle, taps["resid_post"][layer], layer) for layer in chosen}
    references: list[torch.Tensor] = []
    slot_free = reference == "word" or handle.adapter.positions_path is None  # the same rows at every slot
    for p in range(len(ids)):
        if not (slot_free and references):
            rows = reference_rows(handle, encoding, p, reference).float()
            rows = rows if shift is None else (rows - shift[0]) / (1 if scale is None else scale[0])
            rows = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # a zero row (padding) has cosine 0
        references.append(rows)
        unit = rows[ids[p]]
        for layer in chosen:
            y = tapped[layer + 1, p]
            assert abs(float(y @ unit / y.norm()) - found.shares[layer, :, p].sum()) < EXACT
            apply = frozen_map(handle, layer, tap, taps, p, None if scale is None else 1 / scale[layer + 1])
            plain = attentions[layer]
            mapped = apply(plain.sources[:, p])  # (H, T, d)
            assert torch.allclose(apply(plain.heads[:, p]), parts[layer, 1 : 1 + heads, p], atol=EXACT * float(y.norm()))
            assert np.allclose(found.source_norms[layer, :, p], mapped.norm(dim=-1).numpy(), atol=EXACT, rtol=EXACT)
            assert np.allclose(found.source_shares[layer, :, p], (mapped @ unit / y.norm()).numpy(), atol=EXACT)
    for layer in chosen:
        for head in range(heads):
            vectors = zeroed_tap(handle, encoding, layer, head, tap).float()
            if shift is not None:
                vectors = vectors - shift[layer + 1]
            if scale is not None:
                vectors = vectors / scale[layer + 1]
            for p in range(len(ids)):
                want, ties = plain_rank(vectors[p], references[p], ids[p])
                assert abs(int(found.ablation_rank[layer, head, p]) - want) <= ties, (layer, head, p)


@pytest.mark.parametrize("family", TINY)
def test_heads_match_plain_attention(biased, family):
    check_family(biased(family))


SETTINGS = (("embedding", "none"), ("word", "standardize"), ("embedding", "center"))
"""Per tap (resid_mid, attn_ln, resid_post): so every family has both references, with and without normalisation."""
TAP_CASES = [
    (family, tap, "embedding" if family == "electra" else reference, normalize)  # ELECTRA has no word reference
    for family in TINY
    for tap, (reference, normalize) in zip(TAPS, SETTINGS[len(family) % 2 :] + SETTINGS[: len(family) % 2])
]


@pytest.mark.parametrize(("family", "tap", "reference", "normalize"), TAP_CASES)
def test_parts_shares_sources_and_ablation_match_plain(biased, family, tap, reference, normalize):
    handle = biased(family)
    stats = None if normalize == "none" else _stats(handle, tap)
    check_tap(handle, tap, reference, normalize, stats)


def test_bundled_model(bundled, bundled_stats):
    check_family(bundled)
    stats = Stats(**{k: torch.tensor(v) for k, v in np.load(bundled_stats).items() if k != "count"}, count=0, source="b")
    check_tap(bundled, "resid_mid", "embedding", "standardize", stats, layers=(2,))


def test_smollm2(smollm2):
    check_family(smollm2, layers=(0, 14, 29))
    check_tap(smollm2, "resid_post", "embedding", "none", None, layers=(29,))


def test_delta_heads_frame_and_select(bundled):
    result = analyze(SEED, model=bundled, tap="resid_post", attribution=True)
    found = result.attribution
    flies = result.token_matches("flies")[1]
    delta = found.delta(flies)
    assert list(delta.index) == [1, 2, 3, 4, 5, 6]
    assert np.allclose(delta[list(found.components)].sum(axis=1), delta["change"], atol=EXACT)
    assert np.allclose(delta["cosine"], result.cosine.values[1:, flies])
    listed = found.heads(3, flies)
    assert len(listed) == found.num_heads == 12
    assert [abs(h.share) for h in listed] == sorted((abs(h.share) for h in listed), reverse=True)
    first = listed[0]
    assert first.rank == result.rank.values[3, flies] and first.ablation_rank == found.ablation_rank[2, first.head, flies]
    weights = found.attention[2, first.head, flies]
    assert [s.index for s in first.sources] == list(np.argsort(-weights, kind="stable")[:3])
    frame = found.to_frame()
    assert len(frame) == 6 * len(found.components) * len(result.tokens)
    heads_rows = frame[frame.component.str.startswith("head ")]
    assert heads_rows.ablation_rank.notna().all() and frame[~frame.component.str.startswith("head ")].ablation_rank.isna().all()
    picked = result.select(flies)
    assert picked.attribution.shares.shape == (6, len(found.components), 1)
    assert picked.attribution.attention.shape == (6, 12, 1, len(result.tokens))
    assert np.array_equal(picked.attribution.shares[:, :, 0], found.shares[:, :, flies])
    data = json.loads(picked.to_json())["attribution"]
    assert data["layers"] == [1, 2, 3, 4, 5, 6] and data["heads"] == 12
    assert np.array(data["shares"]).shape == (6, len(found.components), 1)
    assert np.array(data["source_norms"]).shape == (6, 12, 1, len(result.tokens))
    assert np.array(data["ablation_rank"]).shape == (6, 12, 1)
    assert "note" not in data


def test_off_costs_nothing_and_changes_nothing(bundled):
    encoding = encode(bundled, SEED)
    assert trace(bundled, encoding).heads is None
    plain, attributed = analyze(SEED, model=bundled), analyze(SEED, model=bundled, attribution=True)
    assert plain.attribution is None and "attribution" not in plain.to_dict()
    assert np.allclose(plain.cosine.values, attributed.cosine.values, atol=1e-6)
    assert bundled.model.config._attn_implementation != "eager"  # the eager switch lasts one pass


def test_long_text_gets_detail_only_for_its_token(bundled):
    text = " ".join(["Time flies like an arrow."] * 12)
    result = analyze(text, model=bundled, attribution=True)
    assert len(result.tokens) > DETAIL_TOKENS
    found = result.attribution
    assert found.attention is None and found.ablation_rank is None and "64 tokens" in found.note
    assert found.shares.shape[2] == len(result.tokens)
    data = result.to_dict()["attribution"]
    assert "attention" not in data and data["note"] == found.note
    from attention_encodings.analysis import analyze_with

    focused = analyze_with(result.settings, text, bundled, focus="arrow").select("arrow")
    assert focused.attribution.attention.shape == (6, 12, 1, len(result.tokens))
    assert focused.attribution.note is None


def test_a_model_without_its_weights_is_one_line_error(biased, monkeypatch):
    handle = biased("gpt2")
    monkeypatch.setattr(handle.model, "set_attn_implementation", lambda name: None)
    with pytest.raises(UnsupportedArchitectureError, match="^GPT-2 model did not return its attention weights"):
        trace(handle, encode(handle, SEED), heads=True)


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """The command line in this process (the bundled model stays loaded): exit status, stdout, stderr."""
    from attention_encodings.faces.cli import main

    with pytest.raises(SystemExit) as done:
        main(argv)
    out, err = capsys.readouterr()
    return int(done.value.code), out, err


def test_attribute_command_fits_100_columns_and_writes_json_and_csv(bundled, capsys):
    args = ["attribute", SEED, "--token", "8", "-m", "bundled", "--tap", "resid_post"]
    code, out, err = _cli(args, capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert "token 8 'flies'" in lines[0] and "later blocks are not re-run" in out
    assert sum(line.startswith("│     ") and "head " in line for line in lines) >= 1
    code, out, _ = _cli([*args, "--layer", "3", "--top", "2"], capsys)
    assert code == 0 and sum("│" in line and ("head " in line or "residual" in line or "mlp" in line) for line in out.splitlines()) == 2
    code, out, _ = _cli([*args, "-f", "json"], capsys)
    data = json.loads(out)
    assert [t["index"] for t in data["tokens"]] == [8]
    assert np.array(data["attribution"]["attention"]).shape == (6, 12, 1, 14)
    code, out, _ = _cli([*args, "-f", "csv", "--layer", "2"], capsys)
    header, *rows = out.splitlines()
    assert header == "layer,token_index,token,component,share,ablation_rank" and len(rows) == 16  # the 16 parts of resid_post
    code, out, err = _cli([*args, "--layer", "7"], capsys)
    assert code == 1 and err.strip().splitlines()[-1] == "error: layer must be one of 1..6 (the blocks); got 7"


def test_analyze_attribution_csv_is_the_tidy_frame(bundled, capsys):
    code, out, err = _cli(["analyze", "Fruit flies.", "-m", "bundled", "--attribution", "-f", "csv"], capsys)
    assert code == 0, err
    assert out.splitlines()[0] == "layer,token_index,token,component,share,ablation_rank"


def test_server_adds_attribution_and_caches_it(bundled, monkeypatch):
    from fastapi.testclient import TestClient

    from attention_encodings.faces import server

    calls = []
    real = server.analyze_with
    monkeypatch.setattr(server, "analyze_with", lambda *a, **k: calls.append(a) or real(*a, **k))
    client = TestClient(server.create_app(["bundled"]))
    plain = client.post("/api/analyze", json={"text": SEED}).json()
    assert "attribution" not in plain
    first = client.post("/api/analyze", json={"text": SEED, "attribution": True}).json()
    again = client.post("/api/analyze", json={"text": SEED, "attribution": True}).json()
    assert first == again and len(calls) == 2
    assert first["attribution"]["components"][:2] == ["residual", "head 0"]
    assert np.array(first["attribution"]["ablation_rank"]).shape == (6, 12, 14)
    bad = client.post("/api/analyze", json={"text": SEED, "attribution": "yes"})
    assert bad.status_code == 422


def test_a_batch_taken_a_group_of_texts_at_a_time_gives_the_whole_batch(bundled, monkeypatch):
    """`attribute_batch` bounds its memory by taking a batch's texts a group at a time: with groups of one text the
    shares, entropies and ablation ranks are those of the whole batch at once."""
    import attention_encodings.attribution as attribution
    from attention_encodings.analysis import reference_for

    encodings = [encode(bundled, text) for text in CORPUS[:4]]
    traced = trace(bundled, encodings, heads=True)
    space = reference_for(bundled, "embedding")
    whole = attribution.attribute_batch(bundled, traced, "resid_mid", space, None, ablation=True)
    assert attribution._text_groups(bundled, traced) == [(0, 4)]
    monkeypatch.setattr(attribution, "BATCH_PART_FLOATS", 1)
    assert attribution._text_groups(bundled, traced) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    grouped = attribution.attribute_batch(bundled, traced, "resid_mid", space, None, ablation=True)
    tokens = sum(len(e) for e in encodings)
    assert grouped.shares.shape == whole.shares.shape and grouped.shares.shape[2] == tokens
    assert torch.allclose(grouped.shares, whole.shares, atol=1e-6)
    assert torch.allclose(grouped.entropy, whole.entropy, atol=1e-6)
    assert grouped.components == whole.components
    assert torch.equal(grouped.ablation_rank, whole.ablation_rank)
