"""Corpus mode: batched results equal analyze() text by text, gold word classes, the summary, stats and anisotropy
against plain computations, bad records, refusing another run's folder, and resuming after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from attention_encodings import InputError, OptionError, analyze, analyze_corpus, load_model
from attention_encodings.corpus import sample_path
from attention_encodings.corpus.sources import Word, _split, read_source
from attention_encodings.corpus.words import CONTENT, FUNCTION, token_words
from attention_encodings.trace import encode, trace
from conftest import SEED, TINY_MAX_POSITIONS, subprocess_env
from plain import plain_bootstrap_difference

HANDMADE = """# sent_id = handmade-1
# text = They didn't go to the area.
1\tThey\tthey\tPRON\tPRP\t_\t4\tnsubj\t_\t_
2-3\tdidn't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdid\tdo\tAUX\tVBD\t_\t4\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_
4\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\t_
5\tto\tto\tADP\tIN\t_\t7\tcase\t_\t_
6\tthe\tthe\tDET\tDT\t_\t7\tdet\t_\t_
7\tarea\tarea\tNOUN\tNN\t_\t4\tobl\t_\tSpaceAfter=No
7.1\tgone\tgo\tVERB\tVBN\t_\t_\t_\t4:conj\t_
8\t.\t.\tPUNCT\t.\t_\t4\tpunct\t_\t_

"""


def sample_blocks(count: int, longest: int = 14) -> str:
    """The first `count` sentences of the bundled sample with at most `longest` words, as CoNLL-U."""
    blocks = [b for b in sample_path().read_text(encoding="utf-8").split("\n\n") if b.strip()]
    short = [b for b in blocks if sum(1 for line in b.splitlines() if line[:1].isdigit() and "\t" in line) <= longest]
    return "\n\n".join(short[:count]) + "\n\n"


@pytest.fixture(scope="session")
def conllu_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("conllu") / "small.conllu"
    path.write_text(HANDMADE + sample_blocks(13), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def bundled_run(conllu_file, tmp_path_factory, bundled):
    """One corpus run on the bundled model, in several batches, with neighbours and attribution (ablation too)."""
    return analyze_corpus(
        conllu_file, tmp_path_factory.mktemp("run") / "out", bundled, top_k=20, neighbours=3, batch_tokens=64,
        attribution=True, ablation=True,
    )  # fmt: skip


def test_batched_rows_equal_analyze_text_by_text(bundled_run, bundled):
    tokens, texts = bundled_run.tokens(), bundled_run.texts()
    assert bundled_run.manifest["counts"]["shards"] >= 3
    assert not tokens.duplicated(["text_index", "layer", "token_index"]).any()
    for index, text in zip(texts.text_index, texts.text):
        alone = analyze(text, bundled, top_k=20, neighbours=3).to_frame()
        rows = tokens[tokens.text_index == index].reset_index(drop=True)
        assert rows.token_id.tolist() == alone.token_id.tolist() and rows.layer.tolist() == alone.layer.tolist()
        assert rows.token.tolist() == alone.token.tolist() and rows.special.tolist() == alone.special.tolist()
        assert np.allclose(rows.cosine.to_numpy(), alone.cosine.to_numpy(), atol=1e-4, rtol=0)
        assert rows["rank"].tolist() == alone["rank"].tolist()
        assert rows.overlap_next.astype("Int64").tolist() == alone.overlap_next.tolist()


def test_neighbours_dataset(bundled_run, bundled):
    near = bundled_run.neighbours()
    first = near[near.text_index == 0]
    alone = analyze(bundled_run.texts().text[0], bundled, top_k=20, neighbours=3).neighbours_frame()
    assert len(first) == len(alone) and first.neighbour_id.tolist() == alone.neighbour_id.tolist()
    assert first.neighbour_text.tolist() == alone.neighbour_text.tolist()


def test_heads_dataset_equals_attribution_text_by_text(bundled_run, bundled):
    """heads/ holds, per text, exactly what `analyze(..., attribution=True)` gives: the shares and ablation ranks
    of `Attribution.to_frame()`, and each head's attention entropy from its attention row."""
    heads, texts = bundled_run.heads(), bundled_run.texts()
    assert list(heads.columns) == ["text_index", "token_index", "layer", "component", "share", "attention_entropy", "ablation_rank"]
    assert not heads.duplicated(["text_index", "layer", "token_index", "component"]).any()
    for index, text in zip(texts.text_index, texts.text):
        found = analyze(text, bundled, top_k=20, neighbours=3, attribution=True).attribution
        alone = found.to_frame().sort_values(["layer", "token_index"], kind="stable").reset_index(drop=True)
        rows = heads[heads.text_index == index].reset_index(drop=True)
        assert rows.component.astype(str).tolist() == alone.component.tolist()
        assert rows.layer.tolist() == alone.layer.tolist() and rows.token_index.tolist() == alone.token_index.tolist()
        assert np.allclose(rows.share.to_numpy(), alone.share.to_numpy(), atol=1e-5, rtol=0)
        assert rows.ablation_rank.astype("Int64").tolist() == alone.ablation_rank.tolist()
        weights = found.attention.astype(np.float64)  # (N, H, T, S)
        plain = np.zeros(weights.shape[:3])
        for layer, head, token in np.ndindex(*plain.shape):
            row = weights[layer, head, token]
            plain[layer, head, token] = -sum(w * np.log2(w) for w in row if w > 0)
        is_head = rows.component.astype(str).str.startswith("head ")
        assert rows.attention_entropy[~is_head].isna().all()
        entropy = rows[is_head].sort_values(["layer", "component", "token_index"], key=_head_order, kind="stable")
        assert np.allclose(entropy.attention_entropy.to_numpy(), plain.reshape(-1), atol=1e-4, rtol=0)


