"""Every measure against a plain, loop-based computation of its definition."""

from __future__ import annotations

import pytest
import torch
from conftest import CORPUS, FAMILIES, SEED
from plain import assert_matches_plain, plain_measures, reference_rows

from attention_encodings import InputError, analyze, load_model
from attention_encodings.analysis import reference_for
from attention_encodings.metrics import ROW_FLOATS, anisotropy, blocked_top_k, measure, token_similarity, top_k_overlap
from attention_encodings.trace import encode, trace

CASES = [(family, reference) for family in FAMILIES for reference in ("embedding", "word") if family != "electra"]
CASES.append(("electra", "embedding"))


def _check(handle, text, tap, reference, top_k, n):
    result = analyze(text, handle, tap=tap, reference=reference, top_k=top_k, neighbours=n)
    encoding = encode(handle, text)
    states = trace(handle, encoding).states(tap)
    assert_matches_plain(result.to_dict(), plain_measures(handle, encoding, states, reference, top_k, n), top_k)
    return result


@pytest.mark.parametrize(("family", "reference"), CASES)
def test_tiny_models_match_the_definitions(tiny_dirs, family, reference):
    handle = load_model(str(tiny_dirs[family]))
    _check(handle, CORPUS[3], "resid_mid", reference, top_k=20, n=7)


@pytest.mark.parametrize("tap", ["resid_mid", "attn_ln", "resid_post"])
def test_every_tap_matches_the_definitions(tiny_roberta, tap):
    _check(load_model(str(tiny_roberta)), SEED, tap, "embedding", top_k=25, n=5)


@pytest.mark.parametrize("reference", ["embedding", "word"])
def test_bundled_model_matches_the_definitions(bundled, reference):
    result = _check(bundled, SEED, "resid_mid", reference, top_k=100, n=15)
    if reference == "embedding":
        assert result.cosine.values[0] == pytest.approx(1.0, abs=1e-5)
        assert (result.rank.values[0] == 0).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_own_reference_row_is_the_layer0_encoding(tiny_dirs, family):
    """Under `embedding`, R_p[id_p] is exactly what the embedding layer produced at p."""
    handle = load_model(str(tiny_dirs[family]))
    encoding = encode(handle, SEED)
    layer0 = trace(handle, encoding).states("resid_mid")[0]
    for p, token_id in enumerate(encoding.input_ids.tolist()):
        row = reference_rows(handle, encoding, p, "embedding")[token_id]
        assert torch.allclose(row, layer0[p], atol=1e-5)


