"""The benchmark suite: how fast an analysis runs, next to the floor no implementation can beat, in one run.

    python benchmarks/run.py                  # the full run on a roberta-base-shaped model and the bundled one
    python benchmarks/run.py --smoke          # tiny shapes, a few seconds: checks the script itself (CI runs this)
    python benchmarks/run.py --json out.json  # also write every figure as JSON
    python benchmarks/run.py --only corpus    # only case 7, corpus mode on the bundled model (its 7b too)
    python benchmarks/run.py --only corpus-attribution --corpus-sentences 30   # only 7b, corpus --attribution's cost
    python benchmarks/run.py --only head      # only case 8, the cost of the output-head lens
    python benchmarks/run.py --only baselines # only case 9, the cost of the vocabulary baselines
    python benchmarks/run.py --only soak      # only case 10, 16 clients for 60 s against the server (bundled model)
    python benchmarks/run.py --only attribution # only case 11, the cost of attribution (heads, MLP, residual)
    python benchmarks/run.py --only lens      # only case 12, the learned lens: fit-lens over the sample, analyze --lens

Nothing is downloaded. The roberta-base-shaped model has random weights, built from `RobertaConfig` (vocabulary
50,265, hidden 768, 12 layers); its byte-level BPE tokenizer is trained here, in about a second, on the words of
the bundled model's WordPiece vocabulary (as written, capitalised and upper-cased), which yields exactly 50,265
entries and tokenises the seed sentence into 14 tokens, as roberta-base does. The 512-token input is a long
text analysed with `truncate=True`. Timings are medians of several warm runs; every ratio comes from this one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import RobertaConfig, RobertaForMaskedLM, RobertaModel, RobertaTokenizerFast
from transformers.utils import logging as hf_logging

from attention_encodings import ModelLoadError, Settings, analyze, analyze_corpus, load_model
from attention_encodings.corpus.engine import plan
from attention_encodings.corpus.sources import read_source
from attention_encodings.analysis import analyze_with, reference_for
from attention_encodings.attribution import blocks_of, head_ablation_ranks
from attention_encodings.metrics import padded_rows, scan
from attention_encodings.models import LoadedModel, adapter_for, bundled_model_dir, resolve_device, set_threads
from attention_encodings.names import DEFAULT_BATCH_TOKENS
from attention_encodings.trace import encode, trace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from plain import plain_measures  # noqa: E402  (the test suite's loop-and-sort definition is the naive baseline)

SEED = "Time flies like an arrow. Fruit flies like a banana."
REFERENCES = ("word", "embedding")
WEB_CLIENTS = 8
SOAK_CLIENTS = 16
SOAK_SECONDS = 60.0
SOAK_TEXTS = 64
"""Distinct texts the soak cycles through: twice the server's result cache, so most answers are computed again."""
BUNDLED = "bundled"
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""HTTP to the local server only: any proxy settings are bypassed."""


@dataclass(frozen=True)
class Shape:
    """The size of one benchmark run: the random model's shape and the workloads."""

    name: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    long_tokens: int
    sentences: int
    naive_tokens: int
    repeats: int
    cold_runs: int
    web_requests: int
    bundled: bool
    corpus_sentences: int
    corpus_sizes: tuple[int, int]
    lens_texts: int | None
    """Sample sentences fit-lens reads in case 12 (None: the whole sample)."""


FULL = Shape("roberta-base-shaped", 50_265, 768, 12, 12, 3072, 512, 64, 4, 5, 3, 8, True, 400, (200, 2001), None)
SMOKE = Shape("smoke", 2_000, 32, 2, 2, 64, 40, 4, 2, 1, 1, 2, False, 12, (6, 12), 8)


@dataclass
class Figure:
    """One measured figure of the report."""

    case: str
    model: str
    value: float
    unit: str
    detail: str = ""


def training_words() -> list[str]:
    """Plain ASCII words from the bundled model's WordPiece vocabulary: a deterministic corpus on disk."""
    return [w for w in (bundled_model_dir() / "vocab.txt").read_text().split() if w.isascii() and w.isalpha()]


def build_tokenizer(folder: Path, vocab: int) -> RobertaTokenizerFast:
    """A RoBERTa-style byte-level BPE tokenizer with `vocab` entries, trained on `training_words()`."""
    words = training_words()
    lines = [" ".join(f(w) for w in words[i : i + 16]) for i in range(0, len(words), 16) for f in (str, str.capitalize, str.upper)]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        [SEED] * 50 + lines, vocab_size=vocab, min_frequency=1, special_tokens=SPECIAL_TOKENS, show_progress=False
    )
    bpe.save_model(str(folder))
    tokenizer = RobertaTokenizerFast.from_pretrained(str(folder))
    if len(tokenizer) != vocab:
        raise SystemExit(f"the benchmark tokenizer has {len(tokenizer)} entries, not {vocab}")
    return tokenizer


def random_model(shape: Shape, folder: Path, device: str, head: bool = False) -> LoadedModel:
    """A RoBERTa model of `shape` with random weights (seeded), and its tokenizer, ready to analyse; with `head`, a
    RobertaForMaskedLM (its MLM head tied to the word embeddings)."""
    tokenizer = build_tokenizer(folder, shape.vocab)
    config = RobertaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        intermediate_size=shape.intermediate,
        max_position_embeddings=shape.long_tokens + 2,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = (RobertaForMaskedLM if head else RobertaModel)(config).eval().to(resolve_device(device))
    label, reason = f"{shape.name} (random weights)", "built by the benchmark"
    return LoadedModel(shape.name, label, reason, str(folder), model, tokenizer, adapter_for(config))


def long_text(words: int) -> str:
    """Enough varied English-like text for any token budget: sentences of vocabulary words."""
    vocabulary = training_words()[2000:]
    picked = [vocabulary[(i * 7919) % len(vocabulary)] for i in range(words)]
    return " ".join(" ".join(picked[i : i + 12]).capitalize() + "." for i in range(0, words, 12))