def _head_order(column: pd.Series) -> pd.Series:
    """Heads by number (head 2 before head 10)."""
    return column.astype(str).str.removeprefix("head ").astype(int) if column.name == "component" else column


def test_gold_parts_of_speech_with_multiword_tokens_and_no_space(bundled_run):
    tokens = bundled_run.tokens()
    first = tokens[(tokens.text_index == 0) & (tokens.layer == 0)]
    assert bundled_run.texts().sent_id[0] == "handmade-1"
    pairs = list(
        zip(
            first.token,
            first.upos.astype(object).where(first.upos.notna(), None),
            first.word_index.astype(object).where(first.word_index.notna(), None),
        )
    )
    assert pairs == [
        ("[CLS]", None, None),
        ("they", "PRON", 0),
        ("didn", "AUX", 1),
        ("'", "PART", 2),
        ("t", "PART", 2),
        ("go", "VERB", 3),
        ("to", "ADP", 4),
        ("the", "DET", 5),
        ("area", "NOUN", 6),
        (".", "PUNCT", 7),
        ("[SEP]", None, None),
    ]
    assert bundled_run.manifest["word_classes"] == "gold UPOS (CoNLL-U)"


def test_token_words_uses_the_first_character_that_is_in_a_word():
    words = [Word(0, 4, "NOUN"), Word(5, 10, "VERB")]
    # a special token, a token with its leading space (GPT-2 style), a token inside a word, one over the gap
    owners = token_words("Time flies", [(0, 0), (4, 10), (1, 3), (3, 6)], words)
    assert owners.tolist() == [-1, 1, 0, 0]
    assert _split("didn't", (0, 6), [("did", "AUX"), ("n't", "PART")]) == [Word(0, 3, "AUX"), Word(3, 6, "PART")]
    assert _split("gonna", (0, 5), [("going", "VERB"), ("to", "PART")]) == [Word(0, 5, "VERB"), Word(5, 5, "PART")]


