"""A real application backend for Centrifugo's gRPC proxy, used by the proxy interop suite.

tether calls the unary methods of `centrifugal.centrifugo.proxy.CentrifugoProxy` (proxy.proto,
compat-proxy.md §3.2, §4) here and acts on the answer. The decisions are the HTTP backend's
(app.py), shared through proxy_logic.py: the same cookie, channel, published text and RPC
method lead to the same answer, so the SDK suites run unchanged against either backend.

Between Protobuf and the shared logic:
  - a request becomes the JSON shape of its message: the fields that are set (proto3: a
    field at its default value, such as `user: ""`, is not on the wire and so not in the
    record), `bytes` fields (`data`, `meta`) parsed as the JSON they carry (for JSON-protocol
    clients, and for Protobuf clients sending JSON, `data` is JSON bytes); bytes that are not
    JSON are kept as `{"_bytes_base64": "..."}`;
  - the gRPC metadata are the headers (keys are lowercase on the wire; the forwarded Cookie
    arrives as `cookie`);
  - the answer `{"result" | "error" | "disconnect": {...}}` becomes the response message;
    JSON values of `bytes` fields (`data`, `info`, `meta`) are sent as their JSON bytes; an
    empty `{"result": {}}` is sent as a present, empty result;
  - a backend failure (rpc `http500`) is a gRPC status INTERNAL "backend failure" (tether
    treats any non-OK status as an unexpected error, §5.2).
SubscribeUnidirectional is declared in proxy.proto but not served (UNIMPLEMENTED).

The same introspection as app.py (`GET /health`, `GET /_seen`, `GET /_stored`,
`POST /_control`) is served over HTTP on a second port; `/_seen` entries carry
`grpc_method` (the full method path) as well.

Run: `python grpc_app.py --port 18101 --http-port 18102` (or GRPC_BACKEND_PORT /
GRPC_BACKEND_HTTP_PORT); prints `proxy gRPC backend ready on grpc://HOST:PORT
(introspection http://HOST:HTTP_PORT)` once both listen. Stubs are generated on first import
(gen_stubs.py).
"""

import argparse
import asyncio
import base64
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402
from aiohttp import web  # noqa: E402
from google.protobuf.descriptor import FieldDescriptor  # noqa: E402
from google.protobuf.message import Message  # noqa: E402

from app import add_introspection_routes  # noqa: E402
from gen_stubs import ensure_stubs  # noqa: E402
from proxy_logic import BackendFailure, Logic  # noqa: E402

ensure_stubs()
import proxy_pb2  # noqa: E402
import proxy_pb2_grpc  # noqa: E402

SERVICE = "centrifugal.centrifugo.proxy.CentrifugoProxy"

Json = Dict[str, Any]


# ---------------------------------------------------------------- Protobuf <-> JSON shape


def _bytes_to_json(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {"_bytes_base64": base64.b64encode(raw).decode()}


def _scalar_to_json(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_to_json(value)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return _bytes_to_json(value)
    return value


def message_to_json(msg: Message) -> Json:
    """The fields of `msg` that are set, by proto field name; bytes as the JSON they hold."""
    out: Json = {}
    for field, value in msg.ListFields():
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {k: _scalar_to_json(value_field, v) for k, v in value.items()}
        elif field.is_repeated:
            out[field.name] = [_scalar_to_json(field, v) for v in value]
        else:
            out[field.name] = _scalar_to_json(field, value)
    return out


def _json_to_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def fill_message(msg: Message, data: Json) -> Message:
    """Sets the fields of `msg` from a JSON shape; `bytes` fields get the JSON bytes of their
    value. A dict for a message field marks it present even when empty."""
    fields = msg.DESCRIPTOR.fields_by_name
    for name, value in data.items():
        field = fields[name]  # KeyError: the logic answered with a field proxy.proto lacks
        if value is None:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            target = getattr(msg, name)
            value_field = field.message_type.fields_by_name["value"]
            for k, v in value.items():
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    fill_message(target[k], v)
                elif value_field.type == FieldDescriptor.TYPE_BYTES:
                    target[k] = _json_to_bytes(v)
                else:
                    target[k] = v
        elif field.is_repeated:
            target = getattr(msg, name)
            for v in value:
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    fill_message(target.add(), v)
                elif field.type == FieldDescriptor.TYPE_BYTES:
                    target.append(_json_to_bytes(v))
                else:
                    target.append(v)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            sub = getattr(msg, name)
            sub.SetInParent()
            fill_message(sub, value)
        elif field.type == FieldDescriptor.TYPE_BYTES:
            setattr(msg, name, _json_to_bytes(value))
        else:
            setattr(msg, name, value)
    return msg


def metadata_to_headers(metadata: Optional[Tuple[Any, ...]]) -> Dict[str, str]:
    """gRPC metadata as a header map (lowercase keys; repeated keys joined with ", ";
    `-bin` values base64)."""
    headers: Dict[str, str] = {}
    for item in metadata or ():
        key, value = item[0].lower(), item[1]
        if isinstance(value, bytes):
            value = base64.b64encode(value).decode()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


# ---------------------------------------------------------------- the service

# (gRPC method, event kind in proxy_logic, response message)
METHODS = (
    ("Connect", "connect", proxy_pb2.ConnectResponse),
    ("Refresh", "refresh", proxy_pb2.RefreshResponse),
    ("Subscribe", "subscribe", proxy_pb2.SubscribeResponse),
    ("Publish", "publish", proxy_pb2.PublishResponse),
    ("RPC", "rpc", proxy_pb2.RPCResponse),
    ("SubRefresh", "sub_refresh", proxy_pb2.SubRefreshResponse),
)


def _unary(logic: Logic, method: str, kind: str, response_type):
    decide = getattr(logic, kind)
    path = f"/{SERVICE}/{method}"

    async def handle(self, request: Message, context: grpc.aio.ServicerContext) -> Message:
        body = message_to_json(request)
        headers = metadata_to_headers(context.invocation_metadata())
        logic.record(kind, body, headers, grpc_method=path)
        try:
            answer = await decide(body, headers)
        except BackendFailure as failure:
            await context.abort(grpc.StatusCode.INTERNAL, str(failure))
        return fill_message(response_type(), answer)

    handle.__name__ = method
    return handle


def make_servicer(logic: Logic) -> proxy_pb2_grpc.CentrifugoProxyServicer:
    attrs = {method: _unary(logic, method, kind, resp) for method, kind, resp in METHODS}
    cls = type("Backend", (proxy_pb2_grpc.CentrifugoProxyServicer,), attrs)
    return cls()


def make_grpc_server(logic: Logic, host: str, port: int) -> Tuple[grpc.aio.Server, int]:
    """A not yet started server with the service; returns it and the bound port."""
    server = grpc.aio.server()
    proxy_pb2_grpc.add_CentrifugoProxyServicer_to_server(make_servicer(logic), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    return server, bound


def make_http_app(logic: Logic) -> web.Application:
    app = web.Application()
    add_introspection_routes(app, logic)
    return app


async def serve(host: str, port: int, http_port: int) -> None:
    logic = Logic()
    server, port = make_grpc_server(logic, host, port)
    await server.start()
    runner = web.AppRunner(make_http_app(logic), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, http_port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"proxy gRPC backend ready on grpc://{host}:{port} (introspection http://{host}:{http_port})",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await server.stop(grace=1)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRPC_BACKEND_PORT", 18101)))
    parser.add_argument(
        "--http-port", type=int, default=int(os.environ.get("GRPC_BACKEND_HTTP_PORT", 18102))
    )
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.http_port))


if __name__ == "__main__":
    sys.exit(main())
