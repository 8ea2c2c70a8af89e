// WebSocket load generator for the trichannels benchmark suite (Node + npm `ws`).
//
// Driven by bench/loadgen.py (which is the documented entry point); speaks JSON lines
// on stdout so the runner can sample the server's CPU exactly at the edges of the
// measured window:
//   {"event":"ready"}            all clients connected, warm-up starts
//   {"event":"measure_start"}    measured window starts
//   {"event":"measure_end"}      measured window ends
//   {"event":"result", ...}      numbers for the window
// For mode "idle" the generator prints {"event":"opened"} and then waits for a line
// "close" on stdin before closing everything.
//
// Every request loop is bounded in count and time and stops by itself; only loopback
// addresses are accepted.
'use strict';

const path = require('path');
const WebSocket = require(path.join(__dirname, '.venv-node', 'node_modules', 'ws'));

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) continue;
    const key = a.slice(2);
    const next = argv[i + 1];
    if (next === undefined || next.startsWith('--')) out[key] = true;
    else { out[key] = next; i++; }
  }
  return out;
}

const args = parseArgs(process.argv.slice(2));
const MODE = args.mode || 'echo';
const URL_ = args.url || 'ws://127.0.0.1:8000/echo';
const CLIENTS = parseInt(args.clients || '50', 10);
const WARMUP = parseFloat(args.warmup || '2');
const DURATION = parseFloat(args.duration || '5');
const SIZE = parseInt(args.size || '32', 10);
const SENDERS = parseInt(args.senders || '10', 10);
const RATE = parseFloat(args.rate || '0');          // deliveries/s offered (broadcast fixed-rate)
const CYCLES = parseInt(args.cycles || '1000', 10);  // churn
const CONCURRENCY = parseInt(args.concurrency || '50', 10);
const HARD_LIMIT = parseFloat(args['time-limit'] || '300');
const ORIGIN = args.origin || 'http://127.0.0.1';

{
  const host = new URL(URL_).hostname;
  if (!(host === 'localhost' || host === '::1' || host === '[::1]' || /^127\./.test(host))) {
    console.error('refusing non-loopback target ' + host);
    process.exit(2);
  }
}
// Never run unbounded.
setTimeout(() => { emit({ event: 'error', error: 'time limit reached' }); process.exit(3); }, HARD_LIMIT * 1000).unref();

function emit(obj) { process.stdout.write(JSON.stringify(obj) + '\n'); }
const now = () => performance.now(); // ms, monotonic

function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil(p / 100 * sorted.length) - 1));
  return sorted[idx];
}

class Samples {
  constructor(cap) { this.buf = new Float64Array(cap); this.n = 0; this.dropped = 0; }
  add(v) { if (this.n < this.buf.length) this.buf[this.n++] = v; else this.dropped++; }
  summary() {
    const s = this.buf.slice(0, this.n).sort();
    const ms2us = (v) => (v === null ? null : Math.round(v * 1000));
    return { count: this.n, p50_us: ms2us(percentile(s, 50)), p99_us: ms2us(percentile(s, 99)),
             max_us: ms2us(this.n ? s[this.n - 1] : null) };
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function connect(url) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false, origin: ORIGIN, handshakeTimeout: 20000 });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
    ws.once('unexpected-response', (req, res) => reject(new Error('HTTP ' + res.statusCode)));
  });
}

async function connectMany(url, n, parallel) {
  const out = new Array(n);
  let next = 0;
  async function worker() {
    while (next < n) {
      const i = next++;
      out[i] = await connect(url);
    }
  }
  await Promise.all(Array.from({ length: Math.min(parallel, n) }, worker));
  return out;
}

function closeAll(sockets) {
  return Promise.all(sockets.map((ws) => new Promise((resolve) => {
    if (!ws || ws.readyState === WebSocket.CLOSED) return resolve();
    const t = setTimeout(() => { ws.terminate(); resolve(); }, 3000);
    ws.once('close', () => { clearTimeout(t); resolve(); });
    ws.close(1000);
  })));
}

