"""`fit-lens`: a learned lens fitted on a corpus, in closed form, from the forward passes corpus mode makes.

Corpus mode's plan, engines (local or Ray) and folder do the work: each batch is traced (no vocabulary scoring)
and reduced to the float64 sums of `metrics.tuned`, which add up over batches in any order. Texts are split by a
hash of their text: `heldout` of them (10 % by default) choose λ per layer and measure the lens; the rest, cut in
¼, ¼ and ½ (by a second hash), fit it and give the learning curve. Each batch holds texts of one part only.

The running sums are checkpointed (`sums.npz`, with the batches they hold) at most every `checkpoint_seconds` and
when the run stops, so a rerun of the same command resumes; the finished folder holds `lens.safetensors`,
`lens.json`, `eval.csv`, `report.html` and `manifest.json`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .._version import __version__
from ..analysis import head_lens_for, load_for, reference_for
from ..errors import InputError
from ..metrics.tuned import ALPHAS, SUM_KEYS, add_sums, choose, fit, lens_sums, mean_error, squared_error
from ..models import LoadedModel
from ..names import DEFAULT_BATCH_TOKENS
from ..settings import Settings
from ..stats import fingerprint
from ..trace import encode, trace
from ..tuned_lens import LENS_FILE, LENS_FORMAT, LENS_JSON, LearnedLens, check_target, target_rows, target_taps
from . import store
from .engine import Batch, Shard, check_batch_tokens, check_engine, plan, run_local, run_ray
from .sources import read_source

PARTS = ("quarter_a", "quarter_b", "half", "heldout")
"""The parts of the corpus, by a hash of each text: three of the fit split (¼, ¼, ½: the learning curve's ¼, ½
and all) and the held-out texts."""
HELDOUT = PARTS.index("heldout")
SUMS = "sums.npz"
EVAL = "eval.csv"
OWN = (store.MANIFEST, SUMS, LENS_FILE, LENS_JSON, EVAL, store.REPORT)
CHECKPOINT_SECONDS = 120.0
"""How often the running sums are saved at most (each save writes them whole: 4·(N+1)·d²·16 bytes, 0.6 GB for
SmolLM2), besides when the run stops."""
LensProgress = Callable[[int, int, int], None]
"""progress(texts_done, texts_total, tokens_done), as corpus mode's."""


