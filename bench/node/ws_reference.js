// The fan-out reference: a minimal Node `ws` broadcast server, as a team would hand-roll
// one. It speaks just enough of btsguru's native protocol for the benchmark's clients
// (`{"op":"subscribe","channels":[...]}` answered by `{"op":"subscribed",...}`), follows
// one Redis pub/sub channel (the one btsguru's bus publishes the game's events on), and
// writes each event to every subscriber as one frame built once per message.
//
// usage: node ws_reference.js PORT REDIS_PORT REDIS_CHANNEL
'use strict';

const http = require('http');
const net = require('net');
const { WebSocketServer, Sender } = require('ws');

const [port, redisPort, redisChannel] = process.argv.slice(2);
const subscribers = new Map(); // channel name -> Set of sockets

const server = http.createServer((req, res) => { res.writeHead(200); res.end('ok\n'); });
const wss = new WebSocketServer({ server, perMessageDeflate: false, clientTracking: false });

wss.on('connection', (ws) => {
  const mine = [];
  ws.on('message', (raw) => {
    let message;
    try { message = JSON.parse(raw); } catch { return; }
    if (message.op !== 'subscribe' || !Array.isArray(message.channels)) return;
    for (const channel of message.channels) {
      if (!subscribers.has(channel)) subscribers.set(channel, new Set());
      subscribers.get(channel).add(ws);
      mine.push(channel);
      ws.send(JSON.stringify({ op: 'subscribed', channel, recovered: false }));
    }
  });
  ws.on('close', () => { for (const channel of mine) subscribers.get(channel)?.delete(ws); });
});

// btsguru's bus message: `{id}\n{event}\n{channel}\n{data JSON}`
function broadcast(payload) {
  const text = payload.toString('utf8');
  const a = text.indexOf('\n');
  const b = text.indexOf('\n', a + 1);
  const c = text.indexOf('\n', b + 1);
  const channel = text.slice(b + 1, c);
  const targets = subscribers.get(channel);
  if (!targets || targets.size === 0) return;
  const json = '{"id":' + JSON.stringify(text.slice(0, a)) + ',"channel":' + JSON.stringify(channel) +
    ',"event":' + JSON.stringify(text.slice(a + 1, b)) + ',"data":' + text.slice(c + 1) + '}';
  const frame = Buffer.concat(Sender.frame(Buffer.from(json), {
    fin: true, rsv1: false, opcode: 1, mask: false, readOnly: false,
  }));
  for (const ws of targets) {
    if (ws.readyState === 1) ws._socket.write(frame);
  }
}

// A Redis subscriber in a few lines of RESP: arrays of bulk strings and integers.
function subscribe() {
  const redis = net.connect(Number(redisPort), '127.0.0.1');
  let buffer = Buffer.alloc(0);
  redis.on('connect', () => {
    redis.write(`*2\r\n$9\r\nSUBSCRIBE\r\n$${Buffer.byteLength(redisChannel)}\r\n${redisChannel}\r\n`);
  });
  redis.on('data', (chunk) => {
    buffer = buffer.length ? Buffer.concat([buffer, chunk]) : chunk;
    for (;;) {
      const parsed = parseArray(buffer);
      if (parsed === null) return;
      buffer = buffer.subarray(parsed.end);
      const [kind, , payload] = parsed.items;
      if (kind && kind.toString() === 'message') broadcast(payload);
    }
  });
  redis.on('error', (err) => { console.error(`redis: ${err.message}`); process.exit(1); });
}

function readLine(buf, at) {
  const end = buf.indexOf('\r\n', at);
  return end < 0 ? null : { line: buf.toString('latin1', at, end), next: end + 2 };
}

function parseArray(buf) {
  const head = readLine(buf, 0);
  if (head === null) return null;
  if (head.line[0] !== '*') throw new Error(`unexpected RESP reply ${head.line}`);
  const items = [];
  let at = head.next;
  for (let i = 0; i < Number(head.line.slice(1)); i++) {
    const item = readLine(buf, at);
    if (item === null) return null;
    if (item.line[0] === ':') { items.push(Number(item.line.slice(1))); at = item.next; continue; }
    const size = Number(item.line.slice(1));
    if (buf.length < item.next + size + 2) return null;
    items.push(buf.subarray(item.next, item.next + size));
    at = item.next + size + 2;
  }
  return { items, end: at };
}

subscribe();
server.listen(Number(port), '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