def test_summary_matches_pandas(bundled_run):
    tokens, summary = bundled_run.tokens(), bundled_run.summary()
    assert list(summary.columns) == [
        "group", "layer", "measure", "component", "n", "mean", "std", "q10", "q25", "median", "q75", "q90"
    ]  # fmt: skip
    words = tokens[~tokens.special]
    groups = {
        "all": words,
        "special": tokens[tokens.special],
        "NOUN": words[words.upos == "NOUN"],
        "function": words[words.upos.isin(FUNCTION)],
        "content": words[words.upos.isin(CONTENT)],
    }
    for group, rows in groups.items():
        for measure in ("cosine", "rank", "overlap_next"):
            for layer, part in rows.groupby("layer"):
                values = part[measure].dropna().astype(float)
                found = summary[(summary.group == group) & (summary.layer == layer) & (summary.measure == measure)]
                if values.empty:
                    assert found.empty
                    continue
                row = found.iloc[0]
                assert row.n == len(values)
                assert row["mean"] == pytest.approx(values.mean(), abs=1e-6)
                assert row["std"] == pytest.approx(values.std(ddof=0), abs=1e-6)
                for name, q in (("q10", 0.1), ("q25", 0.25), ("median", 0.5), ("q75", 0.75), ("q90", 0.9)):
                    assert row[name] == pytest.approx(values.quantile(q), abs=1e-6)
    order = summary.group.drop_duplicates().tolist()
    assert order[:3] == ["all", "function", "content"] and order[-1] == "special"
    assert summary.to_csv(index=False) == (bundled_run.path / "summary.csv").read_text()
    heads = bundled_run.heads().merge(tokens[tokens.layer == 0][["text_index", "token_index", "special", "upos"]])
    shares = summary[summary.measure == "share"]
    assert shares.component.drop_duplicates().tolist()[:3] == ["residual", "head 0", "head 1"]
    assert summary[summary.measure != "share"].component.isna().all()
    for group, rows in (("all", heads[~heads.special]), ("function", heads[~heads.special & heads.upos.isin(FUNCTION)])):
        for (layer, component), part in rows.groupby(["layer", rows.component.astype(str)]):
            row = shares[(shares.group == group) & (shares.layer == layer) & (shares.component == component)].iloc[0]
            values = part.share.astype(float)
            assert row.n == len(values) and row["mean"] == pytest.approx(values.mean(), abs=1e-7)
            assert row["median"] == pytest.approx(values.median(), abs=1e-7)
            assert row["q90"] == pytest.approx(values.quantile(0.9), abs=1e-7)


def test_separating_heads_bootstrap_over_texts(bundled_run):
    """heads.csv: each head's function − content difference and its interval, as a plain bootstrap computes them
    resample by resample from the same draws; both groups' n; heads by |difference| within each layer."""
    from attention_encodings.corpus.separation import RESAMPLES, SEED

    table = bundled_run.separating_heads()
    tokens = bundled_run.tokens()
    words = tokens[(tokens.layer == 0) & ~tokens.special & tokens.upos.isin([*FUNCTION, *CONTENT])]
    heads = bundled_run.heads().merge(words[["text_index", "token_index", "upos"]])
    assert len(table) == 6 * 12 and table.layer.tolist() == sorted(table.layer)
    assert table.function_n.unique().tolist() == [words.upos.isin(FUNCTION).sum()]
    assert table.content_n.unique().tolist() == [words.upos.isin(CONTENT).sum()]
    for layer, part in table.groupby("layer"):
        assert part.difference.abs().tolist() == sorted(part.difference.abs(), reverse=True)
    assert (table.low <= table.difference).all() and (table.difference <= table.high).all()
    for layer, head in ((2, 3), (5, 7)):
        rows = heads[(heads.layer == layer) & (heads.component.astype(str) == f"head {head}")]
        plain = plain_bootstrap_difference(
            list(zip(rows.text_index, (~rows.upos.isin(FUNCTION)).astype(int), rows.share.astype(float))), RESAMPLES, SEED
        )
        row = table[(table.layer == layer) & (table["head"] == head)].iloc[0]
        assert (row.difference, row.low, row.high) == pytest.approx(plain, abs=1e-9)


def test_the_bootstrap_draws_in_blocks_and_gives_no_interval_for_one_text(monkeypatch):
    """Resamples drawn in blocks (bounded memory) equal one whole draw; a single text gives the difference with an
    empty interval, never a point that looks certain."""
    from attention_encodings.corpus import separation

    rng = np.random.default_rng(1)
    counts = rng.integers(1, 9, size=(37, 2)).astype(float)
    sums = rng.normal(size=(37, 2, 3, 4)) * counts[:, :, None, None]
    whole = separation.bootstrap_difference(sums, counts)
    monkeypatch.setattr(separation, "DRAW_VALUES", 37 * 150)  # 14 blocks of 150 resamples (the last 50)
    blocked = separation.bootstrap_difference(sums, counts)
    assert all(np.array_equal(a, b) for a, b in zip(whole, blocked))
    difference, low, high = separation.bootstrap_difference(sums[:1], counts[:1])
    expected = sums[0, 0] / counts[0, 0] - sums[0, 1] / counts[0, 1]
    assert np.allclose(difference, expected) and np.isnan(low).all() and np.isnan(high).all()


