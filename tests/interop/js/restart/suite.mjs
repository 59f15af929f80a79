// The centrifuge-js restart suite, defined once and run for each SDK build
// (json.test.mjs, protobuf.test.mjs): recovery across a server restart on the disk engine.
//
// Each test runs its own tether on a fresh data directory (helpers.mjs) and drives two real
// SDK clients subscribed to one `chat:` channel (history, force_recovery):
//   - `offline` is disconnected by the test before the publications it must miss, and
//     connected again only after the restart: it recovers them;
//   - `online` stays connected; the server's death drops its connection and its SDK
//     reconnects by itself once the server is back: it recovers nothing, but must be told
//     `recovered: true` on the same epoch.
// Publications cannot be made while the server is down, so the missed ones are published
// before the stop, while `offline` is away.

import { describe, test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  api,
  clientFactory,
  freshDataDir,
  num,
  record,
  sleep,
  subscribe,
  TetherServer,
  uid,
  waitUntil,
} from './helpers.mjs';

/** Per-test bound: two server starts, one stop, and the SDKs' reconnects fit well within. */
const TEST_TIMEOUT_MS = 30000;
/** How long the SDK may take to come back once the server is up again (backoff <= 1 s). */
const RECONNECT_MS = 8000;

/**
 * Registers the suite for one codec; `extras` adds the tests that need one codec only (the
 * engine's, not the SDK's, behaviour): the interval-mode case and the memory-engine control.
 */
