"""Corpus mode on a real Ray cluster: `ray start --head` and a second `ray start --address` node on 127.0.0.1 (one
cluster for the module), the command line's `--engine ray --ray-address` against it equal to the local engine with
model actors on both nodes, SmolLM2 as well, workers that load exactly the driver's model (or fail in one line naming
their node), a model actor killed mid-run, a driver killed mid-run and resumed, and a cluster address where nothing
listens.

The cluster is stopped at the end by `ray stop` (which stops every Ray on the machine: this module runs before the
in-process local Rays of tests/test_corpus_faces.py and tests/test_lens_fit.py), then by the pids of any of its own
processes left (those under its temporary folder, and their children)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import torch
from ray.util import get_node_ip_address as ray_ip
from safetensors.torch import load_file, save_file
from conftest import build_tiny, run_cli, subprocess_env

from attention_encodings import CorpusAnalysis, analyze_corpus, load_model
from attention_encodings.clusters import check_ray_address
from attention_encodings.errors import InputError, ModelLoadError
from attention_encodings.models.pinned import pin, weights_fingerprint

RAY = str(Path(sys.executable).with_name("ray"))
ACTOR_TITLE = "MapWorker(MapBatches(_Measurer))"


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _cluster_processes(folder: Path) -> list[psutil.Process]:
    """The processes of the cluster whose temporary folder is `folder`: those naming it, and their children."""
    roots = []
    for process in psutil.process_iter(["cmdline"]):
        if any(str(folder) in part for part in process.info["cmdline"] or ()):
            roots.append(process)
    found = {p.pid: p for p in roots}
    for root in roots:
        try:
            found.update((child.pid, child) for child in root.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    return list(found.values())


def _stop(folder: Path) -> None:
    """`ray stop`, then whatever of the cluster under `folder` is still running, by pid."""
    subprocess.run([RAY, "stop"], env=subprocess_env(), capture_output=True, timeout=120, check=False)
    processes = _cluster_processes(folder)
    for process in processes:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=15)
    for process in alive:
        process.kill()


def _node_options(folder: Path) -> list[str]:
    """What each node of the test cluster shares: one CPU, this machine's loopback, its own free ports, the
    cluster's temporary folder."""
    manager, objects, agent, grpc, metrics, runtime_env = _free_ports(6)
    return [
        "--num-cpus", "1", "--disable-usage-stats", "--node-ip-address", "127.0.0.1", "--temp-dir", str(folder),
        "--node-manager-port", str(manager), "--object-manager-port", str(objects),
        "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(grpc),
        "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(runtime_env),
        "--object-store-memory", str(256 << 20),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, Path]]:
    """A two-node Ray cluster on 127.0.0.1, one CPU each: `ray start --head`, then `ray start --address` for the
    second node, on free ports and their own temporary folder (short: Ray's socket paths must stay under 108
    characters); its address and folder."""
    folder = Path(tempfile.mkdtemp(prefix="ae-ray-", dir="/tmp"))
    (port,) = _free_ports(1)
    address = f"127.0.0.1:{port}"
    head = [RAY, "start", "--head", "--port", str(port), "--include-dashboard", "false", *_node_options(folder)]
    # Without a token of its own, a cluster takes any in ~/.ray (which a local ray.init writes): off, so that the
    # drivers here need none, whatever ran before.
    env = subprocess_env(RAY_AUTH_MODE="disabled")
    try:
        for command in (head, [RAY, "start", "--address", address, *_node_options(folder)]):
            started = subprocess.run(command, env=env, capture_output=True, timeout=180, check=False)
            assert started.returncode == 0, started.stderr.decode()[-3000:]
        yield address, folder
    finally:
        _stop(folder)
        shutil.rmtree(folder, ignore_errors=True)


def _actors(folder: Path) -> list[psutil.Process]:
    """The cluster's model actors, by their Ray process title."""
    found = []
    for process in _cluster_processes(folder):
        try:
            if ACTOR_TITLE in " ".join(process.cmdline()):
                found.append(process)
        except psutil.NoSuchProcess:
            pass
    return found