@pytest.fixture(scope="module")
def plain_states(bundled_run, bundled):
    """Each measured text's tapped vectors (N+1, T, d) and special flags, traced one text at a time."""
    texts = bundled_run.texts()
    found = []
    for text in texts[texts.status == "ok"].text:
        encoding = encode(bundled, text)
        states = trace(bundled, encoding, taps=("resid_mid",)).states("resid_mid")
        special = np.isin(encoding.input_ids.numpy(), bundled.tokenizer.all_special_ids)
        found.append((states.numpy(), special))
    return found


def test_stats_match_a_plain_computation(bundled_run, bundled, plain_states):
    kept = np.concatenate([states[:, ~special] for states, special in plain_states], axis=1)
    stats = bundled_run.stats()
    assert stats.mean.shape == stats.std.shape == (bundled.num_layers + 1, kept.shape[2])
    assert stats.mean.dtype == torch.float32 and stats.count == kept.shape[1] and stats.tap == "resid_mid"
    assert np.allclose(stats.mean.numpy(), kept.astype(np.float64).mean(axis=1), atol=1e-4)
    assert np.allclose(stats.std.numpy(), kept.astype(np.float64).std(axis=1), atol=1e-4)


def test_anisotropy_is_the_mean_cosine_over_pairs_from_different_texts(bundled_run, plain_states):
    parts = plain_states
    vectors = np.concatenate([states[:, ~special] for states, special in parts], axis=1).astype(np.float64)
    owner = np.concatenate([np.full(int((~special).sum()), i) for i, (_, special) in enumerate(parts)])
    u = vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)
    summary = bundled_run.summary()
    found = summary[summary.measure == "anisotropy"].sort_values("layer")
    assert (found.group == "all").all() and found["q10"].isna().all()
    for layer in range(u.shape[0]):
        total, pairs = 0.0, 0
        for p in range(len(owner)):
            others = owner != owner[p]
            total += float((u[layer, others] @ u[layer, p]).sum())
            pairs += int(others.sum())
        row = found[found.layer == layer].iloc[0]
        assert row.n == pairs and row["mean"] == pytest.approx(total / pairs, abs=1e-6)


def test_stats_file_is_what_the_baselines_read(bundled_run, bundled):
    with np.load(bundled_run.path / "stats.npz") as data:
        assert set(data.files) == {"mean", "std", "count", "tap"} and str(data["tap"]) == "resid_mid"
    text = bundled_run.texts().text[0]
    normalized = analyze(text, bundled, normalize="standardize", stats=bundled_run.path / "stats.npz", top_k=20)
    assert normalized.to_dict()["stats"] == str(bundled_run.path / "stats.npz")
    with pytest.raises(InputError, match="were taken at tap resid_mid, not attn_ln"):
        analyze(text, bundled, tap="attn_ln", normalize="center", stats=bundled_run.path / "stats.npz")


@pytest.fixture(scope="session")
def tiny(tiny_roberta):
    return load_model(str(tiny_roberta))


def test_bad_records_are_listed_not_fatal(tmp_path, tiny):
    path = tmp_path / "texts.txt"
    long = " ".join([SEED] * 6)
    path.write_bytes(f"{SEED}\n\n   \n{long}\n".encode() + b"bad \xff byte\nFruit flies.\n")
    result = analyze_corpus(path, tmp_path / "out", tiny, top_k=5, attribution=True)
    texts = result.texts()
    assert texts.status.tolist() == ["ok", "skipped", "skipped", "skipped", "skipped", "ok"]
    assert texts.reason[1] == texts.reason[2] == "empty"
    assert f"accepts at most {TINY_MAX_POSITIONS - 2}" in texts.reason[3] and "--truncate" in texts.reason[3]
    assert texts.reason[4].startswith("not valid UTF-8 (byte 0xff")
    assert sorted(result.tokens().text_index.unique()) == [0, 5]
    assert sorted(result.heads().text_index.unique()) == [0, 5]
    cut = analyze_corpus(path, tmp_path / "cut", tiny, top_k=5, truncate=True).texts()
    assert cut.status[3] == "truncated" and cut.n_tokens[3] == TINY_MAX_POSITIONS - 2 and cut.reason[3].startswith("cut from")


