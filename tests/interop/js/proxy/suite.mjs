// The centrifuge-js proxy suite, defined once and run for each SDK build
// (proxy/json.test.mjs, proxy/protobuf.test.mjs). tether forwards client events to the
// real backend, over HTTP (backend/app.py) or gRPC (backend/grpc_app.py) as the config it
// runs with says (MODE); each test asserts what the SDK reports AND what the backend
// received (GET /_seen), per docs compat-proxy.md §4-§6. The backends decide alike, so the
// cases are the same in both modes; only the transport-level checks differ.

import { describe, test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  api,
  clientFactory,
  connectedOrFail,
  connToken,
  grpcMethod,
  MODE,
  nextEvent,
  record,
  SDK_VERSION,
  seen,
  sleep,
  stored,
  uid,
  waitUntil,
} from './helpers.mjs';

/** Per-test bound: every test either finishes or fails well within this. */
const TEST_TIMEOUT_MS = 25000;

/** The common request prefix of every proxy request (compat-proxy §4.2). */
function assertCommon(body, codec, clientId) {
  assert.equal(body.client, clientId, 'client = the connection id the SDK got');
  assert.equal(body.transport, 'websocket');
  assert.equal(body.protocol, codec.name, 'protocol = the client protocol');
  assert.equal(body.encoding, 'json', 'binary_encoding is off');
}

/**
 * How the request reached the backend: over HTTP a JSON POST, over gRPC a unary call of
 * `CentrifugoProxy/<method>` (the backend records the method path).
 */
function assertTransport(req, method) {
  if (MODE === 'http') {
    assert.match(req.headers['content-type'], /^application\/json/);
  } else {
    assert.equal(req.grpc_method, grpcMethod(method), `a unary CentrifugoProxy/${method} call`);
  }
}

/**
 * `user` of an anonymous connection: always present in the HTTP JSON body (`"user": ""`);
 * over gRPC an empty proto3 string is not on the wire, so the backend sees no field.
 */
function assertAnonymousUser(body) {
  if (MODE === 'http') {
    assert.ok('user' in body && body.user === '', '`user` is always present, even empty');
  } else {
    assert.equal(body.user ?? '', '', 'user "" (absent on the wire: proto3 default)');
  }
}

/** Resolves with the rejection of `promise` (fails if it resolves). */
async function rejection(promise) {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  assert.fail('expected the call to be rejected');
}

