"""The measures computed the plain way, straight from their definitions, to check the fast path against.

Loops over tokens and layers, builds each slot's reference matrix explicitly, sorts the full vocabulary, takes
the vocabulary's mean and spread in float64, and loops over every pair of tokens for the anisotropy: slow and
obvious on purpose. Normalisation is applied to the vectors and to the materialised reference rows as defined.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from attention_encodings.models import LoadedModel
from attention_encodings.trace import Encoding, encode, trace

TIE = 1e-5
"""Two cosines closer than this are treated as a tie (float noise), where orderings may differ."""


def reference_rows(handle: LoadedModel, encoding: Encoding, p: int, reference: str) -> torch.Tensor:
    """R_p: every vocabulary item's reference encoding in token p's slot, built explicitly (V, h)."""
    model = handle.model.base_model
    kind = model.config.model_type
    if kind == "gpt2":
        word = model.wte.weight.detach()
        return word if reference == "word" else word + model.wpe.weight[encoding.position_ids[p]].detach()
    if kind in ("llama", "qwen2", "qwen3", "mistral"):
        return model.embed_tokens.weight.detach()  # no absolute positions: the embedding reference is E itself
    emb = model.embeddings
    word = emb.word_embeddings.weight.detach()
    if reference == "word":
        return word
    rows = word + emb.position_embeddings.weight[encoding.position_ids[p]].detach()
    if encoding.token_type_ids is not None:
        rows = rows + emb.token_type_embeddings.weight[encoding.token_type_ids[p]].detach()
    norm = emb.LayerNorm
    rows = F.layer_norm(rows, norm.normalized_shape, norm.weight.detach(), norm.bias.detach(), norm.eps)
    projection = getattr(model, "embeddings_project", None)
    if projection is not None:
        with torch.no_grad():
            rows = projection(rows)
    return rows


@dataclass
class Plain:
    cosine: list[list[float]]
    rank: list[list[int]]
    overlap: list[list[int]]
    neighbours: list[list[list[int]]]
    scores: list[list[torch.Tensor]]
    """scores[l][p]: the full (V,) cosine vector, kept to judge ties."""
    vocab_mean: list[list[float]]
    vocab_std: list[list[float]]
    zscore: list[list[float]]
    anisotropy: list[float | None]


def plain_stats(handle: LoadedModel, texts: list[str], tap: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-layer mean and population std (N+1, d) of the tapped vectors of the texts' non-special tokens, in
    float64, one text and one token at a time; and how many tokens that is."""
    special = set(handle.tokenizer.all_special_ids)
    vectors: list[torch.Tensor] = []
    for text in texts:
        encoding = encode(handle, text)
        states = trace(handle, encoding, taps=(tap,)).states(tap)
        for p, token_id in enumerate(encoding.input_ids.tolist()):
            if token_id not in special:
                vectors.append(states[:, p].double())
    stacked = torch.stack(vectors, dim=1)  # (N+1, tokens, d)
    mean = stacked.mean(dim=1)
    std = ((stacked - mean[:, None]) ** 2).mean(dim=1).sqrt()
    return mean.numpy(), std.numpy(), len(vectors)