// Wall and CPU at the edges of the window, so the client's own headroom is reported.
function windowClock() {
  const t0 = now(); const c0 = process.cpuUsage();
  return () => {
    const wall = (now() - t0) / 1000; const c = process.cpuUsage(c0);
    return { wall_s: wall, client_cpu_s: (c.user + c.system) / 1e6 };
  };
}

// ---------------------------------------------------------------- S1 echo
async function runEcho() {
  const sockets = await connectMany(URL_, CLIENTS, 50);
  emit({ event: 'ready' });
  const payload = 'x'.repeat(SIZE);
  let measuring = false; let stopped = false; let count = 0; let errors = 0;
  const lat = new Samples(4_000_000);
  for (const ws of sockets) {
    let sentAt = 0;
    ws.on('message', () => {
      if (measuring) { count++; lat.add(now() - sentAt); }
      if (stopped) return;
      sentAt = now(); ws.send(payload);
    });
    ws.on('error', () => { errors++; });
    sentAt = now(); ws.send(payload);
  }
  await sleep(WARMUP * 1000);
  emit({ event: 'measure_start' });
  const clock = windowClock(); measuring = true;
  await sleep(DURATION * 1000);
  measuring = false; const w = clock();
  emit({ event: 'measure_end' });
  stopped = true;
  await sleep(50);
  await closeAll(sockets);
  emit({ event: 'result', mode: 'echo', clients: CLIENTS, messages: count, rate: count / w.wall_s,
         ...lat.summary(), ...w, errors });
}

// ---------------------------------------------------------------- S2 broadcast
// Payload: {"message": "<sender>:<seq>:<sent_ms>"} -- the tutorial chat format.
async function runBroadcast() {
  const sockets = await connectMany(URL_, CLIENTS, 50);
  await sleep(300); // every member has joined the group before its accept arrived; settle anyway
  emit({ event: 'ready' });
  let measuring = false; let stopped = false; let deliveries = 0; let errors = 0;
  let sentInWindow = 0; let deliveredOfWindow = 0;
  const lat = new Samples(8_000_000);
  const windowSeq = new Set();
  const waiting = new Array(CLIENTS).fill(false);
  const seqs = new Array(CLIENTS).fill(0);
  const closedLoop = RATE <= 0;
  const sendFrom = (i) => {
    const seq = ++seqs[i];
    const tag = i + ':' + seq;
    if (measuring) { windowSeq.add(tag); sentInWindow++; }
    if (closedLoop) remaining.set(tag, CLIENTS);
    sockets[i].send(JSON.stringify({ message: tag + ':' + now().toFixed(3) }));
    return tag;
  };
  // Closed loop: a sender's next message goes out once EVERY member has its previous
  // one, so at most SENDERS messages are in flight. (Advancing on the sender's own
  // copy alone is not a closed loop: a server that happens to deliver the sender's
  // copy early is offered unbounded load and drops at full channels.)
  const remaining = new Map();
  sockets.forEach((ws, i) => {
    ws.on('error', () => { errors++; });
    ws.on('message', (data) => {
      const text = data.toString();
      const m = JSON.parse(text).message;
      const k2 = m.lastIndexOf(':');
      const tag = m.slice(0, k2);
      const t = parseFloat(m.slice(k2 + 1));
      if (measuring) deliveries++;
      if (windowSeq.has(tag)) { deliveredOfWindow++; lat.add(now() - t); }
      if (closedLoop) {
        const left = remaining.get(tag) - 1;
        if (left > 0) { remaining.set(tag, left); } else {
          remaining.delete(tag);
          const sender = parseInt(tag, 10);
          if (!stopped && waiting[sender]) { sendFrom(sender); }
        }
      }
    });
  });
  let timer = null;
  if (closedLoop) {
    for (let i = 0; i < Math.min(SENDERS, CLIENTS); i++) { waiting[i] = true; sendFrom(i); }
  } else {
    // Open loop: messages/s = RATE / CLIENTS, spread round-robin over every client.
    const perSec = RATE / CLIENTS; const intervalMs = 1000 / perSec;
    let next = now(); let who = 0;
    const tick = () => {
      if (stopped) return;
      const t = now();
      while (next <= t) { sendFrom(who); who = (who + 1) % CLIENTS; next += intervalMs; }
      timer = setTimeout(tick, Math.max(0, next - now()));
    };
    tick();
  }
  await sleep(WARMUP * 1000);
  emit({ event: 'measure_start' });
  const clock = windowClock(); measuring = true;
  await sleep(DURATION * 1000);
  measuring = false; const w = clock();
  emit({ event: 'measure_end' });
  stopped = true; if (timer) clearTimeout(timer);
  // Let the window's last messages land before counting losses: wait until every
  // expected delivery arrived, or 3 s (what is still missing then is reported as lost).
  const expected = sentInWindow * CLIENTS;
  for (let waited = 0; waited < 3000 && deliveredOfWindow < expected; waited += 50) await sleep(50);
  await closeAll(sockets);
  emit({ event: 'result', mode: 'broadcast', clients: CLIENTS, senders: closedLoop ? SENDERS : null,
         offered_rate: closedLoop ? null : RATE, deliveries, rate: deliveries / w.wall_s,
         messages_sent: sentInWindow, expected_deliveries: expected, delivered_of_window: deliveredOfWindow,
         lost: expected - deliveredOfWindow, ...lat.summary(), ...w, errors });
}

