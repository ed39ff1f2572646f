"""The charts: one spec each, driven by the `selected`/`hovered` parameters, exported to valid files
(from Python and from `attention-encodings plot`), and shown in a notebook."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SEED, run_cli
from pypdf import PdfReader

from attention_encodings import InputError, MeasureUnavailableError, analyze
from attention_encodings.faces.cli import main
from attention_encodings.display import shown
from attention_encodings.views import FIGURES, charts, check_file_type, default_token, figure, save
from attention_encodings.views.charts import neighbour_data, prediction_data

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def seed_result(bundled):
    return analyze(SEED, bundled)


def _params(spec: dict) -> dict:
    return {p["name"]: p.get("value") for p in spec["params"]}


def test_every_chart_is_one_spec_with_the_token_parameters(seed_result):
    built = charts(seed_result, token="banana")
    assert list(built) == [
        "cosine", "rank", "overlap", "zscore", "cosine_heatmap", "rank_heatmap", "overlap_heatmap", "zscore_heatmap", "neighbours"
    ]
    for name, chart in built.items():
        spec = chart.to_dict()
        params = _params(spec)
        assert params["selected"] == 11 and params["hovered"] == -1, name
        assert params["token_labels"][8] == "8 flies" and len(params["token_labels"]) == len(seed_result.tokens)
    rank = built["rank"].to_dict()
    assert any(layer["encoding"]["y"].get("scale", {}).get("type") == "symlog" for layer in rank["layer"])


def test_the_cosine_chart_draws_its_baselines(seed_result):
    """Behind the tokens' lines: the selected token's vocabulary mean (a dashed line in a ±1 std band) and the
    text's anisotropy, named in a legend; the other charts have none."""
    layers = charts(seed_result)["cosine"].to_dict()["layer"]
    colours = [layer["encoding"]["color"] for layer in layers if "color" in layer.get("encoding", {})]
    assert colours and all(c["scale"]["domain"] == ["Selected token's vocabulary mean ± 1 std", "Anisotropy of the text"] for c in colours)
    marks = [(layer["mark"]["type"], layer["encoding"]["y"]["field"]) for layer in layers if "color" in layer.get("encoding", {})]
    assert marks == [("area", "low"), ("line", "vocab_mean"), ("line", "anisotropy")]
    assert all("selected" in layer["transform"][0]["filter"] for layer in layers[:3])
    for name in ("rank", "overlap", "zscore"):
        assert not any("color" in layer.get("encoding", {}) for layer in charts(seed_result)[name].to_dict()["layer"]), name


def test_default_token_is_the_first_ordinary_one(seed_result):
    assert default_token(seed_result) == 1  # "time", after [CLS]
    assert _params(charts(seed_result)["cosine"].to_dict())["selected"] == 1


def test_neighbour_table_marks_the_token_and_shows_its_rank_when_outside(seed_result):
    table = neighbour_data(seed_result)
    n = seed_result.neighbour_ids.shape[2]
    near = table[table.order > 3]  # after cosine, rank, overlap→next and zscore
    listed = near[near.row != "own"]
    assert len(listed) == seed_result.neighbour_ids.size
    own_listed = set(zip(listed[listed.own].token_index, listed[listed.own].layer))
    outside = table[table.row == "own"]
    ranks = seed_result.to_frame()
    assert set(zip(outside.token_index, outside.layer)) == set(
        zip(ranks[ranks["rank"] >= n].token_index, ranks[ranks["rank"] >= n].layer)
    )
    assert outside.text.str.contains("#").all()
    assert (13, 6) in set(zip(outside.token_index, outside.layer))  # [SEP] at the last layer, rank 59
    assert (8, 6) in own_listed and (13, 6) not in own_listed
    first = listed[(listed.token_index == 8) & (listed.layer == 6) & (listed.row == "1")].text.item()
    top = seed_result.neighbours(6, 8)[0]
    assert first == f"{top.text}  {top.cosine:.2f}"


def test_figures_and_bad_names(seed_result):
    assert FIGURES == ("cosine", "rank", "overlap", "zscore", "head_rank", "tuned_rank", "tuned_kl", "probe_cosine", "probe_rank", "all")
    for measure in (*(m.name for m in seed_result.charted), "all"):
        assert figure(seed_result, measure, 8).to_dict()["params"][0]["value"] == 8
    with pytest.raises(MeasureUnavailableError, match="no 'head_rank' measure: all-MiniLM-L6-v2 .* has no output head"):
        figure(seed_result, "head_rank")
    with pytest.raises(InputError, match="unknown measure 'churn'"):
        figure(seed_result, "churn")
    with pytest.raises(InputError, match="unknown measure 'vocab_mean'; choose one of: cosine, rank, overlap, zscore"):
        figure(seed_result, "vocab_mean")  # a baseline, drawn inside the cosine chart
    with pytest.raises(InputError, match="no token matches 'zebra'"):
        figure(seed_result, token="zebra")
    with pytest.raises(InputError, match=r"cannot save a figure as a \.gif file"):
        check_file_type(Path("chart.gif"))


