"""Every server HTTP API method through the real `cent` client, each with a checkable
effect on tether, mostly seen through a connected centrifuge-python client (JSON and
Protobuf via the `codec` parametrization)."""

import asyncio

import pytest
from cent import (
    BatchRequest,
    BroadcastRequest,
    ChannelsRequest,
    CentApiResponseError,
    ConnectionsRequest,
    DeleteUserStatusRequest,
    Disconnect,
    DisconnectRequest,
    GetUserStatusRequest,
    HistoryRemoveRequest,
    HistoryRequest,
    InfoRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PublishRequest,
    RefreshRequest,
    StreamPosition,
    SubscribeRequest,
    UnsubscribeRequest,
    UpdateUserStatusRequest,
)
from centrifuge import ClientState, SubscriptionState

from conftest import now, subscribe, uid


async def test_publish_with_idempotency_key(clients, codec, cent):
    channel = f"chat:idem-{uid()}"
    client, _ = await clients.connected(f"u-{uid()}")
    _, srec, _ = await subscribe(client, channel)
    key = f"key-{uid()}"
    first = await cent.publish(PublishRequest(channel=channel, data={"v": 1}, idempotency_key=key))
    again = await cent.publish(PublishRequest(channel=channel, data={"v": 1}, idempotency_key=key))
    assert (first.offset, first.epoch) == (1, again.epoch)
    assert again.offset == 1, "the retry returns the first result"
    await srec.wait("publication")
    history = await cent.history(HistoryRequest(channel=channel, limit=10))
    assert [p.offset for p in history.publications] == [1], "stored once"
    other = await cent.publish(PublishRequest(channel=channel, data={"v": 2}))
    assert other.offset == 2
    await srec.wait("publication", count=2)
    assert [codec.dec(c.pub.data) for c in srec.of("publication")] == [{"v": 1}, {"v": 2}]


async def test_broadcast(clients, codec, cent):
    channels = [f"chat:bc1-{uid()}", f"chat:bc2-{uid()}"]
    client, _ = await clients.connected(f"u-{uid()}")
    recs = [(await subscribe(client, ch))[1] for ch in channels]
    result = await cent.broadcast(BroadcastRequest(channels=channels, data={"all": True}))
    assert len(result.responses) == 2
    for response in result.responses:
        assert response.error is None
        assert response.result is not None and response.result.offset == 1
    for rec in recs:
        (pctx,) = await rec.wait("publication")
        assert codec.dec(pctx.pub.data) == {"all": True}


async def test_subscribe_creates_server_side_subscription(clients, codec, cent):
    user = f"u-{uid()}"
    channel = f"chat:srv-{uid()}"
    client, rec = await clients.connected(user)
    await cent.subscribe(SubscribeRequest(user=user, channel=channel))
    (sctx,) = await rec.wait("subscribed", lambda c: c.channel == channel)
    assert sctx.channel == channel

    await cent.publish(PublishRequest(channel=channel, data={"to": "server-sub"}))
    (pctx,) = await rec.wait("publication", lambda c: c.channel == channel)
    assert codec.dec(pctx.pub.data) == {"to": "server-sub"}
    assert client.subscriptions() == {}


async def test_unsubscribe_removes_client_subscription(clients, cent):
    user = f"u-{uid()}"
    channel = f"chat:unsub-{uid()}"
    client, _ = await clients.connected(user)
    sub, srec, _ = await subscribe(client, channel)
    await cent.unsubscribe(UnsubscribeRequest(user=user, channel=channel))
    (uctx,) = await srec.wait("unsubscribed")
    assert uctx.code == 2000, "server unsubscribe"
    assert sub.state == SubscriptionState.UNSUBSCRIBED
    stats = await cent.presence_stats(PresenceStatsRequest(channel=channel))
    assert stats.num_clients == 0


async def test_disconnect(clients, cent):
    user = f"u-{uid()}"
    client, rec = await clients.connected(user)
    await cent.disconnect(
        DisconnectRequest(user=user, disconnect=Disconnect(code=4501, reason="kicked"))
    )
    (dctx,) = await rec.wait("disconnected")
    assert (dctx.code, dctx.reason) == (4501, "kicked")
    assert client.state == ClientState.DISCONNECTED


async def test_refresh_expired_reconnects(clients, cent):
    user = f"u-{uid()}"
    client, rec = await clients.connected(user)
    first_id = rec.of("connected")[0].client
    await cent.refresh(RefreshRequest(user=user, expired=True))
    # An expired connection is closed with 3005 "connection expired" (reconnect).
    (cctx,) = await rec.wait("connecting", lambda c: c.code == 3005)
    assert cctx.code == 3005
    (_, again) = await rec.wait("connected", count=2)
    assert again.client != first_id
    assert client.state == ClientState.CONNECTED


async def test_presence_and_presence_stats(clients, cent):
    channel = f"chat:apipres-{uid()}"
    user = f"u-{uid()}"
    client, rec = await clients.connected(user)
    await subscribe(client, channel)
    client_id = rec.of("connected")[0].client

    presence = await cent.presence(PresenceRequest(channel=channel))
    assert list(presence.presence) == [client_id]
    assert presence.presence[client_id].user == user
    assert presence.presence[client_id].client == client_id

    stats = await cent.presence_stats(PresenceStatsRequest(channel=channel))
    assert (stats.num_clients, stats.num_users) == (1, 1)

    empty = await cent.presence(PresenceRequest(channel=f"chat:nobody-{uid()}"))
    assert empty.presence == {}


