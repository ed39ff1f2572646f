"""Shared fixtures: tiny random-weight models of every supported family, the real offline models, and a hermetic
environment.

The environment is set before anything imports huggingface_hub: a fresh, empty HF_HOME and HF_HUB_OFFLINE=1, so no
test touches the network or a developer's own cache; and a fresh cache folder of this tool's own, so SmolLM2 is
dequantised once per test session (and never into the developer's ~/.cache).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="attention-encodings-hf-home-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["ATTENTION_ENCODINGS_CACHE"] = tempfile.mkdtemp(prefix="attention-encodings-cache-")
for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_ENDPOINT"):
    os.environ.pop(variable, None)

import pytest  # noqa: E402
import torch  # noqa: E402
from tokenizers import ByteLevelBPETokenizer  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForMaskedLM,
    BertModel,
    CamembertConfig,
    CamembertModel,
    DistilBertConfig,
    DistilBertModel,
    ElectraConfig,
    ElectraModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaModel,
    RobertaTokenizerFast,
    XLMRobertaConfig,
    XLMRobertaModel,
)

SEED = "Time flies like an arrow. Fruit flies like a banana."
CORPUS = [
    SEED,
    "Time is an illusion. Lunchtime doubly so.",
    "The quick brown fox jumps over the lazy dog.",
    "Café naïve résumé — 東京 и 🙂 emoji.",
]
TINY_MAX_POSITIONS = 40
"""Tiny models accept few tokens, so the too-long case is cheap to test."""

_SIZES = {"num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 64, "initializer_range": 0.3}


def _config(family: str, vocab_size: int):
    positions = {"max_position_embeddings": TINY_MAX_POSITIONS, "pad_token_id": 1}
    if family in ("roberta", "roberta-mlm"):
        config = RobertaConfig(vocab_size=vocab_size, hidden_size=32, type_vocab_size=1, **_SIZES, **positions)
        return (RobertaForMaskedLM if family == "roberta-mlm" else RobertaModel), config
    if family == "xlm-roberta":
        return XLMRobertaModel, XLMRobertaConfig(vocab_size=vocab_size, hidden_size=32, type_vocab_size=1, **_SIZES, **positions)
    if family == "camembert":
        return CamembertModel, CamembertConfig(vocab_size=vocab_size, hidden_size=32, type_vocab_size=1, **_SIZES, **positions)
    if family in ("bert", "bert-mlm"):
        config = BertConfig(vocab_size=vocab_size, hidden_size=32, type_vocab_size=2, **_SIZES, **positions)
        return (BertForMaskedLM if family == "bert-mlm" else BertModel), config
    if family == "electra":
        config = ElectraConfig(vocab_size=vocab_size, embedding_size=16, hidden_size=32, type_vocab_size=2, **_SIZES, **positions)
        return ElectraModel, config
    if family == "distilbert":
        config = DistilBertConfig(
            vocab_size=vocab_size, dim=32, n_layers=3, n_heads=4, hidden_dim=64, initializer_range=0.3, **positions
        )
        return DistilBertModel, config
    if family == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size, n_embd=32, n_layer=3, n_head=4, n_inner=64, n_positions=TINY_MAX_POSITIONS,
            initializer_range=0.3, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        )
        return GPT2LMHeadModel, config
    if family == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, max_position_embeddings=TINY_MAX_POSITIONS, initializer_range=0.3,
            pad_token_id=1, bos_token_id=0, eos_token_id=2, tie_word_embeddings=False,
        )
        return LlamaForCausalLM, config
    raise ValueError(family)


ENCODERS = ("roberta", "bert", "xlm-roberta", "camembert", "distilbert", "electra")
MASKED_LMS = ("bert-mlm", "roberta-mlm")
"""Encoders built with their masked-LM heads (BertForMaskedLM, RobertaForMaskedLM)."""
DECODERS = ("gpt2", "llama")
"""Pre-norm decoders, built with their output heads (GPT2LMHeadModel, LlamaForCausalLM)."""
FAMILIES = ENCODERS + MASKED_LMS + DECODERS
HEADED = MASKED_LMS + DECODERS
"""The tiny models that carry an output head."""


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer trained on a few sentences, saved the way RoBERTa's is."""
    folder = tmp_path_factory.mktemp("tokenizer")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=500, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))
    RobertaTokenizerFast.from_pretrained(str(folder)).save_pretrained(str(folder))
    return folder