def test_saved_figures_are_valid_and_name_the_token(seed_result, tmp_path):
    chart = figure(seed_result, "all", "banana")
    for suffix in (".png", ".pdf", ".html"):
        save(chart, tmp_path / f"all{suffix}")
    png = (tmp_path / "all.png").read_bytes()
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert png.startswith(PNG_MAGIC) and width > 1500 and height > 1000  # drawn at twice the size
    pdf = PdfReader(tmp_path / "all.pdf")
    assert "token 11 banana" in pdf.pages[0].extract_text()
    html = (tmp_path / "all.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "11 banana" in html and "vegaEmbed" in html
    assert "cdn.jsdelivr" not in html and '<script src="http' not in html  # works offline


def test_control_characters_are_escaped_for_svg_and_pdf(tiny_roberta, tmp_path):
    assert [shown(t) for t in (" flies", "\x03", " ", "é")] == ["␣flies", "\\x03", "␣", "é"]
    result = analyze(SEED, str(tiny_roberta), neighbours=40)
    assert any(not str(t).strip().isprintable() for t in result.neighbour_texts.ravel())  # byte-level pieces
    for suffix in (".svg", ".pdf"):  # vl-convert aborts the process on a control character in text
        save(figure(result), tmp_path / f"all{suffix}")
    assert "\\x" in (tmp_path / "all.svg").read_text()


def test_plot_writes_an_svg(tiny_roberta, tmp_path):
    target = tmp_path / "cosine.svg"
    done = run_cli("plot", SEED, "--model", str(tiny_roberta), "--token", "3", "--measure", "cosine", "--out", str(target))
    assert done.returncode == 0, done.stderr.decode()
    svg = target.read_text()
    label = svg.split("token 3 ")[1].split("<")[0]
    assert svg.startswith("<svg") and "Cosine to the original encoding" in svg and label.strip()
    assert "wrote" in done.stderr.decode() and done.stdout == b""


def test_plot_on_the_bundled_model(tmp_path):
    target = tmp_path / "flies.pdf"
    done = run_cli("plot", SEED, "--model", "bundled", "--token", "8", "--measure", "zscore", "-o", str(target))
    assert done.returncode == 0, done.stderr.decode()
    text = PdfReader(target).pages[0].extract_text()
    assert "token 8 flies" in text and "z-score: standard deviations above the vocabulary mean" in text


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["--out", "{tmp}/chart.gif"], "cannot save a figure as a .gif file", 2),
        (["--out", "{tmp}/chart"], "cannot save a figure as a file without an extension", 2),
        (["--out", "{tmp}/chart.png", "--measure", "churn"], "unknown measure 'churn'", 2),
        (["--out", "{tmp}/chart.png", "--token", "zebra", "--model", "{tiny}"], "no token matches 'zebra'", 1),
        (["--out", "{tmp}/chart.png", "--measure", "head_rank", "--model", "bundled"], "no 'head_rank' measure: all-MiniLM", 1),
        ([], "Missing option '--out'", 2),
    ],
)
def test_plot_errors_are_one_line(args, message, code, tmp_path, tiny_roberta, capsys):
    """Malformed option values are usage errors (exit 2); input the model cannot take is exit 1."""
    args = [a.replace("{tmp}", str(tmp_path)).replace("{tiny}", str(tiny_roberta)) for a in args]
    with pytest.raises(SystemExit) as exit_:
        main(["plot", SEED, *args])
    err = capsys.readouterr().err
    assert exit_.value.code == code and "Traceback" not in err
    assert err.splitlines()[-1].startswith("error: ") and message in err.splitlines()[-1], err
    assert not list(tmp_path.iterdir())


def test_plot_to_an_unwritable_place_is_one_line(tmp_path, tiny_roberta):
    done = run_cli("plot", SEED, "--model", str(tiny_roberta), "--out", str(tmp_path / "missing" / "chart.png"))
    assert done.returncode == 1
    assert done.stderr.decode().splitlines()[-1] == f"error: cannot write {tmp_path / 'missing' / 'chart.png'}: No such file or directory"


