"""The output-head lens (head_rank and the head's predictions) against a plain computation, on tiny masked and
causal LMs and on the real SmolLM2; and its absence, said plainly, where a model has no head."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CORPUS, HEADED, SEED
from plain import HEAD_TIE, assert_head_matches_plain, assert_matches_plain, plain_head, plain_measures

from attention_encodings import InputError, MeasureUnavailableError, Settings, analyze, analyze_with, load_model
from attention_encodings.analysis import head_targets, measure_texts, model_notes
from attention_encodings.metrics import HeadLens, scan
from attention_encodings.trace import TAPS, encode, trace

SHORT = "Fruit flies like a banana."
"""A short text for SmolLM2 (six tokens)."""
PLAIN_TEXT = "Fruit flies."
"""The text SmolLM2 is checked on against the plain computation (three tokens): the plain loop takes 0.1 s or
more per token and layer, most of it in `cosine_similarity` against all 49,152 word embeddings."""
SMOLLM2_LAYERS = (slice(0, 4), slice(27, 31))
"""The runs of consecutive layers of SmolLM2's 31 that are checked against the plain loop: the first and the last."""


def _check(handle, text, tap, reference, top_k=20, n=5, windows=(slice(None),)):
    """Every measure of `analyze()` equals its plain computation, the head lens included, on each run of
    consecutive layers in `windows` (all layers by default)."""
    result = analyze(text, handle, tap=tap, reference=reference, top_k=top_k, neighbours=n)
    encoding = encode(handle, text)
    states = trace(handle, encoding).states(tap)
    causal = handle.adapter.objective == "causal"
    for layers in windows:
        data = _layers_of(result.to_dict(), layers)
        assert_matches_plain(data, plain_measures(handle, encoding, states[layers], reference, top_k, n), top_k)
        assert_head_matches_plain(data, plain_head(handle, encoding, states[layers], causal, n))
    return result


def _layers_of(data: dict, layers: slice) -> dict:
    """The JSON contract narrowed to a run of consecutive layers (overlap: the steps between them)."""
    count = len(data["layers"])
    start, stop, _ = layers.indices(count)
    per_layer = {
        key: data[key][start:stop]
        for key in ("cosine", "rank", "neighbours", "head_rank", "predictions", "vocab_mean", "vocab_std", "zscore", "anisotropy")
    }
    return data | per_layer | {"overlap": data["overlap"][start : stop - 1]}


@pytest.mark.parametrize("reference", ["embedding", "word"])
@pytest.mark.parametrize("tap", TAPS)
@pytest.mark.parametrize("family", HEADED)
def test_tiny_heads_match_the_definitions(tiny_dirs, family, tap, reference):
    _check(load_model(str(tiny_dirs[family])), SEED, tap, reference)


@pytest.mark.parametrize("tap", TAPS)
def test_smollm2_matches_the_definitions(smollm2, tap):
    """The real decoder, every tap; its `word` reference is its `embedding` one (no absolute positions), so the
    plain check of one covers both."""
    result = _check(smollm2, PLAIN_TEXT, tap, "embedding", top_k=50, n=5, windows=SMOLLM2_LAYERS)
    word = analyze(PLAIN_TEXT, smollm2, tap=tap, reference="word", top_k=50, neighbours=5)
    assert word.to_dict() | {"reference": "embedding"} == result.to_dict()


@pytest.mark.parametrize("family", [*HEADED, "smollm2"])
def test_the_last_block_through_the_head_is_the_models_own_output(tiny_dirs, smollm2, family):
    """At resid_post of the last block, the head lens reads exactly what the model predicts: its logits'
    argmax is the first prediction, their softmax the probabilities."""
    handle = smollm2 if family == "smollm2" else load_model(str(tiny_dirs[family]))
    text = SHORT if family == "smollm2" else SEED
    result = analyze(text, handle, tap="resid_post", neighbours=3)
    encoding = encode(handle, text)
    with torch.no_grad():
        logits = handle.model(input_ids=encoding.input_ids[None]).logits[0].float()
    probabilities = torch.softmax(logits, dim=-1).topk(3)
    assert np.array_equal(result.prediction_ids[-1], probabilities.indices.numpy())
    assert np.allclose(result.prediction_probabilities[-1], probabilities.values.numpy(), atol=1e-5)
    last = result.head_rank.values[-1]
    for p, target in enumerate(result.head_targets):
        if target >= 0:
            own = logits[p, target]
            tied = int(((logits[p] - own).abs() < HEAD_TIE).sum()) - 1  # the forward pass batches differently
            assert abs(last[p] - int((logits[p] > own).sum())) <= tied, p


