"""What the proxy suite's backend decides, shared by the HTTP backend (app.py) and the gRPC
backend (grpc_app.py).

Both transports hand every event here as the JSON shape of the request message
(compat-proxy.md §4: proto field names; `bytes` fields such as `data` and `meta` as the JSON
value they carry) plus the request headers / gRPC metadata with lowercased names, and get
back the JSON shape of the response message: `{"result": {...}}`, `{"error": {...}}` or
`{"disconnect": {...}}`. The HTTP backend sends that as is; the gRPC backend builds the
Protobuf response from it. The one answer that is not a response message, a backend failure
(HTTP 500 / a gRPC error status), is raised as `BackendFailure`.

The rules themselves (the user is the `session` cookie value) are in app.py's docstring and
in README.md, "Proxy suite".
"""

import asyncio
import time
from http.cookies import CookieError, SimpleCookie
from typing import Any, Dict, List, Mapping, Optional

#: Lifetime of an expiring connection or subscription, in seconds.
TTL = 2

#: How long the `slow` RPC takes: longer than the proxy's 1 s timeout.
SLOW_SECONDS = 1.5

KINDS = ("connect", "refresh", "subscribe", "publish", "sub_refresh", "rpc")

Json = Dict[str, Any]


class BackendFailure(Exception):
    """The backend fails the call (HTTP 500, or a gRPC INTERNAL status) instead of answering."""


def session_of(headers: Mapping[str, str]) -> Optional[str]:
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


def error(code: int, message: str, temporary: bool = False) -> Json:
    err: Json = {"code": code, "message": message}
    if temporary:
        err["temporary"] = True
    return {"error": err}


def text_of(data: Any) -> str:
    if isinstance(data, dict) and isinstance(data.get("text"), str):
        return data["text"]
    return ""


class State:
    def __init__(self) -> None:
        self.seen: List[Json] = []
        self.stored: List[Json] = []
        self.connects_by_session: Dict[str, int] = {}
        self.refresh_calls: Dict[str, int] = {}
        self.refresh_plan: Dict[str, List[str]] = {}
        self.sub_refresh_calls: Dict[str, int] = {}

    def reset(self) -> None:
        self.__init__()


class Logic:
    """The backend's decisions and its record of what it was asked (one per backend process)."""

    def __init__(self) -> None:
        self.state = State()

    # ------------------------------------------------------------------ recording

    def record(self, kind: str, body: Json, headers: Mapping[str, str], **extra: Any) -> None:
        entry: Json = {"kind": kind, "time": time.time(), "body": body, "headers": dict(headers)}
        entry.update(extra)
        self.state.seen.append(entry)

    def seen(self, query: Mapping[str, str]) -> List[Json]:
        """Recorded requests, oldest first: `kind`, `session` (the cookie value) and any
        top-level body field (`user`, `client`, `channel`, `method`) filter."""
        query = dict(query)
        kind = query.pop("kind", None)
        session = query.pop("session", None)
        out = []
        for entry in self.state.seen:
            if kind is not None and entry["kind"] != kind:
                continue
            if session is not None and session_of(entry["headers"]) != session:
                continue
            if any(str(entry["body"].get(k, "")) != v for k, v in query.items()):
                continue
            out.append(entry)
        return out

    def control(self, cmd: Json) -> Optional[str]:
        """Applies a `/_control` command; returns an error message, or None."""
        if cmd.get("reset"):
            self.state.reset()
        for user, plan in (cmd.get("refresh_plan") or {}).items():
            if not plan or any(step not in ("extend", "expired") for step in plan):
                return f"bad refresh plan for {user!r}"
            self.state.refresh_plan[user] = list(plan)
        return None

    # ------------------------------------------------------------------ proxy events

    async def connect(self, body: Json, headers: Mapping[str, str]) -> Json:
        session = session_of(headers)
        if session is None:
            return {"result": {}}
        calls = self.state.connects_by_session.get(session, 0) + 1
        self.state.connects_by_session[session] = calls
        if session.startswith("refuse"):
            return error(1403, "forbidden")
        if session.startswith("ban"):
            return {"disconnect": {"code": 4501, "reason": "banned"}}
        if session.startswith("flaky") and calls == 1:
            return error(1503, "try again", temporary=True)
        result: Json = {
            "user": session,
            "info": {"name": session},
            "data": {"hello": session},
            "meta": {"session": session},
        }
        if session.startswith("short"):
            result["expire_at"] = int(time.time()) + TTL
        return {"result": result}

    async def refresh(self, body: Json, headers: Mapping[str, str]) -> Json:
        user = body.get("user", "")
        n = self.state.refresh_calls.get(user, 0)
        self.state.refresh_calls[user] = n + 1
        plan = self.state.refresh_plan.get(user, ["extend", "expired"])
        step = plan[min(n, len(plan) - 1)]
        if step == "expired":
            return {"result": {"expired": True}}
        return {"result": {"expire_at": int(time.time()) + TTL}}

    async def subscribe(self, body: Json, headers: Mapping[str, str]) -> Json:
        channel = body.get("channel", "")
        if channel.startswith("allowed:"):
            return {"result": {"info": {"role": "member"}, "data": {"welcome": True}}}
        if channel.startswith("denied:"):
            return error(103, "permission denied")
        if channel.startswith("expiring:"):
            return {"result": {"expire_at": int(time.time()) + TTL}}
        return {"result": {}}

    async def publish(self, body: Json, headers: Mapping[str, str]) -> Json:
        text = text_of(body.get("data"))
        if text.startswith("store"):
            self.state.stored.append(
                {"channel": body.get("channel"), "user": body.get("user", ""), "data": body.get("data")}
            )
            return {"result": {}}
        if "rewrite" in text:
            return {"result": {"data": {"text": "rewritten", "by": "backend"}}}
        if "reject" in text:
            return error(1403, "rejected")
        return {"result": {}}

    async def sub_refresh(self, body: Json, headers: Mapping[str, str]) -> Json:
        key = f'{body.get("user", "")}\x00{body.get("channel", "")}'
        n = self.state.sub_refresh_calls.get(key, 0)
        self.state.sub_refresh_calls[key] = n + 1
        if n == 0:
            return {"result": {"expire_at": int(time.time()) + TTL}}
        return {"result": {"expired": True}}

    async def rpc(self, body: Json, headers: Mapping[str, str]) -> Json:
        method = body.get("method", "")
        if method == "echo":
            return {"result": {"data": body.get("data")}}
        if method == "whoami":
            return {"result": {"data": {"user": body.get("user", ""), "meta": body.get("meta")}}}
        if method == "slow":
            await asyncio.sleep(SLOW_SECONDS)
            return {"result": {"data": {"slow": True}}}
        if method == "http500":
            raise BackendFailure("backend failure")
        return error(1404, "unknown method")
