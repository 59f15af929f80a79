"""centrifuge-python (JSON and Protobuf) against tether with the backend proxy.

tether reaches the backend over HTTP (backend/app.py) or gRPC (backend/grpc_app.py), as the
config it runs with says (MODE). Each test asserts what the SDK reports AND what the backend
received (GET /_seen), per docs compat-proxy.md §4-§6. The backends decide alike, so the
cases are the same in both modes; only the transport-level checks differ. The same cases as
js/proxy/suite.mjs.
"""

import asyncio
import re

import pytest
from centrifuge import ClientState, ReplyError, SubscriptionState

from proxy_helpers import (
    MODE,
    SDK_VERSION,
    api,
    conn_token,
    connected_or_fail,
    grpc_method,
    new_subscription,
    seen,
    stored,
    uid,
    wait_until,
)


def assert_common(body, codec, client_id):
    """The common request prefix of every proxy request (compat-proxy §4.2)."""
    assert body["client"] == client_id, "client = the connection id the SDK got"
    assert body["transport"] == "websocket"
    assert body["protocol"] == ("protobuf" if codec.use_protobuf else "json")
    assert body["encoding"] == "json", "binary_encoding is off"


def assert_transport(req, method):
    """Over HTTP a JSON POST; over gRPC a unary call of CentrifugoProxy/<method>."""
    if MODE == "http":
        assert req["headers"]["content-type"].startswith("application/json")
    else:
        assert req["grpc_method"] == grpc_method(method), f"a unary CentrifugoProxy/{method} call"


def assert_anonymous_user(body):
    """HTTP: `"user": ""` is always in the body; gRPC: an empty proto3 string is not on the
    wire, so the backend sees no field."""
    if MODE == "http":
        assert body.get("user", None) == "", "`user` is always present, even empty"
    else:
        assert body.get("user", "") == "", 'user "" (absent on the wire: proto3 default)'


async def test_cookie_only_connect(clients, codec):
    user = f"ann-{uid()}"
    client, _, ctx = await clients.connected(user)
    assert client.state == ClientState.CONNECTED
    assert codec.dec(ctx.data) == {"hello": user}, "connect reply data = backend result data"

    reqs = await seen("connect", session=user)
    assert len(reqs) == 1, "one connect proxy call"
    body, headers = reqs[0]["body"], reqs[0]["headers"]
    assert re.search(rf"(^|; )session={user}($|;)", headers["cookie"]), "Cookie forwarded"
    assert_transport(reqs[0], "Connect")
    assert_common(body, codec, ctx.client)
    assert body["name"] == "python", "SDK name from the connect command"
    assert body["version"] == SDK_VERSION, "SDK version from the connect command"
    for absent in ("user", "token", "meta", "data", "b64data", "channels"):
        assert absent not in body, f"no {absent!r} in a connect request without it"

    who = await client.rpc("whoami", codec.enc({}))
    assert codec.dec(who.data)["user"] == user


async def test_no_cookie_connects_anonymous(clients, codec):
    client, rec = clients.make()
    await client.connect()
    ctx = await connected_or_fail(rec)
    assert not ctx.data, "no data in the backend result (None, or empty bytes)"
    reqs = await seen("connect", client=ctx.client)
    assert len(reqs) == 1
    assert "cookie" not in reqs[0]["headers"], "nothing to forward"

    who = await client.rpc("whoami", codec.enc({}))
    assert codec.dec(who.data) == {"user": "", "meta": None}, "anonymous: user '' and no meta"
    (rpc_req,) = await seen("rpc", client=ctx.client, method="whoami")
    assert_anonymous_user(rpc_req["body"])


async def test_connection_token_bypasses_connect_proxy(clients, codec):
    session = f"tok-{uid()}"
    user = f"jwt-{uid()}"
    client, _, _ = await clients.connected(session, token=conn_token(user))
    assert client.state == ClientState.CONNECTED
    assert await seen("connect", session=session) == [], "connect proxy not called with a token"
    who = await client.rpc("whoami", codec.enc({}))
    assert codec.dec(who.data)["user"] == user, "the user comes from the token"


async def test_connect_refused_1403_no_reconnect(clients):
    session = f"refuse-{uid()}"
    client, rec = clients.make(cookie=f"session={session}")
    await client.connect()
    (ctx,) = await rec.wait("disconnected")
    # A non-temporary connect error is terminal for the SDK: disconnected with its code.
    assert (ctx.code, ctx.reason) == (1403, "forbidden")
    await asyncio.sleep(1.5)  # a reconnect (min delay 0.1 s) would have happened by now
    assert client.state == ClientState.DISCONNECTED
    assert len(rec.of("connecting")) == 1, "only the initial connecting"
    assert rec.of("connected") == []
    assert len(await seen("connect", session=session)) == 1, "backend asked once"


