"""Corpus mode's faces: the command line (errors, exit codes, stdin), the Ray engine against the local one, and the
report opening offline in real Chromium."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_corpus import HANDMADE

from attention_encodings import analyze_corpus, load_model
from attention_encodings.faces.cli import main
from conftest import CORPUS, SEED, run_cli, run_python

TEXTS = [*CORPUS[:3], "Fruit flies like a banana.", "Time is an illusion.", SEED + " Lunchtime doubly so."] * 4


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run the command line in this process: its exit status, stdout and stderr."""
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def test_corpus_command_runs_and_reports(capsys, tmp_path, tiny_roberta):
    text = "\n".join(TEXTS[:5]).encode()
    done = run_cli("corpus", "-", "--out", str(tmp_path / "out"), "--model", str(tiny_roberta), "--top-k", "5", stdin=text)
    err = done.stderr.decode()
    assert done.returncode == 0, err
    assert "model: " in err and err.count("\n") == 2 + ("note:" in err)
    assert f"wrote {tmp_path / 'out'}: 5 texts (5 ok, 0 truncated, 0 skipped)" in err and "report.html" in err
    assert pd.read_parquet(tmp_path / "out" / "tokens").text_index.nunique() == 5
    (tmp_path / "t.txt").write_bytes(text)
    quiet = cli(
        capsys,
        "corpus",
        str(tmp_path / "t.txt"),
        "--out",
        str(tmp_path / "q"),
        "--model",
        str(tiny_roberta),
        "--top-k",
        "5",
        "-q",
    )
    assert quiet == (0, "", "")


@pytest.mark.parametrize(
    ("arguments", "code", "message"),
    [
        (["--format", "xml"], 2, "error: unknown format 'xml'; choose one of: auto, text, jsonl, parquet, conllu"),
        (["--engine", "spark"], 2, "error: unknown engine 'spark'; choose one of: local, ray"),
        (["--batch-tokens", "0"], 2, "error: Invalid value for '--batch-tokens'"),
        (["--tap", "resid_pre"], 2, "error: unknown tap 'resid_pre'"),
        (["--ablation"], 2, "error: ablation ranks are part of the attribution; add --attribution"),
    ],
)
def test_corpus_command_usage_errors(capsys, tmp_path, tiny_roberta, arguments, code, message):
    status, out, err = cli(capsys, "corpus", "sample", "--out", str(tmp_path / "o"), "--model", str(tiny_roberta), *arguments)
    assert status == code and err.startswith(message) and err.count("\n") == 1 and out == ""


def test_corpus_command_input_errors(capsys, tmp_path, tiny_roberta):
    bad = tmp_path / "bad.conllu"
    bad.write_text(HANDMADE.replace("# text = They didn't go to the area.\n", ""))
    for source, message in (
        (str(bad), f"error: {bad}, line 1: the sentence has no '# text =' line"),
        (str(tmp_path / "none.txt"), f"error: cannot read {tmp_path / 'none.txt'}: No such file or directory"),
    ):
        status, _, err = cli(capsys, "corpus", source, "--out", str(tmp_path / "o"), "--model", str(tiny_roberta), "-q")
        assert (status, err) == (1, message + "\n")
    status, _, err = cli(capsys, "corpus", "sample", "--out", "/dev/null/x", "--model", str(tiny_roberta), "-q")
    assert (status, err) == (1, "error: cannot create /dev/null/x: Not a directory\n")
    assert not (tmp_path / "o").exists()
    (tmp_path / "t.txt").write_text(SEED + "\n")
    first = ("corpus", str(tmp_path / "t.txt"), "--out", str(tmp_path / "o"), "--model", str(tiny_roberta), "-q")
    assert cli(capsys, *first, "--top-k", "5")[0] == 0
    status, _, err = cli(capsys, *first, "--top-k", "6")
    assert (
        status == 1
        and err
        == f"error: {tmp_path / 'o'} holds a run with other settings (top_k: 5 there, 6 here); use --overwrite to replace it\n"
    )


def test_help_does_not_load_the_corpus_libraries():
    done = run_python(
        "import sys, attention_encodings, attention_encodings.faces.cli\n"
        "print(sorted(m for m in ('duckdb', 'ray', 'spacy') if m in sys.modules))"
    )
    assert done.stdout.decode().strip() == "[]", done.stderr.decode()


def test_ray_engine_equals_local(tmp_path, tiny_roberta):
    """The same batches on Ray Data's model actors (a local Ray started for the run) write the same numbers, up to
    float32 rounding: each actor runs one torch thread, the local engine one per core, and a sum split over two
    threads rounds differently."""
    options = {"top_k": 5, "neighbours": 2, "batch_tokens": 48, "attribution": True, "ablation": True}
    local = analyze_corpus(TEXTS, tmp_path / "local", str(tiny_roberta), **options)
    ray = analyze_corpus(TEXTS, tmp_path / "ray", str(tiny_roberta), engine="ray", **options)
    assert ray.manifest["run"]["engine"] == "ray" and ray.manifest["counts"]["shards"] > 2
    tokens, expected = ray.tokens(), local.tokens()
    pd.testing.assert_frame_equal(tokens.drop(columns="zscore"), expected.drop(columns="zscore"), check_exact=False, atol=1e-6)
    # the z-score divides a cosine's rounding by the vocabulary's spread (about 0.05 here): 20 times a cosine's
    assert np.allclose(tokens["zscore"], expected["zscore"], atol=2e-5, rtol=0)
    assert ray.tokens()["rank"].tolist() == local.tokens()["rank"].tolist()
    pd.testing.assert_frame_equal(ray.neighbours().drop(columns="cosine"), local.neighbours().drop(columns="cosine"))
    heads, expected = ray.heads(), local.heads()
    assert len(heads) > 0 and heads.ablation_rank.notna().any()
    pd.testing.assert_frame_equal(heads, expected, check_exact=False, atol=1e-6, rtol=0)
    summary, expected = ray.summary(), local.summary()
    z = expected["measure"] == "zscore"
    pd.testing.assert_frame_equal(summary[~z], expected[~z], check_exact=False, atol=1e-6, rtol=0)
    pd.testing.assert_frame_equal(summary[z], expected[z], check_exact=False, atol=2e-5, rtol=0)
    assert ray.stats().count == local.stats().count
    assert np.allclose(ray.stats().mean.numpy(), local.stats().mean.numpy(), atol=1e-6)
    assert np.allclose(ray.stats().std.numpy(), local.stats().std.numpy(), atol=1e-6)