export function defineSuite(codec) {
  const { enc, dec } = codec;

  describe(`centrifuge-js ${codec.name} via the ${MODE} proxy`, () => {
    const clients = clientFactory(codec);
    afterEach(() => clients.closeAll());

    test('cookie-only connect: the connect proxy decides, data reaches the SDK', { timeout: TEST_TIMEOUT_MS }, async () => {
      const user = `ann-${uid()}`;
      const client = await clients.connected(user);
      const ctx = client.connectedCtx;
      assert.equal(client.state, 'connected');
      assert.deepEqual(dec(ctx.data), { hello: user }, 'connect reply data = the backend result data');

      const reqs = await seen('connect', { session: user });
      assert.equal(reqs.length, 1, 'one connect proxy call');
      const { body, headers } = reqs[0];
      assert.match(headers.cookie, new RegExp(`(^|; )session=${user}($|;)`), 'Cookie forwarded');
      assertTransport(reqs[0], 'Connect');
      assertCommon(body, codec, ctx.client);
      assert.equal(body.name, 'js', 'SDK name from the connect command');
      assert.equal(body.version, SDK_VERSION, 'SDK version from the connect command');
      for (const absent of ['user', 'token', 'meta', 'data', 'b64data', 'channels']) {
        assert.ok(!(absent in body), `no '${absent}' in a connect request without it`);
      }

      // The user is the backend's: whoami answers from the RPC request's `user`.
      const who = await client.rpc('whoami', enc({}));
      assert.equal(dec(who.data).user, user);
    });

    test('no cookie: a `{}` result connects as the anonymous user', { timeout: TEST_TIMEOUT_MS }, async () => {
      const client = clients.make();
      const connected = connectedOrFail(client);
      client.connect();
      const ctx = await connected;
      // No data in the backend result (the Protobuf build decodes absent bytes as empty).
      assert.ok(ctx.data === undefined || ctx.data.length === 0, 'no connect data');
      const reqs = (await seen('connect', { client: ctx.client }));
      assert.equal(reqs.length, 1);
      assert.equal(reqs[0].headers.cookie, undefined, 'nothing to forward');

      const who = await client.rpc('whoami', enc({}));
      assert.deepEqual(dec(who.data), { user: '', meta: null }, 'anonymous: user "" and no meta');
      const [rpcReq] = await seen('rpc', { client: ctx.client, method: 'whoami' });
      assertAnonymousUser(rpcReq.body);
    });

    test('a connection token bypasses the connect proxy', { timeout: TEST_TIMEOUT_MS }, async () => {
      const session = `tok-${uid()}`;
      const user = `jwt-${uid()}`;
      const client = await clients.connected(session, { token: connToken(user) });
      assert.equal(client.state, 'connected');
      assert.deepEqual(await seen('connect', { session }), [], 'connect proxy not called with a token');
      const who = await client.rpc('whoami', enc({}));
      assert.equal(dec(who.data).user, user, 'the user comes from the token');
    });

    test('connect refused with error 1403: disconnected, no reconnect loop', { timeout: TEST_TIMEOUT_MS }, async () => {
      const session = `refuse-${uid()}`;
      const client = clients.make({ cookie: `session=${session}` });
      const errors = record(client, 'error');
      const connecting = record(client, 'connecting');
      const disconnected = nextEvent(client, 'disconnected');
      client.connect();
      const ctx = await disconnected;
      // centrifuge-js treats a non-temporary connect error (code >= 100) as terminal:
      // state disconnected with the error's code and message, no 'error' event.
      assert.equal(ctx.code, 1403);
      assert.equal(ctx.reason, 'forbidden');
      await sleep(1500); // a reconnect (min delay 100 ms) would have happened by now
      assert.equal(client.state, 'disconnected');
      assert.equal(client.sockets.opened, 1, 'exactly one WebSocket');
      assert.equal(connecting.length, 1, 'only the initial connecting');
      assert.deepEqual(errors.map((e) => e.type), []);
      assert.equal((await seen('connect', { session })).length, 1, 'backend asked once');
    });

    test('connect with a temporary error: error event, then reconnect succeeds', { timeout: TEST_TIMEOUT_MS }, async () => {
      const session = `flaky-${uid()}`;
      const client = clients.make({ cookie: `session=${session}` });
      const errors = record(client, 'error');
      const connected = connectedOrFail(client);
      client.connect();
      const ctx = await connected;
      const connectErrors = errors.filter((e) => e.type === 'connect');
      assert.equal(connectErrors.length, 1);
      assert.equal(connectErrors[0].error.code, 1503);
      assert.equal(connectErrors[0].error.temporary, true);
      assert.deepEqual(dec(ctx.data), { hello: session });
      assert.equal(client.sockets.opened, 2, 'one retry on a new socket');
      assert.equal((await seen('connect', { session })).length, 2);
    });

    test('connect answered with disconnect 4501: terminal, no reconnect', { timeout: TEST_TIMEOUT_MS }, async () => {
      const session = `ban-${uid()}`;
      const client = clients.make({ cookie: `session=${session}` });
      const connecting = record(client, 'connecting');
      const disconnected = nextEvent(client, 'disconnected');
      client.connect();
      const ctx = await disconnected;
      assert.equal(ctx.code, 4501);
      assert.equal(ctx.reason, 'banned');
      await sleep(1500);
      assert.equal(client.state, 'disconnected');
      assert.equal(client.sockets.opened, 1, 'exactly one WebSocket: 4500-4999 are terminal');
      assert.equal(connecting.length, 1);
      assert.equal((await seen('connect', { session })).length, 1);
    });

    test('subscribe proxy: allowed:* subscribes with backend data, denied:* gets 103', { timeout: TEST_TIMEOUT_MS }, async () => {
      const user = `sub-${uid()}`;
      const client = await clients.connected(user);
      const clientId = client.connectedCtx.client;

      const allowed = `allowed:x-${uid()}`;
      const sub = client.newSubscription(allowed);
      sub.on('error', () => {});
      const subscribed = nextEvent(sub, 'subscribed');
      sub.subscribe();
      const ctx = await subscribed;
      assert.equal(sub.state, 'subscribed');
      assert.deepEqual(dec(ctx.data), { welcome: true }, 'subscribe reply data = backend result data');
      const [req] = await seen('subscribe', { channel: allowed });
      assertTransport(req, 'Subscribe');
      assertCommon(req.body, codec, clientId);
      assert.equal(req.body.user, user);
      assert.equal(req.body.channel, allowed);
      assert.match(req.headers.cookie, new RegExp(`session=${user}`), 'Cookie forwarded to subscribe');

      const denied = `denied:x-${uid()}`;
      const bad = client.newSubscription(denied);
      bad.on('error', () => {});
      const unsubscribed = nextEvent(bad, 'unsubscribed');
      bad.subscribe();
      const uctx = await unsubscribed;
      assert.equal(uctx.code, 103);
      assert.equal(bad.state, 'unsubscribed');
      assert.equal(client.state, 'connected', 'a refused subscription keeps the connection');
      assert.equal((await seen('subscribe', { channel: denied })).length, 1);
    });

    test('publish proxy: stored, rewritten and rejected publications', { timeout: TEST_TIMEOUT_MS }, async () => {
      const channel = `chat:pub-${uid()}`;
      const alice = `alice-${uid()}`;
      const bob = `bob-${uid()}`;
      const a = await clients.connected(alice);
      const b = await clients.connected(bob);
      const subA = a.newSubscription(channel);
      subA.on('error', () => {});
      const pubs = record(subA, 'publication');
      const subscribedA = nextEvent(subA, 'subscribed');
      subA.subscribe();
      await subscribedA;

      // 1. Stored by the backend and published unchanged.
      const storeText = `store-${uid()}`;
      await b.publish(channel, enc({ text: storeText, n: 1 }));
      await waitUntil(() => pubs.length === 1, { what: 'the stored publication' });
      assert.deepEqual(dec(pubs[0].data), { text: storeText, n: 1 });
      assert.equal(pubs[0].info?.user, bob, 'publication info is the publisher');
      const kept = (await stored()).filter((s) => s.channel === channel);
      assert.deepEqual(kept, [{ channel, user: bob, data: { text: storeText, n: 1 } }]);
      const [pubReq] = await seen('publish', { channel });
      assertTransport(pubReq, 'Publish');
      assertCommon(pubReq.body, codec, b.connectedCtx.client);
      assert.equal(pubReq.body.user, bob);
      // HTTP: embedded as raw JSON; gRPC: `bytes` holding that JSON (the backend parses it).
      assert.deepEqual(pubReq.body.data, { text: storeText, n: 1 }, 'data = the JSON the client sent');

      // 2. Rewritten: subscribers get the backend's data.
      await b.publish(channel, enc({ text: 'please rewrite me' }));
      await waitUntil(() => pubs.length === 2, { what: 'the rewritten publication' });
      assert.deepEqual(dec(pubs[1].data), { text: 'rewritten', by: 'backend' });

      // 3. Rejected: the publisher gets the backend's error, nobody gets the publication.
      const err = await rejection(b.publish(channel, enc({ text: 'reject me' })));
      assert.equal(err.code, 1403);
      assert.equal(err.message, 'rejected');
      const afterText = `store-after-${uid()}`;
      await b.publish(channel, enc({ text: afterText }));
      await waitUntil(() => pubs.length >= 3, { what: 'the publication after the rejected one' });
      await sleep(200);
      assert.equal(pubs.length, 3, 'the rejected publication was never delivered');
      assert.deepEqual(dec(pubs[2].data), { text: afterText });
      const history = await api('history', { channel, limit: -1 });
      assert.equal(history.publications.length, 3, 'three publications in history, not four');
      assert.deepEqual(history.publications[1].data, { text: 'rewritten', by: 'backend' });
      assert.equal((await seen('publish', { channel })).length, 4, 'the backend saw all four');
    });

    test('rpc proxy: echo, whoami, unknown method, backend failure and timeout', { timeout: TEST_TIMEOUT_MS }, async () => {
      const user = `rpc-${uid()}`;
      const client = await clients.connected(user);
      const clientId = client.connectedCtx.client;

      const payload = { a: 1, b: [1, 2, { c: 'ü' }] };
      const echo = await client.rpc('echo', enc(payload));
      assert.deepEqual(dec(echo.data), payload);
      const [echoReq] = await seen('rpc', { client: clientId, method: 'echo' });
      assertTransport(echoReq, 'RPC');
      assertCommon(echoReq.body, codec, clientId);
      assert.equal(echoReq.body.user, user);
      assert.deepEqual(echoReq.body.data, payload);
      assert.deepEqual(echoReq.body.meta, { session: user }, 'include_connection_meta: connect meta');

      const who = await client.rpc('whoami', enc({}));
      assert.deepEqual(dec(who.data), { user, meta: { session: user } });

      const unknown = await rejection(client.rpc('no-such-method', enc({})));
      assert.equal(unknown.code, 1404);
      assert.equal(unknown.message, 'unknown method');

      // The backend fails the call: HTTP 500, or gRPC status INTERNAL.
      const failed = await rejection(client.rpc('http500', enc({})));
      assert.equal(failed.code, 100, 'a backend failure (non-200 / non-OK status) -> 100 internal server error');
      const slow = await rejection(client.rpc('slow', enc({})));
      assert.equal(slow.code, 100, 'proxy timeout (1 s) -> 100');
      assert.equal(client.state, 'connected');
    });

    test('refresh proxy: kept past the first expire_at, then 3005 when expired', { timeout: TEST_TIMEOUT_MS }, async () => {
      const user = `short-${uid()}`;
      const client = clients.make({ cookie: `session=${user}` });
      const errors = record(client, 'error');
      const connecting = record(client, 'connecting');
      const disconnected = record(client, 'disconnected');
      const connected = connectedOrFail(client);
      client.connect();
      const ctx = await connected;
      const clientId = ctx.client;

      // The backend gave expire_at = now + 2 s; tether calls the refresh proxy then, and
      // the backend extends once.
      await waitUntil(async () => (await seen('refresh', { user })).length >= 1, {
        timeout: 5000,
        what: 'the first refresh proxy call',
      });
      assert.equal(client.state, 'connected', 'still connected after the first expire_at');
      const who = await client.rpc('whoami', enc({}));
      assert.equal(dec(who.data).user, user, 'the same connection still works');

      // The second refresh says expired: the server closes with 3005 and the SDK reconnects.
      const expired = await nextEvent(client, 'connecting', { filter: (c) => c.code === 3005, timeout: 6000 });
      assert.equal(expired.code, 3005);
      const refreshes = (await seen('refresh', { user })).filter((r) => r.body.client === clientId);
      assert.equal(refreshes.length, 2, 'one extension, then expired');
      for (const r of refreshes) {
        assertTransport(r, 'Refresh');
        assertCommon(r.body, codec, clientId);
        assert.equal(r.body.user, user);
        assert.deepEqual(r.body.meta, { session: user }, 'include_connection_meta on refresh');
      }
      assert.ok(
        refreshes[1].time - refreshes[0].time >= 0.9,
        'the second refresh waited for the extended expire_at',
      );
      assert.equal(connecting.length, 2, 'initial connecting, then the 3005 one');
      assert.equal(disconnected.length, 0);
      // Server-side refresh: the SDK was never asked to refresh (no getToken, which
      // would have surfaced as a 'configuration' error and a 3500 disconnect).
      assert.deepEqual(errors.map((e) => e.type), []);
    });

    test('sub_refresh proxy: subscription kept, then unsubscribed with 2501', { timeout: TEST_TIMEOUT_MS }, async () => {
      const user = `subr-${uid()}`;
      const client = await clients.connected(user);
      const clientId = client.connectedCtx.client;
      const channel = `expiring:x-${uid()}`;
      const sub = client.newSubscription(channel);
      const subErrors = record(sub, 'error');
      sub.on('error', () => {});
      const subscribed = nextEvent(sub, 'subscribed');
      sub.subscribe();
      await subscribed;

      await waitUntil(async () => (await seen('sub_refresh', { channel })).length >= 1, {
        timeout: 8000,
        what: 'the first sub_refresh proxy call',
      });
      assert.equal(sub.state, 'subscribed', 'extended by the backend');
      const resubscribing = await nextEvent(sub, 'subscribing', { filter: (c) => c.code === 2501, timeout: 8000 });
      assert.equal(resubscribing.code, 2501, 'subscription expired (the SDK resubscribes)');
      const calls = (await seen('sub_refresh', { channel })).filter((r) => r.body.client === clientId);
      assert.equal(calls.length, 2);
      assertTransport(calls[0], 'SubRefresh');
      assertCommon(calls[0].body, codec, clientId);
      assert.equal(calls[0].body.user, user);
      assert.equal(client.state, 'connected', 'only the subscription expired');
      assert.deepEqual(subErrors.map((e) => e.type), [], 'the SDK never refreshed the subscription itself');
    });
  });
}
