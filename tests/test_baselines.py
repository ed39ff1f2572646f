"""The baselines (vocabulary mean, spread and z-score; the text's anisotropy) and normalisation by corpus
statistics, against the plain definitions; bad statistics files are one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import CORPUS, SEED, run_cli
from plain import assert_matches_plain, plain_measures, plain_stats

from attention_encodings import InputError, OptionError, Settings, analyze, analyze_corpus, load_model
from attention_encodings.analysis import NORMALIZED_SPACES, _references, reference_for
from attention_encodings.metrics import SPREAD_BLOCK, normalization, row_mean_std
from attention_encodings import stats as stats_module
from attention_encodings.stats import read_stats, sample_stats, sample_texts, write_stats
from attention_encodings.trace import encode, trace


@pytest.fixture(scope="session")
def stats_file(tmp_path_factory, bundled, bundled_stats):
    """A stats.npz for a model and tap, computed the plain way over the test corpus (made once per pair)."""
    made = {(bundled.name, "resid_mid"): bundled_stats}

    def make(handle, tap="resid_mid"):
        key = (handle.name, tap)
        if key not in made:
            mean, std, count = plain_stats(handle, CORPUS, tap)
            path = tmp_path_factory.mktemp("stats") / "stats.npz"
            np.savez(path, mean=mean.astype(np.float32), std=std.astype(np.float32), count=np.array(count))
            made[key] = path
        return made[key]

    return make


def _check_normalized(handle, stats_path, text, tap, reference, normalize, top_k=20, n=7, scan="auto"):
    result = analyze(
        text, handle, tap=tap, reference=reference, top_k=top_k, neighbours=n, normalize=normalize, stats=stats_path,
        scan=scan,
    )
    with np.load(stats_path) as data:
        mean, std = data["mean"], data["std"]
    states = trace(handle, encode(handle, text)).states(tap)
    plain = plain_measures(handle, encode(handle, text), states, reference, top_k, n, normalize, mean, std)
    data = result.to_dict()
    assert (data["normalize"], data["stats"]) == (normalize, str(stats_path))
    assert_matches_plain(data, plain, top_k)
    return result


NORMALIZED = [
    (family, reference, normalize, scan)
    for family in ("roberta", "bert", "distilbert", "electra", "gpt2", "llama")
    for reference in ("embedding", "word")
    for normalize in ("center", "standardize")
    for scan in (("float32", "bfloat16") if reference == "word" else ("auto",))  # embedding: float32 either way
    if not (family == "electra" and reference == "word")
]


@pytest.mark.parametrize(("family", "reference", "normalize", "scan"), NORMALIZED)
def test_normalized_tiny_models_match_the_definitions(tiny_dirs, stats_file, family, reference, normalize, scan):
    handle = load_model(str(tiny_dirs[family]))
    _check_normalized(handle, stats_file(handle), CORPUS[2], "resid_mid", reference, normalize, scan=scan)


@pytest.mark.parametrize("tap", ["resid_mid", "attn_ln", "resid_post"])
def test_normalized_taps_match_the_definitions(tiny_roberta, stats_file, tap):
    handle = load_model(str(tiny_roberta))
    _check_normalized(handle, stats_file(handle, tap), SEED, tap, "embedding", "standardize")


@pytest.mark.parametrize(
    ("reference", "normalize", "scan"),
    [("embedding", "standardize", "auto"), ("word", "center", "float32"), ("word", "center", "bfloat16")],
)
def test_normalized_bundled_model_matches_the_definitions(bundled, stats_file, reference, normalize, scan):
    result = _check_normalized(
        bundled, stats_file(bundled), SEED, "resid_mid", reference, normalize, top_k=100, n=15, scan=scan
    )
    if reference == "embedding":  # the token's own normalised row is still its normalised layer-0 vector
        assert result.cosine.values[0] == pytest.approx(1.0, abs=1e-5)
        assert (result.rank.values[0] == 0).all()


def test_similarity_is_taken_on_the_normalised_vectors(tiny_roberta, stats_file):
    """The token-to-token similarity follows the normalisation too, like every other measure."""
    handle = load_model(str(tiny_roberta))
    path = stats_file(handle)
    result = analyze(SEED, handle, top_k=5, similarity=True, normalize="standardize", stats=path)
    with np.load(path) as data:
        mean, std = torch.tensor(data["mean"]), torch.tensor(data["std"])
    states = (trace(handle, encode(handle, SEED)).states("resid_mid") - mean[:, None]) / std[:, None]
    for layer, p, q in ((0, 1, 2), (2, 3, 9), (3, 0, 13)):
        plain = torch.nn.functional.cosine_similarity(states[layer, p], states[layer, q], dim=0)
        assert result.similarity.values[layer, p, q] == pytest.approx(float(plain), abs=1e-5)


def test_identity_statistics_change_nothing(bundled, tmp_path):
    """Mean 0 and std 1 normalise nothing: every number equals the unnormalised analysis exactly."""
    path = tmp_path / "identity.npz"
    np.savez(path, mean=np.zeros((7, 384), np.float32), std=np.ones((7, 384), np.float32), count=np.array(1))
    plain = analyze(SEED, bundled).to_dict()
    normalized = analyze(SEED, bundled, normalize="standardize", stats=path).to_dict()
    assert (normalized.pop("normalize"), normalized.pop("stats")) == ("standardize", str(path))
    assert (plain.pop("normalize"), plain.pop("stats")) == ("none", None)
    assert normalized == plain


def test_the_seed_baselines_on_the_bundled_model(bundled):
    """What the README says: at the last layer 'flies' keeps a cosine of 0.49 to its original, about eight
    vocabulary standard deviations above the mean item, yet no higher than two of its text's tokens are alike."""
    result = analyze(SEED, bundled)
    layers, tokens = result.cosine.values.shape
    for name in ("vocab_mean", "vocab_std", "zscore"):
        assert getattr(result, name).values.shape == (layers, tokens)
    assert result.anisotropy.shape == (layers,)
    assert result.zscore.values[-1, 8] == pytest.approx(7.76, abs=0.01)
    assert result.cosine.values[-1, 8] < result.anisotropy[-1]
    assert np.all(np.diff(result.anisotropy) > -0.05) and result.anisotropy[-1] > 5 * result.anisotropy[0]
    frame = result.to_frame()
    assert list(frame.columns)[-4:] == ["vocab_mean", "vocab_std", "zscore", "anisotropy"]
    assert frame[frame.layer == 6].anisotropy.nunique() == 1


