"""The low-precision scan (`metrics.lowp`): which path `auto` takes, and that bfloat16 candidates verified in
float32 give the float32 scan's answers on vocabularies built with near-ties at every distance around the bound."""

from __future__ import annotations

import pytest
import torch

from attention_encodings.metrics import HeadLens, WordReference, fast_bfloat16, lowp, path_taken, resolve_scan, scan
from attention_encodings.metrics.reference import EmbeddingReference
from attention_encodings.models import EmbeddingParts


@pytest.fixture
def fresh_detection():
    fast_bfloat16.cache_clear()
    yield
    fast_bfloat16.cache_clear()


@pytest.mark.parametrize(
    ("flags", "capability", "expected"),
    [({"avx512_bf16"}, "AVX512", "bfloat16"), ({"amx_bf16"}, "AVX512", "bfloat16"), (set(), "AMX", "bfloat16"),
     ({"avx2"}, "AVX2", "float32"), (set(), "DEFAULT", "float32")],
)
def test_auto_on_the_cpu_follows_its_bfloat16_instructions(monkeypatch, fresh_detection, flags, capability, expected):
    monkeypatch.setattr(lowp, "_cpu_flags", lambda: flags)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert resolve_scan("auto", "cpu") == expected
    assert resolve_scan("float32", "cpu") == "float32"
    assert resolve_scan("bfloat16", "cpu") == "bfloat16"