def test_a_corpus_with_nothing_measurable_writes_its_folder_and_says_so(tmp_path, tiny):
    """Every record skipped: the folder, texts and report are still written; the report says why it has no chart."""
    path = tmp_path / "texts.txt"
    path.write_text(" ".join([SEED] * 6) + "\n\n")
    result = analyze_corpus(path, tmp_path / "out", tiny, top_k=5, attribution=True)
    assert result.texts().status.tolist() == ["skipped", "skipped"] and result.tokens().empty
    report = (result.path / "report.html").read_text()
    assert "No text was measured: every record was skipped" in report and "vegaEmbed" in report


def test_jsonl_and_parquet_records(tmp_path, tiny):
    lines = [json.dumps({"body": SEED}), "{not json", json.dumps({"other": 1}), json.dumps({"body": 7}), json.dumps([1])]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    texts = analyze_corpus(tmp_path / "a.jsonl", tmp_path / "j", tiny, top_k=5, text_field="body").texts()
    assert texts.status.tolist() == ["ok"] + ["skipped"] * 4
    assert texts.reason.tolist()[1:] == [
        "not valid JSON (Expecting property name enclosed in double quotes at column 2)",
        "no field 'body'",
        "field 'body' is int, not a string",
        "a JSON list, not an object",
    ]
    with pytest.raises(InputError, match="no record has the field 'text'"):
        analyze_corpus(tmp_path / "a.jsonl", tmp_path / "j2", tiny)
    pq.write_table(pa.table({"sentence": [SEED, None, "Time flies."], "n": [1, 2, 3]}), tmp_path / "b.parquet")
    texts = analyze_corpus(tmp_path / "b.parquet", tmp_path / "p", tiny, top_k=5, text_field="sentence", limit=2).texts()
    assert texts.status.tolist() == ["ok", "skipped"] and texts.reason[1] == "null"
    with pytest.raises(InputError, match=r"b.parquet has no column 'text' \(its columns: sentence, n\)"):
        analyze_corpus(tmp_path / "b.parquet", tmp_path / "p2", tiny)
    with pytest.raises(InputError, match="column 'n' holds int64, not text"):
        analyze_corpus(tmp_path / "b.parquet", tmp_path / "p3", tiny, text_field="n")


def test_python_iterables_and_plain_text_without_spacy(tmp_path, tiny, monkeypatch):
    from attention_encodings.corpus import words

    monkeypatch.setattr(words, "spacy_available", lambda: False)
    notes = []
    from attention_encodings.corpus import run_corpus
    from attention_encodings.settings import Settings

    result = run_corpus(
        Settings(top_k=5, neighbours=0), [SEED, "", 3, "Time flies."], tmp_path / "it", tiny, on_note=notes.append
    )
    assert result.texts().status.tolist() == ["ok", "skipped", "skipped", "ok"]
    assert result.texts().reason[2] == "not a string but int"
    assert set(result.summary().group) == {"all", "special"} and result.tokens().upos.isna().all()
    assert any("no parts of speech" in note for note in notes)
    assert "No parts of speech" in (result.path / "report.html").read_text()
    assert result.manifest["input"]["path"] == "<python iterable>"


def test_spacy_tags_plain_text(tmp_path, bundled):
    result = analyze_corpus([SEED, "The quick brown fox jumps over the lazy dog."], tmp_path / "tagged", bundled, top_k=5)
    tokens = result.tokens()
    first = tokens[(tokens.text_index == 0) & (tokens.layer == 0)]
    assert dict(zip(first.token, first.upos))["arrow"] == "NOUN" and dict(zip(first.token, first.upos))["an"] == "DET"
    assert result.manifest["word_classes"].startswith("spaCy")
    assert {"function", "content", "NOUN"} <= set(result.summary().group)