def test_report_opens_offline_in_chromium(tmp_path, browser, bundled):
    conllu = tmp_path / "s.conllu"
    conllu.write_text(HANDMADE)
    result = analyze_corpus([SEED, *CORPUS[1:3]], tmp_path / "plain", bundled, top_k=10)
    gold = analyze_corpus(conllu, tmp_path / "gold", bundled, top_k=10)
    outside: list[str] = []
    errors: list[str] = []

    def only_local(route) -> None:
        if route.request.url.startswith(("file:", "data:", "blob:")):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    for run, charts in ((result, 8), (gold, 8)):  # cosine, rank, overlap and zscore: all tokens, and by class
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        context.route("**/*", only_local)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto((run.path / "report.html").as_uri())
        page.wait_for_function(f"document.querySelectorAll('figure svg').length == {charts}", timeout=60_000)
        assert "all-MiniLM-L6-v2 (bundled)" in page.inner_text("#model-line")
        facts = page.inner_text("#facts")
        assert "tokens/s" in facts and f"{run.manifest['counts']['tokens']:,}" in facts
        assert "Cosine to the original encoding" in page.inner_text("#broad_cosine")
        assert ("anisotropy" in page.inner_text("#broad_cosine")) == (run is result)  # one text has no cross-text pairs
        assert page.locator("#broad_rank svg path").count() > 3
        settings = page.inner_text("#settings")
        assert "False" not in settings and "True" not in settings and "long texts\tskipped" in settings, settings
        texts = "els => els.map(e => e.textContent)"
        overlap_ticks = page.locator("#broad_overlap_next .role-axis-label text").evaluate_all(texts)
        assert [t for t in overlap_ticks if "→" in t] == [f"{layer}→{layer + 1}" for layer in range(6)], overlap_ticks
        rank_ticks = page.locator("#broad_rank .role-axis-label text").evaluate_all(texts)
        assert "1,500" not in rank_ticks and "500" not in rank_ticks, rank_ticks
        swatches = page.locator("#broad_cosine .role-legend-symbol path")
        assert swatches.count() >= 2 and all(
            swatches.nth(i).evaluate("e => getComputedStyle(e).strokeOpacity || e.getAttribute('stroke-opacity')") in ("1", None)
            for i in range(swatches.count())
        )
        if run is gold:
            titled = " ".join(page.locator("#classes_cosine text").evaluate_all(texts))
            assert "NOUN (n = " in titled and ", few)" in titled, titled
            x_axes = page.locator("#classes_cosine .role-axis[aria-label^='X-axis']").count()
            assert x_axes == titled.count("(n = "), x_axes  # one per panel: none under an empty cell
        context.close()
        assert outside == [] and errors == []
    assert "NOUN" in (gold.path / "report.html").read_text() and "tap" in (gold.path / "report.html").read_text()


def test_sample_runs_on_the_bundled_model(tmp_path, bundled):
    result = analyze_corpus("sample", tmp_path / "sample", bundled, limit=3, top_k=10)
    summary = result.summary()
    assert result.manifest["input"]["records"] == 3 and {"all", "function", "content", "special", "NOUN"} <= set(summary.group)
    assert load_model("bundled") is bundled


def test_report_draws_the_heads_section_in_chromium(tmp_path, browser, bundled):
    """With attribution the report has its section: a layer × part heatmap per broad group, one cell per (layer,
    part), and the table of the heads that separate function words from content words, 3 per layer."""
    run = analyze_corpus("sample", tmp_path / "heads", bundled, limit=6, top_k=10, attribution=True)
    errors: list[str] = []
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto((run.path / "report.html").as_uri())
    page.wait_for_function("document.querySelectorAll('figure svg').length == 12", timeout=60_000)  # 8 + 4 heatmaps
    parts = run.heads().component.nunique()
    assert parts == 12 + 2  # residual, 12 heads, attn_bias at resid_mid
    for group in ("all", "function", "content", "special"):
        cells = page.locator(f"#heads_{group} svg g.mark-rect.role-mark path")
        assert cells.count() == 6 * parts, group
        assert f"{group} (n = " in page.inner_text(f"#heads_{group}")
    assert "head 11" in page.inner_text("#heads_function")
    rows = page.locator("#separating tr")
    assert rows.count() == 1 + 6 * 3
    table = run.separating_heads()
    first = table.iloc[0]
    assert rows.nth(1).inner_text().split("\t")[:3] == [str(int(first.layer)), str(int(first["head"])), f"{first.difference:+.4f}"]
    assert f"n = {int(first.function_n):,} tokens" in page.inner_text("#heads ~ p.explain >> nth=1")
    assert errors == []
    page.close()
    plain = analyze_corpus("sample", tmp_path / "plain", bundled, limit=2, top_k=10)
    assert 'id="heads"' not in (plain.path / "report.html").read_text() and not (plain.path / "heads.csv").exists()
