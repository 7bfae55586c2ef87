"""The edge's pure decisions, in process: status mapping, error mapping, billing checks."""

from __future__ import annotations

import pytest

from tooti.gateway.http.billing import StreamCounter, bill
from tooti.gateway.upstream_status import client_status, error_from_answer
from tooti.wire import pb


@pytest.mark.parametrize(
    ("node", "client"),
    [
        (200, 200),
        (201, 200),
        (0, 502),
        (99, 502),
        (101, 502),
        (302, 502),
        (400, 400),
        (401, 502),
        (404, 404),
        (422, 422),
        (429, 429),
        (500, 500),
        (503, 503),
        (599, 502),
        (600, 502),
        (1000, 502),
    ],
)
def test_the_gateway_chooses_the_clients_status(node: int, client: int) -> None:
    assert client_status(node) == client


def test_backend_errors_keep_param_and_code_and_never_nest_json_in_message() -> None:
    head = pb.ResponseHead(status=400, content_type="application/json")
    body = b'{"error":{"message":"bad temperature","type":"invalid_request_error","param":"temperature","code":"invalid_value"}}'
    err = error_from_answer(head, body, None)
    assert (err.status, err.param, err.code, err.message) == (
        400,
        "temperature",
        "invalid_value",
        "bad temperature",
    )
    weird = error_from_answer(head, b'{"error":{"message":{"nested":1},"code":400}}', None)
    assert "{" not in weird.message and weird.code is None


def test_node_claims_are_clamped_and_flagged() -> None:
    huge = pb.Usage(prompt_tokens=10**12, completion_tokens=10**12)
    b = bill(huge, request_bytes=200, max_tokens=50, delivered_deltas=40, delivered_bytes=4000, complete=True)
    assert b.completion_tokens <= 50 and b.prompt_tokens <= 200 and "clamped" in b.flags
    neg = pb.Usage(prompt_tokens=-5, completion_tokens=-1)
    b = bill(
        neg, request_bytes=200, max_tokens=None, delivered_deltas=10, delivered_bytes=1000, complete=True
    )
    assert b.prompt_tokens >= 0 and b.completion_tokens == 10 and "clamped" in b.flags
    honest = pb.Usage(prompt_tokens=12, completion_tokens=40)
    b = bill(
        honest, request_bytes=200, max_tokens=50, delivered_deltas=40, delivered_bytes=4000, complete=True
    )
    assert (b.prompt_tokens, b.completion_tokens, b.flags) == (12, 40, "")


def test_a_hang_up_is_billed_what_was_delivered() -> None:
    counter = StreamCounter()
    for i in range(2900):
        counter.feed(b'data: {"choices":[{"delta":{"content":"tok%d "}}]}\n\n' % i)
    counter.feed(b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n')
    assert counter.deltas == 2900
    b = bill(
        None,
        request_bytes=400,
        max_tokens=None,
        delivered_deltas=counter.deltas,
        delivered_bytes=0,
        complete=False,
    )
    assert b.completion_tokens == 2900 and b.prompt_tokens == 100 and b.flags == "estimated"


def test_cors_origin_patterns() -> None:
    from tooti.gateway.http.asgi import LOCALHOST_ORIGINS, _origin_allowed

    local = frozenset(LOCALHOST_ORIGINS)
    assert _origin_allowed("http://localhost:5173", local)
    assert _origin_allowed("http://127.0.0.1:3000", local)
    assert not _origin_allowed("http://localhost.evil.example:3000", local)
    assert not _origin_allowed("https://example.com", local)
    assert not _origin_allowed("http://localhost:abc", local)
    assert _origin_allowed("https://app.example", frozenset({"https://app.example"}))
