"""Comparisons: token-to-token similarity against a plain computation, pairs, runs and their labels, tokens
matched by text across tokenisers, and the overlay and pair figures written through `plot` in every format."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch.nn.functional as F
from conftest import FAMILIES, SEED
from pypdf import PdfReader

from attention_encodings import InputError, OptionError, Settings, analyze, compare, load_model
from attention_encodings.faces.cli import main
from attention_encodings.settings import runs
from attention_encodings.trace import TAPS, encode, trace
from attention_encodings.views import overlay_figure, page_specs, pair_figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MIXED = f"{SEED} Unbelievably, bananas fly."
"""Tokenised differently by MiniLM's WordPiece and the tiny byte-level BPE."""


@pytest.fixture(scope="module")
def seed_similarity(bundled):
    return analyze(SEED, bundled, similarity=True)


def _plain_similarity(states) -> np.ndarray:
    """cos(x_l[p], x_l[q]) for every layer and pair of tokens, one at a time."""
    layers, tokens, _ = states.shape
    return np.array(
        [
            [[float(F.cosine_similarity(states[layer, p], states[layer, q], dim=0)) for q in range(tokens)] for p in range(tokens)]
            for layer in range(layers)
        ]
    )


@pytest.mark.parametrize("family", [*FAMILIES, "minilm"])
def test_similarity_equals_a_plain_computation(tiny_dirs, bundled, family):
    handle = bundled if family == "minilm" else load_model(str(tiny_dirs[family]))
    traced = trace(handle, encode(handle, SEED))
    for tap in TAPS:
        result = analyze(SEED, handle, tap=tap, top_k=5, neighbours=1, similarity=True)
        expected = _plain_similarity(traced.states(tap).float())
        assert result.similarity.values.shape == expected.shape == (handle.num_layers + 1, len(result.tokens), len(result.tokens))
        assert np.allclose(result.similarity.values, expected, atol=1e-5, rtol=0), (family, tap)


def test_pair_follows_two_tokens_through_the_layers(seed_similarity):
    r = seed_similarity
    flies = r.pair("flies", "flies")  # the same text twice: its first two occurrences
    assert (flies.first.index, flies.second.index) == (2, 8)
    assert np.array_equal(flies.values, r.similarity.values[:, 2, 8]) and np.allclose(r.pair(8, 2), flies.values)
    assert flies.layers == r.layers and np.allclose(r.pair(3, 3).values, 1.0, atol=1e-5)
    assert flies.values.min() < flies.values[0] - 0.1  # they part ways in the middle layers
    one = r.select(8)
    assert one.similarity.values.shape == (len(r.layers), 1, len(r.tokens))  # the token against every token
    assert one.pair(8, "flies").second.index == 2
    data = json.loads(one.to_json())
    assert np.array(data["similarity"]).shape == (len(r.layers), 1, len(r.tokens))
    frame = r.similarity_frame()
    assert len(frame) == len(r.layers) * len(r.tokens) ** 2
    row = frame[(frame.layer == 3) & (frame.token_index == 2) & (frame.other_index == 8)].iloc[0]
    assert (row.token, row.other) == ("flies", "flies") and row.similarity == pytest.approx(flies.values[3])


def test_without_similarity_there_is_none_in_the_contract(bundled):
    plain = analyze(SEED, bundled)
    assert plain.similarity is None and "similarity" not in plain.to_dict()
    with pytest.raises(InputError, match="no token-to-token similarity"):
        plain.pair(2, 8)


def test_runs_are_the_product_of_the_repeated_settings_at_most_four():
    made = runs({"model": ["bundled", "other"], "tap": ["resid_mid", "resid_post"]}, reference="word")
    assert [(s.model, s.tap, s.reference) for s in made] == [
        ("bundled", "resid_mid", "word"), ("bundled", "resid_post", "word"),
        ("other", "resid_mid", "word"), ("other", "resid_post", "word"),
    ]
    with pytest.raises(OptionError, match="at most 4 runs can be compared; 3 taps × 2 references make 6"):
        runs({"tap": list(TAPS), "reference": ["embedding", "word"]})
    with pytest.raises(OptionError, match="tap 'attn_ln' is given twice"):
        runs({"tap": ["attn_ln", "attn_ln"]})
    with pytest.raises(OptionError, match="unknown tap"):
        runs({"tap": ["resid_pre"]})