def test_anisotropy_is_null_with_fewer_than_two_ordinary_tokens(tiny_roberta):
    result = analyze("Time", load_model(str(tiny_roberta)), top_k=5)
    assert sum(not t.special for t in result.tokens) == 1
    assert np.isnan(result.anisotropy).all()
    assert json.loads(result.to_json())["anisotropy"] == [None] * len(result.layers)
    assert result.to_frame().anisotropy.isna().all()


@pytest.mark.parametrize(
    ("vocab", "mean", "spread", "tolerance"),
    [(30_522, 0.1, 0.06, 1e-6), (2 * SPREAD_BLOCK, 0.1, 0.2, 1e-6), (500, 0.3, 0.05, 2e-5), (50_265, 0.6, 0.02, 1e-4)],
)
def test_vocabulary_mean_and_std_hold_against_float64(vocab, mean, spread, tolerance):
    """The float32 mean and std equal float64's: to 1e-6 on rows like the bundled model's (mean 0.1, std 0.06
    over 30,522 items), to 1e-4 where every item scores alike (mean 0.6, std 0.02: E[s²] is 900 times the
    variance, and a whole-row float32 sum of squares would be off by 5e-4)."""
    torch.manual_seed(vocab)
    scores = (torch.randn(3, 5, vocab, dtype=torch.float64) * spread + mean).float()
    got_mean, got_std = row_mean_std(scores)
    want_std, want_mean = torch.std_mean(scores.double(), dim=-1, correction=0)
    assert torch.allclose(got_mean.double(), want_mean, atol=1e-7, rtol=0)
    assert torch.allclose(got_std.double(), want_std, atol=0, rtol=tolerance)