@pytest.mark.parametrize("per_chunk", [1, 4, 5])
def test_chunking_does_not_change_results(tiny_roberta, per_chunk):
    """Chunks of 1, 4 and 5 tokens (uneven ones too) reuse one score buffer and give the unchunked results."""
    handle = load_model(str(tiny_roberta))
    encoding = encode(handle, SEED)
    states = trace(handle, encoding).states("resid_mid")
    offsets = handle.adapter.slot_offsets(handle.model, encoding.position_ids, encoding.token_type_ids)
    space = reference_for(handle, "embedding")
    whole = measure(states, encoding.input_ids, offsets, space, top_k=30, neighbours=10)
    calls = []
    width = -(-space.vocab_size // ROW_FLOATS) * ROW_FLOATS
    chunk_bytes = per_chunk * states.shape[0] * width * 4
    chunked = measure(
        states, encoding.input_ids, offsets, space, top_k=30, neighbours=10, chunk_bytes=chunk_bytes,
        progress=lambda done, total: calls.append((done, total)),
    )
    for name in ("cosine", "rank", "overlap", "neighbour_ids", "neighbour_cosines"):
        assert torch.allclose(getattr(whole, name).double(), getattr(chunked, name).double(), atol=1e-6), name
    tokens = len(encoding.input_ids)
    step = -(-tokens // -(-tokens // per_chunk))
    assert calls == [(min(stop, tokens), tokens) for stop in range(step, tokens + step, step)]
    assert step <= per_chunk


def test_rank_counts_every_item_above_the_own_score(tiny_roberta):
    """The rank is a count, exact to the item: ranks of 0 and of the whole vocabulary minus one both occur."""
    handle = load_model(str(tiny_roberta))
    encoding = encode(handle, SEED)
    states = trace(handle, encoding).states("resid_mid")
    offsets = handle.adapter.slot_offsets(handle.model, encoding.position_ids, encoding.token_type_ids)
    space = reference_for(handle, "word")
    ids = encoding.input_ids
    scores = space.scores(states.transpose(0, 1), offsets)
    lowest = scores.argmin(dim=-1).transpose(0, 1)
    best = scores.argmax(dim=-1).transpose(0, 1)
    for token_ids, expected in ((best[-1], 0), (lowest[-1], space.vocab_size - 1)):
        result = measure(states, token_ids, offsets, space, top_k=5, neighbours=3)
        assert (result.rank[-1] == expected).all()
    assert measure(states, ids, offsets, space, top_k=space.vocab_size, neighbours=0).overlap.max() == space.vocab_size


@pytest.mark.parametrize(("rows", "blocks", "k"), [(3, 10, 2), (5, 40, 7), (2, 8, 4), (4, 300, 100)])
def test_blocked_top_k_is_exact(rows, blocks, k):
    """Top-k through block maxima gives torch.topk's values, and ids that point at them, ties and -inf padding
    included (a few rows are mostly one repeated value)."""
    torch.manual_seed(rows * blocks + k)
    scores = torch.randn(rows, blocks * ROW_FLOATS)
    scores[0, ROW_FLOATS:] = 0.25
    scores[-1, -ROW_FLOATS // 2 :] = -torch.inf
    values, ids = blocked_top_k(scores, k)
    expected = scores.topk(k, dim=-1)
    assert torch.equal(values, expected.values)
    assert torch.equal(scores.gather(-1, ids), values)
    assert all(len(set(row)) == k for row in ids.tolist())


def test_top_k_overlap_counts_shared_ids():
    ids = torch.tensor([[[1, 2, 3]], [[3, 4, 1]], [[5, 6, 7]], [[7, 6, 5]]])
    assert top_k_overlap(ids).tolist() == [[2], [0], [3]]


def test_word_reference_refuses_projected_embeddings(tiny_dirs):
    with pytest.raises(InputError, match="embedding reference"):
        analyze(SEED, str(tiny_dirs["electra"]), reference="word")


def test_similarity_and_anisotropy_match_a_plain_loop():
    torch.manual_seed(3)
    states = torch.randn(3, 6, 8)
    keep = torch.tensor([False, True, True, True, True, False])
    similarity = token_similarity(states)
    for layer in range(3):
        pairs = []
        for p in range(6):
            for q in range(6):
                cos = torch.nn.functional.cosine_similarity(states[layer, p], states[layer, q], dim=0)
                assert similarity[layer, p, q] == pytest.approx(float(cos), abs=1e-6)
                if p != q and keep[p] and keep[q]:
                    pairs.append(float(cos))
        assert anisotropy(states, keep)[layer] == pytest.approx(sum(pairs) / len(pairs), abs=1e-6)
    assert anisotropy(states, torch.tensor([True] + [False] * 5)).isnan().all()


def test_the_embedding_space_reuses_its_slot_tables_only_for_the_same_slots(tiny_roberta, monkeypatch):
    """A second scan of the same slots (a learned lens's) reuses the per-slot tables; other slots rebuild them, and
    every call scores exactly what a fresh space scores."""
    from attention_encodings.metrics.reference import EmbeddingReference

    handle = load_model(str(tiny_roberta))
    space = reference_for(handle, "embedding")
    assert isinstance(space, EmbeddingReference)
    built = []
    real = EmbeddingReference._slot_scales
    monkeypatch.setattr(EmbeddingReference, "_slot_scales", lambda self, slots: built.append(len(slots)) or real(self, slots))
    cases = []
    for text in (SEED, CORPUS[3], SEED, SEED):
        encoding = encode(handle, text)
        offsets = handle.adapter.slot_offsets(handle.model, encoding.position_ids, encoding.token_type_ids)
        cases.append((trace(handle, encoding).states("resid_mid").transpose(0, 1).contiguous(), offsets))
    seed_slots, other_slots = len(cases[0][1]), len(cases[1][1])
    assert seed_slots != other_slots
    got = [space.scores(states, offsets) for states, offsets in cases]
    assert built == [seed_slots, other_slots, seed_slots]  # the fourth call, the same slots again, built nothing
    for (states, offsets), scores in zip(cases, got):
        fresh = EmbeddingReference(handle.adapter.embedding_parts(handle.model)).scores(states, offsets)
        assert torch.equal(scores, fresh)