// ---------------------------------------------------------------- S4 idle
async function runIdle() {
  const sockets = await connectMany(URL_, CLIENTS, 64);
  // One round trip on each, so every connection is fully set up on the server.
  let pending = sockets.length;
  await new Promise((resolve) => {
    for (const ws of sockets) {
      ws.once('message', () => { if (--pending === 0) resolve(); });
      ws.send('hello');
    }
  });
  emit({ event: 'opened', clients: sockets.length });
  await new Promise((resolve) => {
    let buf = '';
    process.stdin.on('data', (d) => { buf += d; if (buf.includes('close')) resolve(); });
    process.stdin.on('end', resolve);
  });
  await closeAll(sockets);
  emit({ event: 'result', mode: 'idle', clients: sockets.length });
}

// ---------------------------------------------------------------- S6 churn
async function runChurn() {
  emit({ event: 'ready' });
  emit({ event: 'measure_start' });
  const clock = windowClock();
  let next = 0; let done = 0; let errors = 0;
  const lat = new Samples(CYCLES + 10);
  async function worker() {
    while (next < CYCLES) {
      next++;
      const t0 = now();
      try {
        const ws = await connect(URL_);
        await new Promise((resolve, reject) => {
          ws.once('message', resolve); ws.once('error', reject); ws.send('hi');
        });
        await new Promise((resolve) => {
          const t = setTimeout(() => { ws.terminate(); resolve(); }, 5000);
          ws.once('close', () => { clearTimeout(t); resolve(); });
          ws.close(1000);
        });
        done++; lat.add(now() - t0);
      } catch (e) { errors++; await sleep(10); }
    }
  }
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  const w = clock();
  emit({ event: 'measure_end' });
  emit({ event: 'result', mode: 'churn', cycles: done, rate: done / w.wall_s, concurrency: CONCURRENCY,
         ...lat.summary(), ...w, errors });
}

const modes = { echo: runEcho, broadcast: runBroadcast, idle: runIdle, churn: runChurn };
if (!modes[MODE]) { console.error('unknown mode ' + MODE); process.exit(2); }
modes[MODE]().then(() => process.exit(0), (e) => {
  emit({ event: 'error', error: String(e && e.stack || e) });
  process.exit(1);
});