async def test_connect_temporary_error_then_reconnect(clients, codec):
    session = f"flaky-{uid()}"
    client, rec = clients.make(cookie=f"session={session}")
    await client.connect()
    ctx = await connected_or_fail(rec)
    errors = [e.error for e in rec.of("error") if isinstance(e.error, ReplyError)]
    assert [(e.code, e.temporary) for e in errors] == [(1503, True)]
    assert codec.dec(ctx.data) == {"hello": session}
    assert len(await seen("connect", session=session)) == 2, "one retry"


async def test_connect_disconnect_4501_terminal(clients):
    session = f"ban-{uid()}"
    client, rec = clients.make(cookie=f"session={session}")
    await client.connect()
    (ctx,) = await rec.wait("disconnected")
    assert (ctx.code, ctx.reason) == (4501, "banned")
    await asyncio.sleep(1.5)
    assert client.state == ClientState.DISCONNECTED
    assert len(rec.of("connecting")) == 1, "4500-4999 are terminal: no reconnect"
    assert len(await seen("connect", session=session)) == 1


async def test_subscribe_proxy_allowed_and_denied(clients, codec):
    user = f"sub-{uid()}"
    client, _, cctx = await clients.connected(user)

    allowed = f"allowed:x-{uid()}"
    sub, srec = new_subscription(client, allowed)
    await sub.subscribe()
    (ctx,) = await srec.wait("subscribed")
    assert sub.state == SubscriptionState.SUBSCRIBED
    assert codec.dec(ctx.data) == {"welcome": True}, "subscribe reply data = backend result data"
    (req,) = await seen("subscribe", channel=allowed)
    assert_transport(req, "Subscribe")
    assert_common(req["body"], codec, cctx.client)
    assert (req["body"]["user"], req["body"]["channel"]) == (user, allowed)
    assert f"session={user}" in req["headers"]["cookie"], "Cookie forwarded to subscribe"

    denied = f"denied:x-{uid()}"
    bad, brec = new_subscription(client, denied)
    await bad.subscribe()
    (uctx,) = await brec.wait("unsubscribed")
    assert uctx.code == 103
    assert bad.state == SubscriptionState.UNSUBSCRIBED
    assert client.state == ClientState.CONNECTED, "a refused subscription keeps the connection"
    assert len(await seen("subscribe", channel=denied)) == 1


async def test_publish_proxy_store_rewrite_reject(clients, codec):
    channel = f"chat:pub-{uid()}"
    alice, bob = f"alice-{uid()}", f"bob-{uid()}"
    a, _, _ = await clients.connected(alice)
    b, _, bctx = await clients.connected(bob)
    sub_a, arec = new_subscription(a, channel)
    await sub_a.subscribe()
    await arec.wait("subscribed")

    # 1. Stored by the backend and published unchanged.
    store_text = f"store-{uid()}"
    await b.publish(channel, codec.enc({"text": store_text, "n": 1}))
    (p1,) = await arec.wait("publication")
    assert codec.dec(p1.pub.data) == {"text": store_text, "n": 1}
    assert p1.pub.info is not None and p1.pub.info.user == bob, "publication info is the publisher"
    kept = [s for s in await stored() if s["channel"] == channel]
    assert kept == [{"channel": channel, "user": bob, "data": {"text": store_text, "n": 1}}]
    (pub_req,) = await seen("publish", channel=channel)
    assert_transport(pub_req, "Publish")
    assert_common(pub_req["body"], codec, bctx.client)
    assert pub_req["body"]["user"] == bob
    # HTTP: embedded as raw JSON; gRPC: `bytes` holding that JSON (the backend parses it).
    assert pub_req["body"]["data"] == {"text": store_text, "n": 1}, "data = the JSON the client sent"

    # 2. Rewritten: subscribers get the backend's data.
    await b.publish(channel, codec.enc({"text": "please rewrite me"}))
    _, p2 = await arec.wait("publication", count=2)
    assert codec.dec(p2.pub.data) == {"text": "rewritten", "by": "backend"}

    # 3. Rejected: the publisher gets the backend's error, nobody gets the publication.
    with pytest.raises(ReplyError) as err:
        await b.publish(channel, codec.enc({"text": "reject me"}))
    assert (err.value.code, err.value.message) == (1403, "rejected")
    after_text = f"store-after-{uid()}"
    await b.publish(channel, codec.enc({"text": after_text}))
    _, _, p3 = await arec.wait("publication", count=3)
    await asyncio.sleep(0.2)
    assert len(arec.of("publication")) == 3, "the rejected publication was never delivered"
    assert codec.dec(p3.pub.data) == {"text": after_text}
    history = await api("history", {"channel": channel, "limit": -1})
    assert len(history["publications"]) == 3, "three publications in history, not four"
    assert len(await seen("publish", channel=channel)) == 4, "the backend saw all four"