def test_an_analysis_displays_as_its_charts_in_ipython(seed_result):
    from IPython.core.interactiveshell import InteractiveShell

    from attention_encodings.faces import notebook

    shell = InteractiveShell.instance()
    try:
        assert notebook.register()
        data, _ = shell.display_formatter.format(seed_result)
        assert "text/html" in data and "vegaEmbed" in data["text/html"] and "1 time" in data["text/html"]
        assert "zscore_heatmap" not in data["text/html"] and "z-score: standard deviations" in data["text/html"]
        assert "Selected token's vocabulary mean" in data["text/html"] and "Anisotropy of the text" in data["text/html"]
    finally:
        InteractiveShell.clear_instance()


@pytest.fixture(scope="module")
def smollm2_result(smollm2):
    return analyze("Fruit flies like a banana.", smollm2, neighbours=5)


def test_a_model_with_a_head_gets_its_charts_and_the_predictions_table(smollm2_result):
    built = charts(smollm2_result, token=1)
    assert list(built) == [
        "cosine", "rank", "overlap", "zscore", "head_rank",
        "cosine_heatmap", "rank_heatmap", "overlap_heatmap", "zscore_heatmap", "head_rank_heatmap", "neighbours", "predictions",
    ]
    head = built["head_rank"].to_dict()
    assert any(layer["encoding"]["y"].get("scale", {}).get("type") == "symlog" for layer in head["layer"])
    assert "predictions" in built["predictions"].to_dict()["datasets"]


def test_the_predictions_table_outlines_the_target_and_places_it_when_outside(smollm2_result):
    table = prediction_data(smollm2_result)
    result = smollm2_result
    listed = table[table.row.str.fullmatch(r"\d+")]
    assert len(listed) == result.prediction_ids.size
    n = result.prediction_ids.shape[2]
    frame = result.to_frame()
    for (token, layer), row in frame.set_index(["token_index", "layer"]).iterrows():
        target = result.head_targets[token]
        ids = list(result.prediction_ids[layer, token])
        outlined = listed[(listed.token_index == token) & (listed.layer == layer) & listed.own]
        placed = table[(table.token_index == token) & (table.layer == layer) & (table.row == "target")]
        if target < 0:  # the last token predicts nothing
            assert outlined.empty and placed.empty and pd.isna(row.head_rank)
        elif row.head_rank < n:
            assert outlined.row.tolist() == [str(ids.index(target) + 1)] and placed.empty
        else:
            next_token = shown(result.tokens[token + 1].text)
            assert outlined.empty and placed.text.item() == f"{next_token}  #{row.head_rank}"
    cell = listed[(listed.token_index == 1) & (listed.layer == 30) & (listed.row == "1")].iloc[0]
    top = result.predictions(30, 1)[0]
    assert cell.text == f"{shown(top.text)}  {top.probability:.2f}" and cell.shade == pytest.approx(top.probability)


def test_plot_the_head_rank_of_smollm2(smollm2, tmp_path):
    target = tmp_path / "head.svg"
    done = run_cli("plot", "Fruit flies like a banana.", "-m", "smollm2", "--measure", "head_rank", "--token", "1", "-o", str(target))
    assert done.returncode == 0, done.stderr.decode()
    svg = target.read_text()
    assert "Head rank: vocabulary items the output head prefers to the target" in svg and "token 1 ␣flies, ranking the next token" in svg
    assert "␣flies → ␣like" in svg  # the line is named for the token it ranks


def _layers_of(spec: dict) -> list[dict]:
    """Every unit chart of a (possibly concatenated, layered) spec."""
    found = []
    for key in ("layer", "hconcat", "vconcat"):
        for part in spec.get(key, []):
            found += _layers_of(part)
    return found + ([spec] if "mark" in spec else [])


def test_an_overlay_of_a_causal_model_names_the_next_token_it_ranks(smollm2_result, smollm2, seed_result):
    """Overlaid runs of a causal LM: the head_rank chart says it ranks the next token, and its tooltip names it;
    an encoder's overlay does not."""
    from attention_encodings import compare
    from attention_encodings.views.compare import overlay_chart

    post = analyze("Fruit flies like a banana.", smollm2, neighbours=5, tap="resid_post")
    spec = overlay_chart(compare([smollm2_result, post]), "head_rank").to_dict()
    assert "ranking the next token" in spec["title"]["text"]["expr"]
    tooltip = spec["layer"][0]["encoding"]["tooltip"]
    assert {"field": "target", "type": "nominal", "title": "target (next token)"} in tooltip
    plain = overlay_chart(compare([seed_result, seed_result]), "cosine").to_dict()
    assert "ranking" not in plain["title"]["text"]["expr"]
    assert all(t["field"] != "target" for t in plain["layer"][0]["encoding"]["tooltip"])


