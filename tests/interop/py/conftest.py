"""Fixtures for the centrifuge-python and cent acceptance tests.

Plumbing around the REAL SDKs (PyPI `centrifuge-python`, `cent`): where tether listens,
HS256 token signing with PyJWT, event recording for SDK callbacks, and client factories
that always disconnect what a test created.
"""

import asyncio
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import jwt
import pytest
import pytest_asyncio
from cent import AsyncClient as CentClient
from centrifuge import Client, ClientEventHandler, SubscriptionEventHandler

_CONFIG_PATH = Path(os.environ.get("TETHER_CONFIG", Path(__file__).parent.parent / "tether.json"))
CONFIG: Dict[str, Any] = json.loads(_CONFIG_PATH.read_text())

_HOST = CONFIG.get("http_server", {}).get("address") or "127.0.0.1"
_PORT = CONFIG.get("http_server", {}).get("port", 8000)
WS_URL = f"ws://{_HOST}:{_PORT}/connection/websocket"
API_URL = f"http://{_HOST}:{_PORT}/api"
API_KEY: str = CONFIG["http_api"]["key"]
HMAC_SECRET: str = CONFIG["client"]["token"]["hmac_secret_key"]

#: Default wait for one event, well under the per-test timeout.
WAIT = 5.0


def uid() -> str:
    """A unique suffix so every test uses its own channels and users."""
    return uuid.uuid4().hex[:12]


def sign(claims: Dict[str, Any], key: str = HMAC_SECRET) -> str:
    return jwt.encode(claims, key, algorithm="HS256")


def conn_token(user: str, **extra: Any) -> str:
    """A connection token for `user`; `extra` adds claims such as exp or info."""
    return sign({"sub": user, **extra})


def sub_token(user: str, channel: str, key: str = HMAC_SECRET, **extra: Any) -> str:
    """A subscription token for `user` on `channel`."""
    return sign({"sub": user, "channel": channel, **extra}, key)


def now() -> int:
    return int(time.time())


class Recorder:
    """Collects SDK callback contexts by event name and lets a test wait for them."""

    def __init__(self) -> None:
        self.events: Dict[str, List[Any]] = {}
        self._changed = asyncio.Event()

    def add(self, name: str, ctx: Any) -> None:
        self.events.setdefault(name, []).append(ctx)
        self._changed.set()

    def of(self, name: str) -> List[Any]:
        return self.events.get(name, [])

    async def wait(
        self,
        name: str,
        pred: Callable[[Any], bool] = lambda _ctx: True,
        count: int = 1,
        timeout: float = WAIT,
    ) -> List[Any]:
        """Waits until `count` recorded `name` events match `pred`; returns the first `count`."""

        async def loop() -> List[Any]:
            while True:
                matches = [c for c in self.of(name) if pred(c)]
                if len(matches) >= count:
                    return matches[:count]
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(loop(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {count} '{name}' event(s); "
                f"got {self.of(name)!r}"
            ) from None


def _client_handler(rec: Recorder) -> ClientEventHandler:
    class Handler(ClientEventHandler):
        async def on_connecting(self, ctx):
            rec.add("connecting", ctx)

        async def on_connected(self, ctx):
            rec.add("connected", ctx)

        async def on_disconnected(self, ctx):
            rec.add("disconnected", ctx)

        async def on_error(self, ctx):
            rec.add("error", ctx)

        async def on_subscribed(self, ctx):
            rec.add("subscribed", ctx)

        async def on_subscribing(self, ctx):
            rec.add("subscribing", ctx)

        async def on_unsubscribed(self, ctx):
            rec.add("unsubscribed", ctx)

        async def on_publication(self, ctx):
            rec.add("publication", ctx)

        async def on_join(self, ctx):
            rec.add("join", ctx)

        async def on_leave(self, ctx):
            rec.add("leave", ctx)

    return Handler()


def _sub_handler(rec: Recorder) -> SubscriptionEventHandler:
    class Handler(SubscriptionEventHandler):
        async def on_subscribing(self, ctx):
            rec.add("subscribing", ctx)

        async def on_subscribed(self, ctx):
            rec.add("subscribed", ctx)

        async def on_unsubscribed(self, ctx):
            rec.add("unsubscribed", ctx)

        async def on_publication(self, ctx):
            rec.add("publication", ctx)

        async def on_join(self, ctx):
            rec.add("join", ctx)

        async def on_leave(self, ctx):
            rec.add("leave", ctx)

        async def on_error(self, ctx):
            rec.add("error", ctx)

    return Handler()


class Codec:
    """JSON or Protobuf: how JSON-shaped payloads travel through the SDK."""

    def __init__(self, use_protobuf: bool) -> None:
        self.use_protobuf = use_protobuf

    def enc(self, value: Any) -> Any:
        return json.dumps(value).encode() if self.use_protobuf else value

    def dec(self, data: Any) -> Any:
        return json.loads(data) if self.use_protobuf else data


class Clients:
    """Creates centrifuge-python clients of one codec and disconnects them all at the end."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self._clients: List[Client] = []

    def make(self, **kwargs: Any):
        """A new, not yet connected client and its event recorder."""
        rec = Recorder()
        opts: Dict[str, Any] = dict(
            use_protobuf=self.codec.use_protobuf,
            timeout=5.0,
            min_reconnect_delay=0.1,
            max_reconnect_delay=1.0,
            proxy=None,
        )
        opts.update(kwargs)
        client = Client(WS_URL, events=_client_handler(rec), **opts)
        self._clients.append(client)
        return client, rec

    async def connected(self, user: str, **kwargs: Any):
        """A client for `user` (token without exp), connected; returns (client, recorder)."""
        client, rec = self.make(token=conn_token(user), **kwargs)
        await client.connect()
        await rec.wait("connected")
        return client, rec

    async def close_all(self) -> None:
        for client in self._clients:
            try:
                await asyncio.wait_for(client.disconnect(), WAIT)
            except Exception:  # noqa: BLE001 - teardown must reach every client
                pass
        self._clients.clear()


async def subscribe(client: Client, channel: str, **kwargs: Any):
    """Subscribes `client` to `channel` (client-side); returns (sub, recorder, ctx)."""
    rec = Recorder()
    sub = client.new_subscription(channel, events=_sub_handler(rec), **kwargs)
    await sub.subscribe()
    (ctx,) = await rec.wait("subscribed")
    return sub, rec, ctx


def new_subscription(client: Client, channel: str, **kwargs: Any):
    """A subscription with a recorder, not yet subscribed."""
    rec = Recorder()
    sub = client.new_subscription(channel, events=_sub_handler(rec), **kwargs)
    return sub, rec


@pytest.fixture(params=[False, True], ids=["json", "protobuf"])
def codec(request) -> Codec:
    return Codec(use_protobuf=request.param)


@pytest_asyncio.fixture
async def clients(codec: Codec):
    factory = Clients(codec)
    try:
        yield factory
    finally:
        await factory.close_all()


@pytest_asyncio.fixture
async def cent():
    client = CentClient(API_URL, api_key=API_KEY, timeout=WAIT)
    try:
        yield client
    finally:
        await client.close()


async def wait_until(pred: Callable[[], Any], timeout: float = WAIT, what: str = "condition"):
    """Polls `pred` (sync or async) until truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.025)


def first(items: List[Any], pred: Callable[[Any], bool]) -> Optional[Any]:
    for item in items:
        if pred(item):
            return item
    return None