def corpus(sentences: int) -> list[str]:
    """`sentences` short texts of 6 to 30 words, deterministic, for the throughput case."""
    vocabulary = training_words()[2000:]
    texts = []
    for i in range(sentences):
        length = 6 + (i * 5) % 25
        texts.append(" ".join(vocabulary[(i * 131 + j * 7919) % len(vocabulary)] for j in range(length)).capitalize() + ".")
    return texts


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock timings are honest on CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_together(runs: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median wall-clock seconds of each run over `repeats` rounds, after one warm-up round. The runs take
    turns within each round, so a change in the machine's load touches them all alike and ratios stay fair."""
    for run in runs.values():
        run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def floor(handle: LoadedModel, text: str) -> tuple[Callable[[], object], Callable[[], object], int]:
    """The two unavoidable steps on `text`, to be timed: the model's forward pass with `output_hidden_states=True`,
    and the float32 GEMM of every tapped vector (L·T × d) against the vocabulary matrix (d × V), in the fastest
    layout found for torch's BLAS: the vocabulary matrix transposed and contiguous, the result written into a
    buffer allocated once (paging in a fresh (L·T) × V result is not counted) whose rows are padded to a
    multiple of 64 floats (an odd row length makes MKL's GEMM about 30 % slower); and T."""
    encoding = encode(handle, text, truncate=True)
    types = None if encoding.token_type_ids is None else encoding.token_type_ids[None]
    inputs = handle.adapter.forward_inputs(encoding.input_ids[None], encoding.position_ids[None], types)

    def forward() -> object:
        with torch.inference_mode():
            return handle.model(**inputs, output_hidden_states=True)

    states = trace(handle, encoding).states("resid_mid").float()
    tapped = states.reshape(-1, states.shape[-1])
    vocabulary = handle.model.get_input_embeddings().weight.detach().float().T.contiguous()
    scores = padded_rows(tapped.shape[0], vocabulary.shape[1], tapped.device)
    return forward, partial(torch.mm, tapped, vocabulary, out=scores), len(encoding.input_ids)


def naive_seconds(handle: LoadedModel, text: str, reference: str, tokens: int) -> float:
    """Seconds per token of the plain loop (a full vocabulary argsort per token and layer), after a one-token
    warm-up, timed on the first `tokens` tokens of `text`: the loop's cost per token does not depend on T."""
    encoding = encode(handle, text, truncate=True)
    states = trace(handle, encoding).states("resid_mid")
    plain_measures(handle, encoding, states[:, :1], reference, 100, 15)
    start = time.perf_counter()
    plain_measures(handle, encoding, states[:, :tokens], reference, 100, 15)
    return (time.perf_counter() - start) / tokens


def corpus_texts(sentences: int, handle: LoadedModel) -> list[str]:
    """The first `sentences` texts of the bundled sample that fit the model (tiny models accept few tokens)."""
    texts = [r.text for r in read_source("sample").records if r.text]
    return [t for t in texts if len(handle.tokenizer(t)["input_ids"]) <= handle.max_tokens][:sentences]


def batched_floor(handle: LoadedModel, texts: list[str]) -> Callable[[], object]:
    """The floor of corpus mode, to be timed: for each batch corpus mode forms, one padded forward pass with
    `output_hidden_states=True`, and the GEMM of every tapped row (layers × the batch's real tokens) against the
    vocabulary, in `floor()`'s layout."""
    settings = Settings(model=handle.name, neighbours=0)
    source = read_source(texts)
    _, batches = plan(handle, settings, source, DEFAULT_BATCH_TOKENS)
    vocabulary = handle.model.get_input_embeddings().weight.detach().float().T.contiguous()
    rows_most = (handle.num_layers + 1) * max(b.tokens for b in batches)
    buffer = padded_rows(rows_most, vocabulary.shape[1], handle.device)
    """One score buffer for every batch, as the analysis reuses one (per-batch buffers would hold the whole corpus)."""
    work = []
    for batch in batches:
        encodings = [encode(handle, t) for t in batch.texts]
        tapped = trace(handle, encodings, taps=("resid_mid",)).packed("resid_mid").float()
        rows = tapped.reshape(-1, tapped.shape[-1])
        lengths = torch.tensor([len(e) for e in encodings])
        mask = (torch.arange(int(lengths.max()))[None] < lengths[:, None]).long().to(handle.device)
        pad = torch.nn.utils.rnn.pad_sequence
        ids = pad([e.input_ids for e in encodings], batch_first=True, padding_value=handle.model.config.pad_token_id or 0)
        positions = pad([e.position_ids for e in encodings], batch_first=True, padding_value=0)
        types = None if encodings[0].token_type_ids is None else pad([e.token_type_ids for e in encodings], batch_first=True)
        inputs = handle.adapter.forward_inputs(ids, positions, types, mask)
        work.append((inputs, rows, buffer[: rows.shape[0]]))

    def run() -> None:
        with torch.inference_mode():
            for inputs, rows, scores in work:
                handle.model(**inputs, output_hidden_states=True)
                torch.mm(rows, vocabulary, out=scores)

    return run


def corpus_case(handle: LoadedModel, shape: Shape, figures: list[Figure], device: str) -> None:
    """Case 7: `analyze_corpus` over real sample sentences against one `analyze()` per sentence and against the
    batched floor, timed in turns in the same rounds; then its peak RSS at two corpus sizes, each in a fresh process."""
    name = label(handle)
    texts = corpus_texts(shape.corpus_sentences, handle)
    tokens = sum(len(encode(handle, t)) for t in texts)
    with tempfile.TemporaryDirectory() as folder:
        runs = {"corpus": lambda: analyze_corpus(texts, Path(tempfile.mkdtemp(dir=folder)) / "out", handle, overwrite=True),
                "one by one": lambda: [analyze(t, handle, neighbours=0) for t in texts],
                "floor": batched_floor(handle, texts)}
        seconds = timed_together(runs, max(1, shape.repeats // 2), torch.device(device) if device != "auto" else handle.device)
    detail = f"{len(texts)} sample sentences, {tokens} tokens, embedding reference, top-100, no neighbours"
    figures.append(Figure("7. corpus mode: analyze_corpus", name, tokens / seconds["corpus"], "tokens/s", detail + ", whole call with its files"))
    figures.append(Figure("7. corpus mode: one analyze() per sentence", name, tokens / seconds["one by one"], "tokens/s", detail))
    figures.append(Figure("7. corpus mode: batched floor", name, tokens / seconds["floor"], "tokens/s", "padded forward + GEMM per batch"))
    figures.append(Figure("7. corpus mode: speed-up over one analyze() per sentence", name, seconds["one by one"] / seconds["corpus"], "×"))
    figures.append(Figure("7. corpus mode: corpus / batched floor", name, seconds["corpus"] / seconds["floor"], "×"))
    for size in shape.corpus_sizes:
        found = corpus_rss(shape, size, device)
        detail = f"{size} sample sentences, fresh process" + ("" if found["peak_reset"] else "; peak includes loading")
        figures.append(Figure(f"7. corpus mode: peak RSS above the loaded model, {size} sentences", name, (found["peak_kib"] - found["model_kib"]) / 2**20, "GiB", detail))


def corpus_attribution_case(handle: LoadedModel, sentences: int, figures: list[Figure], repeats: int, device: str) -> None:
    """Case 7b: the same `analyze_corpus` call without and with `attribution=True`, taking turns in the same rounds;
    then once with `ablation=True` too (about H times the scan's work, so not repeated)."""
    name = label(handle)
    texts = corpus_texts(sentences, handle)
    tokens = sum(len(encode(handle, t)) for t in texts)
    with tempfile.TemporaryDirectory() as folder:

        def run(**options: bool) -> Callable[[], object]:
            return lambda: analyze_corpus(texts, Path(tempfile.mkdtemp(dir=folder)) / "out", handle, **options)

        seconds = timed_together(
            {"plain": run(), "attribution": run(attribution=True)}, max(1, repeats), torch.device(device) if device != "auto" else handle.device
        )
        start = time.perf_counter()
        run(attribution=True, ablation=True)()
        seconds["ablation"] = time.perf_counter() - start
    detail = f"{len(texts)} sample sentences, {tokens} tokens, resid_mid, embedding reference, whole call with its files"
    for run_name, said in (("plain", "without --attribution"), ("attribution", "--attribution"), ("ablation", "--attribution --ablation")):
        figures.append(Figure(f"7b. corpus mode, {said}", name, tokens / seconds[run_name], "tokens/s", detail))
    figures.append(Figure("7b. corpus mode: throughput with --attribution / without", name, seconds["plain"] / seconds["attribution"], "×"))
    figures.append(Figure("7b. corpus mode: throughput with --ablation / without", name, seconds["plain"] / seconds["ablation"], "×"))


def corpus_rss(shape: Shape, sentences: int, device: str) -> dict[str, int]:
    """Memory of one corpus run of `sentences` sample sentences, measured in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, __file__, "--corpus-rss", str(sentences), "--shape", shape.name, "--device", device],
        capture_output=True, text=True, timeout=3600, check=False,
    )
    if done.returncode:
        raise SystemExit(f"the corpus memory case failed: {done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def corpus_rss_child(shape: Shape, sentences: int, device: str) -> None:
    """Run one corpus in this fresh process and print its memory as JSON, as `rss_child` does."""
    with tempfile.TemporaryDirectory() as folder:
        handle = load_model(BUNDLED, device=device) if shape.bundled else random_model(shape, Path(folder), device)
        texts = corpus_texts(sentences, handle)
        model_rss = resident_kib("VmRSS")
        reset = reset_peak()
        analyze_corpus(texts, Path(folder) / "out", handle)
    print(json.dumps({"model_kib": model_rss, "peak_kib": resident_kib("VmHWM"), "peak_reset": reset}))


def rss_child(shape: Shape, case: str, device: str) -> None:
    """Run one case in this fresh process and print its memory as JSON: RSS with the model loaded, and the peak."""
    with tempfile.TemporaryDirectory() as folder:
        handle = load_model(BUNDLED, device=device) if shape.name == BUNDLED else random_model(shape, Path(folder), device)
    model_rss = resident_kib("VmRSS")
    reset = reset_peak()
    text = SEED if case == "seed" else long_text(shape.long_tokens)
    analyze(text, handle, truncate=True)
    print(json.dumps({"model_kib": model_rss, "peak_kib": resident_kib("VmHWM"), "peak_reset": reset}))


def resident_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS: now; VmHWM: the peak), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise SystemExit(f"no {field} in /proc/self/status")


def reset_peak() -> bool:
    """Reset this process's peak RSS (Linux: clear_refs 5), so the peak measured next is the case's own; where
    that is refused, the peak also covers loading the model, which overstates the case's memory."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss(shape: Shape, cases: tuple[str, ...], device: str) -> dict[str, dict[str, int]]:
    """Memory of each case, each measured in its own fresh interpreter; the interpreters run side by side."""
    children = {
        case: subprocess.Popen(
            [sys.executable, __file__, "--rss-child", case, "--shape", shape.name, "--device", device],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for case in cases
    }
    found = {}
    for case, child in children.items():
        out, error = child.communicate(timeout=900)
        if child.returncode:
            raise SystemExit(f"the memory case {case!r} failed: {error.strip()}")
        found[case] = json.loads(out.strip().splitlines()[-1])
    return found


MINIMAL_SCRIPT = """
import sys
import torch
from transformers import AutoModel, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
model = AutoModel.from_pretrained(sys.argv[1]).eval()
inputs = tokenizer(sys.argv[2], return_tensors="pt")
with torch.inference_mode():
    states = torch.stack(model(**inputs, output_hidden_states=True).hidden_states)[:, 0]
    scores = states.reshape(-1, states.shape[-1]) @ model.get_input_embeddings().weight.T
print(tuple(scores.shape))
"""
"""The least a cold analysis must do: import torch and transformers, load the model, one forward pass, one GEMM of
every layer's vectors against the vocabulary, and print."""


def cold_start(arguments: list[str], command: tuple[str, ...] = ("-m", "attention_encodings")) -> tuple[float, float]:
    """Seconds from launching a fresh interpreter (the CLI by default) to its first byte on stdout, and to its exit."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, *command, *arguments], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = process.stdout.read(1)
    first_s = time.perf_counter() - start
    _, error = process.communicate(timeout=900)
    if process.returncode or not first:
        raise SystemExit(f"{' '.join(command)} failed: {error.decode(errors='replace').strip()}")
    return first_s, time.perf_counter() - start


def web_latency(sources: list[tuple[str, str]], shape: Shape) -> list[Figure]:
    """Case 6: p50 and p95 latency of POST /api/analyze under WEB_CLIENTS concurrent clients, each model served by
    `attention-encodings serve` in its own process; skipped, saying so, where this tree has no web server."""
    case = f"6. web API latency, {WEB_CLIENTS} concurrent clients"
    try:
        import attention_encodings.faces.server  # noqa: F401
    except ImportError:
        print(f"{case}: server not available (attention_encodings.faces.server cannot be imported); skipped")
        return []
    figures = []
    for name, source in sources:
        with served(source) as (url, _):
            latencies, wall = load_test(url, shape.web_requests)
        percentiles = statistics.quantiles(latencies, n=20, method="inclusive")
        detail = f"{WEB_CLIENTS} clients × {shape.web_requests} requests, seed sentence + one distinct word each"
        figures.append(Figure(f"{case}: p50", name, statistics.median(latencies) * 1e3, "ms", detail))
        figures.append(Figure(f"{case}: p95", name, percentiles[18] * 1e3, "ms", detail))
        figures.append(Figure(f"{case}: throughput", name, len(latencies) / wall, "requests/s", detail))
    return figures


@contextmanager
def served(source: str) -> Iterator[tuple[str, int]]:
    """The web server for one model, started in a fresh process on a free loopback port; yields its URL and pid."""
    command = [sys.executable, "-m", "attention_encodings", "serve", "--models", source, "--host", "127.0.0.1", "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        found = next(filter(None, (re.search(r"serving (http://\S+/)", line) for line in process.stdout)), None)
        if found is None or not answers(found.group(1) + "api/models", within=120):
            process.kill()
            raise SystemExit(f"the web server did not start: {process.communicate()[1].strip()}")
        yield found.group(1), process.pid
    finally:
        process.terminate()
        process.communicate(timeout=60)


def answers(url: str, within: float) -> bool:
    """Whether a GET of `url` succeeds within `within` seconds (the server announces its port before it listens)."""
    deadline = time.perf_counter() + within
    while time.perf_counter() < deadline:
        try:
            with LOOPBACK.open(url, timeout=10) as response:
                return response.status == 200
        except OSError:
            time.sleep(0.2)
    return False


def load_test(url: str, requests: int) -> tuple[list[float], float]:
    """Seconds of each request from WEB_CLIENTS threads sending `requests` analyses each, and the wall time. Every
    text is distinct, so the server's result cache never answers; loopback only, proxies bypassed."""
    words = training_words()[3000:]

    def post(text: str) -> float:
        body = json.dumps({"text": text}).encode()
        request = urllib.request.Request(url + "api/analyze", data=body, headers={"Content-Type": "application/json"})
        start = time.perf_counter()
        with LOOPBACK.open(request, timeout=300) as response:
            response.read()
        return time.perf_counter() - start

    def client(index: int) -> list[float]:
        return [post(f"{SEED} {words[index * requests + i]}") for i in range(requests)]

    post(SEED)
    start = time.perf_counter()
    with ThreadPoolExecutor(WEB_CLIENTS) as pool:
        latencies = [seconds for each in pool.map(client, range(WEB_CLIENTS)) for seconds in each]
    return latencies, time.perf_counter() - start


@dataclass
class Soak:
    """What a soak saw: each request's seconds, status counts, answers that differ from the serial ones."""

    latencies: list[float]
    statuses: dict[int, int]
    wrong: int
    seconds: float

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)


def soak_texts(count: int) -> list[str]:
    """`count` distinct texts: the seed sentence with one more word each."""
    words = training_words()[5000:]
    return [f"{SEED} {words[i]}" for i in range(count)]


def soak(url: str, seconds: float, clients: int, texts: list[str]) -> Soak:
    """`clients` threads POST /api/analyze for `seconds`, each cycling through `texts` from its own offset; every
    answer is checked against the serial answer for its text, taken first, one request at a time."""

    def post(text: str) -> tuple[int, bytes, float]:
        body = json.dumps({"text": text}).encode()
        request = urllib.request.Request(url + "api/analyze", data=body, headers={"Content-Type": "application/json"})
        start = time.perf_counter()
        try:
            with LOOPBACK.open(request, timeout=120) as response:
                status, data = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, data = error.code, error.read()
        return status, data, time.perf_counter() - start

    expected = {text: json.loads(post(text)[1]) for text in texts}
    deadline = time.perf_counter() + seconds

    def client(index: int) -> tuple[list[float], list[int], int]:
        latencies, statuses, wrong, turn = [], [], 0, index
        while time.perf_counter() < deadline:
            text = texts[turn % len(texts)]
            status, data, took = post(text)
            latencies.append(took)
            statuses.append(status)
            wrong += status != 200 or json.loads(data) != expected[text]
            turn += 1
        return latencies, statuses, wrong

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client, range(clients)))
    elapsed = time.perf_counter() - start
    statuses: dict[int, int] = {}
    for _, each, _ in results:
        for status in each:
            statuses[status] = statuses.get(status, 0) + 1
    return Soak([t for each, _, _ in results for t in each], statuses, sum(w for _, _, w in results), elapsed)


def process_rss_kib(pid: int) -> int:
    """The resident set of process `pid`, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def soak_case(shape: Shape, figures: list[Figure]) -> None:
    """Case 10: SOAK_CLIENTS clients for SOAK_SECONDS against `serve --models bundled` in its own process: every
    answer equal to the serial one, no 5xx, and the server's RSS after the soak within 10 % of that after a
    warm-up (the serial pass over every text, then a fifth of the soak with every client), sampled as it goes."""
    case = f"10. web soak, {SOAK_CLIENTS} clients"
    seconds = 3.0 if shape is SMOKE else SOAK_SECONDS
    texts = soak_texts(8 if shape is SMOKE else SOAK_TEXTS)
    with served(BUNDLED) as (url, pid):
        soak(url, seconds / 5, SOAK_CLIENTS, texts)
        warm = process_rss_kib(pid)
        samples: list[int] = []
        done = threading.Event()

        def sample() -> None:
            while not done.wait(seconds / 6):
                samples.append(process_rss_kib(pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        result = soak(url, seconds, SOAK_CLIENTS, texts)
        done.set()
        sampler.join()
        after = process_rss_kib(pid)
    percentiles = statistics.quantiles(result.latencies, n=20, method="inclusive")
    detail = f"{seconds:.0f} s, {len(texts)} texts, {len(result.latencies)} requests, statuses {result.statuses}"
    figures.append(Figure(f"{case}: throughput", "all-MiniLM-L6-v2", len(result.latencies) / result.seconds, "requests/s", detail))
    figures.append(Figure(f"{case}: p50", "all-MiniLM-L6-v2", statistics.median(result.latencies) * 1e3, "ms", detail))
    figures.append(Figure(f"{case}: p95", "all-MiniLM-L6-v2", percentiles[18] * 1e3, "ms", detail))
    figures.append(Figure(f"{case}: wrong answers", "all-MiniLM-L6-v2", result.wrong, "requests", "differ from the serial answer"))
    figures.append(Figure(f"{case}: 5xx", "all-MiniLM-L6-v2", result.server_errors, "responses", ""))
    figures.append(Figure(f"{case}: RSS after warm-up", "all-MiniLM-L6-v2", warm / 1024, "MiB", "the server process"))
    during = ", ".join(f"{kib / 1024:,.0f}" for kib in samples)
    growth = f"{100 * (after / warm - 1):+.1f} %; during the soak: {during} MiB"
    figures.append(Figure(f"{case}: RSS after the soak", "all-MiniLM-L6-v2", after / 1024, "MiB", growth))


def machine() -> dict[str, str]:
    """The machine the figures were measured on."""
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
        platform.processor(),
    )
    memory_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    return {
        "cpu": model,
        "cpus": str(len(os.sched_getaffinity(0))),
        "memory": f"{memory_kib / 2**20:.1f} GiB",
        "torch": torch.__version__,
        "torch_threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
    }


def label(handle: LoadedModel) -> str:
    """A short name for the report."""
    return handle.label.replace(" (random weights)", "").replace(" (bundled)", "")


def measure_model(handle: LoadedModel, shape: Shape, figures: list[Figure], naive: bool) -> None:
    """Cases 1 to 3 on one model, with the floor and the naive loop at the long input."""
    name, repeats, device = label(handle), shape.repeats, handle.device
    seed_forward, seed_gemm, seed_tokens = floor(handle, SEED)
    runs = {"forward": seed_forward, "gemm": seed_gemm}
    runs.update({r: partial(analyze, SEED, handle, reference=r) for r in REFERENCES})
    seed = timed_together(runs, repeats, device)
    seed_floor = seed["forward"] + seed["gemm"]
    figures.append(Figure(f"floor: total, {seed_tokens} tokens", name, seed_floor * 1e3, "ms", "forward pass + GEMM"))
    for reference in REFERENCES:
        case = f"1. seed sentence ({seed_tokens} tokens), {reference}"
        figures.append(Figure(case, name, seed[reference] * 1e3, "ms"))
        figures.append(Figure(f"{case}: analysis / floor", name, seed[reference] / seed_floor, "×"))
    text = long_text(shape.long_tokens)
    forward, gemm, tokens = floor(handle, text)
    runs = {"forward": forward, "gemm": gemm}
    runs.update({r: partial(analyze, text, handle, reference=r, truncate=True) for r in REFERENCES})
    seconds = timed_together(runs, repeats, device)
    floor_s = seconds["forward"] + seconds["gemm"]
    figures.append(Figure(f"floor: forward pass, {tokens} tokens", name, seconds["forward"] * 1e3, "ms", "output_hidden_states=True"))
    width = handle.model.config.hidden_size
    gemm_detail = f"({handle.num_layers + 1}·{tokens})×{width} by {width}×{handle.vocab_size}"
    figures.append(Figure(f"floor: GEMM, {tokens} tokens", name, seconds["gemm"] * 1e3, "ms", gemm_detail))
    figures.append(Figure(f"floor: total, {tokens} tokens", name, floor_s * 1e3, "ms"))
    for reference in REFERENCES:
        whole = seconds[reference]
        figures.append(Figure(f"2. long input ({tokens} tokens), {reference}", name, whole * 1e3, "ms"))
        figures.append(Figure(f"2. long input ({tokens} tokens), {reference}: analysis / floor", name, whole / floor_s, "×"))
        if naive:
            per_token = naive_seconds(handle, text, reference, shape.naive_tokens)
            naive_s = seconds["forward"] + per_token * tokens
            detail = f"forward + {per_token * 1e3:.0f} ms/token × {tokens}, timed on {shape.naive_tokens} tokens"
            figures.append(Figure(f"naive loop ({tokens} tokens), {reference}", name, naive_s * 1e3, "ms", detail))
            figures.append(Figure(f"2. long input ({tokens} tokens), {reference}: speed-up over naive", name, naive_s / whole, "×"))
    texts = corpus(shape.sentences)
    total = sum(len(encode(handle, t, truncate=True).input_ids) for t in texts)
    batch = timed_together({"batch": lambda: [analyze(t, handle, truncate=True) for t in texts]}, max(1, repeats // 2), device)
    detail = f"{len(texts)} sentences, {total} tokens, embedding reference, one analyze() per sentence"
    figures.append(Figure("3. throughput", name, total / batch["batch"], "tokens/s", detail))


def baselines_cost(handle: LoadedModel, shape: Shape, figures: list[Figure]) -> None:
    """Case 9: what the vocabulary baselines add (vocab_mean and vocab_std, from which zscore follows): the
    measures' scan of every tapped vector against the vocabulary with the row means and spreads (`spread=True`,
    as analyses run it) against the same scan without them, at the seed sentence and the long input, in
    interleaved rounds."""
    for name, text in (("seed sentence", SEED), ("long input", long_text(shape.long_tokens))):
        encoding = encode(handle, text, truncate=True)
        states = trace(handle, encoding, taps=("resid_mid",)).states("resid_mid")
        offsets = handle.adapter.slot_offsets(handle.model, encoding.position_ids, encoding.token_type_ids)
        lens = reference_for(handle, "embedding")
        targets = encoding.input_ids
        runs = {flag: partial(scan, states, targets, offsets, lens, keep=100, spread=flag == "with") for flag in ("with", "without")}
        seconds = timed_together(runs, shape.repeats, handle.device)
        case = f"9. baselines, {name} ({len(encoding)} tokens)"
        figures.append(Figure(f"{case}: scan without the vocabulary mean and std", label(handle), seconds["without"] * 1e3, "ms"))
        added = seconds["with"] - seconds["without"]
        detail = "a row sum and a row norm over each block of scores"
        figures.append(Figure(f"{case}: the baselines add", label(handle), added * 1e3, "ms", detail))
        figures.append(Figure(f"{case}: with / without", label(handle), seconds["with"] / seconds["without"], "×"))


def head_lens_cost(shape: Shape, figures: list[Figure], device: str) -> None:
    """Case 8: what the output-head lens adds (head_rank, and the head's predictions with their probabilities):
    warm `analyze()` on a model with its head against the same weights without it, on a roberta-base-shaped
    RobertaForMaskedLM at the seed sentence and the long input, and on SmolLM2 (30 layers, vocabulary 49,152)
    at the seed sentence where it is installed."""
    with tempfile.TemporaryDirectory() as folder:
        masked = random_model(shape, Path(folder), device, head=True)
    cases = [(masked, "seed sentence", SEED), (masked, "long input", long_text(shape.long_tokens))]
    if shape.bundled:
        try:
            decoder = load_model("smollm2", device=device)
            cases.append((decoder, "seed sentence", SEED))
        except ModelLoadError as error:
            print(f"8. head lens on SmolLM2: skipped ({error})")
    for handle, name, text in cases:
        headless = replace(handle, model=handle.model.base_model, texts={})
        runs = {"head": partial(analyze, text, handle, truncate=True), "none": partial(analyze, text, headless, truncate=True)}
        seconds = timed_together(runs, shape.repeats, handle.device)
        tokens = len(encode(handle, text, truncate=True).input_ids)
        model, case = label(handle).split(",")[0], f"8. head lens, {name} ({tokens} tokens)"
        figures.append(Figure(f"{case}: analysis without the head", model, seconds["none"] * 1e3, "ms"))
        figures.append(Figure(f"{case}: analysis with the head", model, seconds["head"] * 1e3, "ms"))
        added = seconds["head"] - seconds["none"]
        detail = "a second scan: the head on every tapped vector, top-n, rank, logsumexp"
        figures.append(Figure(f"{case}: the head lens adds", model, added * 1e3, "ms", detail))
        figures.append(Figure(f"{case}: with / without", model, seconds["head"] / seconds["none"], "×"))


def attribution_cost(models: list[LoadedModel], figures: list[Figure], repeats: int) -> None:
    """Case 10: what attribution adds at the seed sentence, in interleaved rounds: the analysis without it (the
    off path registers no hook and switches nothing), with it, and the ablation ranks alone (every head removed
    for every token and layer, one scan); the parts, shares, attention and sources are `with` − `ablation`."""
    for handle in models:
        settings = Settings(model=handle.name)
        on = settings.replace(attribution=True)
        encoding = encode(handle, SEED)
        blocks = blocks_of(handle, trace(handle, encoding, heads=True))
        offsets = handle.adapter.slot_offsets(handle.model, encoding.position_ids, encoding.token_type_ids)
        rows = torch.arange(len(encoding), device=handle.device)
        space = reference_for(handle, settings.reference)
        runs = {
            "off": partial(analyze_with, settings, SEED, handle),
            "on": partial(analyze_with, on, SEED, handle),
            "ablation": partial(head_ablation_ranks, handle, blocks, settings.tap, rows, space, None, encoding.input_ids, offsets),
        }
        seconds = timed_together(runs, repeats, handle.device)
        model, case = label(handle).split(",")[0], f"11. attribution, seed sentence ({len(encoding)} tokens)"
        vectors = handle.num_layers * blocks.heads.shape[1] * len(encoding)
        figures.append(Figure(f"{case}: analysis, attribution off", model, seconds["off"] * 1e3, "ms"))
        figures.append(Figure(f"{case}: analysis, attribution on", model, seconds["on"] * 1e3, "ms"))
        figures.append(Figure(f"{case}: ablation ranks alone", model, seconds["ablation"], "s", f"{vectors:,} vectors, one scan"))
        parts = (seconds["on"] - seconds["ablation"]) / seconds["off"]
        detail = "(on − ablation) / off: trace with heads, parts, shares, attention, sources"
        figures.append(Figure(f"{case}: parts, shares and sources / plain analysis", model, parts, "×", detail))


LENS_FITS = (
    ("all-MiniLM-L6-v2", BUNDLED, ("--target", "embedding")),
    ("SmolLM2-135M-Instruct", "smollm2", ("--target", "final", "--tap", "resid_post")),
)
"""Case 12's fits: the bundled model's probe back to the input, SmolLM2's tuned lens proper."""


def fit_in_child(source: str, options: tuple[str, ...], out: Path, texts: int | None, device: str) -> tuple[float, int]:
    """`fit-lens sample` in a fresh interpreter: its wall-clock seconds and peak RSS in KiB (from wait4)."""
    limit = () if texts is None else ("--limit", str(texts))
    command = [sys.executable, "-m", "attention_encodings", "fit-lens", "sample", "--out", str(out), "-m", source,
               *options, *limit, "--device", device, "-q"]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    error = child.stderr.read() if child.stderr else ""
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"fit-lens on {source} failed: {error.strip()}")
    return seconds, usage.ru_maxrss


