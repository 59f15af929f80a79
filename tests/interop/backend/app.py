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
import time
from http.cookies import CookieError, SimpleCookie
from typing import Any, Dict, List, Optional

from aiohttp import web

#: Lifetime of an expiring connection or subscription, in seconds.
TTL = 2

KINDS = ("connect", "refresh", "subscribe", "publish", "sub_refresh", "rpc")


class State:
    def __init__(self) -> None:
        self.seen: List[Dict[str, Any]] = []
        self.stored: List[Dict[str, Any]] = []
        self.connects_by_session: Dict[str, int] = {}
        self.refresh_calls: Dict[str, int] = {}
        self.refresh_plan: Dict[str, List[str]] = {}
        self.sub_refresh_calls: Dict[str, int] = {}

    def reset(self) -> None:
        self.__init__()


def session_of(headers: Dict[str, str]) -> Optional[str]:
    """The `session` cookie value, or None."""
    raw = headers.get("cookie")
    if not raw:
        return None
    jar = SimpleCookie()
    try:
        jar.load(raw)
    except CookieError:
        return None
    morsel = jar.get("session")
    return morsel.value if morsel is not None else None


def error(code: int, message: str, temporary: bool = False) -> Dict[str, Any]:
    err: Dict[str, Any] = {"code": code, "message": message}
    if temporary:
        err["temporary"] = True
    return {"error": err}


def text_of(data: Any) -> str:
    if isinstance(data, dict) and isinstance(data.get("text"), str):
        return data["text"]
    return ""


class Backend:
    def __init__(self) -> None:
        self.state = State()

    # ------------------------------------------------------------------ plumbing

    async def _record(self, kind: str, request: web.Request) -> Dict[str, Any]:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {"_unparsable": raw.decode("utf-8", "replace")}
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.state.seen.append({"kind": kind, "time": time.time(), "body": body, "headers": headers})
        return {"body": body, "headers": headers}

    # ------------------------------------------------------------------ proxy events

    async def connect(self, request: web.Request) -> web.Response:
        rec = await self._record("connect", request)
        session = session_of(rec["headers"])
        if session is None:
            return web.json_response({"result": {}})
        calls = self.state.connects_by_session.get(session, 0) + 1
        self.state.connects_by_session[session] = calls
        if session.startswith("refuse"):
            return web.json_response(error(1403, "forbidden"))
        if session.startswith("ban"):
            return web.json_response({"disconnect": {"code": 4501, "reason": "banned"}})
        if session.startswith("flaky") and calls == 1:
            return web.json_response(error(1503, "try again", temporary=True))
        result: Dict[str, Any] = {
            "user": session,
            "info": {"name": session},
            "data": {"hello": session},
            "meta": {"session": session},
        }
        if session.startswith("short"):
            result["expire_at"] = int(time.time()) + TTL
        return web.json_response({"result": result})

    async def refresh(self, request: web.Request) -> web.Response:
        rec = await self._record("refresh", request)
        user = rec["body"].get("user", "")
        n = self.state.refresh_calls.get(user, 0)
        self.state.refresh_calls[user] = n + 1
        plan = self.state.refresh_plan.get(user, ["extend", "expired"])
        step = plan[min(n, len(plan) - 1)]
        if step == "expired":
            return web.json_response({"result": {"expired": True}})
        return web.json_response({"result": {"expire_at": int(time.time()) + TTL}})

    async def subscribe(self, request: web.Request) -> web.Response:
        rec = await self._record("subscribe", request)
        channel = rec["body"].get("channel", "")
        if channel.startswith("allowed:"):
            return web.json_response(
                {"result": {"info": {"role": "member"}, "data": {"welcome": True}}}
            )
        if channel.startswith("denied:"):
            return web.json_response(error(103, "permission denied"))
        if channel.startswith("expiring:"):
            return web.json_response({"result": {"expire_at": int(time.time()) + TTL}})
        return web.json_response({"result": {}})

    async def publish(self, request: web.Request) -> web.Response:
        rec = await self._record("publish", request)
        body = rec["body"]
        text = text_of(body.get("data"))
        if text.startswith("store"):
            self.state.stored.append(
                {"channel": body.get("channel"), "user": body.get("user"), "data": body.get("data")}
            )
            return web.json_response({"result": {}})
        if "rewrite" in text:
            return web.json_response({"result": {"data": {"text": "rewritten", "by": "backend"}}})
        if "reject" in text:
            return web.json_response(error(1403, "rejected"))
        return web.json_response({"result": {}})

    async def sub_refresh(self, request: web.Request) -> web.Response:
        rec = await self._record("sub_refresh", request)
        key = f'{rec["body"].get("user", "")}\x00{rec["body"].get("channel", "")}'
        n = self.state.sub_refresh_calls.get(key, 0)
        self.state.sub_refresh_calls[key] = n + 1
        if n == 0:
            return web.json_response({"result": {"expire_at": int(time.time()) + TTL}})
        return web.json_response({"result": {"expired": True}})

    async def rpc(self, request: web.Request) -> web.Response:
        rec = await self._record("rpc", request)
        body = rec["body"]
        method = body.get("method", "")
        if method == "echo":
            return web.json_response({"result": {"data": body.get("data")}})
        if method == "whoami":
            return web.json_response(
                {"result": {"data": {"user": body.get("user"), "meta": body.get("meta")}}}
            )
        if method == "slow":
            await asyncio.sleep(1.5)
            return web.json_response({"result": {"data": {"slow": True}}})
        if method == "http500":
            return web.Response(status=500, text="backend failure")
        return web.json_response(error(1404, "unknown method"))

    # ------------------------------------------------------------------ introspection

    async def health(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def seen(self, request: web.Request) -> web.Response:
        query = dict(request.query)
        kind = query.pop("kind", None)
        session = query.pop("session", None)
        out = []
        for entry in self.state.seen:
            if kind is not None and entry["kind"] != kind:
                continue
            if session is not None and session_of(entry["headers"]) != session:
                continue
            if any(str(entry["body"].get(k)) != v for k, v in query.items()):
                continue
            out.append(entry)
        return web.json_response(out)

    async def stored(self, _request: web.Request) -> web.Response:
        return web.json_response(self.state.stored)

    async def control(self, request: web.Request) -> web.Response:
        try:
            cmd = await request.json()
        except ValueError:
            return web.json_response({"error": "body must be JSON"}, status=400)
        if cmd.get("reset"):
            self.state.reset()
        for user, plan in (cmd.get("refresh_plan") or {}).items():
            if not plan or any(step not in ("extend", "expired") for step in plan):
                return web.json_response({"error": f"bad refresh plan for {user!r}"}, status=400)
            self.state.refresh_plan[user] = list(plan)
        return web.json_response({"ok": True})


def make_app() -> web.Application:
    backend = Backend()
    app = web.Application()
    for kind in KINDS:
        app.router.add_post(f"/centrifugo/{kind}", getattr(backend, kind))
    app.router.add_get("/health", backend.health)
    app.router.add_get("/_seen", backend.seen)
    app.router.add_get("/_stored", backend.stored)
    app.router.add_post("/_control", backend.control)
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
