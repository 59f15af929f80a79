"""centrifuge-python (JSON and Protobuf, via the `codec` parametrization) against tether.

Every test drives the real SDK and asserts what it reports: callbacks, codes, payloads
and stream positions.
"""

import asyncio

from cent import ChannelsRequest, PresenceStatsRequest, PublishRequest
from centrifuge import ClientState, StreamPosition, SubscriptionState

from conftest import (
    conn_token,
    new_subscription,
    now,
    sign,
    sub_token,
    subscribe,
    uid,
    wait_until,
)


async def test_connect_and_disconnect(clients):
    client, rec = clients.make(token=conn_token(f"u-{uid()}"))
    await client.connect()
    (ctx,) = await rec.wait("connected")
    assert client.state == ClientState.CONNECTED
    assert ctx.client, "server assigns a client id"
    assert ctx.version, "server reports a version"
    assert [c.code for c in rec.of("connecting")] == [0]

    await client.disconnect()
    (dctx,) = await rec.wait("disconnected")
    assert dctx.code == 0, "disconnect() was called"
    assert client.state == ClientState.DISCONNECTED


async def test_subscribe_and_unsubscribe(clients, cent):
    channel = f"chat:sub-{uid()}"
    client, _ = await clients.connected(f"u-{uid()}")
    sub, srec, ctx = await subscribe(client, channel)
    assert sub.state == SubscriptionState.SUBSCRIBED
    assert ctx.channel == channel
    assert ctx.recoverable and ctx.positioned, "chat has force_recovery"
    assert ctx.stream_position is not None and ctx.stream_position.epoch
    assert ctx.stream_position.offset == 0

    async def num_clients():
        return (await cent.presence_stats(PresenceStatsRequest(channel=channel))).num_clients

    await wait_until(lambda: _eq(num_clients(), 1), what="presence of the subscriber")

    await sub.unsubscribe()
    (uctx,) = await srec.wait("unsubscribed")
    assert uctx.code == 0, "unsubscribe() was called"
    assert sub.state == SubscriptionState.UNSUBSCRIBED
    await wait_until(lambda: _eq(num_clients(), 0), what="presence to drop the client")


async def _eq(awaitable, expected):
    return (await awaitable) == expected


async def test_client_publish_received_by_second_client(clients, codec):
    channel = f"chat:pub-{uid()}"
    bob = f"bob-{uid()}"
    a, _ = await clients.connected(f"alice-{uid()}")
    b, brec = await clients.connected(bob)
    _, arec, _ = await subscribe(a, channel)
    sub_b, _, _ = await subscribe(b, channel)

    await sub_b.publish(codec.enc({"text": "hello from bob"}))
    (pctx,) = await arec.wait("publication")
    pub = pctx.pub
    assert codec.dec(pub.data) == {"text": "hello from bob"}
    assert pub.offset == 1
    assert pub.info is not None and pub.info.user == bob
    assert pub.info.client == brec.of("connected")[0].client


async def test_api_publish_received(clients, codec, cent):
    channel = f"chat:api-{uid()}"
    client, _ = await clients.connected(f"u-{uid()}")
    _, srec, _ = await subscribe(client, channel)
    result = await cent.publish(PublishRequest(channel=channel, data={"from": "api", "n": 7}))
    (pctx,) = await srec.wait("publication")
    assert codec.dec(pctx.pub.data) == {"from": "api", "n": 7}
    assert pctx.pub.offset == 1
    assert result.offset == 1 and result.epoch
    assert pctx.pub.info is None, "API publications carry no client info"


async def test_presence_and_presence_stats(clients):
    channel = f"chat:presence-{uid()}"
    alice, bob = f"alice-{uid()}", f"bob-{uid()}"
    a, arec = await clients.connected(alice)
    b, brec = await clients.connected(bob)
    sub_a, _, _ = await subscribe(a, channel)
    await subscribe(b, channel)
    a_id = arec.of("connected")[0].client
    b_id = brec.of("connected")[0].client

    presence = await sub_a.presence()
    assert set(presence.clients) == {a_id, b_id}
    assert presence.clients[a_id].user == alice
    assert presence.clients[a_id].client == a_id
    assert presence.clients[b_id].user == bob

    stats = await sub_a.presence_stats()
    assert (stats.num_clients, stats.num_users) == (2, 2)


