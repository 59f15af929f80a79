// Baseline peer for tether-bench: the smallest useful channel server on node `ws`.
// Clients send {"sub":"<channel>"} and get {"ok":1}; POST /publish {"channel","data"} sends
// `data` (a string) to every subscriber of the channel. Production-style settings:
// no permessage-deflate, 64 KiB max message, a protocol ping every 25 s and eviction of
// clients that did not answer the previous one (the heartbeat pattern from the ws README).
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');

const port = Number(process.env.PORT || 18003);
const PING_MS = Number(process.env.PING_MS || 25000);
const channels = new Map();

const server = http.createServer((req, res) => {
  if (req.method !== 'POST' || req.url !== '/publish') {
    res.writeHead(404, { 'Content-Length': 0 });
    return res.end();
  }
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    let body = '{"error":"bad request"}';
    let code = 400;
    try {
      const { channel, data } = JSON.parse(Buffer.concat(chunks).toString());
      const subs = channels.get(channel);
      let n = 0;
      if (subs) for (const ws of subs) { ws.send(data); n++; }
      body = JSON.stringify({ delivered: n });
      code = 200;
    } catch (e) { /* bad JSON: 400 */ }
    res.writeHead(code, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
  });
});

const wss = new WebSocketServer({ server, perMessageDeflate: false, maxPayload: 64 * 1024 });
wss.on('connection', (ws) => {
  ws.isAlive = true;
  ws.subs = [];
  ws.on('pong', () => { ws.isAlive = true; });
  ws.on('message', (msg) => {
    let channel;
    try { channel = JSON.parse(msg).sub; } catch (e) { /* ignored */ }
    if (typeof channel !== 'string') return ws.send('{"error":"bad command"}');
    let set = channels.get(channel);
    if (!set) channels.set(channel, (set = new Set()));
    set.add(ws);
    ws.subs.push(channel);
    ws.send('{"ok":1}');
  });
  ws.on('close', () => {
    for (const c of ws.subs) {
      const set = channels.get(c);
      if (set) { set.delete(ws); if (set.size === 0) channels.delete(c); }
    }
  });
});

setInterval(() => {
  for (const ws of wss.clients) {
    if (!ws.isAlive) { ws.terminate(); continue; }
    ws.isAlive = false;
    ws.ping();
  }
}, PING_MS);

server.listen(port, '127.0.0.1', () => console.log(`ws baseline on 127.0.0.1:${port}`));