def lens_cost(shape: Shape, figures: list[Figure], device: str) -> None:
    """Case 12: the learned lens. fit-lens over the sample (or its first `shape.lens_texts` sentences) on the
    bundled model (`embedding`) and, where it is installed, SmolLM2 (`final` at resid_post), each in a fresh
    process (wall time, peak RSS); then, at the seed sentence, warm `analyze()` with the fitted lens against
    without it in interleaved rounds, and the CLI's `analyze --lens` against `analyze` from cold processes."""
    fits = LENS_FITS if shape.bundled else LENS_FITS[:1]
    texts = "whole sample" if shape.lens_texts is None else f"{shape.lens_texts} sentences"
    with tempfile.TemporaryDirectory() as folder:
        for name, source, options in fits:
            try:
                handle = load_model(source, device=device)
            except ModelLoadError as error:
                print(f"12. learned lens on {name}: skipped ({error})")
                continue
            out = Path(folder) / source
            seconds, peak = fit_in_child(source, options, out, shape.lens_texts, device)
            case = f"12. learned lens, {name}"
            figures.append(Figure(f"{case}: fit-lens {options[1]}, {texts}", name, seconds, "s", "fresh process"))
            figures.append(Figure(f"{case}: fit-lens peak RSS", name, peak / 2**20, "GiB", "fresh process"))
            tap = options[3] if len(options) > 2 else Settings().tap
            plain = Settings(model=source, tap=tap)
            runs = {"plain": partial(analyze_with, plain, SEED, handle), "lens": partial(analyze_with, plain.replace(lens=str(out)), SEED, handle)}
            warm = timed_together(runs, shape.repeats, handle.device)
            figures.append(Figure(f"{case}: analyze(), seed sentence, without the lens", name, warm["plain"] * 1e3, "ms"))
            figures.append(Figure(f"{case}: analyze(), seed sentence, with the lens", name, warm["lens"] * 1e3, "ms"))
            figures.append(Figure(f"{case}: analyze() with / without the lens", name, warm["lens"] / warm["plain"], "×", "warm, one process"))
            cold: dict[str, list[float]] = {"plain": [], "lens": []}
            command = ["analyze", SEED, "--model", source, "--tap", tap, "--format", "json", "--device", device]
            for _ in range(shape.cold_runs):
                cold["plain"].append(cold_start(command)[1])
                cold["lens"].append(cold_start([*command, "--lens", str(out)])[1])
            ratio = statistics.median(cold["lens"]) / statistics.median(cold["plain"])
            detail = f"median of {shape.cold_runs} fresh processes, alternating, launch to exit"
            figures.append(Figure(f"{case}: CLI analyze --lens / analyze", name, ratio, "×", detail))


