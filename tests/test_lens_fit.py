"""The learned lens: the closed-form fit against plain loops, what it recovers, and fit-lens end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import DECODERS, ENCODERS, FAMILIES, HEADED, run_cli
from plain import plain_lens_fit, plain_lens_sums

from attention_encodings import analyze
from attention_encodings.corpus.lens_fit import HELDOUT, fit_lens, part_of
from attention_encodings.errors import InputError
from attention_encodings.metrics.tuned import add_sums, choose, fit, lens_sums, mean_error, squared_error, translate
from attention_encodings.models import load_model
from attention_encodings.settings import Settings
from attention_encodings.stats import fingerprint, sample_texts
from attention_encodings.tuned_lens import LearnedLens, read_lens

TEXTS = [text for text in sample_texts()[:80] if len(text) < 90][:36]
"""Short sample sentences (the tiny models take 40 tokens)."""


def _rows(layers: int = 2, tokens: int = 400, d: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Vectors with a large mean (so centring matters) and targets that depend on them affinely, plus noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(layers, tokens, d, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3, d, dtype=torch.float64) + 7
    a = torch.randn(layers, d, d, generator=g, dtype=torch.float64) * 0.4
    y = x + x @ a.transpose(1, 2) + torch.randn(layers, 1, d, generator=g, dtype=torch.float64)
    return x, y + 0.3 * torch.randn(y.shape, generator=g, dtype=torch.float64)


def test_sums_and_fit_match_a_plain_loop_and_lstsq():
    x, y = _rows()
    sums = lens_sums(x, y)
    for layer in range(x.shape[0]):
        plain = plain_lens_sums(x[layer].numpy(), y[layer].numpy())
        for key, value in plain.items():
            assert np.allclose(sums[key][layer].numpy(), value, rtol=1e-12, atol=1e-9), key
    for lam in (0.0, 5.0, 300.0):
        delta, bias = fit(sums, torch.full((x.shape[0],), lam, dtype=torch.float64))
        for layer in range(x.shape[0]):
            want_delta, want_bias = plain_lens_fit(x[layer].numpy(), y[layer].numpy(), lam)
            assert np.abs(delta[layer].numpy() - want_delta).max() < 1e-8
            assert np.abs(bias[layer].numpy() - want_bias).max() < 1e-8


def test_a_shared_target_is_the_same_as_one_per_layer():
    x, y = _rows()
    shared, expanded = lens_sums(x, y[0]), lens_sums(x, y[0].expand(x.shape[0], -1, -1))
    assert all(torch.allclose(shared[key], expanded[key], rtol=1e-13) for key in shared)


def test_a_planted_affine_map_is_recovered():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1200, 8, generator=g, dtype=torch.float64) * 2 + 1
    a = torch.randn(3, 8, 8, generator=g, dtype=torch.float64) * 0.5
    b = torch.randn(3, 8, generator=g, dtype=torch.float64)
    y = x + x @ a.transpose(1, 2) + b[:, None] + 1e-3 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    train, held = lens_sums(x[:, :1000], y[:, :1000]), lens_sums(x[:, 1000:], y[:, 1000:])
    delta, bias, _, _ = choose(train, held)
    r2 = 1 - squared_error(held, delta, bias) / mean_error(held, train["sy"] / train["n"][:, None])
    assert (r2 > 0.999).all(), r2
    assert torch.allclose(delta, a, atol=1e-3) and torch.allclose(bias, b, atol=1e-3)
    # the held-out error from the sums is the error of the translated rows themselves
    direct = (y[:, 1000:] - translate(x[:, 1000:], delta, bias).double()).pow(2).sum(dim=(1, 2))
    assert torch.allclose(squared_error(held, delta, bias), direct, rtol=1e-4)


def test_shards_added_in_any_order_give_one_fit():
    x, y = _rows(tokens=500)
    parts = [lens_sums(x[:, i : i + 100], y[:, i : i + 100]) for i in range(0, 500, 100)]
    lam = torch.full((2,), 3.0, dtype=torch.float64)
    whole = fit(lens_sums(x, y), lam)
    for order in (parts, parts[::-1], [parts[i] for i in (2, 0, 4, 1, 3)]):
        delta, bias = fit(add_sums(order), lam)
        assert (delta - whole[0]).abs().max() < 1e-10 and (bias - whole[1]).abs().max() < 1e-10


def test_an_infinite_lambda_and_a_layer_fitted_to_itself_give_no_delta():
    x, y = _rows()
    delta, bias = fit(lens_sums(x, y), torch.full((2,), torch.inf, dtype=torch.float64))
    assert (delta == 0).all()
    assert torch.allclose(bias, (y - x).mean(dim=1), atol=1e-12)  # the unpenalised bias: the mean shift only
    delta, bias = fit(lens_sums(x, x), torch.zeros(2, dtype=torch.float64))
    assert (delta == 0).all() and (bias == 0).all()


def test_the_split_is_by_text_and_stable():
    parts = [part_of(text, 0.1) for text in sample_texts()]
    assert parts == [part_of(text, 0.1) for text in sample_texts()]
    share = np.mean([p == HELDOUT for p in parts])
    assert 0.07 < share < 0.13
    fit_parts = np.bincount([p for p in parts if p != HELDOUT], minlength=3) / sum(p != HELDOUT for p in parts)
    assert np.allclose(fit_parts, [0.25, 0.25, 0.5], atol=0.04)


def _untrained(handle, tap: str, target: str, reference: str = "embedding") -> LearnedLens:
    layers, d = handle.num_layers + 1, handle.model.config.hidden_size
    meta = {"target": target, "tap": tap, "reference": reference, "fingerprint": fingerprint(handle, tap), "model": handle.name}
    return LearnedLens(torch.zeros(layers, d, d), torch.zeros(layers, d), meta, "untrained")


@pytest.mark.parametrize("family", ["bert", "electra", *HEADED])
def test_an_untrained_lens_gives_todays_measures_exactly(tiny_dirs, family):
    handle = load_model(str(tiny_dirs[family]))
    for tap in ("resid_mid", "resid_post"):
        result = analyze(TEXTS[0], handle, tap=tap, lens=_untrained(handle, tap, "embedding"))
        assert np.array_equal(result.probe_cosine.values, result.cosine.values)
        assert np.array_equal(result.probe_rank.values, result.rank.values)
        if family in HEADED:
            result = analyze(TEXTS[0], handle, tap=tap, lens=_untrained(handle, tap, "final"))
            assert np.array_equal(result.tuned_rank.values, result.head_rank.values)
            assert (result.tuned_kl.values >= 0).all()
            if tap == "resid_post":
                assert np.abs(result.tuned_kl.values[-1]).max() < 1e-5  # the last layer is the final prediction


@pytest.fixture(scope="module")
def fitted(tiny_dirs, tmp_path_factory):
    """A lens per family (final where there is a head, else embedding; both for GPT-2), fitted on short texts."""
    found = {}
    for family in FAMILIES:
        targets = ("final", "embedding") if family == "gpt2" else ("final",) if family in HEADED else ("embedding",)
        for target in targets:
            out = tmp_path_factory.mktemp(f"lens-{family}-{target}")
            settings = Settings(model=str(tiny_dirs[family]), tap="resid_post")
            found[family, target] = fit_lens(settings, TEXTS, out, target=target, heldout=0.3, batch_tokens=200)
    return found


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_fits_and_reads_back(fitted, tiny_dirs, family):
    handle = load_model(str(tiny_dirs[family]))
    for (name, target), result in fitted.items():
        if name != family:
            continue
        lens = result.lens
        layers = handle.num_layers + 1
        assert lens.delta.shape[0] == layers and lens.bias.shape == lens.delta.shape[:2]
        assert lens.meta["tokens"]["fit"] > 0 and lens.meta["tokens"]["heldout"] > 0
        assert len(lens.meta["lambda"]) == layers
        own = 0 if target == "embedding" else -1  # the layer that already is its target gets zeros
        assert (lens.delta[own] == 0).all() and (lens.bias[own] == 0).all()
        frame = result.eval()
        assert frame["layer"].tolist() == list(range(layers))
        learned = "kl_bits" if target == "final" else "top1_accuracy"
        assert frame[learned].notna().all() and frame["r2_vs_mean"].iloc[1:].notna().all()
        assert (result.path / "report.html").is_file() and not (result.path / "sums.npz").exists()
        shown = analyze(TEXTS[1], handle, tap="resid_post", lens=result.path)
        for name in lens.measures:
            assert shown.measure(name).values.shape == shown.cosine.values.shape
        assert name in shown.to_frame().columns and name in shown.to_dict()


def test_the_fit_lowers_held_out_error_on_a_decoder(fitted):
    frame = fitted["gpt2", "final"].eval()
    inner = frame.iloc[1:-1]
    assert (inner["r2_vs_identity"] > 0).all()  # better than the identity (the untrained reading) on held-out texts


def test_save_load_round_trip_and_mismatches_refused(fitted, tiny_dirs, tmp_path):
    result = fitted["llama", "final"]
    lens = read_lens(result.path)
    again = read_lens(str(result.path))
    assert torch.equal(lens.delta, again.delta) and lens.meta == json.loads((result.path / "lens.json").read_text())
    llama = load_model(str(tiny_dirs["llama"]))
    with pytest.raises(InputError, match="was fitted at tap resid_post, not resid_mid"):
        analyze(TEXTS[0], llama, tap="resid_mid", lens=result.path)
    with pytest.raises(InputError, match="was fitted on"):
        analyze(TEXTS[0], load_model(str(tiny_dirs["gpt2"])), tap="resid_post", lens=result.path)
    with pytest.raises(InputError, match="fitted to the embedding reference, not word"):
        analyze(TEXTS[0], load_model(str(tiny_dirs["bert"])), tap="resid_post", reference="word", lens=fitted["bert", "embedding"].path)
    with pytest.raises(InputError, match="is not a lens folder"):
        analyze(TEXTS[0], llama, lens=tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "lens.json").write_text("{not json")
    (broken / "lens.safetensors").write_bytes(b"nope")
    with pytest.raises(InputError, match="cannot read lens"):
        analyze(TEXTS[0], llama, lens=broken)
    done = run_cli("analyze", TEXTS[0], "-m", str(tiny_dirs["llama"]), "--lens", str(result.path), "--tap", "resid_mid")
    assert done.returncode == 1 and done.stderr.decode().splitlines()[-1].startswith("error: lens ")
    assert "Traceback" not in done.stderr.decode()


def test_a_killed_fit_resumes_to_the_same_lens(tiny_dirs, tmp_path):
    settings = Settings(model=str(tiny_dirs["roberta"]), tap="resid_mid")
    options = {"target": "embedding", "heldout": 0.3, "batch_tokens": 120}
    whole = fit_lens(settings, TEXTS, tmp_path / "whole", **options).lens
    calls = []

    def stop_after_two(done: int, total: int, tokens: int) -> None:
        calls.append(done)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_lens(settings, TEXTS, tmp_path / "killed", checkpoint_seconds=0, progress=stop_after_two, **options)
    assert (tmp_path / "killed" / "sums.npz").is_file() and not (tmp_path / "killed" / "lens.json").exists()
    seen = []
    resumed = fit_lens(settings, TEXTS, tmp_path / "killed", progress=lambda *a: seen.append(a), **options).lens
    assert seen[0][0] > 0  # it started from the checkpoint, not from nothing
    assert torch.allclose(resumed.delta, whole.delta, atol=1e-6) and torch.allclose(resumed.bias, whole.bias, atol=1e-6)
    assert resumed.meta["tokens"] == whole.meta["tokens"]
    with pytest.raises(InputError, match="holds a run with other settings"):
        fit_lens(settings, TEXTS, tmp_path / "killed", **{**options, "heldout": 0.2})


def test_ray_equals_local(tiny_dirs, tmp_path):
    settings = Settings(model=str(tiny_dirs["gpt2"]), tap="resid_post")
    options = {"target": "final", "heldout": 0.3, "batch_tokens": 200}
    local = fit_lens(settings, TEXTS, tmp_path / "local", **options)
    ray = fit_lens(settings, TEXTS, tmp_path / "ray", engine="ray", **options)
    assert torch.allclose(ray.lens.delta, local.lens.delta, atol=1e-6) and torch.allclose(ray.lens.bias, local.lens.bias, atol=1e-6)
    assert ray.lens.meta["tokens"] == local.lens.meta["tokens"]
    assert np.allclose(ray.eval()["kl_bits"], local.eval()["kl_bits"], atol=1e-5)


def test_fit_lens_refuses_what_it_cannot_fit(tiny_dirs, tmp_path):
    bert = Settings(model=str(tiny_dirs["bert"]))
    with pytest.raises(InputError, match="reads through an output head"):
        fit_lens(bert, TEXTS, tmp_path / "a", target="final")
    with pytest.raises(InputError, match="for decoders with --target final"):
        fit_lens(Settings(model=str(tiny_dirs["bert-mlm"]), tap="resid_post"), TEXTS, tmp_path / "b", export=tmp_path / "x")
    done = run_cli("fit-lens", "sample", "--out", str(tmp_path / "c"), "-m", str(tiny_dirs["bert"]), "--target", "nope")
    assert done.returncode == 2 and done.stderr.decode() == "error: unknown target 'nope'; choose one of: final, embedding\n"


@pytest.mark.parametrize("family", [*ENCODERS[:1], *DECODERS[:1]])
def test_cli_fit_then_every_face_shows_the_measures(tiny_dirs, tmp_path, family):
    text_file = tmp_path / "texts.txt"
    text_file.write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "lens"
    target = "final" if family in HEADED else "embedding"
    model = ["-m", str(tiny_dirs[family]), "--tap", "resid_post"]
    done = run_cli("fit-lens", str(text_file), "--out", str(out), "--target", target, "--heldout", "0.3", *model)
    assert done.returncode == 0, done.stderr.decode()
    assert f"a {target} lens at resid_post" in done.stderr.decode()
    names = ("tuned_rank", "tuned_kl") if target == "final" else ("probe_cosine", "probe_rank")
    shown = run_cli("analyze", TEXTS[0], *model, "--lens", str(out), "-f", "json")
    assert shown.returncode == 0, shown.stderr.decode()
    assert all(name in json.loads(shown.stdout) for name in names)
    corpus = run_cli("corpus", str(text_file), "--out", str(tmp_path / "corpus"), *model, "--lens", str(out), "--top-k", "5", "-q")
    assert corpus.returncode == 0, corpus.stderr.decode()
    import pandas as pd

    tokens = pd.read_parquet(tmp_path / "corpus" / "tokens")
    assert all(name in tokens.columns for name in names)
    summary = pd.read_csv(tmp_path / "corpus" / "summary.csv")
    assert set(names) <= set(summary["measure"])


def test_export_in_the_tuned_lens_layout(fitted, tiny_dirs, tmp_path):
    """params.pt holds `layer_translators`' state dict (one Linear per layer but the last) and config.json
    tuned-lens's config; h + Linear(h) is our T_l(h)."""
    from attention_encodings.corpus.lens_export import export_tuned_lens

    lens = fitted["gpt2", "final"].lens
    handle = load_model(str(tiny_dirs["gpt2"]))
    export_tuned_lens(lens, handle, tmp_path / "tl")
    config = json.loads((tmp_path / "tl" / "config.json").read_text())
    assert config["num_hidden_layers"] == handle.num_layers and config["lens_type"] == "linear_tuned_lens"
    translators = torch.nn.ModuleList(torch.nn.Linear(config["d_model"], config["d_model"]) for _ in range(config["num_hidden_layers"]))
    translators.load_state_dict(torch.load(tmp_path / "tl" / "params.pt"))
    h = torch.randn(handle.num_layers + 1, 5, config["d_model"])
    ours = translate(h, lens.delta, lens.bias)
    with torch.no_grad():
        for layer, translator in enumerate(translators):
            assert torch.allclose(h[layer] + translator(h[layer]), ours[layer], atol=1e-5)
    with pytest.raises(InputError, match="resid_post"):
        export_tuned_lens(fitted["gpt2", "embedding"].lens, handle, tmp_path / "no")