def test_another_runs_folder_is_refused(tmp_path, tiny):
    analyze_corpus([SEED], tmp_path / "out", tiny, top_k=5)
    with pytest.raises(InputError, match=r"holds a run with other settings \(top_k: 5 there, 6 here\); use --overwrite") as error:
        analyze_corpus([SEED], tmp_path / "out", tiny, top_k=6)
    assert "\n" not in str(error.value)
    with pytest.raises(InputError, match="input_sha256"):
        analyze_corpus(["Time flies."], tmp_path / "out", tiny, top_k=5)
    assert analyze_corpus([SEED], tmp_path / "out", tiny, top_k=6, overwrite=True).manifest["settings"]["top_k"] == 6
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not empty and holds no corpus run"):
        analyze_corpus([SEED], tmp_path / "mine", tiny, overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_malformed_conllu_names_the_line(tmp_path, tiny):
    bad = HANDMADE.replace("4\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\t_", "4\tgo\tgo\tVERB")
    (tmp_path / "bad.conllu").write_text(bad)
    with pytest.raises(InputError, match=r"bad.conllu, line 7: a word line needs 10 tab-separated columns, this one has 4"):
        analyze_corpus(tmp_path / "bad.conllu", tmp_path / "out", tiny)
    (tmp_path / "moved.conllu").write_text(HANDMADE.replace("# text = They didn't go", "# text = They did go"))
    with pytest.raises(InputError, match=r"moved.conllu, line 4: the form \"didn't\" is not next"):
        analyze_corpus(tmp_path / "moved.conllu", tmp_path / "out", tiny)
    assert not (tmp_path / "out").exists()


def test_sources_refuse_bad_options(tmp_path):
    with pytest.raises(OptionError, match="cannot tell the format"):
        read_source(tmp_path / "corpus.csv")
    with pytest.raises(OptionError, match="unknown format"):
        read_source("sample", format="xml")
    with pytest.raises(InputError, match="cannot read"):
        read_source(tmp_path / "missing.txt")
    sample = read_source("sample", limit=5)
    assert len(sample.records) == 5 and sample.gold and sample.records[0].sent_id.endswith("-0001")
    assert len(read_source("sample").records) == 2001


RESUME_TEXTS = [f"{SEED} {i}" if i % 3 else "Time is an illusion." for i in range(240)]


def test_a_killed_run_resumes_to_the_same_result(tmp_path, tiny_roberta):
    """SIGKILL a run once its first shards are on disk, rerun the same command, and compare with a run that
    was never interrupted."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(RESUME_TEXTS) + "\n")
    command = [
        sys.executable,
        "-m",
        "attention_encodings",
        "corpus",
        str(corpus),
        "--model",
        str(tiny_roberta),
        "--top-k",
        "5",
        "--batch-tokens",
        "40",
        "--threads",
        "1",
        "--attribution",
        "--quiet",
    ]
    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(
        [*command, "--out", str(interrupted)], env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while not list((interrupted / "shards").glob("*.npz")):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    manifest = json.loads((interrupted / "manifest.json").read_text())
    assert manifest["status"] == "running" and not (interrupted / "summary.csv").exists()
    for out in (interrupted, tmp_path / "whole"):
        done = subprocess.run([*command, "--out", str(out)], env=subprocess_env(), capture_output=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr.decode()
    from attention_encodings import CorpusAnalysis

    again, whole = CorpusAnalysis(interrupted), CorpusAnalysis(tmp_path / "whole")
    resumed, uninterrupted = again.manifest["sessions"], whole.manifest["sessions"]
    assert len(resumed) == 1 and 0 < resumed[0]["batches"] < uninterrupted[0]["batches"]  # the killed session left none
    pd.testing.assert_frame_equal(again.tokens(), whole.tokens())
    assert not again.tokens().duplicated(["text_index", "layer", "token_index"]).any()
    pd.testing.assert_frame_equal(again.heads(), whole.heads())
    assert not again.heads().duplicated(["text_index", "layer", "token_index", "component"]).any()
    pd.testing.assert_frame_equal(again.summary(), whole.summary())
    pd.testing.assert_frame_equal(again.separating_heads(), whole.separating_heads())
    pd.testing.assert_frame_equal(again.texts(), whole.texts())
    assert torch.equal(again.stats().mean, whole.stats().mean) and torch.equal(again.stats().std, whole.stats().std)
    for dataset in ("tokens", "heads"):
        assert sorted(p.name for p in (interrupted / dataset).iterdir()) == sorted(
            p.name for p in (tmp_path / "whole" / dataset).iterdir()
        )