def cli_cold_starts(sources: list[tuple[str, str]], shape: Shape, figures: list[Figure], device: str) -> None:
    """Case 4: the CLI from a fresh interpreter to its first output, on the seed sentence (`--format json`), side by
    side with the minimal script (alternating runs, so both see the same machine); and `--help`."""
    detail = f"median of {shape.cold_runs} fresh processes, alternating"
    for name, source in sources:
        folder = str(bundled_model_dir()) if source == BUNDLED else source
        ours, least = [], []
        for _ in range(shape.cold_runs):
            ours.append(cold_start(["analyze", SEED, "--model", source, "--format", "json", "--device", device])[0])
            least.append(cold_start([folder, SEED], command=("-c", MINIMAL_SCRIPT))[0])
        first, floor = statistics.median(ours), statistics.median(least)
        figures.append(Figure("4. CLI cold start to first output", name, first * 1e3, "ms", f"{detail}, seed sentence, --format json"))
        figures.append(Figure("4. minimal script cold start", name, floor * 1e3, "ms", f"{detail}: imports, load, forward, GEMM"))
        figures.append(Figure("4. cold analyze / minimal script", name, first / floor, "×", detail))
    helps = [cold_start(["--help"])[1] for _ in range(shape.cold_runs)]
    figures.append(Figure("4. --help, launch to exit", "-", statistics.median(helps) * 1e3, "ms", detail))


