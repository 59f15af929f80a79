"""centrifuge-python (JSON and Protobuf) receives what a backend wrote to an outbox table, a
Redis stream, a JetStream subject and a RabbitMQ queue, in order, through tether's consumers.

Each test subscribes a real SDK client to a fresh channel, then writes 10 commands the way a
backend would (Centrifugo's formats: the method in a column, field or header and the API
request as the payload, or a `{"method", "payload"}` envelope), and waits for the 10
publications in the order they were written.
"""

import asyncio
import json

import nats
import pika
import psycopg
import redis.asyncio as aioredis
from consumer_helpers import subscribe, uid
from resources import AMQP_URL, NATS_URL, PG_DSN, REDIS_URL

N = 10
# A consumer polls or blocks for up to a few seconds between messages; all 10 come well
# within this.
WITHIN = 15.0


def request(channel: str, seq: int) -> dict:
    return {"channel": channel, "data": {"seq": seq, "text": f"message {seq}"}}


def envelope(channel: str, seq: int) -> dict:
    return {"method": "publish", "payload": request(channel, seq)}


async def received_in_order(clients, channel: str, produce) -> None:
    client, _ = await clients.connected("consumer-reader")
    sub, rec, _ = await subscribe(client, channel)
    await produce()
    pubs = await rec.wait("publication", count=N, timeout=WITHIN)
    seqs = [clients.codec.dec(p.pub.data)["seq"] for p in pubs]
    assert seqs == list(range(N)), f"out of order or missing: {seqs}"
    offsets = [p.pub.offset for p in pubs]
    assert offsets == sorted(offsets), f"offsets not increasing: {offsets}"
    await asyncio.sleep(0.3)
    assert len(rec.of("publication")) == N, "a message was published twice"
    await sub.unsubscribe()


def channel_name(source: str) -> str:
    return f"chat:consumed-{source}-{uid()}"


async def test_postgres_outbox_rows_arrive_in_order(clients, sources):
    channel = channel_name("pg")

    async def produce():
        async with await psycopg.AsyncConnection.connect(PG_DSN) as conn:
            # One transaction, as a backend writes its own row and the outbox row together.
            async with conn.transaction():
                for seq in range(N):
                    if seq % 3 == 2:
                        row = ("", json.dumps(envelope(channel, seq)))
                    else:
                        row = ("publish", json.dumps(request(channel, seq)))
                    await conn.execute(
                        f"INSERT INTO {sources['table']} (method, payload, partition) "
                        "VALUES (%s, %s, 0)",
                        row,
                    )

    await received_in_order(clients, channel, produce)


async def test_postgres_rolled_back_rows_publish_nothing(clients, sources):
    channel = channel_name("pg-rollback")
    client, _ = await clients.connected("consumer-reader")
    sub, rec, _ = await subscribe(client, channel)
    async with await psycopg.AsyncConnection.connect(PG_DSN) as conn:
        async with conn.transaction(force_rollback=True):
            await conn.execute(
                f"INSERT INTO {sources['table']} (method, payload) VALUES ('publish', %s)",
                (json.dumps(request(channel, 99)),),
            )
        async with conn.transaction():
            await conn.execute(
                f"INSERT INTO {sources['table']} (method, payload) VALUES ('publish', %s)",
                (json.dumps(request(channel, 0)),),
            )
    (pub,) = await rec.wait("publication", timeout=WITHIN)
    assert clients.codec.dec(pub.pub.data)["seq"] == 0
    await asyncio.sleep(0.5)
    assert len(rec.of("publication")) == 1, "the rolled-back row was published"
    await sub.unsubscribe()


async def test_redis_stream_entries_arrive_in_order(clients, sources):
    channel = channel_name("redis")

    async def produce():
        r = aioredis.Redis.from_url(REDIS_URL)
        try:
            for seq in range(N):
                if seq % 3 == 2:
                    fields = {"payload": json.dumps(envelope(channel, seq))}
                else:
                    fields = {"method": "publish", "payload": json.dumps(request(channel, seq))}
                await r.xadd(sources["redis_stream"], fields)
        finally:
            await r.aclose()

    await received_in_order(clients, channel, produce)


async def test_jetstream_messages_arrive_in_order(clients, sources):
    channel = channel_name("nats")

    async def produce():
        nc = await nats.connect(NATS_URL)
        try:
            js = nc.jetstream()
            for seq in range(N):
                if seq % 3 == 2:
                    body, headers = envelope(channel, seq), None
                else:
                    body, headers = request(channel, seq), {"centrifugo-method": "publish"}
                await js.publish(
                    sources["nats_subject"], json.dumps(body).encode(), headers=headers
                )
        finally:
            await nc.close()

    await received_in_order(clients, channel, produce)


async def test_rabbitmq_messages_arrive_in_order(clients, sources):
    channel = channel_name("amqp")

    def publish_all():
        conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            for seq in range(N):
                if seq % 3 == 2:
                    body, headers = envelope(channel, seq), None
                else:
                    body, headers = request(channel, seq), {"centrifugo-method": "publish"}
                ch.basic_publish(
                    exchange="",
                    routing_key=sources["queue"],
                    body=json.dumps(body).encode(),
                    properties=pika.BasicProperties(
                        headers=headers, message_id=f"{channel}-{seq}", delivery_mode=2
                    ),
                )
        finally:
            conn.close()

    async def produce():
        await asyncio.to_thread(publish_all)

    await received_in_order(clients, channel, produce)
