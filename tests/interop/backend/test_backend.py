"""The proxy backend itself answers per compat-proxy.md §4/§5 (no tether involved).

Runs the aiohttp app in-process; a failure here means the proxy suite's backend is wrong,
not tether.
"""

import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from app import make_app

COMMON = {"client": "c-1", "transport": "websocket", "protocol": "json", "encoding": "json"}


@pytest.fixture
async def http():
    client = TestClient(TestServer(make_app()))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def post(http, kind, body, cookie=None):
    headers = {"Cookie": cookie} if cookie else {}
    resp = await http.post(f"/centrifugo/{kind}", json={**COMMON, **body}, headers=headers)
    assert resp.status == 200
    return await resp.json()


async def test_connect_answers_by_cookie(http):
    assert await post(http, "connect", {}) == {"result": {}}
    ann = await post(http, "connect", {"name": "js"}, cookie="other=1; session=ann")
    assert ann == {
        "result": {
            "user": "ann",
            "info": {"name": "ann"},
            "data": {"hello": "ann"},
            "meta": {"session": "ann"},
        }
    }
    assert await post(http, "connect", {}, cookie="session=refuse-1") == {
        "error": {"code": 1403, "message": "forbidden"}
    }
    assert await post(http, "connect", {}, cookie="session=ban-1") == {
        "disconnect": {"code": 4501, "reason": "banned"}
    }
    first = await post(http, "connect", {}, cookie="session=flaky-1")
    assert first == {"error": {"code": 1503, "message": "try again", "temporary": True}}
    second = await post(http, "connect", {}, cookie="session=flaky-1")
    assert second["result"]["user"] == "flaky-1"
    short = await post(http, "connect", {}, cookie="session=short-1")
    assert short["result"]["user"] == "short-1"
    assert 0 < short["result"]["expire_at"] - time.time() <= 2


async def test_seen_records_body_and_headers(http):
    await post(http, "connect", {"name": "js", "version": "1.2.3"}, cookie="session=bob")
    seen = await (await http.get("/_seen", params={"kind": "connect", "session": "bob"})).json()
    assert len(seen) == 1
    assert seen[0]["body"] == {**COMMON, "name": "js", "version": "1.2.3"}
    assert seen[0]["headers"]["cookie"] == "session=bob"
    assert seen[0]["headers"]["content-type"].startswith("application/json")
    none = await (await http.get("/_seen", params={"kind": "rpc"})).json()
    assert none == []


async def test_refresh_extends_then_expires(http):
    first = await post(http, "refresh", {"user": "short-2"})
    assert first["result"]["expire_at"] > time.time()
    assert await post(http, "refresh", {"user": "short-2"}) == {"result": {"expired": True}}
    assert await post(http, "refresh", {"user": "short-2"}) == {"result": {"expired": True}}
    # A plan set through /_control.
    resp = await http.post("/_control", json={"refresh_plan": {"u3": ["extend", "extend", "expired"]}})
    assert resp.status == 200
    assert "expire_at" in (await post(http, "refresh", {"user": "u3"}))["result"]
    assert "expire_at" in (await post(http, "refresh", {"user": "u3"}))["result"]
    assert await post(http, "refresh", {"user": "u3"}) == {"result": {"expired": True}}


async def test_subscribe_by_namespace(http):
    assert await post(http, "subscribe", {"user": "u", "channel": "allowed:x"}) == {
        "result": {"info": {"role": "member"}, "data": {"welcome": True}}
    }
    assert await post(http, "subscribe", {"user": "u", "channel": "denied:x"}) == {
        "error": {"code": 103, "message": "permission denied"}
    }
    exp = await post(http, "subscribe", {"user": "u", "channel": "expiring:x"})
    assert exp["result"]["expire_at"] > time.time()
    assert await post(http, "subscribe", {"user": "u", "channel": "chat:x"}) == {"result": {}}


async def test_publish_store_rewrite_reject(http):
    data = {"text": "store me", "n": 1}
    assert await post(http, "publish", {"user": "u", "channel": "chat:a", "data": data}) == {
        "result": {}
    }
    stored = await (await http.get("/_stored")).json()
    assert stored == [{"channel": "chat:a", "user": "u", "data": data}]
    rewritten = await post(http, "publish", {"user": "u", "channel": "chat:a", "data": {"text": "please rewrite"}})
    assert rewritten == {"result": {"data": {"text": "rewritten", "by": "backend"}}}
    rejected = await post(http, "publish", {"user": "u", "channel": "chat:a", "data": {"text": "reject"}})
    assert rejected == {"error": {"code": 1403, "message": "rejected"}}
    assert len(await (await http.get("/_stored")).json()) == 1


async def test_sub_refresh_extends_then_expires(http):
    body = {"user": "u", "channel": "expiring:a"}
    assert (await post(http, "sub_refresh", body))["result"]["expire_at"] > time.time()
    assert await post(http, "sub_refresh", body) == {"result": {"expired": True}}


async def test_rpc_methods(http):
    assert await post(http, "rpc", {"user": "u", "method": "echo", "data": {"x": [1, 2]}}) == {
        "result": {"data": {"x": [1, 2]}}
    }
    assert await post(http, "rpc", {"user": "u", "method": "whoami", "meta": {"session": "u"}}) == {
        "result": {"data": {"user": "u", "meta": {"session": "u"}}}
    }
    assert await post(http, "rpc", {"user": "", "method": "nope"}) == {
        "error": {"code": 1404, "message": "unknown method"}
    }
    resp = await http.post("/centrifugo/rpc", json={**COMMON, "user": "u", "method": "http500"})
    assert resp.status == 500


async def test_control_reset(http):
    await post(http, "connect", {}, cookie="session=x")
    resp = await http.post("/_control", json={"reset": True})
    assert resp.status == 200
    assert await (await http.get("/_seen")).json() == []