@pytest.mark.parametrize(("capability", "expected"), [((8, 0), "bfloat16"), ((9, 0), "bfloat16"), ((7, 5), "float32")])
def test_auto_on_cuda_needs_compute_capability_8(monkeypatch, fresh_detection, capability, expected):
    """No GPU here: torch.cuda is stood in for, which is all the selection reads."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: asked.append(index) or capability)
    assert resolve_scan("auto", "cuda:1") == expected
    assert resolve_scan("auto", "cuda:1") == expected
    assert asked == [1]  # found once per device


def test_detection_runs_once(monkeypatch, fresh_detection):
    calls = []
    monkeypatch.setattr(lowp, "_cpu_flags", lambda: calls.append(1) or {"avx512_bf16"})
    for _ in range(3):
        resolve_scan("auto", "cpu")
    assert calls == [1]


def test_lenses_without_a_low_precision_form_stay_float32(bundled):
    from attention_encodings.analysis import head_lens_for, reference_for

    assert path_taken("bfloat16", "cpu", reference_for(bundled, "word")) == "bfloat16"
    assert path_taken("float32", "cpu", reference_for(bundled, "word")) == "float32"
    assert isinstance(reference_for(bundled, "embedding"), EmbeddingReference)
    assert path_taken("bfloat16", "cpu", reference_for(bundled, "embedding")) == "float32"
    assert head_lens_for(bundled) is None
    head = HeadLens(lambda x: x, 8)
    assert path_taken("bfloat16", "cpu", head, log_partition=True) == "float32"


HIDDEN = 256


def _near_tie_vocabulary(
    generator: torch.Generator, ties: bool = True
) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """A state x and V unit rows: the target (id 0) at cosine c₀ to x, items at c₀ + δ and at the k-th best's
    cosine + δ for δ at every distance around the bound H (from float32 ties, with `ties`, to several H), and
    filler."""
    x = torch.randn(HIDDEN, generator=generator, dtype=torch.float64)
    x /= x.norm()
    bound = 0.006  # about H for these shapes: ‖x′−x‖ + max‖r′−r‖ + w·|c|
    tie = 2 * lowp.gamma(HIDDEN)
    steps = torch.tensor([0.0, tie / 4, 4 * tie, 1e-5, 1e-4, 3e-4, 1e-3, bound / 4, bound / 2, bound, 1.5 * bound, 3 * bound],
                         dtype=torch.float64)
    steps = steps if ties else steps[2:]
    deltas = torch.cat((steps, -steps[steps > 0]))
    own, kth = 0.3, 0.6
    top = torch.linspace(0.9, kth + 0.01, 40, dtype=torch.float64)
    cosines = torch.cat((
        torch.tensor([own], dtype=torch.float64),
        own + deltas.repeat(3),
        top,
        kth + deltas,
        torch.rand(3000, generator=generator, dtype=torch.float64) * 0.5 - 0.2,
    ))
    noise = torch.randn(len(cosines), HIDDEN, generator=generator, dtype=torch.float64)
    noise -= (noise @ x)[:, None] * x
    noise /= noise.norm(dim=-1, keepdim=True)
    rows = cosines[:, None] * x + (1 - cosines[:, None] ** 2).sqrt() * noise
    return x, rows, len(top) + 5, tie


def _word(rows: torch.Tensor) -> WordReference:
    return WordReference(EmbeddingParts(word=rows.float()))


def _truth(x: torch.Tensor, rows: torch.Tensor, target: int, tie: float) -> tuple[int, int, torch.Tensor]:
    """The rank's bounds in float64 (items within the float32 tie bound may count either way), and the
    float64 scores of the float32 rows (what float32 rounds)."""
    unit = rows.float().double()
    unit = unit / unit.norm(dim=-1, keepdim=True)
    xs = x.float().double()
    scores = unit @ (xs / xs.norm())
    own = scores[target]
    others = torch.cat((scores[:target], scores[target + 1 :]))
    return int((others > own + tie).sum()), int((others > own - tie).sum()), scores


@pytest.mark.parametrize(("seed", "ties"), [(0, True), (1, True), (2, False), (3, False)])
def test_near_ties_around_the_bound_give_the_float32_answers(seed, ties):
    """Within the float32 tie bound an item may count either way, in either path (the rank's bounds); beyond
    it (`ties=False`: no item that close) every answer is identical."""
    generator = torch.Generator().manual_seed(seed)
    x, rows, k, tie = _near_tie_vocabulary(generator, ties)
    space = _word(rows)
    states = (x.float() * torch.tensor([1.0, 3.0, 0.25])[:, None])[:, None, :]  # three layers, one token
    targets = torch.tensor([0])
    offsets = torch.zeros(1, 1)
    found = {p: scan(states, targets, offsets, space, keep=k, spread=True, precision=p) for p in ("float32", "bfloat16")}
    low, high, truth = _truth(x, rows, 0, tie)
    for path, result in found.items():
        assert ((result.rank >= low) & (result.rank <= high)).all(), (path, result.rank, low, high)
    # Beyond the tie bound the answers are identical: ids, float32 cosines, spread.
    if not ties:
        assert torch.equal(found["bfloat16"].rank, found["float32"].rank)
    assert torch.equal(found["bfloat16"].top_ids, found["float32"].top_ids)
    assert torch.allclose(found["bfloat16"].top_values, found["float32"].top_values, rtol=0, atol=4 * tie)
    assert torch.allclose(found["bfloat16"].own, found["float32"].own, rtol=0, atol=tie)
    assert (found["bfloat16"].mean - found["float32"].mean).abs().max() < 1e-6
    assert (found["bfloat16"].std - found["float32"].std).abs().max() < 1e-6
    assert set(found["bfloat16"].top_ids[0, 0].tolist()) == set(truth.topk(k).indices.tolist())
    # The vocabulary is adversarial: the bfloat16 scores alone would put some near item on the wrong side.
    candidate = space.low_scores(space.rows(states[0], offsets), torch.empty(1, space.vocab_size, dtype=torch.bfloat16))
    wrong = (candidate[0].double() > candidate[0, 0].double()) != (truth > truth[0])
    assert wrong.sum() > 0


def test_crowded_and_unsettled_rows_are_scored_whole_in_float32(monkeypatch):
    """A row with more band items than LIMIT, or a top-k the candidates cannot settle, is scored whole."""
    monkeypatch.setattr(lowp, "LIMIT", 4)
    monkeypatch.setattr(lowp, "MARGIN", 2)
    generator = torch.Generator().manual_seed(7)
    x, rows, k, tie = _near_tie_vocabulary(generator, ties=False)
    space = _word(rows)
    states = x.float()[None, None, :]
    args = (states, torch.tensor([0]), torch.zeros(1, 1), space)
    low, high, truth = _truth(x, rows, 0, tie)
    reference = scan(*args, keep=k, precision="float32")
    whole = []
    scores = space.scores
    monkeypatch.setattr(space, "scores", lambda *a, **kw: whole.append(1) or scores(*a, **kw))
    result = scan(*args, keep=k, precision="bfloat16")
    assert whole == [1]
    assert low <= int(result.rank) <= high
    assert torch.equal(result.top_ids, reference.top_ids)
    assert torch.equal(result.rank, reference.rank)


def test_only_the_ordered_items_carry_scores_and_the_rest_is_the_exact_set():
    generator = torch.Generator().manual_seed(3)
    x, rows, k, tie = _near_tie_vocabulary(generator)
    space = _word(rows)
    args = (x.float()[None, None, :], torch.tensor([0]), torch.zeros(1, 1), space)
    result = scan(*args, keep=k, ordered=5, precision="bfloat16")
    reference = scan(*args, keep=k, precision="float32")
    assert torch.equal(result.top_ids[..., :5], reference.top_ids[..., :5])
    assert torch.allclose(result.top_values[..., :5], reference.top_values[..., :5], rtol=0, atol=tie)
    assert result.top_values[..., 5:].isnan().all()
    assert set(result.top_ids[0, 0].tolist()) == set(reference.top_ids[0, 0].tolist())


def test_the_spread_holds_where_float32_sums_lose_digits():
    """Every item at 0.6 ± 0.02 from x: a variance 900 times smaller than the mean square (measures.SPREAD_BLOCK)."""
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(HIDDEN, generator=generator, dtype=torch.float64)
    x /= x.norm()
    cosines = 0.6 + 0.02 * torch.randn(20_000, generator=generator, dtype=torch.float64)
    noise = torch.randn(len(cosines), HIDDEN, generator=generator, dtype=torch.float64)
    noise -= (noise @ x)[:, None] * x
    noise /= noise.norm(dim=-1, keepdim=True)
    rows = cosines[:, None] * x + (1 - cosines[:, None] ** 2).sqrt() * noise
    space = _word(rows)
    args = (x.float()[None, None, :], torch.tensor([0]), torch.zeros(1, 1), space)
    low = scan(*args, keep=10, spread=True, precision="bfloat16")
    exact = rows.float().double() @ x.float().double() / rows.float().double().norm(dim=-1)
    assert float((low.mean - exact.mean()).abs()) < 1e-6
    assert float((low.std - exact.std(unbiased=False)).abs()) < 1e-6


def test_the_head_lens_runs_float32_under_bfloat16():
    """The head lens has no low-precision form yet: asking for bfloat16 gives the float32 scan, bit for bit."""
    generator = torch.Generator().manual_seed(5)
    weight = torch.randn(500, 32, generator=generator)
    lens = HeadLens(lambda h: h @ weight.T, 500)
    states = torch.randn(3, 4, 32, generator=generator)
    args = (states, torch.tensor([1, 2, 3, -1]), torch.zeros(4, 1), lens)
    low = scan(*args, keep=5, log_partition=True, precision="bfloat16")
    full = scan(*args, keep=5, log_partition=True, precision="float32")
    for name in ("rank", "top_ids", "top_values", "log_partition"):
        assert torch.equal(getattr(low, name), getattr(full, name))
