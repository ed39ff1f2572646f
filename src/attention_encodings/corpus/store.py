"""The output folder: shards written as batches finish, what makes a rerun resume, and the folder's files.

Each batch becomes one shard: `tokens/part-NNNNNN.parquet` (and `neighbours/`, `predictions/` and `heads/` parts), then
`shards/NNNNNN.npz`, which records the texts the shard holds and its partial sums. Every file is written under a
hidden temporary name and renamed into place, and the record comes last, so a shard counts as done only once all of
it is on disk; an interrupted shard is simply measured again and its files replaced, never duplicated.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .engine import Shard

MANIFEST = "manifest.json"
TOKENS = "tokens"
NEIGHBOURS = "neighbours"
PREDICTIONS = "predictions"
HEADS = "heads"
HEADS_CSV = "heads.csv"
SHARDS = "shards"
TEXTS = "texts.parquet"
SUMMARY_CSV = "summary.csv"
SUMMARY_PARQUET = "summary.parquet"
STATS = "stats.npz"
REPORT = "report.html"
OWN = (MANIFEST, TOKENS, NEIGHBOURS, PREDICTIONS, HEADS, SHARDS, TEXTS, SUMMARY_CSV, SUMMARY_PARQUET, HEADS_CSV, STATS, REPORT)
"""Everything a run writes: all that `--overwrite` removes (nothing else in the folder is touched)."""


def atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write `path` through `write(temporary)` and a rename, so that it is either whole or absent."""
    temporary = path.with_name(f".{path.name}.tmp")
    write(temporary)
    os.replace(temporary, path)


class RunFolder:
    """One run's output folder."""

    def __init__(
        self, path: Path, *, own: tuple[str, ...] = OWN, folders: tuple[str, ...] = (TOKENS, SHARDS), kind: str = "corpus run"
    ) -> None:
        """`own`: what the run writes (what `clear` removes); `folders`: the subfolders it needs; `kind`: what it
        is called in messages (fit-lens keeps its folder with these too)."""
        self.path = Path(path)
        self.own, self.folders, self.kind = own, folders, kind

    def open(self, identity: dict[str, Any], *, overwrite: bool) -> None:
        """Make the folder ready for a run with `identity` (everything that decides its numbers): new, empty, or
        holding the same run (which then resumes). A folder from another run is refused unless `overwrite`; a
        folder that holds other files and no run is always refused."""
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"{self.path} is a file; --out needs a folder")
        manifest = self.path / MANIFEST
        if self.path.is_dir() and any(self.path.iterdir()):
            if not manifest.is_file():
                raise InputError(f"{self.path} is not empty and holds no {self.kind}; choose a new or empty folder for --out")
            found = self.read_manifest().get("identity", {})
            if found != identity:
                if not overwrite:
                    raise InputError(
                        f"{self.path} holds a run with other settings ({_difference(found, identity)}); "
                        "use --overwrite to replace it"
                    )
                self.clear()
        for folder in (self.path, *(self.path / name for name in self.folders)):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise InputError(f"cannot create {folder}: {error.strerror or error}") from error

    def clear(self) -> None:
        """Remove what a run wrote, and nothing else."""
        for name in self.own:
            target = self.path / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()

    def read_manifest(self) -> dict[str, Any]:
        return json.loads((self.path / MANIFEST).read_text(encoding="utf-8"))

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
        atomic(self.path / MANIFEST, lambda p: p.write_text(text, encoding="utf-8"))

    def done(self) -> dict[int, tuple[int, ...]]:
        """The shards already on disk, each with the texts it holds."""
        found = {}
        for record in (self.path / SHARDS).glob("[0-9]*.npz"):
            with np.load(record) as data:
                found[int(record.stem)] = tuple(int(i) for i in data["texts"])
        return found

    def write(self, shard: Shard) -> None:
        """Write one shard: its token rows, its other datasets' rows (neighbours, predictions, heads), then the record
        that marks it done."""
        import pyarrow.parquet as pq

        name = f"part-{shard.index:06d}.parquet"
        atomic(self.path / TOKENS / name, lambda p: pq.write_table(shard.tokens, p))
        for dataset, table in shard.items.items():
            (self.path / dataset).mkdir(exist_ok=True)
            atomic(self.path / dataset / name, lambda p, table=table: pq.write_table(table, p))

        def record(path: Path) -> None:
            with path.open("wb") as stream:
                np.savez(stream, texts=np.asarray(shard.text_indices, dtype=np.int64), **shard.sums)

        atomic(self.path / SHARDS / f"{shard.index:06d}.npz", record)

    def sums(self, indices: list[int]) -> dict[str, np.ndarray] | None:
        """The shards' partial sums added up in shard order (so the result does not depend on the order in which
        they were written), or None when there are none."""
        total: dict[str, np.ndarray] | None = None
        for index in sorted(indices):
            with np.load(self.path / SHARDS / f"{index:06d}.npz") as data:
                part = {key: data[key].astype(np.float64) for key in data.files if key != "texts"}
            total = part if total is None else {key: total[key] + part[key] for key in total}
        return total


def _difference(found: dict[str, Any], wanted: dict[str, Any]) -> str:
    """The first setting that differs, as `name: A there, B here`."""
    for key in sorted(set(found) | set(wanted)):
        if found.get(key) != wanted.get(key):
            return f"{key}: {_short(found.get(key))} there, {_short(wanted.get(key))} here"
    return "unknown difference"


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "…"
