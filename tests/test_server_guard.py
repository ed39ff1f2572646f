"""The server under hostile input: security headers on every route, HEAD wherever GET works, 413 for a body over
the limit before it is parsed, text that is not valid Unicode refused with a 422, and the warning for a host
beyond loopback."""

from __future__ import annotations

import json
import socket

import httpx
import pytest
from conftest import SEED, live_server
from fastapi.testclient import TestClient

from attention_encodings.faces import server as server_module
from attention_encodings.faces.guard import CSP, DOCS_CSP, MAX_BODY_BYTES
from attention_encodings.faces.server import create_app, is_loopback

GET_ROUTES = ["/", "/vendor/vega.js", "/static/app.js", "/static/style.css", "/api/models", "/docs", "/redoc", "/openapi.json"]


@pytest.fixture(scope="module")
def client(bundled):
    return TestClient(create_app(["bundled"]))


def _secured(response: httpx.Response) -> None:
    headers = response.headers
    assert headers["x-content-type-options"] == "nosniff" and headers["referrer-policy"] == "no-referrer"
    policy = headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "default-src 'self'" in policy and "object-src 'none'" in policy


@pytest.mark.parametrize("path", GET_ROUTES)
def test_every_get_route_is_secured_and_answers_head(client, path):
    got = client.get(path)
    assert got.status_code == 200, path
    _secured(got)
    head = client.head(path)
    assert head.status_code == 200 and head.content == b"", path
    _secured(head)
    assert head.headers["content-type"] == got.headers["content-type"]
    assert int(head.headers["content-length"]) == len(got.content)


def test_the_page_gets_no_inline_script_and_only_the_docs_do(client):
    page = client.get("/").headers["content-security-policy"]
    assert page == CSP and "script-src 'self' 'unsafe-eval';" in page and "unsafe-inline'; style" not in page
    assert client.get("/docs").headers["content-security-policy"] == DOCS_CSP
    assert "'unsafe-inline'" in DOCS_CSP.split("script-src", 1)[1].split(";")[0]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("post", "/api/analyze", 422), ("post", "/no-such-route", 404), ("get", "/api/analyze", 405), ("head", "/api/analyze", 405)],
)
def test_errors_are_secured_too(client, method, path, status):
    response = client.request(method.upper(), path, json={"colour": "red"} if method == "post" else None)
    assert response.status_code == status
    _secured(response)


def test_a_body_over_the_limit_is_413_before_it_is_parsed(client, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an oversized body reached the route")

    monkeypatch.setattr(server_module, "check_text", refuse)
    big = json.dumps({"text": "a" * (MAX_BODY_BYTES + 1)})
    for headers in ({"content-type": "application/json"}, {"content-type": "text/plain"}):
        response = client.post("/api/analyze", content=big, headers=headers)
        assert response.status_code == 413 and str(MAX_BODY_BYTES) in response.json()["detail"]
        _secured(response)

    def chunks():  # no Content-Length: the body is counted as it arrives
        for _ in range(MAX_BODY_BYTES // 4096 + 2):
            yield b"a" * 4096

    response = client.post("/api/analyze", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_the_largest_legal_comparison_fits_under_the_limit(client):
    """Four runs of the longest text, every character a JSON-escaped surrogate pair, stay under the limit."""
    runs = [{"text": "\U0001f642" * server_module.MAX_CHARS} for _ in range(server_module.MAX_RUNS)]
    assert len(json.dumps({"runs": runs}, ensure_ascii=True)) < MAX_BODY_BYTES


def test_a_chunked_body_under_the_limit_still_works(client, bundled):
    body = json.dumps({"text": SEED}).encode()
    response = client.post("/api/analyze", content=iter([body[:10], body[10:]]), headers={"content-type": "application/json"})
    assert response.status_code == 200 and response.json()["tokens"][1]["text"] == "time"


@pytest.mark.parametrize("path", ["/api/analyze", "/api/analyze/csv", "/api/charts"])
@pytest.mark.parametrize("raw", ['"\\ud800 lone"', '"lone \\udfff"', '"a\\udc00\\ud800b"'])
def test_text_that_is_not_unicode_is_422(client, path, raw):
    response = client.post(path, content='{"text": ' + raw + "}", headers={"content-type": "application/json"})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail.startswith("text is not valid Unicode: surrogates not allowed") and "\n" not in detail


def test_loopback_hosts():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("no-such-host.invalid")


@pytest.mark.parametrize(("host", "warned"), [("0.0.0.0", True), ("127.0.0.1", False)])
def test_serve_warns_once_beyond_loopback(host, warned, monkeypatch, capsys, bundled):
    ran = []
    monkeypatch.setattr(server_module.uvicorn.Server, "run", lambda self, sockets: ran.append(sockets))
    server_module.serve(["bundled"], host=host, port=0)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("warning:")]
    assert ran and len(lines) == (1 if warned else 0), err
    if warned:
        assert lines[0] == (
            f"warning: {host} is reachable beyond this machine and this server has no authentication: "
            "anyone who can reach it can use it"
        )
    ran[0][0].close()


def test_a_live_server_refuses_a_large_body_without_reading_it(bundled):
    """Over real HTTP: a declared Content-Length over the limit is answered at once, and the server stays up."""
    with live_server(["bundled"]) as live:
        with socket.create_connection(("127.0.0.1", int(live.url.rsplit(":", 1)[1])), timeout=10) as sock:
            sock.sendall(
                b"POST /api/analyze HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {100 * MAX_BODY_BYTES}\r\n\r\n".encode()
                + b'{"text": "'
            )
            reply = sock.recv(4096).decode()
        assert reply.startswith("HTTP/1.1 413") and "content-security-policy" in reply.lower()
        assert httpx.post(f"{live.url}/api/analyze", json={"text": SEED}, timeout=30).status_code == 200