def _same_run(ray_run: CorpusAnalysis, local_run: CorpusAnalysis) -> None:
    """Every column of tokens/, heads/ and stats.npz equal, and of summary.csv and heads.csv to float64 rounding,
    with no duplicate rows."""
    tokens = ray_run.tokens()
    assert not tokens.duplicated(["text_index", "layer", "token_index"]).any()
    pd.testing.assert_frame_equal(tokens, local_run.tokens(), check_exact=True)
    heads = ray_run.heads()
    assert not heads.duplicated(["text_index", "layer", "token_index", "component"]).any()
    pd.testing.assert_frame_equal(heads, local_run.heads(), check_exact=True)
    pd.testing.assert_frame_equal(ray_run.separating_heads(), local_run.separating_heads(), check_exact=False, rtol=1e-9, atol=1e-12)
    pd.testing.assert_frame_equal(  # equal but for the order in which DuckDB's threads add float64s up
        pd.read_csv(ray_run.path / "summary.csv"), pd.read_csv(local_run.path / "summary.csv"), check_exact=False, rtol=1e-9, atol=0
    )
    pd.testing.assert_frame_equal(ray_run.texts(), local_run.texts())
    with np.load(ray_run.path / "stats.npz") as ray_stats, np.load(local_run.path / "stats.npz") as local_stats:
        assert sorted(ray_stats.files) == sorted(local_stats.files)
        for key in ray_stats.files:
            assert np.array_equal(ray_stats[key], local_stats[key]), key


@pytest.fixture(scope="module")
def local_sample(tmp_path_factory, bundled) -> CorpusAnalysis:
    """The local engine's run of the first 40 sample sentences on the bundled model, one thread, with attribution."""
    out = tmp_path_factory.mktemp("local") / "run"
    done = run_cli("corpus", "sample", "--out", str(out), "--model", "bundled", "--limit", "40", "--batch-tokens", "256",
                   "--threads", "1", "--attribution", "--quiet")  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    return CorpusAnalysis(out)


class _ActorNodes(threading.Thread):
    """While a run goes on, the nodes (raylet pids) that its model actors live on."""

    def __init__(self, folder: Path) -> None:
        super().__init__(daemon=True)
        self.folder, self.nodes, self.done = folder, set[int](), threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            for actor in _actors(self.folder):
                try:
                    self.nodes.add(actor.ppid())
                except psutil.NoSuchProcess:
                    pass

    def __enter__(self) -> _ActorNodes:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.done.set()
        self.join(timeout=5)


def test_the_command_line_on_a_cluster_equals_the_local_engine(cluster, local_sample, tmp_path):
    address, folder = cluster
    out = tmp_path / "ray"
    with _ActorNodes(folder) as actor_nodes:
        done = run_cli("corpus", "sample", "--out", str(out), "--model", "bundled", "--limit", "40", "--batch-tokens", "256",
                       "--threads", "1", "--attribution", "--engine", "ray", "--ray-address", address)  # fmt: skip
    err = done.stderr.decode()
    assert done.returncode == 0, err[-3000:]
    assert f"ray: 2 model actors on a cluster at {address}" in err
    assert len(actor_nodes.nodes) == 2, "the two model actors did not run on the two nodes"
    assert "Traceback" not in err and "RayDeprecationWarning" not in err and "INFO" not in err
    run = CorpusAnalysis(out)
    assert run.manifest["run"]["engine"] == "ray" and run.manifest["counts"]["shards"] > 4
    _same_run(run, local_sample)


def test_a_killed_driver_resumes_on_the_cluster(cluster, local_sample, tmp_path):
    """SIGKILL the command once its first shards are on disk, rerun it on the same folder: it measures only what
    is missing, and the result equals the local engine's."""
    address, _ = cluster
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "attention_encodings", "corpus", "sample", "--out", str(out), "--model", "bundled",
               "--limit", "40", "--batch-tokens", "256", "--threads", "1", "--attribution", "--engine", "ray",
               "--ray-address", address, "--quiet"]  # fmt: skip
    process = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not list((out / "shards").glob("*.npz")):
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.kill()
    process.wait()
    assert not (out / "summary.csv").exists()
    done = subprocess.run(command, env=subprocess_env(), capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    run = CorpusAnalysis(out)
    sessions = run.manifest["sessions"]
    assert len(sessions) == 1 and 0 < sessions[0]["batches"] < local_sample.manifest["sessions"][0]["batches"]
    _same_run(run, local_sample)


def test_smollm2_on_the_cluster_equals_the_local_engine(cluster, smollm2, tmp_path):
    address, _ = cluster
    options = ["--model", "smollm2", "--limit", "6", "--batch-tokens", "128", "--threads", "1", "--quiet"]
    done = run_cli("corpus", "sample", "--out", str(tmp_path / "local"), *options)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    done = run_cli("corpus", "sample", "--out", str(tmp_path / "ray"), *options, "--engine", "ray", "--ray-address", address)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    _same_run(CorpusAnalysis(tmp_path / "ray"), CorpusAnalysis(tmp_path / "local"))


def test_a_killed_model_actor_loses_nothing(cluster, local_sample, tmp_path):
    """SIGKILL one model actor once the first shard is written: Ray restarts it and retries its batch, and the run
    equals the uninterrupted one, row for row."""
    address, folder = cluster
    out = tmp_path / "killed"
    killed: list[int] = []
    shards_then: list[int] = []

    def kill_one_actor() -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not killed:
            if list((out / "shards").glob("*.npz")):
                actors = _actors(folder)
                if actors:
                    shards_then.append(len(list((out / "shards").glob("*.npz"))))
                    os.kill(actors[0].pid, signal.SIGKILL)
                    killed.append(actors[0].pid)
                    return
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_one_actor, daemon=True)
    watcher.start()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = analyze_corpus("sample", out, "bundled", limit=40, batch_tokens=64, engine="ray", ray_address=address)
    finally:
        torch.set_num_threads(previous)
    watcher.join(timeout=5)
    assert killed, "no model actor was found to kill"
    assert shards_then[0] < run.manifest["counts"]["shards"], "the actor was killed only after the run had ended"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE
    local = analyze_corpus("sample", tmp_path / "local", "bundled", limit=40, batch_tokens=64)
    _same_run(run, local)


