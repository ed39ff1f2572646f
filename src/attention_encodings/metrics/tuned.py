"""A learned lens: per-layer affine translators `T_l(x) = x + x @ delta[l].T + bias[l]`, fitted in closed form.

For layer l, rows X (tapped vectors) and Y (the target: the last layer's vector, or the token's own reference row),
the fit is ridge regression toward the identity on centred X and Y, with the bias unpenalised:
    W = (XcᵀXc + λI)⁻¹ Xcᵀ(Yc − Xc),   delta = Wᵀ,   bias = ȳ − x̄ − x̄ W.
Everything it needs is a float64 sum over tokens (n, Σx, Σy, Σ|y|², XᵀX, XᵀY), so sums from batches in any order
add up to the same lens, and so does the held-out squared error of any translator, which picks λ with no second
pass over the data. With Δ = 0 and b = 0 the translator is the identity: the untrained reading.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from .lens import Lens

ALPHAS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
"""The λ grid, as multiples of tr(XcᵀXc)/d (the mean variance of a coordinate times n): scale-free across layers."""

SUM_KEYS = ("n", "sx", "sy", "syy", "xx", "xy")
"""`n` (L,), Σx and Σy (L, d), Σ|y|² (L,), XᵀX and XᵀY (L, d, d): all float64."""

Sums = dict[str, Tensor]


def lens_sums(x: Tensor, y: Tensor) -> Sums:
    """The float64 sums of one batch: `x` (L, T, d) tapped vectors and `y` the targets, (L, T, d) or (T, d) (the
    same target at every layer, never copied per layer); rows are tokens. One batched matmul per sum."""
    x = x.double()
    y = y.double()
    layers, tokens = x.shape[:2]
    shared = y.dim() == 2
    return {
        "n": torch.full((layers,), float(tokens), dtype=torch.float64, device=x.device),
        "sx": x.sum(dim=1),
        "sy": y.sum(dim=0).expand(layers, -1).clone() if shared else y.sum(dim=1),
        "syy": y.pow(2).sum().expand(layers).clone() if shared else y.pow(2).sum(dim=(1, 2)),
        "xx": x.transpose(1, 2) @ x,
        "xy": x.transpose(1, 2) @ y,
    }


def add_sums(parts: Iterable[Mapping[str, Tensor]]) -> Sums:
    """The sums of several batches (any order: float64, to about 1e-12 of each value)."""
    total: Sums = {}
    for part in parts:
        total = {key: part[key].double() + total[key] if key in total else part[key].double().clone() for key in SUM_KEYS}
    return total


def _centred(sums: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """x̄, ȳ (L, d) and the centred XcᵀXc, XcᵀYc (L, d, d)."""
    n = sums["n"][:, None]
    mx, my = sums["sx"] / n, sums["sy"] / n
    xx = sums["xx"] - n[..., None] * mx[:, :, None] * mx[:, None, :]
    xy = sums["xy"] - n[..., None] * mx[:, :, None] * my[:, None, :]
    return mx, my, xx, xy


def scales(sums: Mapping[str, Tensor]) -> Tensor:
    """(L,) tr(XcᵀXc)/d per layer: λ = α · scale."""
    _, _, xx, _ = _centred(sums)
    return xx.diagonal(dim1=1, dim2=2).sum(dim=-1) / xx.shape[-1]


def fit(sums: Mapping[str, Tensor], lambdas: Tensor) -> tuple[Tensor, Tensor]:
    """`delta` (L, d, d) and `bias` (L, d), float64, for the ridge penalties `lambdas` (L,); an infinite λ gives
    Δ = 0 (and the bias ȳ − x̄). A layer whose X already is Y gets zeros exactly."""
    mx, my, xx, xy = _centred(sums)
    d = xx.shape[-1]
    eye = torch.eye(d, dtype=torch.float64, device=xx.device)
    finite = torch.isfinite(lambdas)
    penalty = torch.where(finite, lambdas, torch.zeros_like(lambdas)).to(xx)
    w = torch.linalg.solve(xx + penalty[:, None, None] * eye, xy - xx)
    w = torch.where(finite[:, None, None].to(w.device), w, torch.zeros_like(w))
    bias = my - mx - (mx[:, None, :] @ w).squeeze(1)
    return w.transpose(1, 2).contiguous(), bias


def squared_error(sums: Mapping[str, Tensor], delta: Tensor, bias: Tensor) -> Tensor:
    """(L,) Σ|y − T(x)|² over the tokens the `sums` are of, for translators (delta, bias), from the sums alone:
    with M = I + Δᵀ, Σ|y|² − 2 tr(MᵀXᵀY) − 2 b·Σy + tr(MᵀXᵀX M) + 2 b·(Σx M) + n|b|²."""
    d = delta.shape[-1]
    m = torch.eye(d, dtype=torch.float64, device=delta.device) + delta.double().transpose(1, 2)
    b = bias.double()
    cross = (m * sums["xy"]).sum(dim=(1, 2))
    quad = (m * (sums["xx"] @ m)).sum(dim=(1, 2))
    sx_m = (sums["sx"][:, None, :] @ m).squeeze(1)
    error = sums["syy"] - 2 * cross - 2 * (b * sums["sy"]).sum(-1) + quad + 2 * (b * sx_m).sum(-1)
    return (error + sums["n"] * b.pow(2).sum(-1)).clamp_min(0)


def mean_error(sums: Mapping[str, Tensor], mean: Tensor) -> Tensor:
    """(L,) Σ|y − mean|² (the mean-only baseline, with `mean` (L, d) taken from the fit split)."""
    mean = mean.double()
    return sums["syy"] - 2 * (mean * sums["sy"]).sum(-1) + sums["n"] * mean.pow(2).sum(-1)


def choose(
    fit_sums: Mapping[str, Tensor], held_sums: Mapping[str, Tensor], alphas: Sequence[float] = ALPHAS
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fit on `fit_sums` for every α of the grid and keep, per layer, the λ = α·scale of least held-out squared
    error. Returns (delta, bias, lambdas, alphas chosen), float64. Without held-out tokens, the smallest α."""
    scale = scales(fit_sums)
    best_error = torch.full_like(scale, torch.inf)
    delta = bias = lambdas = chosen = None
    for alpha in alphas:
        lam = alpha * scale
        d, b = fit(fit_sums, lam)
        error = squared_error(held_sums, d, b) if float(held_sums["n"].min()) > 0 else torch.zeros_like(scale)
        better = error < best_error
        if delta is None:
            delta, bias, lambdas, chosen = d, b, lam.clone(), torch.full_like(scale, alpha)
        else:
            delta = torch.where(better[:, None, None], d, delta)
            bias = torch.where(better[:, None], b, bias)
            lambdas = torch.where(better, lam, lambdas)
            chosen = torch.where(better, torch.full_like(scale, alpha), chosen)
        best_error = torch.where(better, error, best_error)
    assert delta is not None and bias is not None and lambdas is not None and chosen is not None
    return delta, bias, lambdas, chosen