def test_runs_are_labelled_by_what_differs(seed_similarity, bundled):
    post = analyze(SEED, bundled, tap="resid_post")
    taps = compare([seed_similarity, post])
    assert (taps.labels, taps.differs, taps.note()) == (("resid_mid", "resid_post"), "tap", None)
    assert all(np.array_equal(keys, np.arange(len(post.tokens))) for keys in taps.keys)
    same = compare([post, post])
    assert same.labels == ("run 1", "run 2")
    text = compare([post, analyze("Fruit flies like a banana.", bundled, tap="resid_post")])
    assert text.differs == "text" and text.labels[1] == "“Fruit flies like a banana.”"
    assert text.keys[1].tolist() == [0, 7, 8, 9, 10, 11, 12, 13]  # matched to the second sentence of run A
    long = "Time flies like an arrow. Fruit flies like a banana. "
    alike = compare([analyze(long + "Yes.", bundled, top_k=5), analyze(long + "No.", bundled, top_k=5)])
    assert alike.labels == ("“Time flies like an arrow. Fruit…” (run 1)", "“Time flies like an arrow. Fruit…” (run 2)")
    with pytest.raises(InputError, match="1 to 4 runs"):
        compare([post] * 5)


def test_tokens_are_matched_by_text_across_tokenisers(bundled, tiny_roberta):
    minilm, tiny = analyze(MIXED, bundled, similarity=True), analyze(MIXED, str(tiny_roberta), similarity=True)
    comparison = compare([minilm, tiny])
    assert comparison.differs == "model" and comparison.labels[0] == "all-MiniLM-L6-v2 (bundled)"
    keys = comparison.keys[1]
    assert [tiny.tokens[i].text for i in np.flatnonzero(keys == 8)] == [" flies"]  # "flies" meets " flies"
    assert keys[0] == 0 and keys[-1] == len(minilm.tokens) - 1  # [CLS] meets <s>, [SEP] meets </s>
    unmatched = dict(comparison.unmatched())
    assert [t.text for t in unmatched[comparison.labels[0]]] == ["un", "##bel", "##ie", "##va", "##bly", "bananas", "fly"]
    assert "U" in [t.text for t in unmatched[comparison.labels[1]]]
    note = comparison.note()
    assert note.startswith("tokens are matched by text; not in every run: all-MiniLM-L6-v2 (bundled): 13 un, 14 ##bel")
    specs, data = page_specs(comparison)
    keyed = [row for row in data["measures"] if row["run"] == 1 and row["layer"] == 0]
    assert [row["key"] for row in keyed] == keys.tolist()
    params = {p["name"]: p.get("value") for p in specs["similarity"]["params"]}
    assert params["run_keys"][1] == keys.tolist() and params["similarity_layer"] == 6
    shallow = specs["similarity"]["hconcat"][1]["transform"][0]["filter"]
    assert shallow == "datum.run == 1 && datum.layer == min(similarity_layer, 3)"  # the 3-layer run shows its last


def test_overlay_and_pair_specs(seed_similarity, bundled):
    post = analyze(SEED, bundled, tap="resid_post", similarity=True)
    comparison = compare([seed_similarity, post])
    spec = overlay_figure(comparison, "cosine", 8).to_dict()
    colours = [layer["encoding"]["color"] for layer in spec["layer"]]
    assert all(c["scale"]["domain"] == ["resid_mid", "resid_post"] and c["legend"]["title"] == "tap" for c in colours)
    assert {p["name"]: p.get("value") for p in spec["params"]}["selected"] == 8
    assert {row["run_label"] for row in spec["datasets"]["measures"]} == {"resid_mid", "resid_post"}
    pair = pair_figure(comparison, "flies", "flies").to_dict()
    params = {p["name"]: p for p in pair["params"]}
    assert (params["selected"]["value"], params["paired"]["value"]) == (2, 8)
    assert params["similarity_layer"]["value"] == 3 and params["similarity_layer"]["bind"]["max"] == 6  # most apart at 3
    rows = pair["datasets"]["similarity"]
    assert len(rows) == 2 * 7 * 14 and rows[0]["values"][0] == pytest.approx(1.0, abs=1e-4)
    for number, run in enumerate(comparison.runs):  # the pair chart's baseline: the text's anisotropy, per layer
        first = {row["layer"]: row["anisotropy"] for row in rows if row["run"] == number and row["token_index"] == 0}
        assert np.allclose([first[layer] for layer in run.layers], run.anisotropy, atol=1e-4)
    baseline = [layer for layer in pair["hconcat"][0]["layer"] if layer["encoding"]["y"]["field"] == "anisotropy"]
    assert len(baseline) == 1 and baseline[0]["encoding"]["strokeDash"] == {"value": [2, 2]}
    specs, data = page_specs(comparison)
    assert {"pair", "similarity", "cosine", "cosine_heatmap", "neighbours"} <= set(specs) and "similarity" in data
    assert specs["pair"]["autosize"] == {"type": "pad", "resize": True}


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return exit_.value.code, out, err