def test_targets_are_the_token_for_masked_lms_and_the_next_for_causal_ones(tiny_dirs):
    texts = [SEED, CORPUS[1]]
    masked = load_model(str(tiny_dirs["bert-mlm"]))
    causal = load_model(str(tiny_dirs["gpt2"]))
    encodings = [encode(masked, text) for text in texts]
    assert torch.equal(head_targets(masked, encodings), torch.cat([e.input_ids for e in encodings]))
    encodings = [encode(causal, text) for text in texts]
    first, second = (e.input_ids.tolist() for e in encodings)
    assert head_targets(causal, encodings).tolist() == first[1:] + [-1] + second[1:] + [-1]


def test_a_causal_head_rank_is_null_after_the_last_token(tiny_dirs):
    result = analyze(SEED, load_model(str(tiny_dirs["llama"])), top_k=10, neighbours=3)
    values = result.head_rank.values
    assert (values[:, -1] == -1).all() and (values[:, :-1] >= 0).all()
    frame = result.to_frame()
    assert frame.head_rank.dtype == pd.Int64Dtype()
    last = len(result.tokens) - 1
    assert frame[frame.token_index == last].head_rank.isna().all()
    assert frame[frame.token_index != last].head_rank.notna().all()
    data = json.loads(result.to_json())
    assert all(row[-1] is None for row in data["head_rank"])
    assert {"head_rank", "predictions"} <= set(data)
    assert set(data["predictions"][2][1][0]) == {"id", "text", "probability"}


def test_predictions_are_most_probable_first_and_framed(tiny_dirs):
    result = analyze(SEED, load_model(str(tiny_dirs["roberta-mlm"])), neighbours=4)
    top = result.predictions(2, 3)
    assert len(top) == 4 and [p.probability for p in top] == sorted((p.probability for p in top), reverse=True)
    assert 0 < sum(p.probability for p in top) <= 1 + 1e-6
    frame = result.predictions_frame()
    layers, tokens, n = result.prediction_ids.shape
    assert list(frame.columns) == ["token_index", "layer", "prediction", "prediction_id", "prediction_text", "probability"]
    assert len(frame) == layers * tokens * n
    row = frame[(frame.layer == 2) & (frame.token_index == 3) & (frame.prediction == 1)].iloc[0]
    assert (row.prediction_id, row.prediction_text) == (top[0].id, top[0].text)
    one = result.select(3)
    assert one.predictions(2, 0) == top and one.head_targets.tolist() == [result.tokens[3].id]


def test_a_model_without_a_head_says_so(bundled):
    result = analyze(SEED, bundled)
    assert "head_rank" not in result.measures and not result.has_head
    assert "head_rank" not in result.to_frame().columns
    assert not {"head_rank", "predictions"} & set(result.to_dict())
    expected = "has no output head (it loads as BertModel), so head_rank and the head's predictions are absent"
    for ask in (lambda: result.head_rank, lambda: result.predictions(0, 0), lambda: result.predictions_frame()):
        with pytest.raises(MeasureUnavailableError) as error:
            ask()
        assert str(error.value) == f"this analysis has no 'head_rank' measure: all-MiniLM-L6-v2 (bundled) {expected}"
        assert isinstance(error.value, InputError)
    assert getattr(result, "head_rank", None) is None and not hasattr(result, "head_rank")
    assert any(expected in note for note in model_notes(bundled))