def translate(states: Tensor, delta: Tensor, bias: Tensor) -> Tensor:
    """`T_l(x) = x + x @ delta[l].T + bias[l]` for `states` (L, T, d), in float32: one batched matmul."""
    x = states.float()
    return torch.baddbmm(x + bias.float()[:, None, :], x, delta.float().transpose(1, 2))


class TranslatedLens(Lens):
    """Another lens (the output head, a reference space) read through a learned lens: the scores of `T_l(x)`.
    `scan` hands a lens each token's vectors at every layer, (t, L, h), so layer l is row l of the second axis."""

    def __init__(self, inner: Lens, delta: Tensor, bias: Tensor) -> None:
        super().__init__(inner.vocab_size)
        self.name = f"tuned {inner.name}"
        self.inner, self.delta, self.bias = inner, delta.float(), bias.float()

    def translated(self, states: Tensor) -> Tensor:
        """`T_l` of `states` (L, T, d), in their dtype."""
        return translate(states, self.delta, self.bias).to(states.dtype)

    def scores(self, states: Tensor, offsets: Tensor, out: Tensor | None = None) -> Tensor:
        moved = self.translated(states.transpose(0, 1)).transpose(0, 1)
        return self.inner.scores(moved, offsets, out)


def kl_bits(
    head: Callable[[Tensor], Tensor], lensed: Tensor, final: Tensor, *, chunk_bytes: int = 192 << 20
) -> tuple[Tensor, Tensor]:
    """KL(final ‖ lens) in bits, (L, T), and the final distribution's top-1 id (T,): `lensed` (L, T, d) are the
    vectors the head reads at each layer, `final` (T, d) the last layer's. Chunked over tokens so that the
    (L, t, V) logits stay within `chunk_bytes`."""
    layers, tokens, d = lensed.shape
    kls, tops = [], []
    probe = head(final[:1])
    step = max(1, chunk_bytes // (4 * probe.shape[-1] * (layers + 1)))
    for start in range(0, tokens, step):
        stop = min(tokens, start + step)
        target = torch.log_softmax(head(final[start:stop]).float(), dim=-1)
        logits = head(lensed[:, start:stop].reshape(-1, d)).float().view(layers, stop - start, -1)
        kl = (target.exp()[None] * (target[None] - torch.log_softmax(logits, dim=-1))).sum(dim=-1)
        kls.append(kl.clamp_min(0) / torch.log(torch.tensor(2.0)))
        tops.append(target.argmax(dim=-1))
    return torch.cat(kls, dim=1), torch.cat(tops)