def memory(shape: Shape, figures: list[Figure], device: str) -> None:
    """Case 5: peak RSS of cases 1 and 2, each in a fresh process, and how far it rises above the loaded model."""
    shapes = [shape] + ([replace(shape, name=BUNDLED)] if shape.bundled else [])
    for each in shapes:
        for case, found in peak_rss(each, ("seed", "long"), device).items():
            name = "all-MiniLM-L6-v2" if each.name == BUNDLED else each.name
            peak, above = found["peak_kib"] / 2**20, (found["peak_kib"] - found["model_kib"]) / 2**20
            detail = "embedding reference, fresh process" + ("" if found["peak_reset"] else "; peak includes loading")
            figures.append(Figure(f"5. peak RSS, {case} case", name, peak, "GiB", detail))
            figures.append(Figure(f"5. peak RSS above the loaded model, {case} case", name, above, "GiB", "reference space included"))


def targets(figures: list[Figure], shape: Shape) -> list[tuple[str, float, str, bool]]:
    """The issue's targets at the long input on the random model: (what, measured, goal, met)."""
    found = {(f.case, f.model): f.value for f in figures}
    tokens = shape.long_tokens
    checks = []
    for reference, limit in (("word", 1.2), ("embedding", 1.5)):
        ratio = found.get((f"2. long input ({tokens} tokens), {reference}: analysis / floor", shape.name))
        if ratio is not None:
            checks.append((f"analysis / floor, {reference}", ratio, f"≤ {limit}", ratio <= limit))
        speedup = found.get((f"2. long input ({tokens} tokens), {reference}: speed-up over naive", shape.name))
        if speedup is not None:
            checks.append((f"speed-up over the naive loop, {reference}", speedup, "≥ 10", speedup >= 10))
    for model, limit in ((shape.name, 3.0), ("all-MiniLM-L6-v2", 1.0)):
        tokens = next((f.case for f in figures if f.case.startswith("11. ") and f.model == model), None)
        if tokens is None:
            continue
        case = tokens.split(":")[0]
        seconds = found[(f"{case}: ablation ranks alone", model)]
        checks.append((f"ablation ranks of every head and token, {model}, s", seconds, f"≤ {limit}", seconds <= limit))
        if model == shape.name:
            ratio = found[(f"{case}: parts, shares and sources / plain analysis", model)]
            checks.append((f"attribution (without ablation) / plain analysis, {model}", ratio, "≤ 1.5", ratio <= 1.5))
    for name, _, _ in LENS_FITS:
        ratio = found.get((f"12. learned lens, {name}: CLI analyze --lens / analyze", name))
        if ratio is not None:
            checks.append((f"analyze --lens / analyze, {name}", ratio, "≤ 1.3", ratio <= 1.3))
    cold = found.get(("4. cold analyze / minimal script", "all-MiniLM-L6-v2"))
    if cold is not None:
        checks.append(("cold analyze / minimal script, bundled model", cold, "≤ 1.15", cold <= 1.15))
    helps = found.get(("4. --help, launch to exit", "-"))
    if helps is not None:
        checks.append(("--help, launch to exit, ms", helps, "≤ 1000", helps <= 1000))
    above = found.get(("5. peak RSS above the loaded model, long case", shape.name))
    if above is not None:
        checks.append(("peak RSS above the loaded model, GiB", above, "≤ 1", above <= 1))
    corpus = {f.case: f.value for f in figures if f.case.startswith("7. ")}
    if corpus:
        speedup = corpus["7. corpus mode: speed-up over one analyze() per sentence"]
        checks.append(("corpus mode over one analyze() per sentence", speedup, "≥ 2.5", speedup >= 2.5))
        ratio = corpus["7. corpus mode: corpus / batched floor"]
        checks.append(("corpus mode / batched floor (aim)", ratio, "≤ 1.3", ratio <= 1.3))
        small, large = (corpus[f"7. corpus mode: peak RSS above the loaded model, {n} sentences"] for n in shape.corpus_sizes)
        checks.append((f"corpus peak RSS, {shape.corpus_sizes[1]} / {shape.corpus_sizes[0]} sentences", large / small, "≤ 1.2 (flat)", large <= 1.2 * small))
    attributed = next((f.value for f in figures if f.case == "7b. corpus mode: throughput with --attribution / without"), None)
    if attributed is not None:
        checks.append(("corpus throughput with --attribution / without", attributed, "≥ 0.75", attributed >= 0.75))
    soaked = {f.case.split(": ", 1)[1]: f.value for f in figures if f.case.startswith("10. ")}
    if soaked:
        checks.append(("soak: answers unlike the serial ones", soaked["wrong answers"], "0", soaked["wrong answers"] == 0))
        checks.append(("soak: 5xx responses", soaked["5xx"], "0", soaked["5xx"] == 0))
        growth = soaked["RSS after the soak"] / soaked["RSS after warm-up"]
        checks.append(("soak: RSS after / after warm-up", growth, "≤ 1.10", growth <= 1.10))
    return checks