def test_normalised_reference_spaces_are_kept_a_few_at_a_time(tiny_roberta, tmp_path):
    """Each statistics file builds its own reference space once; a model keeps its plain spaces and the
    NORMALIZED_SPACES most recent normalised ones, not one per file ever used."""
    handle = load_model(str(tiny_roberta))
    analyze(SEED, handle, top_k=5)
    for seed in range(NORMALIZED_SPACES + 2):
        path = _write(tmp_path / f"{seed}.npz", mean=np.full((4, 32), seed, np.float32), std=np.ones((4, 32), np.float32))
        analyze(SEED, handle, top_k=5, normalize="center", stats=path)
        again = reference_for(handle, "embedding", normalization("center", read_stats(path), handle.device))
        assert again is reference_for(handle, "embedding", normalization("center", read_stats(path), handle.device))
    kept = _references[handle.model]
    assert ("embedding", "") in kept and sum(1 for _, key in kept if key) == NORMALIZED_SPACES


def test_stats_files_round_trip(tmp_path, bundled):
    stats = read_stats(_write(tmp_path / "a.npz", mean=np.ones((7, 384)), std=np.ones((7, 384)), count=np.array(5)))
    assert (stats.mean.dtype, stats.count, stats.tap) == (torch.float32, 5, None)
    write_stats(tmp_path / "b" / "stats.npz", stats.__class__(stats.mean, stats.std, 5, "x", tap="attn_ln"))
    again = read_stats(tmp_path / "b" / "stats.npz")
    assert torch.equal(again.mean, stats.mean) and again.tap == "attn_ln" and again.count == 5


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


GOOD = {"mean": np.zeros((7, 384), np.float32), "std": np.ones((7, 384), np.float32), "count": np.array(3)}
BAD_FILES = [
    ("missing", None, "cannot read statistics {path}: no such file"),
    ("not-npz", b"hello", "{path} is not a stats.npz file"),
    ("no-std", {"mean": GOOD["mean"]}, "have no 'std' array"),
    ("layers", {**GOOD, "mean": np.zeros((13, 384), np.float32), "std": np.ones((13, 384), np.float32)},
     "statistics {path} are for 12 layers of width 384, but all-MiniLM-L6-v2 (bundled) at resid_mid has 6 layers of width 384"),
    ("width", {**GOOD, "mean": np.zeros((7, 768), np.float32), "std": np.ones((7, 768), np.float32)}, "are for 6 layers of width 768"),
    ("one-d", {**GOOD, "mean": np.zeros(384, np.float32)}, "mean must be a (N+1)×d array of floats"),
    ("shapes", {**GOOD, "std": np.ones((7, 383), np.float32)}, "mean is (7, 384) but std is (7, 383)"),
    ("nan", {**GOOD, "mean": np.full((7, 384), np.nan, np.float32)}, "mean has values that are not finite"),
    ("negative", {**GOOD, "std": -np.ones((7, 384), np.float32)}, "std has negative values"),
    ("zero", {**GOOD, "std": np.zeros((7, 384), np.float32)}, "cannot standardize with statistics {path}: the standard deviation"),
    ("tap", {**GOOD, "tap": np.array("attn_ln")}, "were taken at tap attn_ln, not resid_mid"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_stats_files_are_one_line_errors(bundled, tmp_path, name, content, message):
    path = tmp_path / f"{name}.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        _write(path, **content)
    with pytest.raises(InputError) as error:
        analyze(SEED, bundled, normalize="standardize", stats=path)
    assert message.format(path=path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"normalize": "center"}, "normalize center needs statistics"),
        ({"stats": "stats.npz"}, "are used only to normalize"),
        ({"normalize": "whiten", "stats": "stats.npz"}, "unknown normalize 'whiten'; choose one of: none, center, standardize"),
    ],
)
def test_normalize_and_stats_go_together(tiny_roberta, kwargs, message):
    with pytest.raises(InputError, match=message):
        analyze(SEED, load_model(str(tiny_roberta)), **kwargs)