def test_workers_refuse_other_weights_naming_their_node(cluster, tmp_path, tokenizer_dir):
    """The driver loaded one model; the folder the workers load from now holds other weights: one line, naming
    the node, and the shards of no batch."""
    address, _ = cluster
    folder = build_tiny(tmp_path / "tiny", "roberta", tokenizer_dir)
    handle = load_model(str(folder))
    weights = load_file(folder / "model.safetensors")
    name = next(iter(weights))
    save_file({**weights, name: weights[name] + 0.01}, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError) as raised:
        analyze_corpus(["Time flies like an arrow."] * 3, tmp_path / "out", handle, engine="ray", ray_address=address)
    message = str(raised.value)
    assert message.startswith(f"on Ray node {ray_ip()} ({socket.gethostname()}), ") and "other weights than the driver's" in message
    assert pin(handle).fingerprint in message and "\n" not in message
    assert not list((tmp_path / "out" / "shards").glob("*.npz"))


def test_a_worker_that_cannot_load_the_model_is_one_error_line(cluster, tmp_path, tokenizer_dir):
    address, _ = cluster
    folder = build_tiny(tmp_path / "tiny", "roberta", tokenizer_dir)
    corpus = tmp_path / "in.txt"
    corpus.write_text("Time flies like an arrow.\nFruit flies like a banana.\n")
    handle = load_model(str(folder))
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=rf"^on Ray node {re.escape(ray_ip())} \(.*\): cannot load model"):
        analyze_corpus(corpus, tmp_path / "out", handle, engine="ray", ray_address=address)


def test_an_address_where_no_cluster_listens_fails_at_once(tmp_path):
    (port,) = _free_ports(1)
    start = time.monotonic()
    done = run_cli("corpus", "sample", "--out", str(tmp_path / "out"), "--model", "bundled", "--limit", "2",
                   "--engine", "ray", "--ray-address", f"127.0.0.1:{port}")  # fmt: skip
    assert time.monotonic() - start < 30
    err = done.stderr.decode()
    assert done.returncode == 1 and err.splitlines() == [f"error: cannot reach a Ray cluster at 127.0.0.1:{port}: Connection refused"]
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="is not host:port"):
        check_ray_address("head-node")


def test_every_kind_of_model_is_pinned_to_what_the_driver_loaded(bundled, tiny_roberta, tmp_path):
    """The bundled model by its package, a folder by its absolute path, a hub id by the commit in the cache; each
    loads back to the same weights."""
    pinned = pin(bundled)
    assert (pinned.kind, pinned.location, pinned.name) == ("bundled", "bundled", "sentence-transformers/all-MiniLM-L6-v2")
    assert weights_fingerprint(pinned.load("cpu").model) == pinned.fingerprint == weights_fingerprint(bundled.model)
    local = pin(load_model(str(tiny_roberta)))
    assert (local.kind, local.location) == ("directory", str(Path(tiny_roberta).resolve()))
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = Path(os.environ["HF_HOME"]) / "hub" / "models--example--tiny-roberta"
    shutil.copytree(tiny_roberta, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    hub = pin(load_model("example/tiny-roberta"))
    assert (hub.kind, hub.location, hub.revision) == ("hub", "example/tiny-roberta", commit)
    assert weights_fingerprint(hub.load("cpu").model) == hub.fingerprint
    gone = type(hub)(hub.name, "hub", hub.location, "f" * 40, hub.dtype, hub.fingerprint)
    with pytest.raises(ModelLoadError, match=r"^cannot load model 'example/tiny-roberta' at revision f{40} on this node"):
        gone.load("cpu")


def test_smollm2_is_pinned_to_its_package(smollm2):
    pinned = pin(smollm2)
    assert (pinned.kind, pinned.location, pinned.name) == ("smollm2", "smollm2", "smollm2")
    assert weights_fingerprint(pinned.load("cpu").model) == pinned.fingerprint
