"""Helpers for the centrifuge-python proxy suite.

tether runs with tether-proxy.json and forwards client events to the real backend process
(tests/interop/backend/app.py), or with tether-proxy-grpc.json and calls the real gRPC
backend (tests/interop/backend/grpc_app.py); MODE says which. The SDK is the real PyPI `centrifuge-python`; the cookie
travels through its `headers` option, which it passes to `websockets.connect(...,
additional_headers=...)` on the WebSocket handshake.

The event recorder and SDK handler classes are the ones of the main suite (py/conftest.py),
loaded under another module name so the two `conftest` modules do not collide.
"""

import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Dict, List
from urllib.parse import urlsplit

import aiohttp
import jwt
from centrifuge import Client

_HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("interop_sdk_helpers", _HERE.parent / "py" / "conftest.py")
_sdk = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_sdk)  # type: ignore[union-attr]

Codec = _sdk.Codec
Recorder = _sdk.Recorder
WAIT = _sdk.WAIT
new_subscription = _sdk.new_subscription
uid = _sdk.uid
wait_until = _sdk.wait_until
_client_handler = _sdk._client_handler

_CONFIG_PATH = Path(os.environ.get("TETHER_PROXY_CONFIG", _HERE.parent / "tether-proxy.json"))
CONFIG: Dict[str, Any] = json.loads(_CONFIG_PATH.read_text())

_HOST = CONFIG.get("http_server", {}).get("address") or "127.0.0.1"
_PORT = CONFIG.get("http_server", {}).get("port", 8000)
WS_URL = f"ws://{_HOST}:{_PORT}/connection/websocket"
API_URL = f"http://{_HOST}:{_PORT}/api"
API_KEY: str = CONFIG["http_api"]["key"]
HMAC_SECRET: str = CONFIG["client"]["token"]["hmac_secret_key"]
_connect_endpoint = urlsplit(CONFIG["client"]["proxy"]["connect"]["endpoint"])
#: How tether reaches the backend, read from the connect proxy endpoint (Centrifugo:
#: http(s):// is HTTP, anything else gRPC): "http" (backend/app.py) or "grpc" (grpc_app.py).
MODE = "http" if _connect_endpoint.scheme in ("http", "https") else "grpc"
#: Where the backend's introspection (/_seen, /_stored, /_control) answers:
#: TETHER_PROXY_BACKEND_URL, else the origin of the connect proxy endpoint (HTTP backend) or
#: http://127.0.0.1:18102 (the gRPC backend's default HTTP port).
BACKEND_URL = os.environ.get("TETHER_PROXY_BACKEND_URL") or (
    f"{_connect_endpoint.scheme}://{_connect_endpoint.netloc}"
    if MODE == "http"
    else "http://127.0.0.1:18102"
)


def grpc_method(name: str) -> str:
    """The full gRPC method path tether calls for an event (gRPC mode)."""
    return f"/centrifugal.centrifugo.proxy.CentrifugoProxy/{name}"
#: What the SDK reports as its version in connect (forwarded to the connect proxy).
SDK_VERSION = "interop-proxy"


def conn_token(user: str) -> str:
    return jwt.encode({"sub": user}, HMAC_SECRET, algorithm="HS256")


async def _get(path: str, params: Dict[str, str]) -> Any:
    timeout = aiohttp.ClientTimeout(total=WAIT)
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as http:
        async with http.get(f"{BACKEND_URL}{path}", params=params) as resp:
            assert resp.status == 200, f"backend {path}: HTTP {resp.status}"
            return await resp.json()


async def seen(kind: str, **filters: str) -> List[Dict[str, Any]]:
    """Requests of `kind` the backend received, oldest first (filters as /_seen takes them)."""
    return await _get("/_seen", {"kind": kind, **filters})


async def stored() -> List[Dict[str, Any]]:
    """Publications the backend kept (publish proxy, `store` rule)."""
    return await _get("/_stored", {})


async def api(method: str, body: Dict[str, Any]) -> Dict[str, Any]:
    """tether's server HTTP API (used only to look at history)."""
    timeout = aiohttp.ClientTimeout(total=WAIT)
    headers = {"X-API-Key": API_KEY}
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as http:
        async with http.post(f"{API_URL}/{method}", json=body, headers=headers) as resp:
            assert resp.status == 200, f"API {method}: HTTP {resp.status}"
            reply = await resp.json()
    assert "error" not in reply, f"API {method}: {reply['error']}"
    return reply.get("result", {})


async def connected_or_fail(rec: "Recorder", timeout: float = WAIT):
    """The first 'connected' context; fails at once with the code and reason when the SDK
    ends up 'disconnected' instead."""
    await wait_until(
        lambda: rec.of("connected") or rec.of("disconnected"),
        timeout=timeout,
        what="'connected'",
    )
    if not rec.of("connected"):
        d = rec.of("disconnected")[0]
        raise AssertionError(f"disconnected with {d.code} {d.reason!r} instead of connected")
    return rec.of("connected")[0]


class ProxyClients:
    """centrifuge-python clients of one codec that send a cookie; all disconnected at the end."""

    def __init__(self, codec: "Codec") -> None:
        self.codec = codec
        self._clients: List[Client] = []

    def make(self, cookie: str = "", **kwargs: Any):
        """A new, not yet connected client (Cookie header when `cookie`) and its recorder."""
        rec = Recorder()
        opts: Dict[str, Any] = dict(
            use_protobuf=self.codec.use_protobuf,
            version=SDK_VERSION,
            timeout=5.0,
            min_reconnect_delay=0.1,
            max_reconnect_delay=1.0,
            proxy=None,
        )
        if cookie:
            opts["headers"] = {"Cookie": cookie}
        opts.update(kwargs)
        client = Client(WS_URL, events=_client_handler(rec), **opts)
        self._clients.append(client)
        return client, rec

    async def connected(self, session: str, **kwargs: Any):
        """A client with `Cookie: session=<session>`, connected; returns (client, rec, ctx)."""
        client, rec = self.make(cookie=f"session={session}", **kwargs)
        await client.connect()
        ctx = await connected_or_fail(rec)
        return client, rec, ctx

    async def close_all(self) -> None:
        import asyncio

        for client in self._clients:
            try:
                await asyncio.wait_for(client.disconnect(), WAIT)
            except Exception:  # noqa: BLE001 - teardown must reach every client
                pass
        self._clients.clear()
