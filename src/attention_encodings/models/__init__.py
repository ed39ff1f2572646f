"""Models layer: loading (hub, cache, local, bundled), architecture adapters and their tap points."""

from .adapters import ADAPTERS, Adapter, EmbeddingParts, HeadPaths, NormParts, adapter_for, get_module, norm_parts, supported_families
from .bundled import BUNDLED_SHA256, bundled_model_dir
from .device import DEFAULT_DEVICE, DEFAULT_DTYPE, DEVICES, DTYPES, resolve_device, resolve_dtype, set_threads, usable_cpus
from .loading import BUNDLED_ALIAS, DEFAULT_MODEL, SMOLLM2_ALIAS, CachedModel, LoadedModel, cached_models, clear_cache, load_model

__all__ = [
    "ADAPTERS",
    "BUNDLED_ALIAS",
    "BUNDLED_SHA256",
    "DEFAULT_MODEL",
    "SMOLLM2_ALIAS",
    "Adapter",
    "DEFAULT_DEVICE",
    "DEFAULT_DTYPE",
    "DEVICES",
    "DTYPES",
    "CachedModel",
    "EmbeddingParts",
    "HeadPaths",
    "NormParts",
    "LoadedModel",
    "adapter_for",
    "bundled_model_dir",
    "cached_models",
    "clear_cache",
    "get_module",
    "load_model",
    "norm_parts",
    "resolve_device",
    "resolve_dtype",
    "set_threads",
    "supported_families",
    "usable_cpus",
]