def plain_measures(
    handle: LoadedModel,
    encoding: Encoding,
    states: torch.Tensor,
    reference: str,
    top_k: int,
    n: int,
    normalize: str = "none",
    mean: np.ndarray | None = None,
    std: np.ndarray | None = None,
) -> Plain:
    """Every measure of `states` (N+1, T, d) by its definition; with `normalize` (center, standardize), the
    states become (x − mean[l]) / std[l] and every reference row (R − mean[0]) / std[0] first."""
    states = states.float()
    shift = torch.zeros(states.shape[0], states.shape[-1]) if mean is None else torch.tensor(mean, dtype=torch.float32)
    scale = torch.ones_like(shift) if normalize != "standardize" else torch.tensor(std, dtype=torch.float32)
    if normalize != "none":
        states = (states - shift[:, None]) / scale[:, None]
    layers, tokens, _ = states.shape
    ids = encoding.input_ids.tolist()
    cosine = [[0.0] * tokens for _ in range(layers)]
    rank = [[0] * tokens for _ in range(layers)]
    vocab_mean = [[0.0] * tokens for _ in range(layers)]
    vocab_std = [[0.0] * tokens for _ in range(layers)]
    zscore = [[0.0] * tokens for _ in range(layers)]
    tops: list[list[set[int]]] = [[set() for _ in range(tokens)] for _ in range(layers)]
    neighbours: list[list[list[int]]] = [[[] for _ in range(tokens)] for _ in range(layers)]
    scores: list[list[torch.Tensor]] = [[torch.empty(0)] * tokens for _ in range(layers)]
    for p in range(tokens):
        rows = reference_rows(handle, encoding, p, reference).float()
        if normalize != "none":
            rows = (rows - shift[0]) / scale[0]
        for layer in range(layers):
            cos = F.cosine_similarity(states[layer, p][None, :], rows, dim=-1)
            own = cos[ids[p]]
            order = torch.argsort(cos, descending=True)
            cosine[layer][p] = float(own)
            rank[layer][p] = int((cos > own).sum())
            tops[layer][p] = set(order[:top_k].tolist())
            neighbours[layer][p] = order[:n].tolist()
            scores[layer][p] = cos
            exact = cos.double()
            vocab_mean[layer][p] = float(exact.mean())
            vocab_std[layer][p] = float(((exact - exact.mean()) ** 2).mean().sqrt())
            zscore[layer][p] = (float(own) - vocab_mean[layer][p]) / vocab_std[layer][p]
    overlap = [[len(tops[layer][p] & tops[layer + 1][p]) for p in range(tokens)] for layer in range(layers - 1)]
    special = set(handle.tokenizer.all_special_ids)
    ordinary = [p for p in range(tokens) if ids[p] not in special]
    anisotropy: list[float | None] = []
    for layer in range(layers):
        pairs = [
            float(F.cosine_similarity(states[layer, p], states[layer, q], dim=0))
            for p in ordinary
            for q in ordinary
            if p != q
        ]
        anisotropy.append(sum(pairs) / len(pairs) if pairs else None)
    return Plain(cosine, rank, overlap, neighbours, scores, vocab_mean, vocab_std, zscore, anisotropy)


def ties_near(scores: torch.Tensor, value: float) -> int:
    """How many items sit within float noise of `value` (so may order either way)."""
    return int(((scores - value).abs() < TIE).sum())


def boundary_tied(scores: torch.Tensor, k: int) -> bool:
    """Whether the k-th and (k+1)-th best cosines tie, making the top-k set ambiguous."""
    best = torch.topk(scores, k + 1).values
    return bool(best[k - 1] - best[k] < TIE)


def assert_matches_plain(data: dict, plain: Plain, top_k: int) -> None:
    """A result in the JSON contract's shape (`Analysis.to_dict()` or parsed CLI output) equals the plain
    computation: cosine to 1e-5; rank, overlap and neighbours exactly, except where cosines tie within noise."""
    layers, tokens = len(plain.cosine), len(plain.cosine[0])
    assert np.allclose(np.array(data["cosine"]), np.array(plain.cosine), atol=TIE, rtol=0)
    assert np.allclose(np.array(data["vocab_mean"]), np.array(plain.vocab_mean), atol=TIE, rtol=0)
    assert np.allclose(np.array(data["vocab_std"]), np.array(plain.vocab_std), atol=TIE, rtol=1e-4)
    assert np.allclose(np.array(data["zscore"]), np.array(plain.zscore), atol=1e-3, rtol=1e-4)
    anisotropy = data["anisotropy"]
    assert [value is None for value in anisotropy] == [value is None for value in plain.anisotropy]
    assert np.allclose([v for v in anisotropy if v is not None], [v for v in plain.anisotropy if v is not None], atol=1e-5)
    for layer in range(layers):
        for p in range(tokens):
            scores = plain.scores[layer][p]
            own = plain.cosine[layer][p]
            slack = ties_near(scores, own) - 1
            assert abs(data["rank"][layer][p] - plain.rank[layer][p]) <= slack, (layer, p)
            fast = [n["id"] for n in data["neighbours"][layer][p]]
            assert len(fast) == len(plain.neighbours[layer][p])
            for place, (got, want) in enumerate(zip(fast, plain.neighbours[layer][p])):
                if got != want:
                    assert abs(float(scores[got]) - float(scores[want])) < TIE, (layer, p, place)
    for layer in range(layers - 1):
        for p in range(tokens):
            got, want = data["overlap"][layer][p], plain.overlap[layer][p]
            if got != want:
                ambiguous = boundary_tied(plain.scores[layer][p], top_k) or boundary_tied(plain.scores[layer + 1][p], top_k)
                assert ambiguous, (layer, p, got, want)


