"""Finding and loading models the Hugging Face way: hub ids, local folders, the HF cache, `HF_HUB_OFFLINE`.

`load_model()` with no name picks roberta-base when it can be loaded, else the bundled offline model, and says
why. A model named explicitly is never replaced by another. Loaded models are kept for reuse in this process.
"""

from __future__ import annotations

import io
import json
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, redirect_stderr
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import is_offline_mode, scan_cache_dir, try_to_load_from_cache
from huggingface_hub.errors import CacheNotFound, HFValidationError
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from ..display import byte_piece
from ..errors import ModelLoadError
from ..names import BUNDLED_ALIAS, SMOLLM2_ALIAS
from .adapters import ADAPTERS, Adapter, adapter_for
from .bundled import BUNDLED_HUB_ID, BUNDLED_LABEL, bundled_model_dir, verify_bundled
from .device import DEFAULT_DEVICE, DEFAULT_DTYPE, resolve_device, resolve_dtype
from .smollm2 import SMOLLM2_DISTRIBUTION, SMOLLM2_LABEL, smollm2_dir

DEFAULT_MODEL = "FacebookAI/roberta-base"
"""The model the seed post used; tried first when no model is named."""
_DEFAULT_CACHE_NAMES = (DEFAULT_MODEL, "roberta-base")
HUB_PROBE_TIMEOUT_S = 3.0


@dataclass(eq=False)
class LoadedModel:
    """A model ready to trace: weights, tokenizer, architecture adapter, and why it was chosen."""

    name: str
    """The model's name, fit to show anyone: its hub id (the bundled model's is
    `sentence-transformers/all-MiniLM-L6-v2`), a local directory as it was given, or `smollm2` (its weights are a
    dequantised 4-bit copy, so the hub id of the original would not be true). Never an install path."""
    label: str
    """A short name for people (e.g. `roberta-base`, `all-MiniLM-L6-v2 (bundled)`)."""
    reason: str
    """One line saying where the model came from and why it is the one in use."""
    source: str
    """What was loaded: the resolved hub id or local path (the bundled model's folder in site-packages)."""
    model: PreTrainedModel
    """The whole model as loaded: with its output head where the checkpoint has one (see `Adapter.head`)."""
    tokenizer: PreTrainedTokenizerBase
    adapter: Adapter
    lock: AbstractContextManager[bool] = field(default_factory=threading.RLock, repr=False)
    """Held while the model runs: hooks are per model, so one traced pass at a time. Handles that share
    a model share its lock."""
    texts: dict[int, str] = field(default_factory=dict, repr=False)
    """Readable text of the vocabulary ids decoded so far (see `token_texts`)."""

    @property
    def num_layers(self) -> int:
        """Number of encoder blocks N (the analysis has layers 0..N)."""
        return len(self.adapter.blocks(self.model))

    @property
    def vocab_size(self) -> int:
        """Rows of the word-embedding matrix: the vocabulary the measures compare against."""
        return int(self.model.get_input_embeddings().weight.shape[0])

    @property
    def max_tokens(self) -> int:
        """The longest input this model accepts, special tokens included."""
        limit = self.adapter.max_tokens(self.model.config)
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < 1_000_000:
            limit = min(limit, tokenizer_limit)
        return limit

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def token_texts(self, ids: list[int]) -> list[str]:
        """Readable text of each vocabulary id; a piece that is not whole characters as its bytes (`<0xE6>`, see
        `display.byte_piece`). Each id is decoded once per handle, since a long input's neighbours name thousands
        of ids."""
        missing = sorted(set(ids).difference(self.texts))
        decoded = self.tokenizer.batch_decode([[i] for i in missing], clean_up_tokenization_spaces=False)
        raw = self.tokenizer.convert_ids_to_tokens(missing)
        self.texts.update(
            (i, text if text and "\ufffd" not in text else byte_piece(piece)) for i, text, piece in zip(missing, decoded, raw)
        )
        return [self.texts[i] for i in ids]


_Placement = tuple[torch.device, torch.dtype]
_requests: dict[tuple[str | None, _Placement], LoadedModel] = {}
"""Handles by the name asked for (None: the default resolution) and where they run."""
_weights: dict[tuple[str, _Placement], tuple[PreTrainedModel, PreTrainedTokenizerBase, Adapter, AbstractContextManager[bool]]] = {}
"""Loaded weights by source and placement, shared by every handle that resolves to the same ones."""
_lock = threading.Lock()


def load_model(
    name: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device = DEFAULT_DEVICE,
    dtype: str | torch.dtype = DEFAULT_DTYPE,
) -> LoadedModel:
    """Load a model by hub id, local directory, `"bundled"` or `"smollm2"`; with no name, resolve the default.

    The default is roberta-base when it is in the HF cache or can be downloaded, else the bundled
    all-MiniLM-L6-v2. `device` is cpu, cuda (cuda:N) or auto (CUDA when available); `dtype` is the
    precision the model runs in (the measures are float32 regardless). Results are cached in-process,
    so repeated calls are free.
    """
    key = None if name is None else os.fspath(name)
    placement = (resolve_device(device), resolve_dtype(dtype))
    with _lock:
        if (key, placement) not in _requests:
            found = _resolve_default(placement) if key is None else _load_named(key, placement)
            _requests[key, placement] = found
        return _requests[key, placement]


