// Helpers for the restart suite: the tests start, kill and restart tether themselves.
//
// The server under test is `$TETHER_BIN serve --config $TETHER_CONFIG` (default config
// tests/interop/tether-disk.json), with `TETHER_ENGINE_DISK_PATH` set to a data directory of
// the test's own under $INTEROP_DISK_DIR. A restart is the same command on the same data
// directory and port. scripts/interop-restart.sh sets these variables (and the port).
//
// Every process started here is appended to $INTEROP_RESTART_PIDS (if set), so the script
// can stop one a crashed test runner left behind; its output goes to $INTEROP_RESTART_LOG.

import { spawn } from 'node:child_process';
import { appendFileSync, closeSync, mkdirSync, mkdtempSync, openSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const interopDir = resolve(here, '..', '..');

// The shared helpers read TETHER_CONFIG when they are imported: default it first.
process.env.TETHER_CONFIG ??= join(interopDir, 'tether-disk.json');
const base = await import('../helpers.mjs');

export const {
  CODECS,
  api,
  clientFactory,
  config,
  nextEvent,
  num,
  record,
  sleep,
  subscribe,
  uid,
  waitUntil,
} = base;

export const CONFIG_PATH = resolve(process.env.TETHER_CONFIG);
export const TETHER_BIN =
  process.env.TETHER_BIN ??
  join(process.env.CARGO_TARGET_DIR ?? join(interopDir, '..', '..', 'target'), 'debug', 'tether');
const DISK_ROOT =
  process.env.INTEROP_DISK_DIR ?? mkdtempSync(join(tmpdir(), 'tether-interop-disk-'));
const LOG = process.env.INTEROP_RESTART_LOG ?? join(DISK_ROOT, 'tether.log');
const PIDS = process.env.INTEROP_RESTART_PIDS;

const host = config.http_server?.address || '127.0.0.1';
const port = config.http_server?.port ?? 8000;
const READY_URL = `http://${host}:${port}/ready`;

/** A fresh, empty data directory for one test's store. */
export function freshDataDir(label) {
  mkdirSync(DISK_ROOT, { recursive: true });
  return mkdtempSync(join(DISK_ROOT, `${label}-`));
}

async function readyStatus() {
  try {
    const res = await fetch(READY_URL, { signal: AbortSignal.timeout(1000) });
    return res.status;
  } catch {
    return 0; // nothing listening (or not answering yet)
  }
}

/**
 * One tether server on the test's data directory. `env` adds `TETHER_*` overrides (e.g.
 * `TETHER_ENGINE_TYPE=memory` for the negative control); the child gets no other `TETHER_*`
 * variable from this process.
 */
export class TetherServer {
  constructor(dataDir, env = {}) {
    this.dataDir = dataDir;
    this.env = env;
    this.child = null;
    this.exited = null;
    this.starts = 0;
  }

  /** Starts the server and waits until `GET /ready` answers 200 (15 s at most). */
  async start() {
    if (this.child) throw new Error('tether is already running');
    // The port must be free: a server that is not ours must not pass for ours.
    for (let i = 0; (await readyStatus()) !== 0; i++) {
      if (i >= 50) throw new Error(`something already answers ${READY_URL}`);
      await sleep(100);
    }
    const env = Object.fromEntries(
      Object.entries(process.env).filter(([k]) => !k.startsWith('TETHER_')),
    );
    Object.assign(env, { TETHER_ENGINE_DISK_PATH: this.dataDir }, this.env);
    this.starts += 1;
    appendFileSync(
      LOG,
      `\n---- ${new Date().toISOString()} js: start #${this.starts} of ${this.dataDir} ${JSON.stringify(this.env)}\n`,
    );
    const out = openSync(LOG, 'a');
    const child = spawn(TETHER_BIN, ['serve', '--config', CONFIG_PATH], {
      env,
      stdio: ['ignore', out, out],
    });
    closeSync(out);
    if (PIDS && child.pid) appendFileSync(PIDS, `${child.pid}\n`);
    this.child = child;
    this.exited = new Promise((resolveExit) => {
      child.on('exit', (code, signal) => resolveExit({ code, signal }));
      child.on('error', (err) => resolveExit({ code: null, signal: null, error: err }));
    });
    let gone = null;
    this.exited.then((status) => {
      gone = status;
    });
    const deadline = Date.now() + 15000;
    for (;;) {
      if (gone) {
        this.child = null;
        throw new Error(`tether exited before it was ready: ${JSON.stringify(gone)} (log: ${LOG})`);
      }
      if ((await readyStatus()) === 200) return;
      if (Date.now() > deadline) throw new Error(`tether not ready within 15 s (log: ${LOG})`);
      await sleep(50);
    }
  }

  /** Sends `signal` and waits for the process to end; returns `{code, signal}`. */
  async kill(signal, { timeout = 10000 } = {}) {
    if (!this.child) throw new Error('tether is not running');
    const child = this.child;
    child.kill(signal);
    let timer;
    const status = await Promise.race([
      this.exited,
      new Promise((resolveTimeout) => {
        timer = setTimeout(() => resolveTimeout(null), timeout);
      }),
    ]);
    clearTimeout(timer); // a pending timer would keep the test process alive
    if (!status) {
      child.kill('SIGKILL');
      await this.exited;
      this.child = null;
      throw new Error(`tether did not exit within ${timeout} ms of ${signal}`);
    }
    this.child = null;
    return status;
  }

  /** Teardown: SIGTERM, then SIGKILL after 5 s; no-op when not running. */
  async stop() {
    if (!this.child) return;
    try {
      await this.kill('SIGTERM', { timeout: 5000 });
    } catch {
      // already killed with SIGKILL by kill()
    }
  }
}
