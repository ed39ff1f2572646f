"""The JSON API: good requests give the CLI's contract; every bad one is a 4xx with one line of detail."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pandas as pd
import pytest
from conftest import CORPUS, SEED, live_server, subprocess_env
from fastapi.testclient import TestClient

from attention_encodings import analysis as analysis_module
from attention_encodings import analyze, load_model
from attention_encodings.faces import server as server_module
from attention_encodings.faces.cli import main
from attention_encodings.faces.server import MAX_CHARS, MAX_TOKENS, create_app, listen, load_allowed


@pytest.fixture(scope="module")
def client(tiny_roberta):
    return TestClient(create_app(["bundled", str(tiny_roberta)]))


def test_models_lists_the_allowed_models_first_one_default(client, tiny_roberta):
    info = client.get("/api/models").json()
    assert [m["id"] for m in info["models"]] == ["bundled", str(tiny_roberta)]
    bundled = info["models"][0]
    assert bundled["label"] == "all-MiniLM-L6-v2 (bundled)" and bundled["reason"] == "named explicitly"
    assert bundled["layers"] == 6 and bundled["vocab_size"] == 30522 and bundled["max_tokens"] == MAX_TOKENS
    assert info["models"][1]["max_tokens"] == 38  # the tiny model's own limit is lower than the server's
    assert info["taps"] == ["resid_mid", "attn_ln", "resid_post"] and info["references"] == ["embedding", "word"]
    assert info["defaults"] == {
        "tap": "resid_mid", "reference": "embedding", "top_k": 100, "neighbours": 15, "similarity": False,
        "attribution": False, "normalize": "none", "stats": None, "lens": None
    }
    assert info["normalizations"] == ["none", "center", "standardize"] and info["stats"] == [] and info["lenses"] == []
    assert [m["name"] for m in info["measures"]] == [
        "cosine", "rank", "overlap", "vocab_mean", "vocab_std", "zscore", "head_rank",
        "tuned_rank", "tuned_kl", "probe_cosine", "probe_rank",
    ]
    assert [m["name"] for m in info["text_measures"]] == ["anisotropy"]


def test_default_server_offers_the_default_resolution():
    info = TestClient(create_app()).get("/api/models").json()
    (model,) = info["models"]
    assert model["id"] == "default" and "bundled" in model["label"]
    assert model["reason"].startswith("offline default, because roberta-base is not in the HF cache")


def test_a_request_may_name_a_served_model_as_the_user_would():
    """A server started without --models runs `default`; `bundled` and the hub id name that same model."""
    client = TestClient(create_app())
    expected = client.post("/api/analyze", json={"text": SEED}).json()
    for name in ("default", "bundled", "sentence-transformers/all-MiniLM-L6-v2"):
        response = client.post("/api/analyze", json={"text": SEED, "model": name})
        assert response.status_code == 200, response.text
        assert response.json()["cosine"] == expected["cosine"]
    _one_line(
        client.post("/api/analyze", json={"text": SEED, "model": "roberta-base"}), 422,
        "unknown model 'roberta-base'; this server runs: default (also sentence-transformers/all-MiniLM-L6-v2, bundled)",
    )


def test_analyze_returns_the_cli_contract(client, bundled):
    response = client.post("/api/analyze", json={"text": SEED})
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.json() == json.loads(analyze(SEED, bundled).to_json())
    assert response.json()["model"] == "sentence-transformers/all-MiniLM-L6-v2" and "site-packages" not in response.text


def test_analyze_mirrors_every_argument(client, tiny_roberta):
    body = {"text": CORPUS[1], "model": str(tiny_roberta), "tap": "attn_ln", "reference": "word", "top_k": 7, "neighbours": 3}
    data = client.post("/api/analyze", json=body).json()
    expected = analyze(CORPUS[1], load_model(str(tiny_roberta)), "attn_ln", "word", 7, 3)
    assert data == json.loads(expected.to_json())
    assert (data["tap"], data["reference"], data["top_k"], len(data["neighbours"][0][0])) == ("attn_ln", "word", 7, 3)


def test_csv_is_the_tidy_table(client, bundled):
    response = client.post("/api/analyze/csv", json={"text": SEED, "tap": "resid_post"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    frame = pd.read_csv(io.StringIO(response.text))
    expected = analyze(SEED, bundled, tap="resid_post").to_frame()
    assert list(frame.columns) == list(expected.columns) and len(frame) == len(expected)
    assert frame.cosine.to_numpy() == pytest.approx(expected.cosine.to_numpy(), abs=1e-6)


def test_charts_carry_every_spec_and_its_data_once(client):
    payload = client.post("/api/charts", json={"text": SEED}).json()
    assert set(payload["charts"]) == {
        "cosine", "rank", "overlap", "zscore", "cosine_heatmap", "rank_heatmap", "overlap_heatmap", "zscore_heatmap", "neighbours"
    }
    assert payload["measures"] == ["cosine", "rank", "overlap", "zscore"]
    assert payload["selected"] == 1 and payload["tokens"][8]["text"] == "flies"
    assert payload["model"]["label"] == "all-MiniLM-L6-v2 (bundled)"
    for spec in payload["charts"].values():
        assert "datasets" not in spec and spec["data"]["name"] in payload["datasets"]
        assert {p["name"] for p in spec["params"]} == {"selected", "hovered", "token_labels"}
    assert len(payload["datasets"]) == 2  # the measures, shared by eight charts, and the neighbour table


def test_similarity_is_in_the_contract_and_adds_the_pair_charts(client, bundled):
    data = client.post("/api/analyze", json={"text": SEED, "similarity": True}).json()
    assert data == json.loads(analyze(SEED, bundled, similarity=True).to_json())
    assert len(data["similarity"]) == 7 and len(data["similarity"][0]) == len(data["similarity"][0][0]) == 14
    payload = client.post("/api/charts", json={"text": SEED, "similarity": True}).json()
    assert {"pair", "similarity"} <= set(payload["charts"]) and len(payload["datasets"]["similarity"]) == 7 * 14
    names = {p["name"] for p in payload["charts"]["similarity"]["params"]}
    assert {"selected", "paired", "similarity_layer", "run_keys", "run_token_labels"} <= names
    _one_line(client.post("/api/analyze/csv", json={"text": SEED, "similarity": True}), 422, "not the CSV")
    _one_line(client.post("/api/analyze", json={"text": SEED, "similarity": "yes"}), 422, "similarity: Input should be a valid boolean")


def test_compare_draws_runs_side_by_side(client, tiny_roberta):
    runs = [{"text": SEED, "tap": "resid_mid"}, {"text": SEED, "tap": "resid_post", "similarity": True}]
    payload = client.post("/api/compare", json={"runs": runs}).json()
    assert [run["label"] for run in payload["runs"]] == ["resid_mid", "resid_post"] and payload["note"] is None
    assert set(payload["charts"]) == {
        "cosine", "rank", "overlap", "zscore", "cosine_heatmap", "rank_heatmap", "overlap_heatmap", "zscore_heatmap", "neighbours"
    }
    assert {row["run"] for row in payload["datasets"]["measures"]} == {0, 1}  # no pair: run A has no similarity
    mixed = f"{SEED} Unbelievably, bananas fly."
    models = [{"text": mixed}, {"text": mixed, "model": str(tiny_roberta)}]
    payload = client.post("/api/compare", json={"runs": models}).json()
    assert payload["model"]["id"] == str(tiny_roberta) and payload["tokens"][1]["text"] == "time"  # run A's tokens
    assert "not in every run" in payload["note"] and "##bel" in payload["note"]
    _one_line(client.post("/api/compare", json={"runs": runs[:1]}), 422, "runs: List should have at least 2 items")
    _one_line(client.post("/api/compare", json={"runs": runs * 3}), 422, "runs: List should have at most 4 items")
    _one_line(client.post("/api/compare", json={"runs": [runs[0], {"text": ""}]}), 422, "text is empty")


def test_charts_for_the_longest_text_allowed(client):
    """Tens of thousands of table cells: past Altair's default 5,000-row guard, which named datasets avoid."""
    payload = client.post("/api/charts", json={"text": "Time flies like an arrow. " * 21}).json()
    assert len(payload["tokens"]) == MAX_TOKENS
    assert len(payload["datasets"]["neighbours"]) == 7 * MAX_TOKENS * (15 + 4) + sum(
        row["row"] == "own" for row in payload["datasets"]["neighbours"]
    )