def test_model_notes(tiny_dirs, smollm2):
    for handle in (load_model(str(tiny_dirs["llama"])), smollm2):
        notes = model_notes(handle)
        assert notes == ("the embedding reference equals word here (no absolute positions or embedding norm)",)
    assert model_notes(load_model(str(tiny_dirs["gpt2"]))) == ()
    assert model_notes(load_model(str(tiny_dirs["bert-mlm"]))) == ()


@pytest.mark.parametrize("family", ["gpt2", "bert-mlm", "smollm2"])
def test_measuring_texts_together_keeps_each_texts_head_lens(tiny_dirs, smollm2, family):
    """In a padded batch, a causal target never crosses from one text into the next: each text's head_rank and
    predictions are those it has alone. A padded forward pass rounds differently from a single one (masked
    attention), so on SmolLM2 a rank of thousands may move by one where two logits tie within float32 rounding:
    at most one rank in a hundred (or one), by at most 2."""
    handle = smollm2 if family == "smollm2" else load_model(str(tiny_dirs[family]))
    texts = [SHORT, "Time flies."] if family == "smollm2" else CORPUS
    settings = Settings(top_k=20, neighbours=5)
    together = measure_texts(handle, settings, [encode(handle, text) for text in texts])
    for item, text in enumerate(texts):
        alone = analyze_with(settings, text, handle)
        tokens = together.tokens_of(item)
        moved = np.abs(together.values["head_rank"][:, tokens].numpy() - alone.head_rank.values)
        assert moved.max() <= 2 and np.count_nonzero(moved) <= max(1, moved.size // 100), moved.nonzero()
        assert np.array_equal(together.prediction_ids[:, tokens].numpy(), alone.prediction_ids)
        assert np.allclose(together.prediction_probabilities[:, tokens].numpy(), alone.prediction_probabilities, atol=1e-5)


@pytest.mark.parametrize("per_chunk", [1, 3])
def test_the_log_partition_is_chunked_exactly(tiny_dirs, per_chunk):
    """Chunks of 1 and 3 tokens (with the second buffer the logsumexp needs) give the unchunked results, and
    the log partition is torch.logsumexp of the logits."""
    handle = load_model(str(tiny_dirs["gpt2"]))
    encoding = encode(handle, SEED)
    states = trace(handle, encoding).states("resid_mid")
    lens = HeadLens(handle.adapter.head(handle.model), handle.vocab_size)
    offsets = torch.zeros(len(encoding), 1)
    targets = head_targets(handle, [encoding])
    whole = scan(states, targets, offsets, lens, keep=5, log_partition=True)
    chunk_bytes = 2 * per_chunk * states.shape[0] * 512 * 4
    chunked = scan(states, targets, offsets, lens, keep=5, log_partition=True, chunk_bytes=chunk_bytes)
    for name in ("own", "rank", "top_values", "top_ids", "log_partition"):
        assert torch.allclose(getattr(whole, name).double(), getattr(chunked, name).double(), atol=1e-5, equal_nan=True)
    logits = lens.scores(states.transpose(0, 1), offsets).transpose(0, 1)
    assert torch.allclose(whole.log_partition, torch.logsumexp(logits, dim=-1), atol=1e-5)
    assert scan(states, targets, offsets, lens, keep=5).log_partition is None


def test_comparisons_carry_the_head_lens_only_where_every_run_has_one(smollm2, bundled):
    """Runs side by side: two taps of SmolLM2 overlay their head_rank and put their predictions side by side; with
    the bundled model (no head) beside it, neither is drawn, and asking for head_rank says why in one line."""
    from attention_encodings import compare
    from attention_encodings.views import comparison_charts, comparison_datasets, overlay_figure

    taps = compare([analyze(SHORT, smollm2, neighbours=3), analyze(SHORT, smollm2, tap="resid_post", neighbours=3)])
    built = comparison_charts(taps)
    assert {"head_rank", "head_rank_heatmap", "predictions"} <= set(built)
    rows = comparison_datasets(taps)["predictions"]
    assert {row["run"] for row in rows} == {0, 1} and all("key" in row for row in rows)
    overlay_figure(taps, "head_rank", 1).to_dict()
    mixed = compare([analyze(SHORT, smollm2, neighbours=3), analyze(SHORT, bundled, neighbours=3)])
    built = comparison_charts(mixed)
    assert "head_rank" not in built and "predictions" not in built and "predictions" not in comparison_datasets(mixed)
    with pytest.raises(MeasureUnavailableError, match=r"all-MiniLM-L6-v2 \(bundled\) has no output head"):
        overlay_figure(mixed, "head_rank")


def test_item_tables_when_every_target_is_among_the_items(tiny_dirs):
    """With as many items as the vocabulary, no target falls outside them: the tables have no `own`/`target`
    rows, and building them still works (an empty column of numbers once broke the text join)."""
    from attention_encodings.views.charts import neighbour_data, prediction_data

    handle = load_model(str(tiny_dirs["gpt2"]))
    result = analyze("Fruit flies.", handle, top_k=10, neighbours=handle.vocab_size)
    assert not (neighbour_data(result).row == "own").any()
    assert not (prediction_data(result).row == "target").any()
    assert prediction_data(result).own.sum() == (result.head_targets >= 0).sum() * len(result.layers)


@pytest.mark.parametrize("family", HEADED)
def test_corpus_mode_carries_the_head_lens(tmp_path, tiny_dirs, family):
    """Corpus mode's batches (padded, several texts each) give head_rank and the head's predictions exactly as
    analyze() gives them text by text, and the summary has head_rank."""
    from attention_encodings import analyze_corpus

    handle = load_model(str(tiny_dirs[family]))
    texts = [SEED, "Fruit flies.", CORPUS[2], "Time flies like an arrow."]
    run = analyze_corpus(texts, tmp_path / "run", handle, top_k=5, neighbours=3, batch_tokens=24)
    assert run.manifest["counts"]["shards"] >= 2 and "head_rank" in run.manifest["measures"]
    tokens, predictions = run.tokens(), run.predictions()
    for index, text in enumerate(texts):
        alone = analyze(text, handle, top_k=5, neighbours=3)
        rows = tokens[tokens.text_index == index].reset_index(drop=True)
        assert rows.head_rank.astype("Int64").tolist() == alone.to_frame().head_rank.astype("Int64").tolist()
        mine = predictions[predictions.text_index == index].drop(columns="text_index").reset_index(drop=True)
        theirs = alone.predictions_frame().sort_values(["layer", "token_index", "prediction"]).reset_index(drop=True)
        assert mine.prediction_id.tolist() == theirs.prediction_id.tolist()
        assert np.allclose(mine.probability.to_numpy(), theirs.probability.to_numpy(), atol=1e-5)
    summary = run.summary()
    assert set(summary[summary.measure == "head_rank"].layer) == set(range(handle.num_layers + 1))


def test_corpus_mode_on_smollm2(tmp_path, smollm2):
    from attention_encodings import analyze_corpus

    run = analyze_corpus("sample", tmp_path / "run", smollm2, limit=3, top_k=20)
    tokens = run.tokens()
    first = tokens[tokens.text_index == 0].reset_index(drop=True)
    alone = analyze(run.texts().text[0], smollm2, top_k=20, neighbours=0).to_frame()
    for column in ("rank", "head_rank"):  # a padded batch runs other GEMM shapes: a near-tie may flip, no more
        batched, single = first[column].to_numpy(dtype=float), alone[column].to_numpy(dtype=float)
        assert np.array_equal(np.isnan(batched), np.isnan(single))
        assert np.nanmax(np.abs(batched - single) - 1e-3 * single) <= 1, column
    last = first[first.token_index == first.token_index.max()]
    assert last.head_rank.isna().all() and first.head_rank.notna().sum() == len(first) - len(last)
    assert {"head_rank", "anisotropy"} <= set(run.summary().measure)