@pytest.mark.parametrize("suffix", [".png", ".svg", ".pdf", ".html"])
def test_plot_pair_writes_every_format(suffix, tmp_path, capsys):
    target = tmp_path / f"pair{suffix}"
    code, out, err = _run(["plot", SEED, "-m", "bundled", "--pair", "flies,flies", "-o", str(target)], capsys)
    assert code == 0 and out == "" and err.endswith(f"wrote {target}\n"), err
    if suffix == ".png":
        assert target.read_bytes().startswith(PNG_MAGIC)
    elif suffix == ".pdf":
        text = PdfReader(target).pages[0].extract_text()
        assert "2 flies and 8 flies" in text and "similarity of every token pair at layer 3" in text
    else:
        text = target.read_text()
        assert "2 flies and 8 flies" in text if suffix == ".svg" else "similarity_layer" in text and "vegaEmbed" in text


@pytest.mark.parametrize(("suffix", "measure"), [(".png", "cosine"), (".svg", "all"), (".pdf", "rank"), (".html", "cosine")])
def test_plot_overlays_two_taps_in_every_format(suffix, measure, tmp_path, capsys):
    target = tmp_path / f"taps{suffix}"
    args = ["plot", SEED, "-m", "bundled", "--tap", "resid_mid", "--tap", "resid_post", "--token", "8", "--measure", measure]
    code, _, err = _run([*args, "-o", str(target)], capsys)
    assert code == 0 and err.count("model: all-MiniLM-L6-v2 (bundled)") == 1 and "note:" not in err, err
    if suffix == ".png":
        png = target.read_bytes()
        assert png.startswith(PNG_MAGIC)
    elif suffix == ".pdf":
        text = PdfReader(target).pages[0].extract_text()
        assert "resid_mid" in text and "resid_post" in text and "token 8 flies" in text
    else:
        text = target.read_text()
        assert "resid_mid" in text and "resid_post" in text
    if measure == "all":
        assert "resid_mid: Cosine to the original encoding, every token × layer" in text and "resid_post: nearest vocabulary items" in text


def test_plot_overlays_two_models_and_names_unmatched_tokens(tmp_path, capsys, tiny_roberta):
    target = tmp_path / "models.svg"
    code, _, err = _run(["plot", MIXED, "-m", "bundled", "-m", str(tiny_roberta), "--measure", "cosine", "-o", str(target)], capsys)
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "##bel" in notes[0] and "bananas" in notes[0]
    assert "all-MiniLM-L6-v2 (bundled)" in target.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["plot", SEED, "--pair", "2", "-o", "{tmp}/p.png"], "--pair takes two tokens as P,Q"),
        (["plot", SEED, "--pair", "2,8", "--measure", "rank", "-o", "{tmp}/p.png"], "--pair draws its own figure"),
        (["plot", SEED, "--tap", "resid_mid", "--tap", "attn_ln", "--tap", "resid_post", "--reference", "word",
          "--reference", "embedding", "-o", "{tmp}/p.png"], "at most 4 runs can be compared; 3 taps × 2 references make 6"),
        (["plot", SEED, "--tap", "attn_ln", "--tap", "attn_ln", "-o", "{tmp}/p.png"], "tap 'attn_ln' is given twice"),
        (["analyze", SEED, "--similarity", "-f", "csv"], "the similarity is part of the JSON, not the CSV"),
        (["analyze", SEED, "--similarity"], "a table shows the similarity of one token (--token)"),
    ],
)
def test_comparison_usage_errors_are_one_line_and_exit_2(args, message, tmp_path, capsys):
    code, out, err = _run([a.replace("{tmp}", str(tmp_path)) for a in args], capsys)
    lines = err.splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not list(tmp_path.iterdir())


def test_analyze_similarity_as_json_and_as_a_token_table(seed_similarity, capsys):
    code, out, _ = _run(["analyze", SEED, "-m", "bundled", "--similarity", "-f", "json"], capsys)
    data = json.loads(out)
    assert code == 0 and np.allclose(data["similarity"], seed_similarity.similarity.values, atol=1e-6)
    code, out, _ = _run(["analyze", SEED, "-m", "bundled", "--similarity", "--token", "8"], capsys)
    assert code == 0 and "token 8 flies: cosine to every token" in out
    row = next(line for line in out.splitlines() if "│  2 │ flies" in line)
    assert [cell.strip() for cell in row.split("│")[3:-1]] == [f"{v:.3f}" for v in seed_similarity.pair(8, 2).values]


def test_settings_carry_similarity():
    assert Settings().similarity is False and Settings(similarity=True).similarity is True
    with pytest.raises(OptionError, match="similarity must be true or false"):
        Settings(similarity="yes")