def test_a_server_offers_its_lenses_by_name_only(fitted, tiny_dirs):
    from fastapi.testclient import TestClient

    from attention_encodings.faces.server import create_app

    result = fitted["gpt2", "final"]
    client = TestClient(create_app([str(tiny_dirs["gpt2"])], lenses=[str(result.path)]))
    info = client.get("/api/models").json()
    assert [lens["name"] for lens in info["lenses"]] == [result.path.name] and info["lenses"][0]["target"] == "final"
    body = {"text": TEXTS[0], "tap": "resid_post", "lens": result.path.name}
    answer = client.post("/api/analyze", json=body)
    assert answer.status_code == 200 and "tuned_rank" in answer.json() and "tuned_kl" in answer.json()
    refused = client.post("/api/analyze", json={**body, "lens": str(result.path)})
    assert refused.status_code == 422 and refused.json()["detail"].startswith("unknown lens")
    wrong_tap = client.post("/api/analyze", json={**body, "tap": "resid_mid"})
    assert wrong_tap.status_code == 422 and "was fitted at tap resid_post" in wrong_tap.json()["detail"]
    charts = client.post("/api/charts", json=body).json()
    assert "tuned_rank" in json.dumps(charts)
    with pytest.raises(InputError, match="which this server does not run"):
        create_app([str(tiny_dirs["llama"])], lenses=[str(result.path)])