HEAD_TIE = 1e-4
"""Two logits closer than this are treated as a tie: logits are larger than cosines, and a head applied to one
vector may round differently from the same head applied to a batch."""


def head_logits(handle: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    """The model's output head applied to one hidden vector, calling its modules by name: the final norm and
    lm_head for a causal LM, the MLM head for a masked one."""
    model = handle.model
    kind = model.config.model_type
    with torch.no_grad():
        if kind == "gpt2":
            return model.lm_head(model.transformer.ln_f(x))
        if kind in ("llama", "qwen2", "qwen3", "mistral"):
            return model.lm_head(model.model.norm(x))
        if kind == "bert":
            return model.cls(x)
        if kind == "roberta":
            return model.lm_head(x)
    raise ValueError(f"no plain head for {kind}")


@dataclass
class PlainHead:
    rank: list[list[int | None]]
    predictions: list[list[list[int]]]
    probabilities: list[list[list[float]]]
    logits: list[list[torch.Tensor]]
    """logits[l][p]: the full (V,) logit vector, kept to judge ties."""
    targets: list[int | None]


def plain_head(handle: LoadedModel, encoding: Encoding, states: torch.Tensor, causal: bool, n: int) -> PlainHead:
    """head_rank and the head's n most probable items, by definition: the target is the token itself (masked)
    or the next token (causal; none after the last)."""
    layers, tokens, _ = states.shape
    ids = encoding.input_ids.tolist()
    targets = [(ids[p + 1] if p + 1 < tokens else None) if causal else ids[p] for p in range(tokens)]
    rank: list[list[int | None]] = [[None] * tokens for _ in range(layers)]
    predictions: list[list[list[int]]] = [[[] for _ in range(tokens)] for _ in range(layers)]
    probabilities: list[list[list[float]]] = [[[] for _ in range(tokens)] for _ in range(layers)]
    logits: list[list[torch.Tensor]] = [[torch.empty(0)] * tokens for _ in range(layers)]
    for p, target in enumerate(targets):
        for layer in range(layers):
            scores = head_logits(handle, states[layer, p]).float()
            order = torch.argsort(scores, descending=True)
            if target is not None:
                rank[layer][p] = int((scores > scores[target]).sum())
            predictions[layer][p] = order[:n].tolist()
            probabilities[layer][p] = torch.softmax(scores, dim=-1)[order[:n]].tolist()
            logits[layer][p] = scores
    return PlainHead(rank, predictions, probabilities, logits, targets)


def assert_head_matches_plain(data: dict, plain: PlainHead) -> None:
    """A result in the JSON contract's shape has the plain head_rank (exactly, but for logits tied within noise;
    null where there is no target) and predictions (ids exactly but for ties; probabilities to 1e-5)."""
    layers, tokens = len(plain.rank), len(plain.rank[0])
    for layer in range(layers):
        for p in range(tokens):
            scores, target = plain.logits[layer][p], plain.targets[p]
            got, want = data["head_rank"][layer][p], plain.rank[layer][p]
            if target is None:
                assert got is None and want is None, (layer, p)
            else:
                slack = int(((scores - scores[target]).abs() < HEAD_TIE).sum()) - 1
                assert abs(got - want) <= slack, (layer, p, got, want)
            fast = data["predictions"][layer][p]
            assert len(fast) == len(plain.predictions[layer][p])
            for place, (item, want_id) in enumerate(zip(fast, plain.predictions[layer][p])):
                if item["id"] != want_id:
                    assert abs(float(scores[item["id"]]) - float(scores[want_id])) < HEAD_TIE, (layer, p, place)
                assert abs(item["probability"] - plain.probabilities[layer][p][place]) < 1e-5, (layer, p, place)


def plain_lens_sums(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """One layer's fit sums over tokens (rows of `x` and `y`), token by token: a loop of outer products."""
    d = x.shape[1]
    sums = {"n": 0.0, "sx": np.zeros(d), "sy": np.zeros(d), "syy": 0.0, "xx": np.zeros((d, d)), "xy": np.zeros((d, d))}
    for row, target in zip(x.astype(np.float64), y.astype(np.float64)):
        sums["n"] += 1
        sums["sx"] += row
        sums["sy"] += target
        sums["syy"] += float(target @ target)
        sums["xx"] += np.outer(row, row)
        sums["xy"] += np.outer(row, target)
    return sums


def plain_lens_fit(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """One layer's ridge-toward-identity translator straight from its rows, as a least-squares problem:
    min |Xc W − (Yc − Xc)|² + λ|W|², stacked as [Xc; √λ I] W = [Yc − Xc; 0] for numpy.linalg.lstsq; then
    delta = Wᵀ and bias = ȳ − x̄ − x̄ W."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    mx, my = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - mx, y - my
    d = x.shape[1]
    a = np.vstack([xc, np.sqrt(lam) * np.eye(d)])
    b = np.vstack([yc - xc, np.zeros((d, d))])
    w = np.linalg.lstsq(a, b, rcond=None)[0]
    return w.T, my - mx - mx @ w


BERT_LIKE = ("bert", "roberta", "xlm-roberta", "camembert", "electra")
LLAMA_LIKE = ("llama", "qwen2", "qwen3", "mistral")


@dataclass
class PlainAttention:
    weights: torch.Tensor
    """(H, T, T) softmax(QKᵀ / √d_head), masked causally for a decoder."""
    values: torch.Tensor
    """(H, T, d_head): each query head's values (its group's, for grouped-query attention), bias included."""
    heads: torch.Tensor
    """(H, T, d): c_h = z_h W_O^h, with z_h = A_h V_h, head by head."""
    sources: torch.Tensor
    """(H, T, T, d): c_{h,p←q} = A_h[p, q] v_{h,q} W_O^h, source by source."""


def _linear(x: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    """x times an nn.Linear's weight (out, in) or a GPT-2 Conv1D's (in, out), plus its bias."""
    weight = module.weight.detach()
    out = x @ (weight.T if isinstance(module, torch.nn.Linear) else weight)
    return out if getattr(module, "bias", None) is None else out + module.bias.detach()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def plain_attention(handle: LoadedModel, block_input: torch.Tensor, layer: int) -> PlainAttention:
    """Block `layer`'s attention (0-based) on its input (T, d), from its weights by hand: the queries, keys and
    values, softmax(QKᵀ / √d_head) (rotary positions and a causal mask where the family has them), A·V head by head,
    then each head's slice of the output projection."""
    model = handle.model.base_model
    config = handle.model.config
    kind = config.model_type
    heads = config.num_attention_heads
    x = block_input.float()
    tokens = x.shape[0]
    causal = False
    if kind in BERT_LIKE:
        attention = model.encoder.layer[layer].attention
        q, k, v = (_linear(x, getattr(attention.self, name)) for name in ("query", "key", "value"))
        out = attention.output.dense
    elif kind == "distilbert":
        attention = model.transformer.layer[layer].attention
        q, k, v = (_linear(x, getattr(attention, name)) for name in ("q_lin", "k_lin", "v_lin"))
        out = attention.out_lin
    elif kind == "gpt2":
        block = model.h[layer]
        normed = F.layer_norm(x, (x.shape[-1],), block.ln_1.weight.detach(), block.ln_1.bias.detach(), block.ln_1.eps)
        q, k, v = _linear(normed, block.attn.c_attn).split(x.shape[-1], dim=-1)
        out, causal = block.attn.c_proj, True
    elif kind in LLAMA_LIKE:
        block = model.layers[layer]
        norm = block.input_layernorm
        normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight.detach()
        q, k, v = (_linear(normed, getattr(block.self_attn, name)) for name in ("q_proj", "k_proj", "v_proj"))
        out, causal = block.self_attn.o_proj, True
    else:
        raise ValueError(kind)
    d_head = q.shape[-1] // heads
    q, k, v = (t.view(tokens, -1, d_head).transpose(0, 1) for t in (q, k, v))  # (heads or kv heads, T, d_head)
    group = heads // k.shape[0]
    k, v = k.repeat_interleave(group, dim=0), v.repeat_interleave(group, dim=0)
    if kind in LLAMA_LIKE:
        rotary = model.rotary_emb
        freqs = torch.arange(tokens, dtype=torch.float)[:, None] * rotary.inv_freq.float()[None, :]
        angles = torch.cat((freqs, freqs), dim=-1)
        cos, sin = angles.cos() * rotary.attention_scaling, angles.sin() * rotary.attention_scaling
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
    scores = q @ k.transpose(-1, -2) / d_head**0.5
    if causal:
        scores = scores.masked_fill(torch.ones(tokens, tokens, dtype=torch.bool).triu(1), float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    weight = out.weight.detach()
    matrix = weight.T if isinstance(out, torch.nn.Linear) else weight  # (H·d_head, d)
    head_vectors, sources = [], []
    for h in range(heads):
        w_h = matrix[h * d_head : (h + 1) * d_head]
        head_vectors.append((weights[h] @ v[h]) @ w_h)
        sources.append(weights[h][:, :, None] * (v[h] @ w_h)[None, :, :])
    return PlainAttention(weights, v, torch.stack(head_vectors), torch.stack(sources))


def out_projection(handle: LoadedModel, layer: int) -> torch.nn.Module:
    """Block `layer`'s attention output projection, by its name in each family."""
    model = handle.model.base_model
    kind = handle.model.config.model_type
    if kind in BERT_LIKE:
        return model.encoder.layer[layer].attention.output.dense
    if kind == "distilbert":
        return model.transformer.layer[layer].attention.out_lin
    if kind == "gpt2":
        return model.h[layer].attn.c_proj
    return model.layers[layer].self_attn.o_proj


def zeroed_tap(handle: LoadedModel, encoding: Encoding, layer: int, head: int, tap: str) -> torch.Tensor:
    """The real model re-run with head `head` of block `layer` (0-based) zeroed (a pre-hook on the output
    projection sets its slice of z to 0): the tap at that block, (T, d)."""
    projection = out_projection(handle, layer)
    heads = handle.model.config.num_attention_heads

    def zero(module: torch.nn.Module, args: tuple) -> tuple:
        z = args[0].clone()
        d_head = z.shape[-1] // heads
        z[..., head * d_head : (head + 1) * d_head] = 0
        return (z, *args[1:])

    hook = projection.register_forward_pre_hook(zero)
    try:
        return trace(handle, encoding, taps=(tap,)).states(tap)[layer + 1]
    finally:
        hook.remove()


def plain_rank(vector: torch.Tensor, unit_rows: torch.Tensor, own: int) -> tuple[int, int]:
    """The rank of item `own` by cosine of `vector` to every row (V, d, each of unit length), and how many items
    tie it within TIE."""
    cos = unit_rows @ (vector.float() / vector.float().norm())
    return int((cos > cos[own]).sum()), ties_near(cos, float(cos[own])) - 1


def plain_bootstrap_difference(
    rows: list[tuple[int, int, float]], resamples: int, seed: int
) -> tuple[float, float, float]:
    """The function − content difference of mean value over rows (text, group 0/1, value), and its percentile 95 %
    interval: resample by resample, draw texts with replacement (the same multinomial draws as the fast path) and
    average every drawn text's rows, one loop per resample."""
    texts = sorted({text for text, _, _ in rows})
    by_text = {t: [(g, v) for text, g, v in rows if text == t] for t in texts}

    def difference(weights: list[float]) -> float:
        totals, counts = [0.0, 0.0], [0.0, 0.0]
        for t, weight in zip(texts, weights):
            for g, v in by_text[t]:
                totals[g] += weight * v
                counts[g] += weight
        return totals[0] / counts[0] - totals[1] / counts[1]

    draws = np.random.default_rng(seed).multinomial(len(texts), np.full(len(texts), 1 / len(texts)), size=resamples)
    found = sorted(difference(list(draw)) for draw in draws)
    low, high = np.quantile(found, [0.025, 0.975])
    return difference([1.0] * len(texts)), float(low), float(high)