def _load(source: str, placement: _Placement, *, local_only: bool, name: str, label: str, reason: str) -> LoadedModel:
    """Load config, weights and tokenizer through transformers (once per source and placement); never with
    remote code."""
    if (source, placement) not in _weights:
        with _quiet():
            _weights[source, placement] = _load_weights(source, placement, local_only)
    model, tokenizer, adapter, lock = _weights[source, placement]
    return LoadedModel(name, label, reason, source, model, tokenizer, adapter, lock)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence transformers while it loads: its load reports, warnings and "Loading weights" bars are noise to
    our users (failures still raise). The previous verbosity and bar setting come back afterwards."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _load_weights(
    source: str, placement: _Placement, local_only: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Adapter, AbstractContextManager[bool]]:
    """Config, weights (with the output head where the checkpoint has one) and tokenizer, through transformers."""
    common = {"local_files_only": local_only, "trust_remote_code": False}
    try:
        config = AutoConfig.from_pretrained(source, **common)
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"cannot load a model config from {source!r}: {_first_line(error)}") from error
    adapter = adapter_for(config)
    heads = {"masked": AutoModelForMaskedLM, "causal": AutoModelForCausalLM}
    auto = heads[adapter.objective] if adapter.carries_head(config) else AutoModel
    try:
        model = auto.from_pretrained(source, config=config, dtype=placement[1], **common).to(placement[0])
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelLoadError(f"cannot load model {source!r}: {_first_line(error)}") from error
    return model.eval(), tokenizer, adapter, threading.RLock()


def _load_named(name: str, placement: _Placement) -> LoadedModel:
    path = Path(name).expanduser()
    if path.is_dir():
        return _load(str(path.resolve()), placement, local_only=True, name=name, label=path.name, reason=f"local directory {path}")
    if name == BUNDLED_ALIAS:
        return _load_bundled(placement, "named explicitly")
    if name == SMOLLM2_ALIAS:
        with _quiet(), redirect_stderr(io.StringIO()):  # the GGUF conversion draws its own tqdm bar, always
            folder, made = smollm2_dir()
        origin = f"{SMOLLM2_DISTRIBUTION}, {'dequantised now and cached' if made else 'cached'} at {folder}"
        return _load(str(folder), placement, local_only=True, name=name, label=SMOLLM2_LABEL, reason=f"named explicitly; {origin}")
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name:
        raise ModelLoadError(f"no model directory at {name!r}")
    if _is_cached(name):
        return _load(name, placement, local_only=True, name=name, label=name, reason="named explicitly, from the Hugging Face cache")
    unavailable = _hub_unavailable()
    if unavailable:
        raise ModelLoadError(f"model {name!r} is not in the Hugging Face cache and {unavailable}")
    return _load(name, placement, local_only=False, name=name, label=name, reason="named explicitly, from the Hugging Face hub")


def _resolve_default(placement: _Placement) -> LoadedModel:
    cached = next((name for name in _DEFAULT_CACHE_NAMES if _is_cached(name)), None)
    try:
        if cached:
            return _load(cached, placement, local_only=True, name=cached, label="roberta-base", reason="the default, from the HF cache")
        unavailable = _hub_unavailable()
        if not unavailable:
            return _load(
                DEFAULT_MODEL, placement, local_only=False, name=DEFAULT_MODEL, label="roberta-base", reason="the default, from the hub"
            )
        why = f"roberta-base is not in the HF cache and {unavailable}"
    except ModelLoadError as error:
        why = f"roberta-base could not be loaded ({error})"
    return _load_bundled(placement, f"offline default, because {why}")


def _load_bundled(placement: _Placement, reason: str) -> LoadedModel:
    folder = verify_bundled(bundled_model_dir())
    return _load(str(folder), placement, local_only=True, name=BUNDLED_HUB_ID, label=f"{BUNDLED_LABEL} (bundled)", reason=reason)


def _is_cached(repo_id: str) -> bool:
    """Whether the HF cache holds this repo's config (no network)."""
    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except HFValidationError as error:
        raise ModelLoadError(f"{repo_id!r} is neither a model directory nor a valid hub model id") from error


def _hub_unavailable() -> str:
    """Why the hub cannot be used right now ('' when it can), decided in seconds rather than minutes."""
    if is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return ""  # a proxy decides; a direct probe would say nothing useful
    url = urlparse(hf_constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError:
        return f"the hub ({hf_constants.ENDPOINT}) cannot be reached"
    return ""


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


@dataclass(frozen=True)
class CachedModel:
    """A model repo found in the local Hugging Face cache."""

    repo_id: str
    model_type: str | None
    family: str | None
    size_bytes: int


def cached_models() -> list[CachedModel]:
    """Model repos in the local HF cache, with the family that supports each (None if unsupported)."""
    try:
        info = scan_cache_dir()
    except CacheNotFound:
        return []
    found = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        model_type = None
        for revision in repo.revisions:
            config = next((f.file_path for f in revision.files if f.file_name == "config.json"), None)
            if config is not None:
                try:
                    model_type = json.loads(Path(config).read_text()).get("model_type")
                except (OSError, ValueError):
                    model_type = None
                break
        family = next((a.family for a in ADAPTERS if model_type in a.model_types), None)
        found.append(CachedModel(repo.repo_id, model_type, family, repo.size_on_disk))
    return found


def clear_cache() -> None:
    """Forget every loaded model (they are freed once nothing else holds them)."""
    with _lock:
        _requests.clear()
        _weights.clear()


__all__ = [
    "BUNDLED_ALIAS",
    "SMOLLM2_ALIAS",
    "DEFAULT_MODEL",
    "CachedModel",
    "LoadedModel",
    "cached_models",
    "clear_cache",
    "load_model",
]