def part_of(text: str, heldout: float) -> int:
    """Which part of `PARTS` a text belongs to: a hash of its text, so the split never depends on order."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    first, second = (int.from_bytes(digest[i : i + 8], "big") / 2**64 for i in (0, 8))
    if first < heldout:
        return HELDOUT
    return 0 if second < 0.25 else 1 if second < 0.5 else 2


def split_plan(batches: list[Batch], lengths: dict[int, int], heldout: float) -> tuple[list[Batch], list[int]]:
    """Corpus mode's batches cut so that each holds texts of one part only (in the same order), renumbered, with
    the part of each."""
    cut: list[Batch] = []
    parts: list[int] = []
    for batch in batches:
        owners = [part_of(text, heldout) for text in batch.texts]
        for part in sorted(set(owners)):
            at = [i for i, owner in enumerate(owners) if owner == part]
            pick = lambda values: tuple(values[i] for i in at)  # noqa: E731
            indices = pick(batch.text_indices)
            cut.append(Batch(len(cut), indices, pick(batch.texts), pick(batch.sent_ids), pick(batch.words), sum(lengths[i] for i in indices)))
            parts.append(part)
    return cut, parts


def lens_batch(handle: LoadedModel, settings: Settings, batch: Batch, *, tag: bool = False, target: str) -> Shard:
    """One batch's sums (an engine's `work`): trace it at the tap (and at `resid_post` for `final`), keep the
    non-special tokens, and reduce their vectors and targets to `metrics.tuned.lens_sums`."""
    start = time.perf_counter()
    encodings = [encode(handle, text, truncate=settings.truncate) for text in batch.texts]
    traced = trace(handle, encodings, taps=target_taps(settings.tap, target))
    ids = torch.cat([e.input_ids for e in encodings])
    keep = ~torch.isin(ids, torch.tensor(handle.tokenizer.all_special_ids, device=ids.device))
    y = target_rows(handle, settings.reference, target, traced, settings.tap, ids)
    sums = lens_sums(traced.packed(settings.tap)[:, keep], y[keep])
    numbers = {key: value.cpu().numpy() for key, value in sums.items()}
    return Shard(batch.index, None, {}, numbers, batch.text_indices, int(keep.sum()), time.perf_counter() - start)


@dataclass(frozen=True)
class LensFit:
    """A finished fit-lens folder."""

    path: Path

    @property
    def lens(self) -> LearnedLens:
        from ..tuned_lens import read_lens

        return read_lens(self.path)

    def eval(self) -> pd.DataFrame:
        """`eval.csv`: one row per layer, the held-out measures of the learned and the untrained reading."""
        return pd.read_csv(self.path / EVAL)


def fit_lens(
    settings: Settings,
    source: str | Path | Iterable[str],
    out: Path,
    model: LoadedModel | None = None,
    *,
    target: str = "final",
    heldout: float = 0.1,
    limit: int | None = None,
    engine: str = "local",
    text_field: str = "text",
    format: str = "auto",
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    ray_address: str | None = None,
    overwrite: bool = False,
    export: Path | None = None,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    progress: LensProgress | None = None,
    on_model: Callable[[LoadedModel], None] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> LensFit:
    """Fit a learned lens to `target` on the texts of `source` (what corpus mode reads) and write it to the folder
    `out`; rerunning the same call resumes. `export` also writes it in the tuned-lens package's layout."""
    check_target(target)
    check_engine(engine)
    check_batch_tokens(batch_tokens)
    if not 0 < heldout < 1:
        raise InputError(f"heldout must be a fraction between 0 and 1; got {heldout}")
    read = read_source(source if isinstance(source, (str, Path)) else source, format=format, text_field=text_field, limit=limit)
    handle = load_for(settings, model)
    if on_model is not None:
        on_model(handle)
    settings = settings.replace(model=handle.name, lens=None)
    if target == "final" and head_lens_for(handle) is None:
        raise InputError(f"--target final reads through an output head, and {handle.label} has none; use --target embedding")
    if target == "embedding":
        reference_for(handle, settings.reference)  # a reference this model cannot give fails here, before any work
    if export is not None and (target != "final" or handle.adapter.objective != "causal" or settings.tap != "resid_post"):
        raise InputError(
            "--export tuned-lens writes the tuned-lens package's layout, which is for decoders with --target final "
            "at --tap resid_post (it reads hidden_states)"
        )
    chosen = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("threads", "top_k", "neighbours", "similarity")}
    identity = {
        **chosen, "target": target, "heldout": heldout, "batch_tokens": batch_tokens, "limit": limit,
        "text_field": text_field, "format": read.format, "input_sha256": read.sha256, "version": __version__,
        "fingerprint": fingerprint(handle, settings.tap),
    }
    folder = store.RunFolder(out, own=OWN, folders=(), kind="lens fit")
    folder.open(identity, overwrite=overwrite)
    if (folder.path / store.MANIFEST).is_file() and folder.read_manifest().get("status") == "complete":
        return LensFit(folder.path)  # the same fit, already done
    statuses, planned = plan(handle, settings, read, batch_tokens)
    lengths = {i: s.n_tokens for i, s in enumerate(statuses) if s.n_tokens}
    batches, parts = split_plan(planned, lengths, heldout)
    if not any(p != HELDOUT for p in parts):
        raise InputError(f"{read.path}: no text the model can take falls in the fit split; give more texts")
    manifest = {"version": __version__, "status": "running", "identity": identity, "input": {"path": read.path, "sha256": read.sha256}}
    folder.write_manifest(manifest)

    totals, done = _checkpoint(folder.path)
    pending = [b for b in batches if b.index not in done]
    total_texts = sum(len(b.text_indices) for b in batches)
    texts_done = total_texts - sum(len(b.text_indices) for b in pending)
    tokens_done = int(sum(float(t["n"][0]) for t in totals.values()))
    if progress is not None:
        progress(texts_done, total_texts, tokens_done)
    work = partial(lens_batch, target=target)
    shards = (
        run_local(handle, settings, pending, tag=False, work=work)
        if engine == "local"
        else run_ray(handle, settings, pending, tag=False, address=ray_address, on_start=on_note, work=work)
    )
    started = saved = time.perf_counter()
    try:
        for shard in shards:
            part = PARTS[parts[shard.index]]
            totals[part] = add_sums([totals[part], _tensors(shard.sums)] if part in totals else [_tensors(shard.sums)])
            done.add(shard.index)
            texts_done += len(shard.text_indices)
            tokens_done += shard.n_tokens
            if time.perf_counter() - saved >= checkpoint_seconds:
                _save_checkpoint(folder.path, totals, done)
                saved = time.perf_counter()
            if progress is not None:
                progress(texts_done, total_texts, tokens_done)
    finally:
        if pending:
            _save_checkpoint(folder.path, totals, done)
    seconds = time.perf_counter() - started

    lens = _fit(totals, handle, settings, target, heldout, read, statuses)
    write_lens(folder.path, lens)
    lens = dataclasses.replace(lens, source=str(folder.path))
    from .lens_eval import evaluate, lens_report

    heldout_texts = [b.texts for b, p in zip(batches, parts) if p == HELDOUT]
    frame = evaluate(handle, settings, lens, [t for texts in heldout_texts for t in texts], batch_tokens)
    frame = frame.merge(learning_curve(totals, lens), on="layer")
    store.atomic(folder.path / EVAL, lambda p: frame.to_csv(p, index=False))
    manifest |= {"status": "complete", "timing": {"seconds": round(seconds, 3)}, "lens": lens.meta}
    html = lens_report(manifest, frame, handle)
    store.atomic(folder.path / store.REPORT, lambda p: p.write_text(html, encoding="utf-8"))
    folder.write_manifest(manifest)
    (folder.path / SUMS).unlink(missing_ok=True)  # only a resumed run needs it, and it is (N+1)·d²·16 bytes a part
    if export is not None:
        from .lens_export import export_tuned_lens

        export_tuned_lens(lens, handle, export)
    return LensFit(folder.path)