def _one_line(response: httpx.Response, status: int, message: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and message in detail, detail


BAD = [
    ({"text": ""}, 422, "text is empty"),
    ({"text": " \n "}, 422, "text is empty"),
    ({"text": "a" * (MAX_CHARS + 1)}, 422, f"accepts at most {MAX_CHARS}"),
    ({"text": " ".join([SEED] * 12)}, 422, f"accepts at most {MAX_TOKENS} with all-MiniLM-L6-v2"),
    ({"text": " ".join([SEED] * 3), "model": "{tiny}"}, 422, "accepts at most 38 with"),
    ({"text": SEED, "model": "roberta-base"}, 422, "unknown model 'roberta-base'; this server runs: bundled (also sentence-transformers/all-MiniLM-L6-v2)"),
    ({"text": SEED, "model": "/etc"}, 422, "unknown model '/etc'"),
    ({"text": SEED, "tap": "resid_pre"}, 422, "tap: Input should be 'resid_mid', 'attn_ln' or 'resid_post'"),
    ({"text": SEED, "reference": "unembed"}, 422, "reference: Input should be 'embedding' or 'word'"),
    ({"text": SEED, "top_k": 0}, 422, "top_k: Input should be greater than or equal to 1"),
    ({"text": SEED, "top_k": 100_000}, 422, "top_k must be at least 1 and at most the vocabulary size, 30522"),
    ({"text": SEED, "top_k": "5"}, 422, "top_k: Input should be a valid integer"),
    ({"text": SEED, "top_k": 2.5}, 422, "top_k: Input should be a valid integer"),
    ({"text": SEED, "neighbours": 51}, 422, "neighbours: Input should be less than or equal to 50"),
    ({"text": SEED, "neighbours": -1}, 422, "neighbours: Input should be greater than or equal to 0"),
    ({"text": 42}, 422, "text: Input should be a valid string"),
    ({"tap": "resid_mid"}, 422, "text: Field required"),
    ({"text": SEED, "colour": "red"}, 422, "colour: Extra inputs are not permitted"),
    ([SEED], 422, "the request body must be a JSON object"),
]


@pytest.mark.parametrize("path", ["/api/analyze", "/api/analyze/csv", "/api/charts"])
@pytest.mark.parametrize(("body", "status", "message"), BAD, ids=[case[2][:40] for case in BAD])
def test_bad_requests_are_one_line_4xx(client, tiny_roberta, path, body, status, message):
    if isinstance(body, dict) and body.get("model") == "{tiny}":
        body = {**body, "model": str(tiny_roberta)}
    _one_line(client.post(path, json=body), status, message)


@pytest.mark.parametrize(
    ("content", "headers", "status", "message"),
    [
        ('{"text": "Time flies",', {"Content-Type": "application/json"}, 400, "request body is not valid JSON"),
        ("", {"Content-Type": "application/json"}, 422, "the request body must be a JSON object"),
        ("text=Time+flies", {"Content-Type": "application/x-www-form-urlencoded"}, 422, "sent as application/json"),
    ],
)
def test_malformed_bodies(client, content, headers, status, message):
    _one_line(client.post("/api/analyze", content=content, headers=headers), status, message)


def test_no_request_can_load_a_model(client, monkeypatch):
    def refuse(name=None):
        raise AssertionError(f"a request tried to load {name!r}")

    monkeypatch.setattr(server_module, "load_model", refuse)
    for name in ("roberta-base", "/etc", "../models", "bundled"):
        client.post("/api/analyze", json={"text": SEED, "model": name})


def test_page_vega_and_docs_need_no_cdn(client):
    page = client.get("/")
    assert page.status_code == 200 and "/vendor/vega.js" in page.text and "//" not in page.text  # no external URL
    vega = client.get("/vendor/vega.js")
    assert vega.status_code == 200 and "vegaEmbed" in vega.text and vega.headers["content-type"].startswith("text/javascript")
    for path in ("/docs", "/redoc"):
        html = client.get(path).text
        assert "cdn" not in html and "fonts.googleapis" not in html and "/static-offline-docs/" in html
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/api/analyze", "/api/analyze/csv", "/api/charts", "/api/compare", "/api/models"} <= set(schema["paths"])
    fields = schema["components"]["schemas"]["AnalyzeRequest"]["properties"]
    assert set(fields) == {"text", "model", "tap", "reference", "top_k", "neighbours", "similarity", "attribution", "normalize", "stats", "lens"}


def test_models_are_loaded_once_and_shared(bundled):
    assert load_allowed(["bundled"])["bundled"].model is bundled.model
    assert create_app(["bundled"]) is not create_app(["bundled"])  # apps differ; the weights do not


def test_concurrent_requests_equal_serial_ones(server, tiny_roberta):
    bodies = [{"text": text} for text in CORPUS] + [
        {"text": SEED, "tap": tap, "model": str(tiny_roberta), "top_k": 9} for tap in ("resid_mid", "attn_ln", "resid_post")
    ] + [{"text": CORPUS[2], "tap": "resid_post", "reference": "word", "neighbours": 4}]

    with httpx.Client(base_url=server.url, timeout=120) as http:

        def post(body: dict) -> dict:
            response = http.post("/api/analyze", json=body)
            assert response.status_code == 200, response.text
            return response.json()

        with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
            parallel = list(pool.map(post, bodies))
    serial_client = TestClient(create_app(["bundled", str(tiny_roberta)]))  # a fresh app: nothing cached
    serial = [serial_client.post("/api/analyze", json=body).json() for body in bodies]
    assert parallel == serial


def test_model_work_never_blocks_the_event_loop(monkeypatch):
    started, release = threading.Event(), threading.Event()
    real = server_module.analyze_with

    def slow(*args, **kwargs):
        started.set()
        assert release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(server_module, "analyze_with", slow)
    with live_server(["bundled"]) as running, httpx.Client(base_url=running.url, timeout=60) as http:
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(http.post, "/api/analyze", json={"text": "Time is an illusion."})
            assert started.wait(30)
            # the analysis is stuck in the thread pool; the server still answers at once
            assert http.get("/api/models", timeout=5).status_code == 200
            release.set()
            assert pending.result().status_code == 200


def test_serve_command_starts_a_server_a_user_can_reach():
    """`attention-encodings serve` as a user runs it: no --models means the default model resolution."""
    with listen("127.0.0.1", 0) as probe:
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "attention_encodings", "serve", "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env())
    try:
        model_line, serving_line = process.stdout.readline().decode(), process.stdout.readline().decode()
        assert model_line.startswith("model 'default': all-MiniLM-L6-v2 (bundled), offline default, because")
        assert model_line.rstrip().endswith(" on cpu; all-MiniLM-L6-v2 (bundled) has no output head (it loads as "
                                            "BertModel), so head_rank and the head's predictions are absent")
        assert serving_line.startswith(f"attention-encodings: serving http://127.0.0.1:{port}/")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            (model,) = http.get("/api/models").json()["models"]
            assert model["id"] == "default" and "bundled" in model["label"]
            tokens = http.post("/api/analyze", json={"text": SEED}).json()["tokens"]
            assert tokens[8]["text"] == "flies"
            assert "/vendor/vega.js" in http.get("/").text
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_serve_bundled_and_smollm2(smollm2):
    """`serve --models bundled,smollm2`: both models, each with its note; the decoder's analyses carry the head
    lens, the encoder's do not."""
    with listen("127.0.0.1", 0) as probe:
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "attention_encodings", "serve", "--models", "bundled,smollm2", "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env())
    try:
        lines = [process.stdout.readline().decode() for _ in range(3)]
        assert lines[0].startswith("model 'bundled': all-MiniLM-L6-v2 (bundled), named explicitly, on cpu; ")
        assert lines[1].startswith("model 'smollm2': SmolLM2-135M-Instruct, dequantised from a 4-bit GGUF, named explicitly;")
        assert lines[1].rstrip().endswith("on cpu; the embedding reference equals word here (no absolute positions or embedding norm)")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            models = http.get("/api/models").json()["models"]
            assert [(m["id"], m["head"], m["layers"]) for m in models] == [("bundled", False, 6), ("smollm2", True, 30)]
            data = http.post("/api/analyze", json={"text": "Fruit flies like a banana.", "model": "smollm2"}).json()
            assert data == json.loads(analyze("Fruit flies like a banana.", smollm2).to_json())
            assert "head_rank" not in http.post("/api/analyze", json={"text": SEED}).json()
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_charts_name_the_tables_each_model_has(smollm2):
    client = TestClient(create_app(["bundled", "smollm2"]))
    info = client.get("/api/models").json()
    assert [m["notes"] for m in info["models"]] == [
        ["all-MiniLM-L6-v2 (bundled) has no output head (it loads as BertModel), so head_rank and the head's predictions are absent"],
        ["the embedding reference equals word here (no absolute positions or embedding norm)"],
    ]
    assert [m["name"] for m in info["measures"]][:7] == ["cosine", "rank", "overlap", "vocab_mean", "vocab_std", "zscore", "head_rank"]
    decoder = client.post("/api/charts", json={"text": "Fruit flies.", "model": "smollm2"}).json()
    assert decoder["measures"] == ["cosine", "rank", "overlap", "zscore", "head_rank"]
    assert decoder["tables"] == ["neighbours", "predictions"] and {"predictions", "head_rank_heatmap"} <= set(decoder["charts"])
    encoder = client.post("/api/charts", json={"text": "Fruit flies."}).json()
    assert encoder["tables"] == ["neighbours"] and "predictions" not in encoder["charts"] and "predictions" not in encoder["datasets"]
    runs = [{"text": "Fruit flies.", "model": "smollm2"}, {"text": "Fruit flies.", "model": "bundled"}]
    mixed = client.post("/api/compare", json={"runs": runs}).json()
    assert mixed["measures"] == ["cosine", "rank", "overlap", "zscore"] and mixed["tables"] == ["neighbours"]
    both = client.post("/api/compare", json={"runs": [runs[0], {**runs[0], "tap": "resid_post"}]}).json()
    assert both["measures"][-1] == "head_rank" and both["tables"] == ["neighbours", "predictions"]
    frame = pd.read_csv(io.StringIO(client.post("/api/analyze/csv", json={"text": "Fruit flies.", "model": "smollm2"}).text))
    assert frame.head_rank.isna().sum() == 31  # the last token, at every layer, has nothing to predict


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "./no-such-folder"], "error: no model directory at './no-such-folder'"),
        (["--models", "bundled", "--port", "70000"], "error: Invalid value for '--port'"),
        (["--models", "bundled", "--host", "no-such-host.invalid"], "error: cannot listen on no-such-host.invalid:8000"),
        (["--models", "bundled", "--stats", "./no-such.npz"], "error: cannot read statistics ./no-such.npz: no such file"),
    ],
)
def test_serve_errors_are_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", *args])
    err = capsys.readouterr().err
    assert exit_.value.code != 0 and err.splitlines()[-1].startswith(message) and "Traceback" not in err, err


