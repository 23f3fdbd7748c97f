"use strict";
// HTTP-level benchmark: the Express app of bench/http-server.js in a child process, one store at
// a time, loaded by autocannon in this process over 127.0.0.1. Before the load, SESSIONS sessions
// are created (POST /login) and their cookies kept; every request of the load (GET /, which reads
// and increments the session's counter, so the session is saved) carries the next cookie in turn.
// A warm-up run, then the measured run: fixed connections and duration. req/s = 2xx responses /
// duration; p50/p99 = autocannon's latency histogram. After the run the store must still hold
// exactly SESSIONS sessions (every request found its session: no cookie was lost).
// This store runs as a single node and as one node of a 3-process cluster (the server's store
// plus two peers in child processes, loopback only).
//   node bench/http.js   (alone; `npm run bench` runs it as part of bench/index.js)
// Each store is measured ROUNDS times (a new server each time, stores in a rotated order); its
// figure is its best round.
//   BENCH_HTTP_CONNECTIONS=32 BENCH_HTTP_SECONDS=8 BENCH_HTTP_WARMUP=2 BENCH_HTTP_SESSIONS=1000 BENCH_HTTP_ROUNDS=3
//   BENCH_HTTP_STORES=MemoryStore,multicast (a subset, for profiling; ratios need their peer)
const path = require("path");
const autocannon = require("autocannon");
const u = require("./util");
const { runAlone } = require("./redis");

const CONNECTIONS = Number(process.env.BENCH_HTTP_CONNECTIONS) || 32;
const SECONDS = Number(process.env.BENCH_HTTP_SECONDS) || 8;
const WARMUP = Number(process.env.BENCH_HTTP_WARMUP) || 2;
const SESSIONS = Number(process.env.BENCH_HTTP_SESSIONS) || 1000;
const ROUNDS = Number(process.env.BENCH_HTTP_ROUNDS) || 3;
const SESSION_BYTES = 1024;
const SERVER = path.join(__dirname, "http-server.js");
const { STORE_LABELS } = u;
const STORES = process.env.BENCH_HTTP_STORES ? process.env.BENCH_HTTP_STORES.split(",") : Object.keys(STORE_LABELS);

let serverCount = 0;
async function startServer(name, redisPort) {
  const server = u.spawnNode(`http-${name}`, SERVER);
  const peers = [];
  let started;
  if (name === "redis") {
    started = await server.call("start", "redis", { port: redisPort, prefix: `bench-http-${process.pid}-${++serverCount}:` }, SESSION_BYTES);
  } else if (name === "multicast") {
    started = await server.call("start", "multicast", { ipv4: "127.0.0.1", multicastTTL: 0, multicast: false }, SESSION_BYTES);
  } else if (name === "multicastCluster") {
    const options = u.clusterOptions();
    started = await server.call("start", "multicast", options, SESSION_BYTES);
    // the server's node must see both peers before the sessions are made
    await u.startPeers(server, options, "http", peers);
  } else {
    started = await server.call("start", name, {}, SESSION_BYTES);
  }
  return { server, peers, port: started.port };
}

async function makeSessions(port, count) {
  const cookies = [];
  for (let i = 0; i < count; i++) {
    const res = await fetch(`http://127.0.0.1:${port}/login`, { method: "POST" });
    const setCookie = res.headers.get("set-cookie");
    await res.text();
    if (res.status !== 200 || !setCookie) throw new Error(`POST /login: ${res.status}, no cookie`);
    cookies.push(setCookie.split(";")[0]);
  }
  return cookies;
}

/** autocannon GETs of `path` for `seconds`, each with the next cookie in turn; `rate` (req/s) caps
 * the load when given. */
function load(port, cookies, seconds, { path = "/", connections = CONNECTIONS, rate = 0 } = {}) {
  let next = 0;
  return autocannon({
    url: `http://127.0.0.1:${port}${path}`,
    connections,
    duration: seconds,
    ...(rate > 0 ? { overallRate: rate } : {}),
    requests: [
      {
        method: "GET",
        path,
        setupRequest(req) {
          req.headers = { ...req.headers, cookie: cookies[next++ % cookies.length] };
          return req;
        },
      },
    ],
  });
}

