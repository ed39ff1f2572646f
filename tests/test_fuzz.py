"""Fuzzed input (Hypothesis, fixed seed, small budgets): the API's request schema, the command line's text and
options, and corpus records. Every case ends in a result, a 4xx with one line, one `error:` line with exit 1 or 2,
or a skipped record with its reason; never a 5xx, a traceback or a hang."""

from __future__ import annotations

import json
import math

import pytest
from conftest import SEED
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attention_encodings.corpus.engine import plan
from attention_encodings.corpus.sources import read_source
from attention_encodings.errors import InputError
from attention_encodings.faces.cli import main
from attention_encodings.faces.server import create_app
from attention_encodings.settings import Settings

FUZZ = settings(
    max_examples=30, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
HOSTILE = [
    "\ud800 lone",
    "tail \udfff",
    "nul \x00 byte",
    "bell \x07 escape \x1b[31m red",
    "\u202eright-to-left\u202c mark \u200f",
    "zero\u200dwidth\u200bjoiners\ufeff",
    "e\u0301\u0302\u0303 combining" + "\u0301" * 50,
    "family \U0001f468\u200d\U0001f469\u200d\U0001f467 flag \U0001f1ec\U0001f1e7 skin \U0001f44d\U0001f3fd",
    "a" * 20_000,
    "x" * 1_999,
    "",
    "   \n\t ",
    SEED,
]
texts = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=60),  # every code point, surrogates too
    st.text(st.characters(max_codepoint=0x7F), max_size=30),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5,
)
fields = st.sampled_from(["tap", "reference", "top_k", "neighbours", "similarity", "normalize", "stats", "model", "colour"])
bodies = st.one_of(
    st.fixed_dictionaries({"text": texts}, optional={"top_k": json_values, "neighbours": json_values}),
    st.dictionaries(fields, json_values, max_size=3).map(lambda body: {"text": SEED, **body}),
    json_values,
)


@pytest.fixture(scope="module")
def client(bundled):
    return TestClient(create_app(["bundled"]), raise_server_exceptions=False)


def _answered(response) -> None:
    assert response.status_code == 200 or 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code != 200:
        detail = response.json()["detail"]
        assert isinstance(detail, str) and detail and "\n" not in detail and "Traceback" not in detail


@FUZZ
@given(body=bodies, path=st.sampled_from(["/api/analyze", "/api/analyze/csv", "/api/charts"]))
def test_any_request_body_is_answered_or_refused_in_one_line(client, body, path):
    _answered(client.post(path, content=json.dumps(body), headers={"content-type": "application/json"}))


@FUZZ
@given(first=texts, second=json_values, key=st.sampled_from(["text", "top_k", "tap"]))
def test_duplicate_keys_and_raw_json(client, first, second, key):
    raw = '{"text": %s, "%s": %s}' % (json.dumps(first), key, json.dumps(second))  # a key twice, as JSON allows
    _answered(client.post("/api/analyze", content=raw, headers={"content-type": "application/json"}))
    _answered(client.post("/api/compare", content='{"runs": [%s, %s]}' % (raw, raw), headers={"content-type": "application/json"}))


options = st.lists(
    st.tuples(
        st.sampled_from(["--top-k", "--neighbours", "--tap", "--reference", "--token", "--format", "--normalize", "--layers"]),
        st.one_of(st.integers(-(2**40), 2**40).map(str), st.sampled_from(["", "nan", "1e9", "-0", "resid_mid", "csv", "ß"]), texts),
    ),
    max_size=2,
)


@settings(max_examples=20, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts, chosen=options)
def test_any_command_line_text_and_options_end_in_a_result_or_one_error_line(text, chosen, capsys, bundled):
    argv = ["analyze", text, "--model", "bundled", "--format", "json"]
    for flag, value in chosen:
        argv += [flag, value]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    if exit_.value.code == 0:
        assert json.loads(out)["tokens"]
    else:
        assert exit_.value.code in (1, 2) and err.strip() and err.strip().splitlines()[-1].startswith("error: "), err


word_lines = st.lists(
    st.one_of(
        st.builds(
            lambda ident, form, count: "\t".join([ident, form] + ["_"] * count),
            st.sampled_from(["1", "2", "3", "1-2", "2-3", "1-3", "0", "x", "3.1", "-1", "2-1", "1--2", ""]),
            st.sampled_from(["Time", "flies", "n't", "", "ß", "\u200d"]),
            st.integers(0, 10),
        ),
        st.sampled_from(["# text = Time flies", "# sent_id = a", "# text =", "#", "\t\t", "not a line"]),
        st.text(st.characters(codec="utf-8", exclude_characters="\n\r"), max_size=20),
    ),
    max_size=8,
)


@FUZZ
@given(blocks=st.lists(word_lines, min_size=1, max_size=3))
def test_malformed_conllu_is_one_error_line_or_records(blocks, tmp_path_factory, tiny_handle):
    path = tmp_path_factory.mktemp("conllu") / "in.conllu"
    path.write_text("\n\n".join("\n".join(block) for block in blocks) + "\n", encoding="utf-8")
    try:
        source = read_source(str(path))
    except InputError as error:
        assert str(error).startswith(str(path)) and "\n" not in str(error)
        return
    statuses, batches = plan(tiny_handle, Settings(), source, 4096)
    assert len(statuses) == len(source.records)


@FUZZ
@given(
    lines=st.lists(
        st.one_of(
            st.binary(max_size=30),
            st.sampled_from([b'{"text": "\xff\xfe bad"}', b'{"text": "ok"}', b'{"text": null}', b"\xc3(", b'{"text": 5}', b"[]"]),
            texts.map(lambda t: json.dumps({"text": t}).encode()),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_jsonl_with_bad_utf8_skips_records_with_their_reason(lines, tmp_path_factory, tiny_handle):
    path = tmp_path_factory.mktemp("jsonl") / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    source = read_source(str(path))
    statuses, batches = plan(tiny_handle, Settings(), source, 4096)
    for record, status in zip(source.records, statuses):
        assert status.status in ("ok", "truncated", "skipped")
        if status.status == "skipped":
            assert status.reason and "\n" not in status.reason
        else:
            assert record.text is not None and record.text.encode("utf-8")
    assert sum(len(b.text_indices) for b in batches) == sum(s.status != "skipped" for s in statuses)
    assert not math.isnan(sum(s.n_tokens or 0 for s in statuses))


@pytest.fixture(scope="module")
def tiny_handle(tiny_roberta):
    from attention_encodings import load_model

    return load_model(str(tiny_roberta))