def test_normalize_on_the_command_line(bundled, stats_file, tmp_path):
    path = stats_file(bundled)
    done = run_cli("analyze", SEED, "-m", "bundled", "--normalize", "center", "--stats", str(path), "-f", "json")
    assert done.returncode == 0, done.stderr.decode()
    expected = analyze(SEED, bundled, normalize="center", stats=path).to_dict()
    assert json.loads(done.stdout) == json.loads(json.dumps(expected))
    done = run_cli("analyze", SEED, "-m", "bundled", "--normalize", "center")
    assert done.returncode == 2 and done.stderr.decode().splitlines()[-1].startswith("error: normalize center needs statistics")
    broken = tmp_path / "broken.npz"
    broken.write_text("not a zip")
    done = run_cli("analyze", SEED, "-m", "bundled", "--normalize", "center", "--stats", str(broken))
    assert done.returncode == 1 and done.stderr.decode().splitlines()[-1] == f"error: {broken} is not a stats.npz file (a NumPy .npz archive of arrays mean and std)"
    assert done.stdout == b""


def test_settings_refuse_stats_without_normalize():
    with pytest.raises(OptionError, match="used only to normalize"):
        Settings(stats="stats.npz")


def test_sample_statistics_are_what_corpus_sample_writes_and_are_cached(tmp_path, tiny_roberta, monkeypatch):
    """`--stats sample`: the statistics of the bundled sample's sentences for this model and tap, equal to the
    stats.npz of `corpus sample` (the sentences the model accepts whole), computed once, then read back from the
    cache folder, in this process and in the next."""
    handle = load_model(str(tiny_roberta))
    assert len(sample_texts()) == 2001 and sample_texts()[0].startswith("From the AP comes this story")
    computed = sample_stats(handle, "attn_ln")
    corpus = analyze_corpus("sample", tmp_path / "run", handle, tap="attn_ln", top_k=5)
    written = read_stats(corpus.path / "stats.npz")
    measured = int((corpus.texts().status == "ok").sum())  # <s> and </s> around each measured text are special
    assert 0 < measured < 2001 and computed.count == written.count == corpus.manifest["counts"]["tokens"] - 2 * measured
    assert torch.allclose(computed.mean, written.mean, atol=1e-6) and torch.allclose(computed.std, written.std, atol=1e-6)
    assert (computed.source, computed.tap, written.tap) == ("sample", "attn_ln", "attn_ln")
    cached = list((stats_module.cache_root() / "stats").glob("sample-*-attn_ln-*.npz"))
    assert len(cached) == 1
    monkeypatch.setattr(stats_module, "trace", lambda *a, **k: pytest.fail("traced again instead of reading the cache"))
    stats_module._in_memory.clear()
    again = sample_stats(handle, "attn_ln")
    assert torch.equal(again.mean, computed.mean) and again.source == "sample"
    result = analyze(SEED, handle, tap="attn_ln", normalize="center", stats="sample", top_k=5)
    assert result.to_dict()["stats"] == "sample"
    expected = analyze(SEED, handle, tap="attn_ln", normalize="center", stats=corpus.path / "stats.npz", top_k=5)
    assert np.allclose(result.cosine.values, expected.cosine.values, atol=1e-5)


def test_sample_statistics_on_the_command_line_and_a_changed_model(tmp_path, tiny_dirs):
    done = run_cli("analyze", SEED, "-m", str(tiny_dirs["bert"]), "--normalize", "standardize", "--stats", "sample", "-f", "json")
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["stats"] == "sample"
    before = set((stats_module.cache_root() / "stats").glob("sample-*.npz"))
    assert any("resid_mid" in path.name for path in before)
    changed = load_model(str(tiny_dirs["bert"]))
    with torch.no_grad():
        first = next(changed.model.parameters())
        first.add_(1.0)  # other weights, same name: new statistics, not the cached ones
    try:
        assert stats_module._fingerprint(changed, "resid_mid") not in {path.name[len("sample-") : -4] for path in before}
    finally:
        with torch.no_grad():
            first.sub_(1.0)