def test_figures_on_a_deep_decoder_are_bounded_and_name_what_they_draw(smollm2_result, seed_result):
    """SmolLM2's 31 layers: thinned layer and step ticks, heatmaps and tables of bounded width, rank ticks up to
    the power of ten above the data, ticks without trailing zeros, one title per measure, the head-lens line
    named for the token it ranks, and the legend saying whose baseline it is."""
    from attention_encodings.views.charts import chart_specs

    specs, _ = chart_specs(smollm2_result, token=0)
    overlap_axis = specs["overlap"]["layer"][-1]["encoding"]["x"]["axis"]["values"]
    assert overlap_axis == ["0→1", "4→5", "8→9", "12→13", "16→17", "20→21", "24→25", "28→29"]
    assert specs["cosine"]["layer"][-1]["encoding"]["x"]["axis"]["values"] == list(range(0, 31, 2))
    assert specs["cosine_heatmap"]["width"] <= 330 and specs["neighbours"]["width"] <= 2480
    rank_y = specs["rank"]["layer"][-1]["encoding"]["y"]
    top = rank_y["axis"]["values"][-1]
    assert top >= int(np.max(smollm2_result.rank.values)) and rank_y["scale"]["domain"] == [0, top]
    assert specs["cosine"]["layer"][-1]["encoding"]["y"]["axis"]["format"] == "~r"
    assert specs["zscore_heatmap"]["title"]["text"] == "z-score: every token × layer"
    head = specs["head_rank"]
    assert "ranking the next token" in head["title"]["text"]["expr"]
    (label,) = [unit for unit in _layers_of(head) if unit["mark"]["type"] == "text"]
    assert label["encoding"]["text"]["field"] == "line_label"
    assert {"calculate": "datum.token + ' → ' + datum.target", "as": "line_label"} in label["transform"]
    specs, _ = chart_specs(seed_result)  # small models keep every tick
    assert specs["overlap"]["layer"][-1]["encoding"]["x"]["axis"]["values"] == [f"{l}→{l + 1}" for l in range(6)]
    seed_rank = specs["rank"]["layer"][-1]["encoding"]["y"]["axis"]["values"]
    assert seed_rank == [0, 1, 10, 100]  # [SEP] climbs to rank 59 at the last layer
    assert "(in colour; other tokens grey)" in specs["cosine"]["title"]["text"]["expr"]


@pytest.fixture(scope="module")
def seed_attribution(bundled):
    return analyze(SEED, bundled, attribution=True)


def test_the_heads_datasets_carry_the_attribution(seed_attribution):
    from attention_encodings.comparison import compare
    from attention_encodings.views.attribution import CHANGE_DATA, SHARES_DATA, SOURCES_DATA, attribution_datasets

    found = seed_attribution.attribution
    data = attribution_datasets(compare([seed_attribution]))
    layers, parts, tokens = found.shares.shape
    assert len(data[SHARES_DATA]) == layers * parts * tokens
    cell = next(r for r in data[SHARES_DATA] if (r["layer"], r["component"], r["key"]) == (2, "head 1", 8))
    head = next(h for h in found.heads(2, 8) if h.head == 1)
    assert cell["share"] == pytest.approx(head.share) and cell["head"] == 1 and cell["part"] == 2
    assert (cell["ablation_rank"], cell["rank"]) == (head.ablation_rank, head.rank)
    assert cell["sources"] == ", ".join(f"{shown(s.text)} {s.weight:.2f}" for s in head.sources)
    residual = next(r for r in data[SHARES_DATA] if (r["layer"], r["component"], r["key"]) == (2, "residual", 8))
    assert "ablation_rank" not in residual and "sources" not in residual and "head" not in residual  # tooltips skip them
    change = pd.DataFrame(data[CHANGE_DATA]).query("key == 8").pivot(index="layer", columns="series", values="value")
    delta = found.delta(8)
    heads = [c for c in found.components if c.startswith("head ")]
    assert np.allclose(change["change"], delta.change) and np.allclose(change["residual"], delta.residual)
    assert np.allclose(change["heads"], delta[heads].sum(axis=1))
    assert np.allclose(change["residual"] + change["heads"] + change["other parts"], change["change"])
    row = next(r for r in data[SOURCES_DATA] if (r["layer"], r["head"], r["key"]) == (2, 1, 8))
    for name, values in (("weights", found.attention), ("shares", found.source_shares), ("norms", found.source_norms)):
        expected = values[1, 1, 8]
        assert np.allclose(row[name], expected, atol=1e-3 * np.abs(expected).max()), name  # 4 significant digits