def build_tiny(folder: Path, family: str, tokenizer_dir: Path) -> Path:
    """Save a tiny random-weight model of `family`, with the test tokenizer, into `folder`."""
    tokenizer = RobertaTokenizerFast.from_pretrained(str(tokenizer_dir))
    model_class, config = _config(family, len(tokenizer))
    torch.manual_seed(0)
    model = model_class(config)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> dict[str, Path]:
    """One tiny model folder per supported family."""
    return {family: build_tiny(tmp_path_factory.mktemp(family), family, tokenizer_dir) for family in FAMILIES}


@pytest.fixture(scope="session")
def tiny_roberta(tiny_dirs: dict[str, Path]) -> Path:
    return tiny_dirs["roberta"]


@pytest.fixture(scope="session")
def bundled():
    """The bundled all-MiniLM-L6-v2, loaded once."""
    from attention_encodings import load_model

    return load_model("bundled")


@pytest.fixture(scope="session")
def smollm2_first_run() -> subprocess.CompletedProcess[bytes]:
    """The session's first use of `--model smollm2`, from the command line: it dequantises the GGUF into this
    session's fresh cache folder (about 25 s)."""
    return run_cli("analyze", "Fruit flies.", "-m", "smollm2", "-f", "json")


@pytest.fixture(scope="session")
def smollm2(smollm2_first_run):
    """The real offline decoder, SmolLM2-135M-Instruct, loaded once from the folder its first run cached."""
    from attention_encodings import load_model

    return load_model("smollm2")


def subprocess_env(**changes: str | None) -> dict[str, str]:
    """This session's hermetic environment, with `changes` applied (None removes a variable)."""
    env = dict(os.environ)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_cli(*args: str, stdin: bytes | None = None, **env: str | None) -> subprocess.CompletedProcess[bytes]:
    """Run the installed `attention-encodings` command in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "attention_encodings", *args],
        input=stdin,
        capture_output=True,
        env=subprocess_env(**env),
        timeout=600,
        check=False,
    )


def run_python(code: str, **env: str | None) -> subprocess.CompletedProcess[bytes]:
    """Run Python code in a fresh interpreter (fresh module state, fresh HF constants)."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, env=subprocess_env(**env), timeout=600, check=False
    )


@dataclass(frozen=True)
class LiveServer:
    """A real uvicorn server on a free loopback port, in a background thread."""

    url: str
    models: tuple[str, ...]
    stats: tuple[str, ...] = ()


@contextmanager
def live_server(models: list[str], stats: tuple[str, ...] = ()) -> Iterator[LiveServer]:
    """Serve `create_app(models, stats=stats)` on 127.0.0.1 until the block ends."""
    import uvicorn

    from attention_encodings.faces.server import create_app, listen

    sock = listen("127.0.0.1", 0)
    app = create_app(models, stats=stats)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.05)
    try:
        yield LiveServer(f"http://127.0.0.1:{sock.getsockname()[1]}", tuple(models), tuple(stats))
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


CHROMIUM = "/usr/bin/chromium"
"""Debian's chromium, driven by Playwright (which cannot download a browser here)."""
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium for one test module (the page's end-to-end tests, the corpus report)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def bundled_stats(bundled, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stats.npz of the bundled model at resid_mid, computed the plain way over the test corpus."""
    import numpy as np
    from plain import plain_stats

    mean, std, count = plain_stats(bundled, CORPUS, "resid_mid")
    path = tmp_path_factory.mktemp("stats") / "stats.npz"
    np.savez(path, mean=mean.astype(np.float32), std=std.astype(np.float32), count=np.array(count))
    return path


@pytest.fixture(scope="session")
def server(tiny_roberta: Path, smollm2, bundled_stats: Path) -> Iterator[LiveServer]:
    """One live server for the session, allowed the bundled model (its default), the tiny RoBERTa and SmolLM2,
    and statistics of the bundled model to normalise with."""
    with live_server(["bundled", str(tiny_roberta), "smollm2"], stats=(str(bundled_stats),)) as running:
        yield running