async def test_history_and_history_remove(cent):
    channel = f"chat:apihist-{uid()}"
    for i in range(1, 4):
        await cent.publish(PublishRequest(channel=channel, data={"i": i}))

    first2 = await cent.history(HistoryRequest(channel=channel, limit=2))
    assert [p.offset for p in first2.publications] == [1, 2]
    assert [p.data for p in first2.publications] == [{"i": 1}, {"i": 2}]
    assert first2.offset == 3 and first2.epoch

    since = await cent.history(
        HistoryRequest(channel=channel, limit=10, since=StreamPosition(offset=1, epoch=first2.epoch))
    )
    assert [p.offset for p in since.publications] == [2, 3]

    newest = await cent.history(HistoryRequest(channel=channel, limit=1, reverse=True))
    assert [p.data for p in newest.publications] == [{"i": 3}]

    await cent.history_remove(HistoryRemoveRequest(channel=channel))
    after = await cent.history(HistoryRequest(channel=channel, limit=10))
    assert after.publications == []
    assert (after.offset, after.epoch) == (3, first2.epoch), "stream position is kept"


async def test_channels(clients, cent):
    channel = f"chat:chans-{uid()}"
    client, _ = await clients.connected(f"u-{uid()}")
    await subscribe(client, channel)
    result = await cent.channels(ChannelsRequest(pattern=channel))
    assert list(result.channels) == [channel]
    assert result.channels[channel].num_clients == 1
    everything = await cent.channels(ChannelsRequest())
    assert channel in everything.channels


async def test_info(clients, cent):
    await clients.connected(f"u-{uid()}")
    result = await cent.info(InfoRequest())
    assert len(result.nodes) >= 1
    node = result.nodes[0]
    assert node.uid and node.name
    assert sum(n.num_clients for n in result.nodes) >= 1


async def test_batch(clients, codec, cent):
    channels = [f"chat:batch1-{uid()}", f"chat:batch2-{uid()}"]
    client, _ = await clients.connected(f"u-{uid()}")
    recs = [(await subscribe(client, ch))[1] for ch in channels]
    result = await cent.batch(
        BatchRequest(
            requests=[
                PublishRequest(channel=channels[0], data={"b": 0}),
                PublishRequest(channel=channels[1], data={"b": 1}),
                PresenceStatsRequest(channel=channels[0]),
            ]
        )
    )
    assert len(result.replies) == 3
    assert result.replies[0].offset == 1
    assert result.replies[1].offset == 1
    assert result.replies[2].num_clients == 1
    for i, rec in enumerate(recs):
        (pctx,) = await rec.wait("publication")
        assert codec.dec(pctx.pub.data) == {"b": i}


async def test_unknown_namespace_is_error_102(cent):
    with pytest.raises(CentApiResponseError) as err:
        await cent.publish(PublishRequest(channel="nope:x", data={}))
    assert err.value.code == 102


async def test_user_status_through_the_client_rpc_and_cent(clients, codec, cent):
    """Centrifugo PRO's user status API: the client RPC marks the caller active, `cent` reads,
    sets and deletes statuses; a connected user's `online` is written by the server."""
    user, stranger = f"u-{uid()}", f"u-{uid()}"
    client, _ = await clients.connected(user)
    started = now()
    await client.rpc("update_user_status", codec.enc({}))
    # `online` is written off the hot path, right after the connection arrived.
    for _ in range(50):
        result = await cent.get_user_status(GetUserStatusRequest(users=[user, stranger]))
        if result.statuses[0].online:
            break
        await asyncio.sleep(0.1)
    mine, theirs = result.statuses
    assert mine.user == user and theirs.user == stranger
    assert started - 1 <= mine.active <= now() + 1
    assert started - 1 <= mine.online <= now() + 1
    assert (theirs.active, theirs.online) == (0, 0), "unknown: left out"
    await cent.update_user_status(UpdateUserStatusRequest(users=[stranger]))
    result = await cent.get_user_status(GetUserStatusRequest(users=[stranger]))
    assert result.statuses[0].active >= started - 1
    await cent.delete_user_status(DeleteUserStatusRequest(users=[user, stranger]))
    result = await cent.get_user_status(GetUserStatusRequest(users=[user, stranger]))
    assert [(s.active, s.online) for s in result.statuses] == [(0, 0), (0, 0)]


async def test_connections_of_a_user(clients, codec, cent):
    """Centrifugo PRO's `connections`: a user's live connections, by client id."""
    user = f"u-{uid()}"
    ids = []
    for _ in range(2):
        _, rec = await clients.connected(user)
        ids.append(rec.of("connected")[0].client)
    await clients.connected(f"u-{uid()}")
    result = await cent.connections(ConnectionsRequest(user=user, expression=""))
    assert sorted(result.connections) == sorted(ids)
    protocol = "protobuf" if codec.use_protobuf else "json"
    for info in result.connections.values():
        assert (info.user, info.transport, info.protocol) == (user, "websocket", protocol)
