"""A fitted lens measured on the held-out texts (`eval.csv`), learned against untrained, and its `report.html`."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..analysis import head_lens_for, head_targets, reference_for
from ..models import LoadedModel
from ..settings import Settings
from ..trace import encode, length_batches, trace
from ..tuned_lens import LearnedLens, Readout, readout, target_rows, target_taps
from ..views.export import vega_javascript
from ..views.lens import lens_charts
from .report import STYLE, _rows, embed_script


def evaluate(handle: LoadedModel, settings: Settings, lens: LearnedLens, texts: Sequence[str], batch_tokens: int) -> pd.DataFrame:
    """Per layer, over the non-special tokens of `texts` (the held-out ones): for `final`, the mean KL in bits,
    the top-1 agreement with the model's final prediction, the median tuned and head rank, and the share of
    tokens whose prediction depth is that layer; for `embedding`, top-1 and top-10 accuracy, the median probe
    rank and rank, and the mean probe cosine and cosine. Each for the learned lens and the untrained reading
    (`_untrained`), which is exactly today's head_rank, rank and cosine."""
    layers = handle.num_layers + 1
    encodings = [encode(handle, text, truncate=settings.truncate) for text in texts]
    inner = head_lens_for(handle) if lens.target == "final" else reference_for(handle, settings.reference)
    special = torch.tensor(handle.tokenizer.all_special_ids, device=handle.device)
    found: dict[str, list[Readout]] = {"learned": [], "untrained": []}
    for batch in length_batches([len(e) for e in encodings], batch_tokens):
        chosen = [encodings[i] for i in batch]
        traced = trace(handle, chosen, taps=target_taps(settings.tap, lens.target))
        ids = torch.cat([e.input_ids for e in chosen])
        keep = ~torch.isin(ids, special)
        offsets = torch.cat([handle.adapter.slot_offsets(handle.model, e.position_ids, e.token_type_ids) for e in chosen])
        targets = head_targets(handle, chosen) if lens.target == "final" else ids
        final = target_rows(handle, settings.reference, "final", traced, settings.tap, ids)[keep] if lens.target == "final" else None
        x = traced.packed(settings.tap)[:, keep]
        for name, chosen_lens in (("learned", lens), ("untrained", lens.untrained())):
            found[name].append(readout(chosen_lens, x, final, targets[keep], offsets[keep], inner))  # type: ignore[arg-type]
    columns: dict[str, Any] = {"layer": np.arange(layers)}
    for name, parts in found.items():
        suffix = "" if name == "learned" else "_untrained"
        if not parts:
            continue
        rank = torch.cat([p.rank for p in parts], dim=1).cpu().numpy()
        ranked = np.where(rank >= 0, rank.astype(float), np.nan)
        if lens.target == "final":
            kl = torch.cat([p.kl for p in parts], dim=1).cpu().numpy()  # type: ignore[misc]
            agree = (torch.cat([p.top for p in parts], dim=1) == torch.cat([p.final_top for p in parts])).cpu().numpy()  # type: ignore[misc]
            columns[f"kl_bits{suffix}"] = kl.mean(axis=1)
            columns[f"top1_agreement{suffix}"] = agree.mean(axis=1)
            columns[f"median_{'tuned' if suffix == '' else 'head'}_rank"] = np.nanmedian(ranked, axis=1)
            columns[f"depth_share{suffix}"] = depth_shares(agree)
        else:
            own = torch.cat([p.own for p in parts], dim=1).cpu().numpy()
            columns[f"top1_accuracy{suffix}"] = (rank == 0).mean(axis=1)
            columns[f"top10_accuracy{suffix}"] = (rank < 10).mean(axis=1)
            columns[f"median_{'probe_rank' if suffix == '' else 'rank'}"] = np.nanmedian(ranked, axis=1)
            columns[f"mean_{'probe_cosine' if suffix == '' else 'cosine'}"] = own.mean(axis=1)
    columns["tokens"] = np.full(layers, sum(p.rank.shape[1] for p in found["learned"]))
    return pd.DataFrame(columns)


def depth_shares(agree: np.ndarray) -> np.ndarray:
    """(N+1,) the share of tokens whose prediction depth is each layer: the first layer after which the lens's
    top-1 stays the model's final one (`agree` (N+1, T)); tokens whose last layer disagrees count nowhere."""
    stays = np.flip(np.logical_and.accumulate(np.flip(agree, axis=0), axis=0), axis=0)
    depth = np.where(stays.any(axis=0), stays.argmax(axis=0), -1)
    tokens = max(agree.shape[1], 1)
    return np.bincount(depth[depth >= 0], minlength=agree.shape[0]) / tokens


def lens_report(manifest: dict[str, Any], frame: pd.DataFrame, handle: LoadedModel) -> str:
    """The fit's page, offline (Vega inlined): what was fitted, then the held-out curves against the layer,
    learned against untrained, and the learning curve."""
    meta = manifest["lens"]
    specs = {name: chart.to_dict() for name, chart in lens_charts(frame, meta["target"]).items()}
    facts = [
        ("model", f"{meta['label']} ({meta['dtype']})"),
        ("tap, reference, target", f"{meta['tap']}, {meta['reference']}, {meta['target']}"),
        ("corpus", f"{meta['corpus']['path']} ({meta['corpus']['texts']:,} texts)"),
        ("tokens", f"{meta['tokens']['fit']:,} fit, {meta['tokens']['heldout']:,} held out ({meta['heldout']:.0%} of texts)"),
        ("fitting", f"{manifest['timing']['seconds']:,.1f} s"),
        ("attention-encodings", meta["package_version"]),
    ]
    lambdas = [(f"layer {l}", f"α {a:g}, λ {v:.3g}") for l, (a, v) in enumerate(zip(meta["alpha"], meta["lambda"]))]
    table = frame.round(4).to_html(index=False, border=0, na_rep="—")
    figures = "".join(f'<figure id="{name}"></figure>' for name in specs)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Lens report: {html.escape(meta['label'])}</title>
<style>{STYLE}</style><script>{vega_javascript()}</script></head>
<body>
<h1>Learned lens ({html.escape(meta['target'])})</h1>
<table id="facts">{_rows(facts)}</table><table id="lambdas">{_rows(lambdas)}</table>
<h2>Held-out texts, against the layer</h2>
<p class="explain">Per layer, on the held-out texts' non-special tokens: the learned lens T_l(x) = x + Δx + b
against the untrained reading (Δ = 0, b = 0: today's measures). R² compares the translated vector with the target
(1 − error / error of the identity, and 1 − error / error of the fit split's mean). The learning curve is the
held-out R² of lenses fitted on ¼, ½ and all of the fit split.</p>
<div class="charts">{figures}</div>
<h2>eval.csv</h2>
<div id="eval">{table}</div>
{embed_script(specs)}
</body></html>
"""
