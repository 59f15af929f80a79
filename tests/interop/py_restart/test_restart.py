"""centrifuge-python (JSON and Protobuf) across a tether restart on the disk engine.

Each test runs its own tether on a fresh data directory and drives two real SDK clients
subscribed to one `chat:` channel (history, force_recovery): `offline` is disconnected by the
test before the publications it must miss and connected again after the restart (it recovers
them); `online` stays connected, loses its connection with the server and its SDK reconnects
by itself (it recovers nothing, but must get `recovered` on the same epoch). Publications
cannot be made while the server is down, so the missed ones are published before the kill.
"""

import asyncio
import signal

import pytest
from centrifuge import ClientState, SubscriptionState

from restart_helpers import api, fresh_data_dir, subscribe, uid, wait_until

#: How long the SDK may take to come back once the server is up again (backoff <= 1 s).
RECONNECT = 8.0


async def run_until_killed(servers, clients, codec, env, label):
    """Two subscribers, 3 live publications, `offline` away, 5 more (offsets 4..8), kill -9."""
    server = servers(fresh_data_dir(f"py-{label}"), env)
    await server.start()
    channel = f"chat:restart-{uid()}"
    offline, _ = await clients.connected(f"off-{uid()}")
    online, _ = await clients.connected(f"on-{uid()}")
    a_sub, a_rec, a_ctx = await subscribe(offline, channel)
    b_sub, b_rec, b_ctx = await subscribe(online, channel)
    epoch = a_ctx.stream_position.epoch if a_ctx.stream_position else ""
    assert epoch, "the subscription is positioned: it has an epoch"
    assert b_ctx.stream_position.epoch == epoch

    for n in range(1, 4):
        res = await api("publish", {"channel": channel, "data": {"n": n}})
        assert (res.get("offset"), res.get("epoch")) == (n, epoch)
    await a_rec.wait("publication", count=3)
    await b_rec.wait("publication", count=3)

    await offline.disconnect()
    assert a_sub.state == SubscriptionState.SUBSCRIBING

    async def offline_gone():
        channels = (await api("channels", {"pattern": channel})).get("channels") or {}
        return channels.get(channel, {}).get("num_clients") == 1

    await wait_until(offline_gone, what="the server to drop the offline subscriber")
    for n in range(4, 9):
        res = await api("publish", {"channel": channel, "data": {"n": n}})
        assert (res.get("offset"), res.get("epoch")) == (n, epoch)
    await b_rec.wait("publication", count=8)

    rc = await server.kill(signal.SIGKILL)
    assert rc == -signal.SIGKILL, f"tether was killed, not stopped (return code {rc})"
    await wait_until(lambda: online.state != ClientState.CONNECTED, what="the online client to notice")
    return server, channel, epoch, offline, a_sub, a_rec, b_sub, b_rec


async def test_kill_9_disk_engine_recovers_missed_publications(servers, clients, codec):
    server, channel, epoch, offline, a_sub, a_rec, b_sub, b_rec = await run_until_killed(
        servers, clients, codec, {}, f"kill9-{'pb' if codec.use_protobuf else 'json'}"
    )
    await server.start()

    hist = await api("history", {"channel": channel, "limit": -1})
    assert hist.get("epoch") == epoch, "history keeps its epoch across the restart"
    assert [p.get("offset") for p in hist.get("publications", [])] == list(range(1, 9))

    # `online`: its SDK reconnects and resubscribes by itself.
    (_, b_ctx) = await b_rec.wait("subscribed", count=2, timeout=RECONNECT)
    assert b_ctx.was_recovering is True
    assert b_ctx.recovered is True, "online subscriber recovered"
    assert b_ctx.stream_position.epoch == epoch, "same epoch after the restart"
    assert b_ctx.stream_position.offset == 8

    # `offline`: connects now and recovers 4..8, once each, in order.
    await offline.connect()
    (_, a_ctx) = await a_rec.wait("subscribed", count=2)
    assert a_ctx.was_recovering is True
    assert a_ctx.recovered is True, "offline subscriber recovered"
    assert a_ctx.stream_position.epoch == epoch, "same epoch after the restart"
    # A successful recovery answers with the offset the client recovered from (Centrifugo:
    # `res.Offset = req.Offset`); the recovered publications carry it to 8.
    assert a_ctx.stream_position.offset == 3
    await a_rec.wait("publication", count=8)
    await asyncio.sleep(0.3)  # a duplicate would arrive now
    pubs = [c.pub for c in a_rec.of("publication")]
    assert [codec.dec(p.data)["n"] for p in pubs] == list(range(1, 9)), "missed ones once, in order"
    assert [p.offset for p in pubs] == list(range(1, 9))
    assert len(b_rec.of("publication")) == 8, "nothing replayed to the online subscriber"

    # The stream continues: next offset, same epoch, delivered to both.
    res = await api("publish", {"channel": channel, "data": {"n": 9}})
    assert (res.get("offset"), res.get("epoch")) == (9, epoch)
    await a_rec.wait("publication", count=9)
    await b_rec.wait("publication", count=9)
    assert a_rec.of("publication")[8].pub.offset == 9
    assert b_rec.of("publication")[8].pub.offset == 9
    assert a_rec.of("unsubscribed") == [] and b_rec.of("unsubscribed") == []
    assert a_sub.state == SubscriptionState.SUBSCRIBED
    assert b_sub.state == SubscriptionState.SUBSCRIBED


# Once (JSON) is enough: this only proves that the assertions above can fail.
@pytest.mark.parametrize("codec", [False], ids=["json"], indirect=True)
async def test_negative_control_memory_engine_does_not_recover(servers, clients, codec):
    """The same kill -9 on the memory engine: the test must see the loss."""
    server, channel, epoch, offline, _a_sub, a_rec, _b_sub, b_rec = await run_until_killed(
        servers, clients, codec, {"TETHER_ENGINE_TYPE": "memory"}, "memory"
    )
    await server.start()
    hist = await api("history", {"channel": channel, "limit": -1})
    assert hist.get("publications", []) == [], "the memory engine lost the history"

    await offline.connect()
    (_, a_ctx) = await a_rec.wait("subscribed", count=2)
    (_, b_ctx) = await b_rec.wait("subscribed", count=2, timeout=RECONNECT)
    for ctx in (a_ctx, b_ctx):
        assert ctx.was_recovering is True
        assert ctx.recovered is False, "nothing to recover from after a restart in memory"
        assert ctx.stream_position.epoch != epoch, "a new stream, a new epoch"
    await asyncio.sleep(0.3)
    assert len(a_rec.of("publication")) == 3, "nothing delivered to the offline subscriber"
    assert len(b_rec.of("publication")) == 8
