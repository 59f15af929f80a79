// Shared helpers for the centrifuge-js acceptance tests.
//
// Everything here is plumbing around the REAL SDK (npm `centrifuge`) and the real `ws`
// WebSocket: where tether listens, how to sign HS256 tokens, how to wait for SDK events,
// and how to call tether's server HTTP API (the API is not an SDK; the tests use it to
// publish as a backend would).

import { createHmac, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { Centrifuge as JsonCentrifuge } from 'centrifuge';
import { Centrifuge as ProtobufCentrifuge } from 'centrifuge/build/protobuf';

const here = dirname(fileURLToPath(import.meta.url));

/** The tether config the server under test runs with (TETHER_CONFIG, else tests/interop/tether.json). */
export const config = JSON.parse(
  readFileSync(process.env.TETHER_CONFIG ?? join(here, '..', 'tether.json'), 'utf8'),
);

const host = config.http_server?.address || '127.0.0.1';
const port = config.http_server?.port ?? 8000;

export const WS_URL = `ws://${host}:${port}/connection/websocket`;
export const API_URL = `http://${host}:${port}/api`;
export const API_KEY = config.http_api.key;
export const HMAC_SECRET = config.client.token.hmac_secret_key;

/** Default wait for an event; well under the per-test timeout. */
export const WAIT_MS = 5000;

/** A unique suffix so every test uses its own channels and users. */
export function uid() {
  return `${Date.now().toString(36)}${randomBytes(4).toString('hex')}`;
}

function b64url(buf) {
  return Buffer.from(buf).toString('base64url');
}

/** Signs an HS256 JWT with `claims` (key defaults to the server's HMAC secret). */
export function signJwt(claims, key = HMAC_SECRET) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const payload = b64url(JSON.stringify(claims));
  const sig = createHmac('sha256', key).update(`${header}.${payload}`).digest('base64url');
  return `${header}.${payload}.${sig}`;
}

/** Seconds since the epoch. */
export function now() {
  return Math.floor(Date.now() / 1000);
}

/** A connection token for `user`; `extra` adds claims such as `exp` or `info`. */
export function connToken(user, extra = {}) {
  return signJwt({ sub: user, ...extra });
}

/** A subscription token for `user` on `channel`. */
export function subToken(user, channel, extra = {}, key = HMAC_SECRET) {
  return signJwt({ sub: user, channel, ...extra }, key);
}

/**
 * `ws` WebSocket subclass that counts how many sockets the SDK opened, so a test can
 * prove that the SDK did (or did not) reconnect. It is still the real `ws` client.
 */
export function countingWebSocket() {
  const counter = { opened: 0 };
  class CountingWebSocket extends WebSocket {
    constructor(...args) {
      super(...args);
      counter.opened += 1;
    }
  }
  return { WebSocketClass: CountingWebSocket, counter };
}

/** The two SDK builds, with helpers to move JSON payloads through each. */
export const CODECS = {
  json: {
    name: 'json',
    Centrifuge: JsonCentrifuge,
    enc: (value) => value,
    dec: (data) => data,
  },
  protobuf: {
    name: 'protobuf',
    Centrifuge: ProtobufCentrifuge,
    enc: (value) => new TextEncoder().encode(JSON.stringify(value)),
    dec: (data) => JSON.parse(new TextDecoder().decode(data)),
  },
};

/** Normalises an offset that protobufjs may decode as a Long. */
export function num(value) {
  return value === undefined || value === null ? 0 : Number(value);
}

/**
 * Resolves with the args of the next `event` on `emitter` that passes `filter`; rejects
 * after `timeout` ms with a message naming the event.
 */
export function nextEvent(emitter, event, { filter = () => true, timeout = WAIT_MS } = {}) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(event, handler);
      reject(new Error(`timed out after ${timeout} ms waiting for '${event}'`));
    }, timeout);
    function handler(ctx) {
      if (!filter(ctx)) return;
      clearTimeout(timer);
      emitter.off(event, handler);
      resolve(ctx);
    }
    emitter.on(event, handler);
  });
}

/** Records every `event` on `emitter` into an array. */
export function record(emitter, event) {
  const seen = [];
  emitter.on(event, (ctx) => seen.push(ctx));
  return seen;
}

/** Polls `predicate` every 25 ms until it is truthy or `timeout` ms pass. */
export async function waitUntil(predicate, { timeout = WAIT_MS, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await sleep(25);
  }
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Calls the server HTTP API method `method` with `body`; returns the parsed JSON reply. */
export function api(method, body) {
  return callApi(API_URL, API_KEY, method, body);
}

/** Calls `method` of the server HTTP API at `apiUrl` with `apiKey`; returns its `result`. */
export async function callApi(apiUrl, apiKey, method, body) {
  const res = await fetch(`${apiUrl}/${method}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-API-Key': apiKey },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(WAIT_MS),
  });
  if (res.status !== 200) throw new Error(`API ${method}: HTTP ${res.status}`);
  const reply = await res.json();
  if (reply.error) throw new Error(`API ${method}: error ${reply.error.code} ${reply.error.message}`);
  return reply.result ?? {};
}

/**
 * Creates SDK clients for one codec and tracks them so `closeAll()` can disconnect every
 * client a test made, pass or fail.
 */
export function clientFactory(codec) {
  const clients = [];
  return {
    /** A new Centrifuge client of this codec; `opts` are SDK options. */
    make(opts = {}) {
      const client = new codec.Centrifuge(WS_URL, {
        websocket: WebSocket,
        timeout: 5000,
        minReconnectDelay: 100,
        maxReconnectDelay: 1000,
        ...opts,
      });
      // An unhandled 'error' event must not crash the test process.
      client.on('error', () => {});
      clients.push(client);
      return client;
    },
    /** A client for `user` (connection token without exp), connected; `.clientId` is set. */
    async connected(user, opts = {}) {
      const client = this.make({ token: connToken(user), ...opts });
      const connected = nextEvent(client, 'connected');
      client.connect();
      // The connection id the server assigned, for matching presence and join/leave.
      client.clientId = (await connected).client;
      return client;
    },
    closeAll() {
      for (const client of clients.splice(0)) {
        client.disconnect();
      }
    },
  };
}

/** Subscribes `client` to `channel` (client-side) and waits for 'subscribed'. */
export async function subscribe(client, channel, opts = {}) {
  const sub = client.newSubscription(channel, opts);
  sub.on('error', () => {});
  const subscribed = nextEvent(sub, 'subscribed');
  sub.subscribe();
  const ctx = await subscribed;
  return { sub, ctx };
}