async def test_history_limit_since_reverse(clients, codec):
    channel = f"chat:history-{uid()}"
    client, _ = await clients.connected(f"u-{uid()}")
    sub, _, _ = await subscribe(client, channel)
    for i in range(1, 6):
        await sub.publish(codec.enc({"i": i}))

    top = await sub.history(limit=0)
    assert top.publications == [], "limit 0 returns only the position"
    assert top.offset == 5 and top.epoch

    first2 = await sub.history(limit=2)
    assert [p.offset for p in first2.publications] == [1, 2]
    assert [codec.dec(p.data)["i"] for p in first2.publications] == [1, 2]
    assert (first2.offset, first2.epoch) == (5, top.epoch)

    since2 = await sub.history(limit=10, since=StreamPosition(offset=2, epoch=top.epoch))
    assert [p.offset for p in since2.publications] == [3, 4, 5]
    assert [codec.dec(p.data)["i"] for p in since2.publications] == [3, 4, 5]

    last2 = await sub.history(limit=2, reverse=True)
    assert [p.offset for p in last2.publications] == [5, 4]

    everything = await client.history(channel, limit=-1)
    assert [p.offset for p in everything.publications] == [1, 2, 3, 4, 5]


async def test_join_and_leave(clients):
    channel = f"chat:joinleave-{uid()}"
    bob = f"bob-{uid()}"
    a, _ = await clients.connected(f"alice-{uid()}")
    _, arec, _ = await subscribe(a, channel)
    b, brec = await clients.connected(bob)
    b_id = brec.of("connected")[0].client

    sub_b, _, _ = await subscribe(b, channel)
    (join,) = await arec.wait("join", lambda c: c.info.user == bob)
    assert join.info.client == b_id

    await sub_b.unsubscribe()
    (leave,) = await arec.wait("leave", lambda c: c.info.user == bob)
    assert leave.info.client == b_id


async def test_invalid_token_disconnects_3500_without_reconnect(clients):
    bad = sign({"sub": f"u-{uid()}"}, key="not-the-server-secret-but-32-bytes-long")
    client, rec = clients.make(token=bad)
    await client.connect()
    (ctx,) = await rec.wait("disconnected")
    assert ctx.code == 3500
    assert client.state == ClientState.DISCONNECTED
    # A reconnect (min delay 0.1 s) would have happened by now.
    await asyncio.sleep(1.5)
    assert client.state == ClientState.DISCONNECTED
    assert len(rec.of("connecting")) == 1, "only the initial connecting"
    assert rec.of("connected") == []


async def test_expired_token_refreshed_via_get_token(clients):
    user = f"u-{uid()}"
    calls = []

    async def get_token():
        calls.append(now())
        return conn_token(user, exp=now() + 3600)

    client, rec = clients.make(token=conn_token(user, exp=now() - 60), get_token=get_token)
    await client.connect()
    await rec.wait("connected")
    assert client.state == ClientState.CONNECTED
    assert len(calls) == 1, "get_token called once, after the server said 109"
    codes = [getattr(e.error, "code", None) for e in rec.of("error")]
    assert codes == [109], "token expired"


async def test_short_lived_token_refreshed(clients):
    user = f"u-{uid()}"
    ttl = 3
    calls = []

    async def get_token():
        calls.append(now())
        return conn_token(user, exp=now() + ttl)

    client, rec = clients.make(token=conn_token(user, exp=now() + ttl), get_token=get_token)
    await client.connect()
    await rec.wait("connected")
    # The SDK schedules the next refresh only from a successful refresh reply with
    # expires/ttl: a second get_token call proves the server accepted the first refresh.
    await wait_until(lambda: len(calls) >= 2, timeout=4 * ttl, what="two token refreshes")
    assert client.state == ClientState.CONNECTED
    assert len(rec.of("connected")) == 1, "same connection, no reconnect"
    assert len(rec.of("connecting")) == 1
    assert rec.of("disconnected") == []
    assert rec.of("error") == []
    stats = await client.presence_stats(f"chat:after-refresh-{uid()}")
    assert stats.num_clients == 0