async function measureStore(name, redisPort) {
  const { server, peers, port } = await startServer(name, redisPort);
  try {
    const cookies = await makeSessions(port, SESSIONS);
    await load(port, cookies, WARMUP);
    const r = await load(port, cookies, SECONDS);
    const ok = Object.entries(r.statusCodeStats || {}).reduce((n, [code, { count }]) => n + (code.startsWith("2") ? Number(count) : 0), 0);
    const length = await server.call("length");
    const result = {
      reqPerSec: Math.round(ok / r.duration),
      latencyMs: { p50: r.latency.p50, p90: r.latency.p90, p99: r.latency.p99, max: r.latency.max, mean: u.round2(r.latency.mean) },
      requests: ok,
      non2xx: r.non2xx,
      errors: r.errors,
      timeouts: r.timeouts,
      seconds: r.duration,
      sessionsAfter: length,
      sessionsOk: length === SESSIONS,
    };
    if (name === "multicastCluster") {
      const pick = (s) => ({ sessions: s.sessions, datagramsSent: s.datagramsSent, datagramsReceived: s.datagramsReceived, retransmissions: s.retransmissions, naksSent: s.naksSent, dropped: s.dropped });
      result.peers = (await Promise.all(peers.map((p) => p.call("stats")))).map(pick);
      result.node = pick(await server.call("stats"));
    }
    return result;
  } finally {
    await server.call("close").catch(() => {});
    await u.stop(server);
    await Promise.all(peers.map(u.leave));
  }
}

async function run({ redisPort, log = console.log } = {}) {
  const names = STORES.filter((n) => n in STORE_LABELS);
  const runs = Object.fromEntries(names.map((n) => [n, []]));
  for (let r = 0; r < ROUNDS; r++) {
    for (let k = 0; k < names.length; k++) {
      const name = names[(k + r) % names.length]; // rotated order
      const s = await measureStore(name, redisPort);
      runs[name].push(s);
      log(`  round ${r + 1}: ${STORE_LABELS[name].padEnd(22)} ${u.fmt(s.reqPerSec).padStart(7)} req/s  p50 ${s.latencyMs.p50} ms  p99 ${s.latencyMs.p99} ms  non2xx ${s.non2xx} errors ${s.errors} sessions after ${s.sessionsAfter}`);
    }
  }
  // each store's figure: its best round (noise on a shared machine only ever slows a run down)
  const stores = Object.fromEntries(names.map((n) => [n, { ...runs[n].reduce((a, b) => (b.reqPerSec > a.reqPerSec ? b : a)), rounds: runs[n].map((s) => ({ reqPerSec: s.reqPerSec, p99: s.latencyMs.p99 })) }]));
  const ratios = {};
  for (const n of ["multicast", "multicastCluster"].filter((n) => stores[n])) {
    ratios[n] = {
      reqPerSec: { toMemoryStore: u.ratio(stores[n].reqPerSec, stores.MemoryStore?.reqPerSec), toRedis: u.ratio(stores[n].reqPerSec, stores.redis?.reqPerSec) },
      p99: { toMemoryStore: u.ratio(stores[n].latencyMs.p99, stores.MemoryStore?.latencyMs.p99), toRedis: u.ratio(stores[n].latencyMs.p99, stores.redis?.latencyMs.p99) },
    };
  }
  const rows = names.map((n) => {
    const s = stores[n];
    const r = ratios[n];
    return [STORE_LABELS[n], u.fmt(s.reqPerSec), `${s.latencyMs.p99} ms`, r ? u.fmtRatio(r.reqPerSec.toMemoryStore) : "", r ? u.fmtRatio(r.reqPerSec.toRedis) : ""];
  });
  const saved = console.log;
  console.log = log;
  try {
    u.printTable(`HTTP: Express + express-session, ${CONNECTIONS} connections × ${SECONDS} s after ${WARMUP} s warm-up, ${SESSIONS} sessions of ≈${SESSION_BYTES} B`, ["store", "req/s", "p99", "req/s / MemoryStore", "req/s / redis"], rows);
  } finally {
    console.log = saved;
  }
  return {
    method: `autocannon in the bench process, ${CONNECTIONS} connections, ${SECONDS} s after a ${WARMUP} s warm-up, best of ${ROUNDS} rounds (a new server each, stores in rotated order); server (Express 5 + express-session, resave false, saveUninitialized false, 1-day cookie) in a child process; ${SESSIONS} sessions of ≈${SESSION_BYTES} bytes made first, every request carries the next session's cookie; GET / reads and increments a counter in the session (so every request saves it)`,
    connections: CONNECTIONS,
    seconds: SECONDS,
    rounds: ROUNDS,
    warmupSeconds: WARMUP,
    sessions: SESSIONS,
    stores: STORE_LABELS,
    results: stores,
    ratios,
  };
}

module.exports = { run, STORE_LABELS, makeSessions, load };

if (require.main === module) {
  runAlone("http.json", (redis) => run({ redisPort: redis.port }));
}