def test_serve_refuses_a_port_in_use(capsys):
    with listen("127.0.0.1", 0) as taken:
        taken.listen()
        with pytest.raises(SystemExit):
            main(["serve", "--models", "bundled", "--port", str(taken.getsockname()[1])])
    assert "Address already in use" in capsys.readouterr().err.splitlines()[-1]


@pytest.fixture(scope="module")
def stats_client(bundled_stats, tiny_roberta):
    return TestClient(create_app(["bundled", str(tiny_roberta)], stats=[str(bundled_stats)]))


def test_a_server_normalizes_with_the_statistics_it_was_started_with(stats_client, bundled_stats, bundled):
    info = stats_client.get("/api/models").json()
    assert info["stats"] == [str(bundled_stats)]
    expected = json.loads(analyze(SEED, bundled, normalize="standardize", stats=bundled_stats).to_json())
    for body in ({"normalize": "standardize"}, {"normalize": "standardize", "stats": str(bundled_stats)}):
        assert stats_client.post("/api/analyze", json={"text": SEED, **body}).json() == expected
    charts = stats_client.post("/api/charts", json={"text": SEED, "normalize": "center"}).json()
    assert charts["measures"] == ["cosine", "rank", "overlap", "zscore"]


def test_no_request_can_open_a_statistics_file(stats_client, bundled_stats, tiny_roberta, monkeypatch):
    """Statistics were read at start-up; a request names them by id and nothing else, so none is ever opened."""

    def refuse(source, *args):
        raise AssertionError(f"a request tried to read {source!r}")

    monkeypatch.setattr(server_module, "read_stats", refuse)
    monkeypatch.setattr(analysis_module, "load_stats", refuse)
    cases = [
        ({"normalize": "center", "stats": "/etc/passwd"}, f"unknown stats '/etc/passwd'; this server offers: {bundled_stats}"),
        ({"normalize": "center", "stats": "sample"}, "unknown stats 'sample'"),
        ({"stats": str(bundled_stats)}, "are used only to normalize"),
        ({"normalize": "center", "model": str(tiny_roberta)}, "are for 6 layers of width 384, but roberta0 at resid_mid has 3 layers of width 32"),
    ]
    for body, message in cases:
        _one_line(stats_client.post("/api/analyze", json={"text": SEED, **body}), 422, message)
    assert stats_client.post("/api/analyze", json={"text": SEED, "normalize": "center"}).status_code == 200


def test_a_server_without_statistics_refuses_to_normalize(client):
    _one_line(
        client.post("/api/analyze", json={"text": SEED, "normalize": "center"}),
        422,
        "normalize center needs statistics, and this server has none; start it with --stats FILE",
    )


def test_a_server_offers_the_sample_statistics_per_model(bundled, tiny_roberta):
    """`--stats sample`: each model normalises with the bundled sample corpus's statistics for itself and the tap
    asked for (computed at start-up at the default tap, other taps on first use)."""
    app = TestClient(create_app(["bundled", str(tiny_roberta)], stats=["sample"]))
    assert app.get("/api/models").json()["stats"] == ["sample"]
    for model, tap in (("bundled", "resid_mid"), (str(tiny_roberta), "attn_ln")):
        handle = bundled if model == "bundled" else load_model(str(tiny_roberta))
        expected = json.loads(analyze(SEED, handle, tap=tap, normalize="center", stats="sample").to_json())
        answer = app.post("/api/analyze", json={"text": SEED, "model": model, "tap": tap, "normalize": "center"})
        assert answer.status_code == 200 and answer.json() == expected and expected["stats"] == "sample"