export function defineRestartSuite(codec, { extras = false } = {}) {
  const { dec } = codec;

  describe(`centrifuge-js ${codec.name} across a server restart`, () => {
    const clients = clientFactory(codec);
    let server = null;
    afterEach(async () => {
      clients.closeAll();
      if (server) await server.stop();
      server = null;
    });

    /**
     * Everything up to the stop: two subscribers, 3 live publications, `offline` away, 5
     * more publications (offsets 4..8), then the server is stopped with `signal`.
     */
    async function runUntilStopped(env, signal, label, { settleMs = 0, pauseMs = 0 } = {}) {
      server = new TetherServer(freshDataDir(`${codec.name}-${label}`), env);
      await server.start();
      await sleep(settleMs);
      const channel = `chat:restart-${uid()}`;
      const offline = await clients.connected(`off-${uid()}`);
      const online = await clients.connected(`on-${uid()}`);
      const a = await subscribe(offline, channel);
      const b = await subscribe(online, channel);
      const epoch = a.ctx.streamPosition?.epoch;
      assert.ok(epoch, 'the subscription is positioned: it has an epoch');
      assert.equal(b.ctx.streamPosition.epoch, epoch);
      const aPubs = record(a.sub, 'publication');
      const bPubs = record(b.sub, 'publication');
      const aSubscribed = record(a.sub, 'subscribed');
      const bSubscribed = record(b.sub, 'subscribed');
      const unsubscribed = [];
      a.sub.on('unsubscribed', (ctx) => unsubscribed.push(ctx));
      b.sub.on('unsubscribed', (ctx) => unsubscribed.push(ctx));

      for (let n = 1; n <= 3; n++) {
        const res = await api('publish', { channel, data: { n } });
        assert.equal(num(res.offset), n);
        assert.equal(res.epoch, epoch);
      }
      await waitUntil(() => aPubs.length === 3 && bPubs.length === 3, { what: '3 live publications' });
      await sleep(pauseMs);

      offline.disconnect();
      assert.equal(a.sub.state, 'subscribing', 'the subscription waits for the next connect');
      // Publish the gap only once the server no longer counts `offline` in the channel.
      await waitUntil(
        async () => ((await api('channels', { pattern: channel })).channels ?? {})[channel]?.num_clients === 1,
        { what: 'the server to drop the offline subscriber' },
      );
      for (let n = 4; n <= 8; n++) {
        const res = await api('publish', { channel, data: { n } });
        assert.equal(num(res.offset), n);
        assert.equal(res.epoch, epoch);
      }
      await waitUntil(() => bPubs.length === 8, { what: 'the online subscriber to get 4..8 live' });

      const connecting = record(online, 'connecting');
      const status = await server.kill(signal);
      if (signal === 'SIGKILL') {
        assert.equal(status.signal, 'SIGKILL', 'tether was killed, not stopped');
      } else {
        assert.equal(status.code, 0, `tether exits cleanly on ${signal}: ${JSON.stringify(status)}`);
      }
      await waitUntil(() => connecting.length > 0, { what: 'the online client to lose its connection' });
      if (signal === 'SIGTERM') {
        assert.equal(connecting[0].code, 3001, 'a draining server tells the client to reconnect (3001)');
      }
      return { channel, epoch, offline, online, a, b, aPubs, bPubs, aSubscribed, bSubscribed, unsubscribed };
    }

    /** The disk engine kept everything: both subscribers recover on the same epoch. */
    async function restartAndRecover(run) {
      const { channel, epoch, offline, a, b, aPubs, bPubs, aSubscribed, bSubscribed, unsubscribed } = run;
      await server.start();

      // The history is still there, on the same epoch (server API).
      const hist = await api('history', { channel, limit: -1 });
      assert.equal(hist.epoch, epoch, 'history keeps its epoch across the restart');
      assert.equal(num(hist.offset), 8);
      assert.deepEqual((hist.publications ?? []).map((p) => num(p.offset)), [1, 2, 3, 4, 5, 6, 7, 8]);

      // `online`: its SDK reconnects and resubscribes by itself.
      await waitUntil(() => bSubscribed.length === 1, {
        timeout: RECONNECT_MS,
        what: 'the online SDK to reconnect and resubscribe',
      });
      const bctx = bSubscribed[0];
      assert.equal(bctx.wasRecovering, true);
      assert.equal(bctx.recovered, true, 'online subscriber recovered');
      assert.equal(bctx.hasRecoveredPublications, false, 'online subscriber missed nothing');
      assert.equal(bctx.streamPosition.epoch, epoch, 'same epoch after the restart');
      assert.equal(num(bctx.streamPosition.offset), 8);

      // `offline`: connects now and recovers 4..8.
      offline.connect();
      await waitUntil(() => aSubscribed.length === 1, { what: 'the offline subscriber to resubscribe' });
      const actx = aSubscribed[0];
      assert.equal(actx.wasRecovering, true);
      assert.equal(actx.recovered, true, 'offline subscriber recovered');
      assert.equal(actx.hasRecoveredPublications, true);
      assert.equal(actx.streamPosition.epoch, epoch, 'same epoch after the restart');
      // A successful recovery answers with the offset the client recovered from (Centrifugo:
      // `res.Offset = req.Offset`); the recovered publications carry it to 8.
      assert.equal(num(actx.streamPosition.offset), 3);
      await waitUntil(() => aPubs.length >= 8, { what: 'the 5 missed publications' });
      await sleep(300); // a duplicate would arrive now
      assert.deepEqual(aPubs.map((p) => dec(p.data).n), [1, 2, 3, 4, 5, 6, 7, 8], 'missed ones once, in order');
      assert.deepEqual(aPubs.map((p) => num(p.offset)), [1, 2, 3, 4, 5, 6, 7, 8]);
      assert.equal(bPubs.length, 8, 'nothing replayed to the online subscriber');

      // The stream continues after the restart: next offset, same epoch, delivered to both.
      const res = await api('publish', { channel, data: { n: 9 } });
      assert.equal(num(res.offset), 9);
      assert.equal(res.epoch, epoch);
      await waitUntil(() => aPubs.length === 9 && bPubs.length === 9, { what: 'a live publication after the restart' });
      assert.equal(num(aPubs[8].offset), 9);
      assert.equal(num(bPubs[8].offset), 9);
      assert.equal(dec(bPubs[8].data).n, 9);
      assert.deepEqual(unsubscribed, [], 'no subscription was lost');
      assert.equal(b.sub.state, 'subscribed');
      assert.equal(a.sub.state, 'subscribed');
    }

    test('disk engine, kill -9 (fsync always): missed publications recovered on the same epoch', { timeout: TEST_TIMEOUT_MS }, async () => {
      const run = await runUntilStopped({}, 'SIGKILL', 'kill9');
      await restartAndRecover(run);
    });

    test('disk engine, SIGTERM (clean stop): missed publications recovered on the same epoch', { timeout: TEST_TIMEOUT_MS }, async () => {
      const run = await runUntilStopped({}, 'SIGTERM', 'sigterm');
      await restartAndRecover(run);
    });

    if (extras) {
      // In `interval` mode a kill -9 under the same boot changes no epoch, also when a
      // checkpoint lies in the current segment after its header (the settle lets the first
      // publish move to the zero-filled spare segment, the pause lets periodic checkpoints,
      // every 200 ms here, land in it). This failed before the engine read the last run's
      // boot id from the newest segment's header rather than from the replayed records.
      test('disk engine, kill -9 (fsync interval, after a checkpoint): missed publications recovered on the same epoch', {
        timeout: TEST_TIMEOUT_MS,
      }, async () => {
        const env = { TETHER_ENGINE_DISK_FSYNC: 'interval', TETHER_ENGINE_DISK_CHECKPOINT_INTERVAL: '200ms' };
        const run = await runUntilStopped(env, 'SIGKILL', 'kill9-interval', { settleMs: 1000, pauseMs: 700 });
        await restartAndRecover(run);
      });
    }

    if (extras) {
      test('negative control, memory engine, kill -9: recovered false, new epoch, nothing delivered', { timeout: TEST_TIMEOUT_MS }, async () => {
        const run = await runUntilStopped({ TETHER_ENGINE_TYPE: 'memory' }, 'SIGKILL', 'memory');
        const { channel, epoch, offline, aPubs, bPubs, aSubscribed, bSubscribed } = run;
        await server.start();
        const hist = await api('history', { channel, limit: -1 });
        assert.deepEqual(hist.publications ?? [], [], 'the memory engine lost the history');

        offline.connect();
        await waitUntil(() => aSubscribed.length === 1 && bSubscribed.length === 1, {
          timeout: RECONNECT_MS,
          what: 'both subscribers to resubscribe',
        });
        for (const ctx of [aSubscribed[0], bSubscribed[0]]) {
          assert.equal(ctx.wasRecovering, true);
          assert.equal(ctx.recovered, false, 'nothing to recover from after a restart in memory');
          assert.equal(ctx.hasRecoveredPublications, false);
          assert.notEqual(ctx.streamPosition.epoch, epoch, 'a new stream, a new epoch');
        }
        await sleep(300);
        assert.equal(aPubs.length, 3, 'nothing delivered to the offline subscriber');
        assert.equal(bPubs.length, 8);
      });
    }
  });
}
