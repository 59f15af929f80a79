"""What the consumers suite's tether reads from, made before it starts and removed after.

    python resources.py setup STATE CONFIG_IN CONFIG_OUT PORT
    python resources.py teardown STATE

`setup` creates, under one run-unique prefix: a PostgreSQL outbox table with Centrifugo's
schema and its NOTIFY trigger (database `test` on 127.0.0.1:5432), a JetStream stream on
127.0.0.1:4222, a durable RabbitMQ queue on 127.0.0.1:5672; the Redis stream (127.0.0.1:6379)
is made by the consumer's group creation (MKSTREAM). It writes CONFIG_OUT: CONFIG_IN on
127.0.0.1:PORT with a `consumers` entry for each source, and the names to STATE (JSON), which
the tests read (`INTEROP_CONSUMERS_STATE`) and `teardown` removes.
"""

import asyncio
import json
import sys
import uuid

import nats
import pika
import psycopg
import redis

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379"
NATS_URL = "nats://127.0.0.1:4222"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2f"
PARTITIONS = 2


def names() -> dict:
    prefix = f"interop_{uuid.uuid4().hex[:10]}"
    return {
        "table": f"{prefix}_outbox",
        "notify": f"{prefix}_change",
        "function": f"{prefix}_notify",
        "trigger": f"{prefix}_trigger",
        "partitions": PARTITIONS,
        "redis_stream": f"{prefix}.stream",
        "nats_stream": prefix.upper(),
        "nats_subject": f"{prefix}.in",
        "queue": f"{prefix}.queue",
    }


def setup_postgres(n: dict) -> None:
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(
            f"""CREATE TABLE {n['table']} (
                id BIGSERIAL PRIMARY KEY,
                method text NOT NULL,
                payload JSONB NOT NULL,
                partition INTEGER NOT NULL default 0,
                created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL)"""
        )
        conn.execute(
            f"""CREATE FUNCTION {n['function']}() RETURNS TRIGGER AS $$
                BEGIN PERFORM pg_notify('{n['notify']}', NEW.partition::text); RETURN NEW; END;
                $$ LANGUAGE plpgsql"""
        )
        conn.execute(
            f"""CREATE TRIGGER {n['trigger']} AFTER INSERT ON {n['table']}
                FOR EACH ROW EXECUTE FUNCTION {n['function']}()"""
        )


def teardown_postgres(n: dict) -> None:
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {n['table']}")
        conn.execute(f"DROP FUNCTION IF EXISTS {n['function']}()")


async def setup_nats(n: dict) -> None:
    nc = await nats.connect(NATS_URL)
    try:
        await nc.jetstream().add_stream(name=n["nats_stream"], subjects=[n["nats_subject"]])
    finally:
        await nc.close()


async def teardown_nats(n: dict) -> None:
    nc = await nats.connect(NATS_URL)
    try:
        await nc.jetstream().delete_stream(n["nats_stream"])
    except Exception:  # noqa: BLE001 - already gone
        pass
    finally:
        await nc.close()


def setup_amqp(n: dict) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        conn.channel().queue_declare(queue=n["queue"], durable=True)
    finally:
        conn.close()


def teardown_amqp(n: dict) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        conn.channel().queue_delete(queue=n["queue"])
    finally:
        conn.close()


def consumers(n: dict) -> list:
    return [
        {
            "name": "interop_outbox",
            "enabled": True,
            "type": "postgresql",
            "postgresql": {
                "dsn": PG_DSN,
                "outbox_table_name": n["table"],
                "num_partitions": n["partitions"],
                "partition_notification_channel": n["notify"],
            },
        },
        {
            "name": "interop_redis",
            "enabled": True,
            "type": "redis_stream",
            "redis_stream": {
                "address": REDIS_URL,
                "streams": [n["redis_stream"]],
                "consumer_group": "tether",
            },
        },
        {
            "name": "interop_jetstream",
            "enabled": True,
            "type": "nats_jetstream",
            "nats_jetstream": {
                "url": NATS_URL,
                "stream_name": n["nats_stream"],
                "subjects": [n["nats_subject"]],
                "durable_consumer_name": "tether",
            },
        },
        {
            "name": "interop_amqp",
            "enabled": True,
            "type": "amqp",
            "amqp": {"url": AMQP_URL, "queues": [n["queue"]]},
        },
    ]


def setup(state: str, config_in: str, config_out: str, port: str) -> None:
    n = names()
    # Recorded first, so a failure halfway is still cleaned up.
    with open(state, "w") as f:
        json.dump(n, f)
    setup_postgres(n)
    asyncio.run(setup_nats(n))
    setup_amqp(n)
    with open(config_in) as f:
        cfg = json.load(f)
    cfg.setdefault("http_server", {})["address"] = "127.0.0.1"
    cfg["http_server"]["port"] = int(port)
    cfg["tcp"] = {"enabled": False}
    cfg["consumers"] = consumers(n)
    with open(config_out, "w") as f:
        json.dump(cfg, f, indent=2)
    print(json.dumps(n))


def teardown(state: str) -> None:
    with open(state) as f:
        n = json.load(f)
    failures = []
    for name, step in [
        ("postgresql", lambda: teardown_postgres(n)),
        ("redis", lambda: redis.Redis.from_url(REDIS_URL).delete(n["redis_stream"])),
        ("nats", lambda: asyncio.run(teardown_nats(n))),
        ("amqp", lambda: teardown_amqp(n)),
    ]:
        try:
            step()
        except Exception as e:  # noqa: BLE001 - remove what can be removed
            failures.append(f"{name}: {e}")
    if failures:
        print("teardown left behind: " + "; ".join(failures), file=sys.stderr)


if __name__ == "__main__":
    if sys.argv[1:2] == ["setup"] and len(sys.argv) == 6:
        setup(*sys.argv[2:6])
    elif sys.argv[1:2] == ["teardown"] and len(sys.argv) == 3:
        teardown(sys.argv[2])
    else:
        sys.exit(__doc__)