async def test_subscription_token_valid_and_invalid(clients):
    user = f"u-{uid()}"
    client, _ = await clients.connected(user)

    good = f"secret:ok-{uid()}"
    sub, _, ctx = await subscribe(client, good, token=sub_token(user, good))
    assert ctx.channel == good and sub.state == SubscriptionState.SUBSCRIBED

    denied = f"secret:none-{uid()}"
    sub_none, rec_none = new_subscription(client, denied)
    await sub_none.subscribe()
    (uctx,) = await rec_none.wait("unsubscribed")
    assert uctx.code == 103, "no token: permission denied"

    bad = f"secret:bad-{uid()}"
    sub_bad, rec_bad = new_subscription(
        client, bad, token=sub_token(user, bad, key="not-the-server-secret-but-32-bytes-long")
    )
    await sub_bad.subscribe()
    (uctx,) = await rec_bad.wait("unsubscribed")
    assert uctx.code == 103, "invalid token: permission denied"
    assert sub_bad.state == SubscriptionState.UNSUBSCRIBED
    assert client.state == ClientState.CONNECTED


async def test_personal_channel_server_side_subscription(clients, codec, cent):
    client, rec = clients.make(token=conn_token("42"))
    await client.connect()
    await rec.wait("connected")
    (sctx,) = await rec.wait("subscribed", lambda c: c.channel == "#42")
    assert sctx.channel == "#42"

    marker = uid()
    await cent.publish(PublishRequest(channel="#42", data={"marker": marker}))
    (pctx,) = await rec.wait(
        "publication", lambda c: c.channel == "#42" and codec.dec(c.pub.data) == {"marker": marker}
    )
    assert codec.dec(pctx.pub.data) == {"marker": marker}
    assert client.subscriptions() == {}, "no client-side subscription"


async def test_recovery_of_ten_missed_publications(clients, codec):
    channel = f"chat:recover-{uid()}"
    subscriber, _ = await clients.connected(f"sub-{uid()}")
    publisher, _ = await clients.connected(f"pub-{uid()}")
    sub, srec, _ = await subscribe(subscriber, channel)

    await publisher.publish(channel, codec.enc({"n": 0}))
    await srec.wait("publication")

    await subscriber.disconnect()
    assert sub.state == SubscriptionState.SUBSCRIBING
    for n in range(1, 11):
        await publisher.publish(channel, codec.enc({"n": n}))

    await subscriber.connect()
    (_, ctx) = await srec.wait("subscribed", count=2)
    assert ctx.was_recovering is True
    assert ctx.recovered is True
    await srec.wait("publication", count=11)
    await asyncio.sleep(0.3)  # a duplicate would arrive now
    pubs = [c.pub for c in srec.of("publication")]
    assert [codec.dec(p.data)["n"] for p in pubs[1:]] == list(range(1, 11))
    assert [p.offset for p in pubs[1:]] == list(range(2, 12))
    assert len(pubs) == 11, "no duplicates"

    await publisher.publish(channel, codec.enc({"n": 11}))
    await srec.wait("publication", count=12)
    assert srec.of("publication")[11].pub.offset == 12


async def test_recovery_gap_larger_than_history_size(clients, codec, cent):
    channel = f"tiny:gap-{uid()}"
    subscriber, _ = await clients.connected(f"sub-{uid()}")
    publisher, _ = await clients.connected(f"pub-{uid()}")
    sub, srec, _ = await subscribe(subscriber, channel)
    await publisher.publish(channel, codec.enc({"n": 0}))
    await srec.wait("publication")

    await subscriber.disconnect()

    # A publication sent before the server has seen the close is still delivered live; publish
    # the gap only once the server no longer counts the subscriber in the channel.
    async def gone():
        result = await cent.channels(ChannelsRequest(pattern=channel))
        return channel not in (result.channels or {})

    await wait_until(gone, what="the server to drop the subscriber")
    for n in range(1, 6):
        await publisher.publish(channel, codec.enc({"n": n}))

    await subscriber.connect()
    (_, ctx) = await srec.wait("subscribed", count=2)
    assert ctx.was_recovering is True
    assert ctx.recovered is False
    assert ctx.stream_position is not None and ctx.stream_position.offset == 6
    await asyncio.sleep(0.5)
    assert len(srec.of("publication")) == 1, "no partial recovery was delivered"
