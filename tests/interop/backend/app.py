"""A real application backend for Centrifugo's HTTP proxy, used by the proxy interop suite.

tether POSTs client events here as JSON (compat-proxy.md §3, §4) and acts on the answer
(§5, §6). Every answer is decided by what the request carries, so the tests steer the
backend through the SDK alone (the cookie, the channel, the published data, the RPC
method); nothing is configured per test except through `POST /_control`.

Behaviour (the user is the `session` cookie value; see README.md, "Proxy suite"):

connect (`/centrifugo/connect`), keyed by the forwarded `Cookie: session=<value>`:
  - no `session` cookie        -> `{"result": {}}` (anonymous user "" accepted, §6.1)
  - `refuse...`                -> error 1403 "forbidden" (not temporary)
  - `ban...`                   -> disconnect 4501 "banned"
  - `flaky...`                 -> first call: error 1503 "try again", temporary; later calls
                                  as a normal user
  - `short...`                 -> a normal user whose connection expires: `expire_at` = now + 2 s
  - anything else `<user>`     -> `{"result": {"user", "info": {"name"}, "data": {"hello"},
                                  "meta": {"session"}}}`
refresh (`/centrifugo/refresh`), keyed by `user`: follows a plan (`/_control`), by default
  for every user: first call extends (`expire_at` = now + 2 s), later calls `expired: true`.
subscribe (`/centrifugo/subscribe`), keyed by channel:
  - `allowed:*`  -> result with `info` {"role"} and `data` {"welcome": true}
  - `denied:*`   -> error 103 "permission denied"
  - `expiring:*` -> result with `expire_at` = now + 2 s (server-side sub refresh)
  - anything else -> `{"result": {}}`
publish (`/centrifugo/publish`), keyed by the `text` of the published data:
  - starts with `store`   -> stored (`GET /_stored`), `{"result": {}}`
  - contains `rewrite`    -> `{"result": {"data": {"text": "rewritten", "by": "backend"}}}`
  - contains `reject`     -> error 1403 "rejected"
  - anything else         -> `{"result": {}}`
sub_refresh (`/centrifugo/sub_refresh`), keyed by (user, channel): first call extends
  (now + 2 s), later calls `expired: true`.
rpc (`/centrifugo/rpc`), keyed by method:
  - `echo`    -> `{"result": {"data": <request data>}}`
  - `whoami`  -> data `{"user": <request user>, "meta": <request meta or null>}`
  - `slow`    -> answers after 1.5 s (longer than the proxy's 1 s timeout)
  - `http500` -> HTTP 500
  - anything else -> error 1404 "unknown method"

The decisions (and the record of requests) live in proxy_logic.py, shared with the gRPC
backend (grpc_app.py), which answers the same events the same way over gRPC.

Introspection (for the tests, not part of the proxy protocol):
  GET  /health                       -> 200 "ok"
  GET  /_seen?kind=connect[&...]     -> every recorded request of that kind, oldest first:
                                        `[{"kind", "time", "body", "headers"}]` (header names
                                        lowercased); extra query keys filter on top-level body
                                        fields (`user`, `client`, `channel`, `method`) or on
                                        `session` (the cookie value)
  GET  /_stored                      -> publications kept by the `store` rule
  POST /_control                     -> `{"reset": true}` forgets everything;
                                        `{"refresh_plan": {"<user>": ["extend", "expired"]}}`
                                        sets a user's refresh answers in order (the last
                                        one repeats)

Run: `python app.py --port 18100` (prints `proxy backend ready on http://HOST:PORT`).
"""

import argparse
import asyncio
import json
import signal
import sys
from typing import List, Optional

from aiohttp import web

from proxy_logic import KINDS, BackendFailure, Logic


def _handler(logic: Logic, kind: str):
    decide = getattr(logic, kind)

    async def handle(request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {"_unparsable": raw.decode("utf-8", "replace")}
        if not isinstance(body, dict):
            body = {"_not_an_object": body}
        headers = {k.lower(): v for k, v in request.headers.items()}
        logic.record(kind, body, headers)
        try:
            answer = await decide(body, headers)
        except BackendFailure as failure:
            return web.Response(status=500, text=str(failure))
        return web.json_response(answer)

    return handle


def add_introspection_routes(app: web.Application, logic: Logic) -> None:
    """`GET /health`, `GET /_seen`, `GET /_stored`, `POST /_control` (also served by the gRPC
    backend, on its HTTP side)."""

    async def health(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def seen(request: web.Request) -> web.Response:
        return web.json_response(logic.seen(request.query))

    async def stored(_request: web.Request) -> web.Response:
        return web.json_response(logic.state.stored)

    async def control(request: web.Request) -> web.Response:
        try:
            cmd = await request.json()
        except ValueError:
            return web.json_response({"error": "body must be JSON"}, status=400)
        problem = logic.control(cmd)
        if problem is not None:
            return web.json_response({"error": problem}, status=400)
        return web.json_response({"ok": True})

    app.router.add_get("/health", health)
    app.router.add_get("/_seen", seen)
    app.router.add_get("/_stored", stored)
    app.router.add_post("/_control", control)


def make_app(logic: Optional[Logic] = None) -> web.Application:
    logic = logic or Logic()
    app = web.Application()
    for kind in KINDS:
        app.router.add_post(f"/centrifugo/{kind}", _handler(logic, kind))
    add_introspection_routes(app, logic)
    return app


async def serve(host: str, port: int) -> None:
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"proxy backend ready on http://{host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18100)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    sys.exit(main())
