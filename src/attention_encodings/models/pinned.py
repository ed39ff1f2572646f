"""Exactly this model, elsewhere: what another process (a Ray worker on another node) must load to run the very
weights this one loaded, and a fingerprint of those weights to prove it did.

A model is pinned by where its weights came from, never by its display name (the bundled model's name is a hub id
that an offline node cannot fetch): the bundled package (checksum-checked again there), SmolLM2's package and
cache, a local directory (which must exist on that node), or a hub id at the commit the driver resolved.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import snapshot_download, try_to_load_from_cache
from transformers import PreTrainedModel

from ..errors import ModelLoadError
from ..names import BUNDLED_ALIAS, SMOLLM2_ALIAS
from .bundled import bundled_model_dir
from .loading import LoadedModel, _hub_unavailable, load_model
from .smollm2 import smollm2_cache

PIN_KINDS = ("bundled", "smollm2", "directory", "hub")


@dataclass(frozen=True)
class PinnedModel:
    """What to load to get `name`'s weights again: `kind` (one of `PIN_KINDS`), `location` (the alias, an absolute
    directory or a hub id), the hub `revision` (a commit hash) for `hub`, the precision, and the weights'
    fingerprint."""

    name: str
    kind: str
    location: str
    revision: str | None
    dtype: str
    fingerprint: str

    def load(self, device: str) -> LoadedModel:
        """This model, loaded here on `device`: a `ModelLoadError` in one line if it cannot be."""
        if self.kind == "hub":
            return load_model(_snapshot(self.location, self.revision), device=device, dtype=self.dtype)
        return load_model(self.location, device=device, dtype=self.dtype)


def weights_digest(model: PreTrainedModel, digest: hashlib._Hash) -> hashlib._Hash:
    """`digest` updated with a strided sample of every parameter (about 1,024 values each, as float32): cheap,
    yet any retrained, re-quantised or swapped checkpoint changes it."""
    with torch.no_grad():
        for parameter in model.parameters():
            flat = parameter.reshape(-1)
            digest.update(flat[:: max(1, flat.numel() // 1024)].float().cpu().numpy().tobytes())
    return digest


def weights_fingerprint(model: PreTrainedModel) -> str:
    """A 16-hex-digit fingerprint of a model's weights (see `weights_digest`)."""
    return weights_digest(model, hashlib.sha256()).hexdigest()[:16]


def pin(handle: LoadedModel) -> PinnedModel:
    """How another process loads exactly `handle`'s weights."""
    source = Path(handle.source)
    dtype = str(handle.model.dtype).removeprefix("torch.")
    fingerprint = weights_fingerprint(handle.model)
    if source.is_dir():
        if source == _bundled_dir():
            return PinnedModel(handle.name, "bundled", BUNDLED_ALIAS, None, dtype, fingerprint)
        if source == smollm2_cache().resolve():
            return PinnedModel(handle.name, "smollm2", SMOLLM2_ALIAS, None, dtype, fingerprint)
        return PinnedModel(handle.name, "directory", str(source.resolve()), None, dtype, fingerprint)
    found = try_to_load_from_cache(handle.source, "config.json")
    revision = Path(found).parent.name if isinstance(found, str) else getattr(handle.model.config, "_commit_hash", None)
    return PinnedModel(handle.name, "hub", handle.source, revision, dtype, fingerprint)


def _bundled_dir() -> Path | None:
    try:
        return bundled_model_dir().resolve()
    except ModelLoadError:
        return None


def _snapshot(repo_id: str, revision: str | None) -> str:
    """The folder of `repo_id` at `revision` in this node's HF cache, downloaded first when the hub is reachable."""
    offline = _hub_unavailable()
    try:
        return snapshot_download(repo_id, revision=revision, local_files_only=bool(offline))
    except (OSError, ValueError) as error:  # not cached, no such revision, hub errors, a malformed id
        at = f" at revision {revision}" if revision else ""
        why = offline or str(error).strip().splitlines()[0]
        raise ModelLoadError(f"cannot load model {repo_id!r}{at} on this node: {why}") from error
