"""The result object: tidy frames, the JSON contract, token lookup, and bad input through the API."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import CORPUS, SEED, TINY_MAX_POSITIONS

from attention_encodings import InputError, Settings, analyze, analyze_with, load_model
from attention_encodings.analysis import measure_texts
from attention_encodings.trace import encode

CONTRACT_KEYS = {
    "model", "tap", "reference", "top_k", "normalize", "stats", "tokens", "layers", "cosine", "rank", "overlap",
    "vocab_mean", "vocab_std", "zscore", "anisotropy", "neighbours",
}


@pytest.fixture(scope="module")
def seed_result(bundled):
    return analyze(SEED, bundled)


def test_defaults_and_shapes(seed_result, bundled):
    r = seed_result
    layers, tokens = bundled.num_layers + 1, len(r.tokens)
    assert (r.tap, r.reference, r.top_k) == ("resid_mid", "embedding", 100)
    assert r.layers == tuple(range(layers))
    assert r.cosine.values.shape == r.rank.values.shape == (layers, tokens)
    assert r.overlap.values.shape == (layers - 1, tokens)
    assert r.neighbour_ids.shape == r.neighbour_texts.shape == (layers, tokens, 15)
    assert np.asarray(r.cosine).shape == (layers, tokens)
    assert r.model == "sentence-transformers/all-MiniLM-L6-v2" == bundled.name and "bundled" in r.model_label


def test_tokens_and_special_flags(seed_result):
    texts = [t.text for t in seed_result.tokens]
    assert texts[0] == "[CLS]" and texts[-1] == "[SEP]"
    assert [t.special for t in seed_result.tokens] == [True] + [False] * (len(texts) - 2) + [True]
    assert texts.count("flies") == 2
    assert [t.index for t in seed_result.tokens] == list(range(len(texts)))


def test_neighbours_are_nearest_first_with_text(seed_result):
    near = seed_result.neighbours(0, 2)
    assert near[0].text == "flies" and near[0].cosine == pytest.approx(1.0, abs=1e-5)
    assert [n.cosine for n in near] == sorted((n.cosine for n in near), reverse=True)


def test_to_frame_is_tidy(seed_result):
    frame = seed_result.to_frame()
    layers, tokens = seed_result.cosine.values.shape
    assert list(frame.columns) == [
        "token_index", "token_id", "token", "special", "layer",
        "cosine", "rank", "overlap_next", "vocab_mean", "vocab_std", "zscore", "anisotropy",
    ]
    assert len(frame) == layers * tokens
    row = frame[(frame.layer == 3) & (frame.token_index == 2)].iloc[0]
    assert row.token == "flies"
    assert row.cosine == pytest.approx(seed_result.cosine.values[3, 2])
    assert row["rank"] == seed_result.rank.values[3, 2]
    assert row.overlap_next == seed_result.overlap.values[3, 2]
    assert frame[frame.layer == layers - 1].overlap_next.isna().all()
    assert frame.overlap_next.dtype == pd.Int64Dtype()


def test_neighbours_frame(seed_result):
    frame = seed_result.neighbours_frame()
    layers, tokens, n = seed_result.neighbour_ids.shape
    assert len(frame) == layers * tokens * n
    first = frame[(frame.layer == 0) & (frame.token_index == 2) & (frame.neighbour == 1)].iloc[0]
    assert first.neighbour_text == "flies"


def test_json_follows_the_contract(seed_result):
    data = json.loads(seed_result.to_json())
    assert set(data) == CONTRACT_KEYS
    layers, tokens = seed_result.cosine.values.shape
    assert data["layers"] == list(range(layers))
    assert data["tokens"][2] == {"index": 2, "id": seed_result.tokens[2].id, "text": "flies", "special": False}
    assert np.array(data["cosine"]).shape == (layers, tokens)
    assert np.array(data["rank"]).shape == (layers, tokens)
    assert np.array(data["overlap"]).shape == (layers - 1, tokens)
    for name in ("vocab_mean", "vocab_std", "zscore"):
        assert np.array(data[name]).shape == (layers, tokens)
    assert len(data["anisotropy"]) == layers and (data["normalize"], data["stats"]) == ("none", None)
    assert len(data["neighbours"]) == layers and len(data["neighbours"][0]) == tokens
    assert set(data["neighbours"][1][2][0]) == {"id", "text", "cosine"}
    assert data["cosine"][4][2] == pytest.approx(float(seed_result.cosine.values[4, 2]))


def test_token_lookup(seed_result):
    assert seed_result.token_matches("flies") == [2, 8]
    assert seed_result.token_matches("  FLIES ") == [2, 8]
    assert seed_result.token_matches("8") == [8]
    assert seed_result.token_index(8) == 8
    with pytest.raises(InputError, match="no token matches 'zebra'"):
        seed_result.token_index("zebra")
    with pytest.raises(InputError):
        seed_result.token_index(99)


def test_select_narrows_to_one_token(seed_result):
    one = seed_result.select("8")
    assert [t.index for t in one.tokens] == [8]
    assert one.cosine.values.shape == (seed_result.cosine.values.shape[0], 1)
    assert np.array_equal(one.rank.values[:, 0], seed_result.rank.values[:, 8])
    assert one.to_frame().token_index.unique().tolist() == [8]


@pytest.mark.parametrize("model", ["tiny", "bundled"])
def test_unicode_text(tiny_roberta, bundled, model):
    handle = bundled if model == "bundled" else load_model(str(tiny_roberta))
    result = analyze(CORPUS[3], handle, top_k=5, neighbours=3)
    assert np.isfinite(result.cosine.values).all()
    joined = "".join(t.text for t in result.tokens)
    assert "東" in joined or "東京" in joined or "[UNK]" in joined
    json.loads(result.to_json())


def test_model_handles_are_cached(tiny_roberta):
    assert load_model(str(tiny_roberta)) is load_model(str(tiny_roberta))


def test_truncation(tiny_roberta):
    handle = load_model(str(tiny_roberta))
    long_text = " ".join([SEED] * 10)
    with pytest.raises(InputError, match=f"at most {TINY_MAX_POSITIONS - 2}"):
        analyze(long_text, handle)
    result = analyze(long_text, handle, truncate=True, top_k=5)
    assert len(result.tokens) == handle.max_tokens == TINY_MAX_POSITIONS - 2
    assert result.dropped > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": ""}, "empty"),
        ({"text": " \n\t "}, "empty"),
        ({"tap": "resid_pre"}, "unknown tap"),
        ({"reference": "unembed"}, "unknown reference"),
        ({"top_k": 0}, "top_k must be at least 1"),
        ({"top_k": 10**9}, "at most the vocabulary size"),
        ({"top_k": 2.5}, "whole number"),
        ({"top_k": True}, "whole number"),
        ({"neighbours": -1}, "neighbours must be at least 0"),
        ({"text": "bad \udcff surrogate"}, "not valid Unicode"),
    ],
)
def test_bad_input_is_one_clear_error(tiny_roberta, kwargs, message):
    arguments = {"text": SEED, "model": load_model(str(tiny_roberta)), **kwargs}
    with pytest.raises(InputError, match=message) as error:
        analyze(**arguments)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("family", ["roberta", "gpt2", "llama", "minilm"])
def test_measuring_texts_together_equals_one_at_a_time(tiny_dirs, bundled, family):
    """One padded batch gives each text the measures `analyze()` gives it alone: cosine and similarity to 1e-4,
    rank, overlap and neighbours exactly."""
    handle = bundled if family == "minilm" else load_model(str(tiny_dirs[family]))
    settings = Settings(top_k=20, neighbours=5, similarity=True)
    encodings = [encode(handle, text) for text in CORPUS]
    together = measure_texts(handle, settings, encodings)
    for item, text in enumerate(CORPUS):
        alone = analyze_with(settings, text, handle)
        tokens = together.tokens_of(item)
        assert np.allclose(together.values["cosine"][:, tokens].numpy(), alone.cosine.values, atol=1e-4, rtol=0)
        assert np.array_equal(together.values["rank"][:, tokens].numpy(), alone.rank.values)
        assert np.array_equal(together.values["overlap"][:, tokens].numpy(), alone.overlap.values)
        assert np.array_equal(together.neighbour_ids[:, tokens].numpy(), alone.neighbour_ids)
        assert np.allclose(together.similarity[item].numpy(), alone.similarity.values, atol=1e-4, rtol=0)
        for name in ("vocab_mean", "vocab_std", "zscore"):
            assert np.allclose(together.values[name][:, tokens].numpy(), getattr(alone, name).values, atol=1e-4, rtol=1e-4)
        assert np.allclose(together.text_values["anisotropy"][item].numpy(), alone.anisotropy, atol=1e-4, equal_nan=True)