def test_the_heads_charts_read_the_parameters(seed_attribution):
    from attention_encodings.comparison import compare
    from attention_encodings.views.attribution import CHARTS, attribution_charts

    built = {name: chart.to_dict() for name, chart in attribution_charts(compare([seed_attribution]), token=8).items()}
    assert tuple(built) == CHARTS
    for name, spec in built.items():
        params = _params(spec)
        assert params["selected"] == 8 and (params["head_layer"], params["head"]) == (-1, -1), name
        assert (params["hovered_layer"], params["hovered_head"]) == (-1, -1), name
    cells = built["heads_shares"]["layer"][0]
    encoding = cells["encoding"]
    assert encoding["x"]["field"] == "component" and encoding["x"]["sort"] == list(seed_attribution.attribution.components)
    assert encoding["y"]["field"] == "layer"
    scale = encoding["color"]["scale"]
    assert scale["scheme"] == "redblue" and scale["domainMid"] == 0 and scale["domain"][0] == -scale["domain"][1]
    assert [t["field"] for t in encoding["tooltip"]] == ["component", "layer", "share", "ablation_rank", "rank", "sources"]
    assert any("datum.key == selected" in f["filter"] for f in cells["transform"])
    outline = built["heads_shares"]["layer"][1]
    assert "datum.layer == head_layer && datum.head == head" in outline["transform"][-1]["filter"]
    lines = [layer for layer in built["heads_change"]["layer"] if layer["mark"]["type"] == "line"]
    assert lines[0]["encoding"]["color"]["scale"]["domain"] == ["change", "residual", "heads", "other parts"]
    bars = built["heads_sources"]["vconcat"][0]
    assert bars["transform"][2]["flatten"] == ["weights", "shares", "norms", "source"]  # every source of the one row shown


@pytest.mark.parametrize("suffix", [".png", ".svg", ".pdf", ".html"])
def test_plot_attribution_writes_the_panel(suffix, tmp_path, capsys):
    target = tmp_path / f"heads{suffix}"
    with pytest.raises(SystemExit) as exit_:
        main(["plot", SEED, "-m", "bundled", "--attribution", "--token", "8", "--layer", "2", "--head", "1", "-o", str(target)])
    err = capsys.readouterr().err
    assert exit_.value.code == 0 and err.endswith(f"wrote {target}\n"), err
    if suffix == ".png":
        assert target.read_bytes().startswith(PNG_MAGIC)
        return
    text = PdfReader(target).pages[0].extract_text() if suffix == ".pdf" else target.read_text()
    if suffix == ".html":
        assert "vegaEmbed" in text and "head_shares" in text and '"head_layer"' in text
    else:
        drawn = (
            "The cosine's change per layer", "Which parts moved its cosine", "What each source gave: head 2.1", "token 8 flies"
        )
        assert all(expected in text for expected in drawn), text


def test_plot_attribution_without_a_head_has_no_bars(tmp_path, capsys):
    target = tmp_path / "heads.svg"
    with pytest.raises(SystemExit) as exit_:
        main(["plot", SEED, "-m", "bundled", "--attribution", "-o", str(target)])
    assert exit_.value.code == 0, capsys.readouterr().err
    svg = target.read_text()
    assert "token 1 time" in svg and "Which parts moved its cosine" in svg and "What each source gave" not in svg


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--token", "zebra"], "no token matches 'zebra'"),
        (["--token", "8", "--layer", "7", "--head", "1"], "layer must be one of 1..6 (the blocks); got 7"),
        (["--token", "8", "--layer", "2", "--head", "12"], "head must be one of 0..11 (the model's heads); got 12"),
        (["--token", "8", "--layer", "2"], "give both (--layer L --head H) or neither"),
        (["--measure", "rank"], "--attribution draws its own figure"),
    ],
)
def test_plot_attribution_errors_are_one_line_and_exit_2(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["plot", SEED, "-m", "bundled", "--attribution", *args, "-o", str(tmp_path / "heads.png")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert exit_.value.code == 2 and "Traceback" not in err and len(errors) == 1 and message in errors[0], err
    assert err.splitlines()[-1] == errors[0] and not list(tmp_path.iterdir())


def test_a_head_without_attribution_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["plot", SEED, "--layer", "2", "--head", "1", "-o", str(tmp_path / "x.png")])
    assert exit_.value.code == 2 and "add --attribution" in capsys.readouterr().err