async def test_rpc_proxy(clients, codec):
    user = f"rpc-{uid()}"
    client, _, cctx = await clients.connected(user)

    payload = {"a": 1, "b": [1, 2, {"c": "ü"}]}
    echo = await client.rpc("echo", codec.enc(payload))
    assert codec.dec(echo.data) == payload
    (echo_req,) = await seen("rpc", client=cctx.client, method="echo")
    assert_transport(echo_req, "RPC")
    assert_common(echo_req["body"], codec, cctx.client)
    assert echo_req["body"]["user"] == user
    assert echo_req["body"]["data"] == payload
    assert echo_req["body"]["meta"] == {"session": user}, "include_connection_meta: connect meta"

    who = await client.rpc("whoami", codec.enc({}))
    assert codec.dec(who.data) == {"user": user, "meta": {"session": user}}

    with pytest.raises(ReplyError) as unknown:
        await client.rpc("no-such-method", codec.enc({}))
    assert (unknown.value.code, unknown.value.message) == (1404, "unknown method")
    # The backend fails the call: HTTP 500, or gRPC status INTERNAL.
    with pytest.raises(ReplyError) as failed:
        await client.rpc("http500", codec.enc({}))
    assert failed.value.code == 100, "a backend failure (non-200 / non-OK status) -> 100"
    with pytest.raises(ReplyError) as slow:
        await client.rpc("slow", codec.enc({}))
    assert slow.value.code == 100, "proxy timeout (1 s) -> 100"
    assert client.state == ClientState.CONNECTED


async def test_refresh_proxy_extends_then_expires(clients, codec):
    user = f"short-{uid()}"
    client, rec = clients.make(cookie=f"session={user}")
    await client.connect()
    ctx = await connected_or_fail(rec)

    async def refreshes():
        return [r for r in await seen("refresh", user=user) if r["body"]["client"] == ctx.client]

    # expire_at = now + 2 s: tether calls the refresh proxy then; the backend extends once.
    await wait_until(lambda: _nonempty(refreshes()), timeout=5, what="the first refresh proxy call")
    assert client.state == ClientState.CONNECTED, "still connected after the first expire_at"
    who = await client.rpc("whoami", codec.enc({}))
    assert codec.dec(who.data)["user"] == user, "the same connection still works"

    # The second refresh says expired: closed with 3005, the SDK reconnects.
    (cctx,) = await rec.wait("connecting", lambda c: c.code == 3005, timeout=6)
    assert cctx.code == 3005
    calls = await refreshes()
    assert len(calls) == 2, "one extension, then expired"
    for r in calls:
        assert_transport(r, "Refresh")
        assert_common(r["body"], codec, ctx.client)
        assert r["body"]["user"] == user
        assert r["body"]["meta"] == {"session": user}, "include_connection_meta on refresh"
    assert calls[1]["time"] - calls[0]["time"] >= 0.9, "waited for the extended expire_at"
    assert len(rec.of("connecting")) == 2, "initial connecting, then the 3005 one"
    assert rec.of("disconnected") == []
    # Server-side refresh: the SDK was never asked to refresh (it has no get_token, so a
    # client-side refresh would have surfaced as an error and a disconnect).
    assert rec.of("error") == []


async def test_sub_refresh_proxy_extends_then_expires(clients, codec):
    user = f"subr-{uid()}"
    client, _, cctx = await clients.connected(user)
    channel = f"expiring:x-{uid()}"
    sub, srec = new_subscription(client, channel)
    await sub.subscribe()
    await srec.wait("subscribed")

    async def calls():
        return [r for r in await seen("sub_refresh", channel=channel) if r["body"]["client"] == cctx.client]

    await wait_until(lambda: _nonempty(calls()), timeout=8, what="the first sub_refresh proxy call")
    assert sub.state == SubscriptionState.SUBSCRIBED, "extended by the backend"
    (sctx,) = await srec.wait("subscribing", lambda c: c.code == 2501, timeout=8)
    assert sctx.code == 2501, "subscription expired (the SDK resubscribes)"
    made = await calls()
    assert len(made) == 2
    assert_transport(made[0], "SubRefresh")
    assert_common(made[0]["body"], codec, cctx.client)
    assert made[0]["body"]["user"] == user
    assert client.state == ClientState.CONNECTED, "only the subscription expired"
    assert srec.of("error") == [], "the SDK never refreshed the subscription itself"


async def _nonempty(awaitable):
    return len(await awaitable) > 0

