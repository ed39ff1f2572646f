"""Where models run: device selection (`auto`, `cpu`, `cuda`), precision, and torch threads.

No GPU is needed: CUDA's presence is simulated where the choice itself is under test.
"""

from __future__ import annotations

import pytest
import torch
from conftest import SEED, run_cli

from attention_encodings import InputError, analyze, load_model
from attention_encodings.analysis import reference_for
from attention_encodings.metrics import measure
from attention_encodings.models import resolve_device, resolve_dtype, set_threads, usable_cpus
from attention_encodings.trace import encode, trace


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def one_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_auto_is_the_cpu_without_cuda(no_cuda):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")


def test_auto_is_the_gpu_with_cuda(one_gpu):
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")


def test_cuda_without_a_gpu_is_a_one_line_error(no_cuda):
    with pytest.raises(InputError, match="no CUDA GPU") as error:
        resolve_device("cuda")
    assert "\n" not in str(error.value)


def test_missing_gpu_index_is_an_error(one_gpu):
    with pytest.raises(InputError, match="sees 1 CUDA GPU"):
        resolve_device("cuda:1")


@pytest.mark.parametrize("name", ["tpu", "mps", "gpu", ""])
def test_unknown_devices_are_refused(name):
    with pytest.raises(InputError, match="unknown device"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch that cannot reach CUDA")
def test_load_model_moves_the_model_where_auto_points(tiny_roberta, one_gpu):
    """With a (simulated) GPU, `auto` sends the weights to CUDA; this CPU-only torch then refuses the move."""
    with pytest.raises((AssertionError, RuntimeError), match="CUDA|cuda"):
        load_model(str(tiny_roberta), device="auto")


def test_cpu_and_auto_share_one_handle_without_cuda(tiny_roberta, no_cuda):
    handle = load_model(str(tiny_roberta), device="cpu")
    assert load_model(str(tiny_roberta)) is handle
    assert handle.device == torch.device("cpu")
    with pytest.raises(InputError, match="no CUDA GPU"):
        load_model(str(tiny_roberta), device="cuda")


def test_dtypes():
    assert resolve_dtype("bfloat16") is torch.bfloat16 and resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(InputError, match="unknown dtype"):
        resolve_dtype("int8")


def test_half_precision_model_is_measured_in_float32(tiny_roberta):
    """A bfloat16 model's states are measured in float32: exactly as if they had been cast up first."""
    handle = load_model(str(tiny_roberta), dtype="bfloat16")
    assert handle.model.dtype == torch.bfloat16 and handle is not load_model(str(tiny_roberta))
    result = analyze(SEED, handle, top_k=20, neighbours=5)
    assert result.cosine.values.dtype == result.neighbour_cosines.dtype == "float32"
    encoding = encode(handle, SEED)
    states = trace(handle, encoding).states("resid_mid")
    assert states.dtype == torch.bfloat16
    offsets = handle.adapter.slot_offsets(handle.model, encoding.position_ids, encoding.token_type_ids)
    space = reference_for(handle, "embedding")
    half = measure(states, encoding.input_ids, offsets, space, top_k=20, neighbours=5)
    full = measure(states.float(), encoding.input_ids, offsets.float(), space, top_k=20, neighbours=5)
    for name in ("cosine", "rank", "overlap", "neighbour_ids", "neighbour_cosines"):
        assert torch.equal(getattr(half, name), getattr(full, name)), name
    assert torch.allclose(torch.from_numpy(result.cosine.values), half.cosine.cpu())


def test_analyze_refuses_a_placement_for_a_loaded_handle(bundled):
    with pytest.raises(InputError, match="pass them to load_model"):
        analyze(SEED, bundled, device="cpu")


def test_threads():
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 == torch.get_num_threads()
        assert 1 <= set_threads() <= usable_cpus()
    finally:
        torch.set_num_threads(before)
    with pytest.raises(InputError, match="at least 1"):
        set_threads(0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_device_option():
    done = run_cli("analyze", SEED, "--model", "bundled", "--device", "cuda")
    assert done.returncode == 1
    assert done.stderr.decode().strip().splitlines()[-1].startswith("error: device cuda was asked for")
    done = run_cli("analyze", SEED, "--model", "bundled", "--device", "auto", "--threads", "1", "--format", "json")
    assert done.returncode == 0
    assert "on cpu, float32, 1 thread" in done.stderr.decode()
