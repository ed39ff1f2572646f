"""What a person reads: tokens shown in one convention (`␣flies`, `<0xE6>`) in tables, charts and messages while
JSON and CSV keep the exact strings, and tables that fill the terminal (100 columns in a pipe or a file)."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SEED, subprocess_env

from attention_encodings import analyze
from attention_encodings.display import byte_piece, shown
from attention_encodings.faces.cli import _plain, overview_tables, token_table

GOLDEN = Path(__file__).parent / "golden"
MIXED = "Fruit flies café 東京 🍌."
"""Accents, CJK and an emoji: byte-level BPE cuts the last two into pieces that are not whole characters."""


def test_shown_marks_spaces_and_escapes_what_does_not_print():
    assert [shown(t) for t in (" flies", "flies", "  ", "a ", "\n", "\x03", "", "é", "東")] == [
        "␣flies", "flies", "␣␣", "a␣", "\\n", "\\x03", "''", "é", "東",
    ]


def test_byte_pieces_are_written_as_their_bytes():
    assert byte_piece("ĠðŁ") == " <0xF0><0x9F>"  # GPT-2's alphabet: a space, then half an emoji
    assert byte_piece("äº") == "<0xE4><0xBA>"
    assert byte_piece("Ġflies") == " flies"
    assert byte_piece("<0xE4>") == "<0xE4>" and byte_piece("▁the") == "▁the"  # SentencePiece's own names


@pytest.fixture(scope="module")
def mixed(smollm2):
    return analyze(MIXED, model=smollm2)


def test_smollm2_tokens_read_as_they_are(mixed):
    """The golden tables: the overview's token column and the one-token table on SmolLM2."""
    tokens = [t.shown for t in mixed.tokens]
    assert tokens == [
        "Fruit", "␣flies", "␣café", "␣<0xE6>", "<0x9D>", "<0xB1>", "<0xE4><0xBA>", "<0xAC>", "␣<0xF0><0x9F>", "<0x8D>",
        "<0x8C>", ".",
    ]
    overview = _plain(overview_tables(mixed)[0])
    assert [line.split("│")[2].strip() for line in overview.splitlines()[4:16]] == tokens
    table = _plain(token_table(mixed.select(1)))
    assert table == (GOLDEN / "smollm2-token-table.txt").read_text(encoding="utf-8")
    assert "'" not in table and "Ġ" not in table


def test_json_and_csv_keep_the_exact_strings(mixed):
    data = json.loads(mixed.to_json())
    assert [t["text"] for t in data["tokens"]][:3] == ["Fruit", " flies", " café"]
    assert data["tokens"][8]["text"] == " <0xF0><0x9F>"  # a piece with no text of its own: its bytes
    assert data["neighbours"][0][1][0]["text"] == " flies"
    frame = mixed.to_frame()
    assert frame.token.iloc[1] == " flies"
    assert mixed.token_index("␣flies") == mixed.token_index(" flies") == 1


def test_charts_show_the_same_tokens(mixed):
    from attention_encodings.views.charts import chart_specs, token_params

    labels = token_params(mixed)[2].param.value
    assert labels[:3] == ["0 Fruit", "1 ␣flies", "2 ␣café"]
    _, data = chart_specs(mixed)
    assert [row["token"] for row in data["measures"][:3]] == ["Fruit", "␣flies", "␣café"]
    assert data["neighbours"][-1]["text"].startswith(("␣", "<0x")) or "'" not in data["neighbours"][-1]["text"]
    assert not any(re.search("[ĠĊ]", row["text"]) for row in data["neighbours"])


def _on_terminal(columns: int, *args: str) -> str:
    """The command's standard output as a terminal of `columns` columns shows it (escape codes removed)."""
    leader, follower = pty.openpty()
    import fcntl
    import struct
    import termios

    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = subprocess_env(COLUMNS=None, TERM="xterm-256color", NO_COLOR="1")
    done = subprocess.run(
        [sys.executable, "-m", "attention_encodings", *args], stdout=follower, stderr=subprocess.PIPE, env=env, timeout=600
    )
    os.close(follower)
    chunks = io.BytesIO()
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.write(chunk)
    os.close(leader)
    assert done.returncode == 0, done.stderr.decode()
    return re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", chunks.getvalue().decode()).replace("\r", "")


def test_the_token_table_fills_a_wide_terminal_and_100_columns_in_a_pipe(tmp_path):
    out = _on_terminal(220, "analyze", SEED, "--model", "bundled", "--token", "2")
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert max(len(line) for line in rows) > 100  # room for the five nearest items, uncut
    assert "flies 1.00  fly 0.70  flew 0.54" in out and "…" not in out
    piped = tmp_path / "table.txt"
    done = subprocess.run(
        [sys.executable, "-m", "attention_encodings", "analyze", SEED, "--model", "bundled", "--token", "2", "-o", str(piped)],
        capture_output=True, env=subprocess_env(COLUMNS="250"), timeout=600,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert {len(line) for line in piped.read_text().splitlines()[1:]} == {100}


def test_results_have_short_reprs_and_rich_notebook_displays(bundled, tmp_path):
    from IPython.core.interactiveshell import InteractiveShell

    from attention_encodings import analyze_corpus
    from attention_encodings.comparison import compare
    from attention_encodings.faces import notebook

    result = analyze(SEED, bundled, similarity=True)
    assert repr(result) == (
        "Analysis(model=all-MiniLM-L6-v2 (bundled), tap=resid_mid, reference=embedding, normalize=none, "
        "tokens=14 [[CLS] time flies like an arrow … +8], layers=0..6, "
        "measures=cosine, rank, overlap, vocab_mean, vocab_std, zscore, anisotropy)"
    )
    assert repr(result.rank) == "Trajectory(measure=rank, layers=0..6, tokens=14, dtype=int64)"
    assert repr(result.pair("flies", "flies")) == "Pair(tokens=2 flies, 8 flies, layers=0..6)"
    assert repr(result.similarity).startswith("Similarity(layers=0..6, rows=[[CLS] time")
    other = analyze(SEED, bundled, tap="resid_post")
    comparison = compare([result, other])
    assert repr(comparison) == "Comparison(runs=2 [resid_mid; resid_post], differs=tap, tokens=14 in run A)"
    run = analyze_corpus(["Time flies.", "Fruit flies like a banana."], tmp_path / "run", model=bundled)
    assert repr(run).startswith(f"CorpusAnalysis(path='{tmp_path / 'run'}', model=all-MiniLM-L6-v2 (bundled), tap=resid_mid")
    assert "texts=2, tokens=13, layers=0..6" in repr(run) and len(repr(run)) < 300
    shell = InteractiveShell.instance()
    try:
        assert notebook.register()
        shown_run, _ = shell.display_formatter.format(run)
        assert "<th>texts</th><td>2</td>" in shown_run["text/html"] and "report.html" in shown_run["text/html"]
        shown_comparison, _ = shell.display_formatter.format(comparison)
        assert "vegaEmbed" in shown_comparison["text/html"] and "resid_post" in shown_comparison["text/html"]
    finally:
        InteractiveShell.clear_instance()
