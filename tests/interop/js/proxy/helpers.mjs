// Helpers for the proxy suite: tether runs with tether-proxy.json and forwards client
// events to the real backend process (tests/interop/backend/app.py), or with
// tether-proxy-grpc.json and calls the real gRPC backend (tests/interop/backend/grpc_app.py).
// The SDK is the real npm `centrifuge` over the real `ws`; the only addition is the Cookie
// header on the WebSocket handshake, which is what a browser would send and what the
// proxies forward (`http_headers: ["Cookie"]`: a header over HTTP, metadata over gRPC).

import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { callApi, signJwt, WAIT_MS } from '../helpers.mjs';

export { CODECS, nextEvent, record, sleep, uid, waitUntil, WAIT_MS } from '../helpers.mjs';

const here = dirname(fileURLToPath(import.meta.url));

/** The proxy config tether runs with (TETHER_PROXY_CONFIG, else tests/interop/tether-proxy.json). */
export const config = JSON.parse(
  readFileSync(process.env.TETHER_PROXY_CONFIG ?? join(here, '..', '..', 'tether-proxy.json'), 'utf8'),
);

const host = config.http_server?.address || '127.0.0.1';
const port = config.http_server?.port ?? 8000;
export const WS_URL = `ws://${host}:${port}/connection/websocket`;
const API_URL = `http://${host}:${port}/api`;
const API_KEY = config.http_api.key;
/**
 * How tether reaches the backend: 'http' (backend/app.py) or 'grpc' (backend/grpc_app.py),
 * read from the connect proxy endpoint (Centrifugo: http(s):// is HTTP, anything else gRPC).
 */
export const MODE = /^https?:\/\//.test(config.client.proxy.connect.endpoint) ? 'http' : 'grpc';
/**
 * Where the backend's introspection (/_seen, /_stored, /_control) answers:
 * TETHER_PROXY_BACKEND_URL, else the origin of the connect proxy endpoint (HTTP backend) or
 * http://127.0.0.1:18102 (the gRPC backend's default HTTP port).
 */
export const BACKEND_URL =
  process.env.TETHER_PROXY_BACKEND_URL ??
  (MODE === 'http' ? new URL(config.client.proxy.connect.endpoint).origin : 'http://127.0.0.1:18102');
/** The full gRPC method path tether calls for an event (gRPC mode). */
export function grpcMethod(name) {
  return `/centrifugal.centrifugo.proxy.CentrifugoProxy/${name}`;
}
/** A connection token for `user`, signed with the proxy config's HMAC key. */
export function connToken(user) {
  return signJwt({ sub: user }, config.client.token.hmac_secret_key);
}

/** What the SDK reports as its version in connect (forwarded to the connect proxy). */
export const SDK_VERSION = 'interop-proxy';

/**
 * A `ws` WebSocket subclass that sends `Cookie: <cookie>` on the handshake (none when
 * `cookie` is empty) and counts the sockets the SDK opened.
 */
export function cookieWebSocket(cookie) {
  const counter = { opened: 0 };
  class CookieWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, cookie ? { headers: { Cookie: cookie } } : {});
      counter.opened += 1;
    }
  }
  return { WebSocketClass: CookieWebSocket, counter };
}

async function getJson(path, params = {}) {
  const url = new URL(path, BACKEND_URL);
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
  const res = await fetch(url, { signal: AbortSignal.timeout(WAIT_MS) });
  if (res.status !== 200) throw new Error(`backend ${path}: HTTP ${res.status}`);
  return res.json();
}

/** Requests of `kind` the backend received, oldest first; `filters` as /_seen takes them. */
export function seen(kind, filters = {}) {
  return getJson('/_seen', { kind, ...filters });
}

/** Publications the backend kept (publish proxy, `store` rule). */
export function stored() {
  return getJson('/_stored');
}

/** Calls tether's server HTTP API (used only to look at history). */
export function api(method, body) {
  return callApi(API_URL, API_KEY, method, body);
}

/**
 * Resolves with the next 'connected' context of `client`; rejects at once with the code
 * and reason when the SDK ends up 'disconnected' instead (or after `timeout` ms).
 */
export function connectedOrFail(client, timeout = WAIT_MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      done();
      reject(new Error(`timed out after ${timeout} ms waiting for 'connected'`));
    }, timeout);
    function onConnected(ctx) {
      done();
      resolve(ctx);
    }
    function onDisconnected(ctx) {
      done();
      reject(new Error(`disconnected with ${ctx.code} "${ctx.reason}" instead of connected`));
    }
    function done() {
      clearTimeout(timer);
      client.off('connected', onConnected);
      client.off('disconnected', onDisconnected);
    }
    client.on('connected', onConnected);
    client.on('disconnected', onDisconnected);
  });
}

/** SDK clients of one codec that send a cookie; `closeAll()` disconnects them all. */
export function clientFactory(codec) {
  const clients = [];
  return {
    /** A new client; `cookie` goes on the handshake, `opts` are SDK options. */
    make({ cookie = '', ...opts } = {}) {
      const { WebSocketClass, counter } = cookieWebSocket(cookie);
      const client = new codec.Centrifuge(WS_URL, {
        websocket: WebSocketClass,
        version: SDK_VERSION,
        timeout: 5000,
        minReconnectDelay: 100,
        maxReconnectDelay: 1000,
        ...opts,
      });
      client.on('error', () => {});
      client.sockets = counter;
      clients.push(client);
      return client;
    },
    /** A client with `Cookie: session=<session>`, connected; `.connectedCtx` is set. */
    async connected(session, opts = {}) {
      const client = this.make({ cookie: `session=${session}`, ...opts });
      const connected = connectedOrFail(client);
      client.connect();
      client.connectedCtx = await connected;
      return client;
    },
    closeAll() {
      for (const client of clients.splice(0)) client.disconnect();
    },
  };
}