def _tensors(sums: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(np.asarray(value, dtype=np.float64)) for key, value in sums.items()}


def _checkpoint(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], set[int]]:
    """The running sums by part and the batches they hold, from `sums.npz` (none yet: empty)."""
    record = path / SUMS
    if not record.is_file():
        return {}, set()
    with np.load(record) as data:
        totals: dict[str, dict[str, torch.Tensor]] = {}
        for name in data.files:
            if "." in name:
                part, key = name.split(".", 1)
                totals.setdefault(part, {})[key] = torch.from_numpy(data[name].astype(np.float64))
        return totals, {int(i) for i in data["batches"]}


def _save_checkpoint(path: Path, totals: dict[str, dict[str, torch.Tensor]], done: set[int]) -> None:
    arrays = {f"{part}.{key}": value.numpy() for part, sums in totals.items() for key, value in sums.items()}

    def write(target: Path) -> None:
        with target.open("wb") as stream:
            np.savez(stream, batches=np.array(sorted(done), dtype=np.int64), **arrays)

    store.atomic(path / SUMS, write)


def _empty_like(sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: torch.zeros_like(sums[key]) for key in SUM_KEYS}


def fit_parts(totals: dict[str, dict[str, torch.Tensor]], fit: tuple[str, ...]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The fit sums over the parts `fit` and the held-out sums (zeros where a part has no texts)."""
    some = next(iter(totals.values()))
    fitted = add_sums([totals.get(part) or _empty_like(some) for part in fit])
    return fitted, totals.get("heldout") or _empty_like(some)


def _fit(totals, handle: LoadedModel, settings: Settings, target: str, heldout: float, read: Any, statuses: list[Any]) -> LearnedLens:
    """The lens from the sums: λ per layer chosen on the held-out texts, then `lens.safetensors` and `lens.json`."""
    fitted, held = fit_parts(totals, PARTS[:HELDOUT])
    delta, bias, lambdas, alphas = choose(fitted, held)
    meta = {
        "format": LENS_FORMAT,
        "model": handle.name,
        "label": handle.label,
        "fingerprint": fingerprint(handle, settings.tap),
        "dtype": str(handle.model.dtype).removeprefix("torch."),
        "family": handle.adapter.family,
        "objective": handle.adapter.objective,
        "tap": settings.tap,
        "reference": settings.reference,
        "target": target,
        "layers": handle.num_layers,
        "width": int(delta.shape[-1]),
        "lambda": [float(v) for v in lambdas],
        "alpha": [float(v) for v in alphas],
        "alpha_grid": list(ALPHAS),
        "tokens": {"fit": int(fitted["n"][0]), "heldout": int(held["n"][0])},
        "heldout": heldout,
        "corpus": {"path": read.path, "sha256": read.sha256, "texts": len(statuses)},
        "package_version": __version__,
    }
    return LearnedLens(delta.float(), bias.float(), meta, "")


def write_lens(folder: Path, lens: LearnedLens) -> None:
    """`lens.safetensors` and `lens.json` in `folder`, each whole or not at all (a temporary file and a rename)."""
    import json

    from safetensors.torch import save_file

    tensors = {f"delta.{l}": lens.delta[l].float().contiguous() for l in range(len(lens.delta))}
    tensors |= {f"bias.{l}": lens.bias[l].float().contiguous() for l in range(len(lens.bias))}
    store.atomic(folder / LENS_FILE, lambda p: save_file(tensors, str(p)))
    text = json.dumps(lens.meta, indent=2, ensure_ascii=False) + "\n"
    store.atomic(folder / LENS_JSON, lambda p: p.write_text(text, encoding="utf-8"))


def learning_curve(totals: dict[str, dict[str, torch.Tensor]], lens: LearnedLens) -> pd.DataFrame:
    """Per layer, the held-out R² (against the identity, and against the mean-only baseline) of the lens fitted
    on ¼, ½ and all of the fit split, each with the λ chosen for the whole fit split."""
    lambdas = torch.tensor(lens.meta["lambda"], dtype=torch.float64)
    columns: dict[str, Any] = {}
    for label, parts in (("quarter", PARTS[:1]), ("half", PARTS[:2]), ("all", PARTS[:HELDOUT])):
        identity, mean = held_r2(totals, parts, lambdas)
        suffix = "" if label == "all" else f"_{label}"
        columns[f"r2_vs_identity{suffix}"], columns[f"r2_vs_mean{suffix}"] = identity, mean
    return pd.DataFrame({"layer": np.arange(len(lambdas)), **columns})


def held_r2(totals: dict[str, dict[str, torch.Tensor]], parts: tuple[str, ...], lambdas: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Held-out R² of the lens fitted on `parts` with penalties `lambdas`, against the identity and the mean-only
    baseline, per layer (NaN without held-out tokens, and against the identity where a layer is its target)."""
    fitted, held = fit_parts(totals, parts)
    if float(held["n"].min()) == 0 or float(fitted["n"].min()) == 0:
        nan = np.full(len(lambdas), np.nan)
        return nan, nan
    delta, bias = fit(fitted, lambdas)
    error = squared_error(held, delta, bias)
    identity = squared_error(held, torch.zeros_like(delta), torch.zeros_like(bias))
    identity = torch.where(identity > 1e-12 * held["syy"], identity, torch.nan)
    mean = mean_error(held, fitted["sy"] / fitted["n"][:, None])
    return (1 - error / identity).numpy(), (1 - error / mean).numpy()