def report(figures: list[Figure], checks: list[tuple[str, float, str, bool]], info: dict[str, str]) -> str:
    """The figures and targets as Markdown tables."""
    lines = ["machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), "", "| case | model | value | unit | detail |", "|---|---|---:|---|---|"]
    lines += [f"| {f.case} | {f.model} | {f.value:,.2f} | {f.unit} | {f.detail} |" for f in figures]
    lines += ["", "| target | measured | goal | met |", "|---|---:|---|---|"]
    lines += [f"| {what} | {value:.2f} | {goal} | {'yes' if met else 'NO'} |" for what, value, goal, met in checks]
    return "\n".join(lines)


def main() -> None:
    """Parse the command line and run every case, or one memory case in a child process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, a few seconds: checks the script itself")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (as in the CLI)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: one per usable core, as the CLI)")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive loop")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here as JSON")
    parser.add_argument(
        "--only",
        choices=("corpus", "corpus-attribution", "head", "baselines", "soak", "attribution", "lens"),
        help="run only this case (corpus: 7 and 7b; corpus-attribution: 7b; head: 8; baselines: 9; soak: 10; attribution: 11; lens: 12)",
    )
    parser.add_argument("--corpus-sentences", type=int, default=None, help="sample sentences in case 7b (default: case 7's)")
    parser.add_argument("--rss-child", choices=("seed", "long"), help=argparse.SUPPRESS)
    parser.add_argument("--corpus-rss", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--shape", default=FULL.name, help=argparse.SUPPRESS)
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    set_threads(args.threads)
    shape = SMOKE if args.smoke else FULL
    if args.corpus_rss:
        corpus_rss_child(shape, args.corpus_rss, args.device)
        return
    if args.rss_child:
        chosen = {FULL.name: FULL, SMOKE.name: SMOKE, BUNDLED: replace(FULL, name=BUNDLED)}[args.shape]
        rss_child(chosen, args.rss_child, args.device)
        return
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory() as folder:
        handle = random_model(shape, Path(folder), args.device)
    models = [handle] + ([load_model(BUNDLED, device=args.device)] if shape.bundled else [])
    if args.only is None:
        for each in models:
            measure_model(each, shape, figures, naive=not args.no_naive)
        with tempfile.TemporaryDirectory() as folder:
            handle.model.save_pretrained(folder)
            handle.tokenizer.save_pretrained(folder)
            sources = [(label(handle), folder)] + ([("all-MiniLM-L6-v2", BUNDLED)] if shape.bundled else [])
            cli_cold_starts(sources, shape, figures, args.device)
            figures += web_latency(sources, shape)
        memory(shape, figures, args.device)
    if args.only in (None, "corpus"):
        corpus_case(models[-1], shape, figures, args.device)
    if args.only in (None, "corpus", "corpus-attribution"):
        sentences = args.corpus_sentences or shape.corpus_sentences
        corpus_attribution_case(models[-1], sentences, figures, max(1, shape.repeats // 2), args.device)
    if args.only in (None, "head"):
        head_lens_cost(shape, figures, args.device)
    if args.only in (None, "baselines"):
        baselines_cost(handle, shape, figures)
    if args.only == "soak" or args.only is None and shape.bundled:  # (the smoke run serves no bundled model)
        soak_case(shape, figures)
    if args.only in (None, "attribution"):
        attribution_cost(models, figures, shape.repeats)
    if args.only in (None, "lens"):
        lens_cost(shape, figures, args.device)
    info = machine()
    checks = targets(figures, shape)
    print(report(figures, checks, info))
    if args.json:
        payload = {"machine": info, "shape": asdict(shape), "figures": [asdict(f) for f in figures]}
        payload["targets"] = [{"target": t, "measured": v, "goal": g, "met": m} for t, v, g, m in checks]
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
