"use strict";
// Touch traffic: what read-only requests cost the network and the peers, with and without the
// store's `touchAfter` option. The Express app of bench/http-server.js (express-session, resave
// false, saveUninitialized false, rolling false, a 1-day cookie) runs in a child process on this
// package's store, one node of 3: the app's store plus two peers in child processes
// (bench/cluster-node.js), all on 127.0.0.1, multicastTTL 0. For each touchAfter value (a new
// cluster each time):
//   1. SESSIONS sessions of ≈1 KB are made (POST /login) and their cookies kept; once both peers
//      hold them all, the bytes the app's node sent per login are the cost of replicating a set;
//      then full GCs in the peers (they run with --expose-gc --no-memory-reducer, so that V8's
//      delayed start-up collections do not land in a measured window);
//   2. idle baseline: SECONDS with no request at all (heartbeats and whatever else the cluster
//      sends on its own);
//   3. load: autocannon, CONNECTIONS connections for SECONDS (after WARMUP seconds of the same
//      load, none by default), GET /read with the next cookie in turn: it reads the session and
//      does not modify it, so express-session calls store.touch on every request.
// Per 2xx response of the load, net of the idle baseline (its rate per second times the load's
// wall time, subtracted): datagrams and bytes the app's node sent (stats().datagramsSent,
// bytesSent), datagrams and bytes each peer received (stats().datagramsReceived, bytesReceived,
// the mean of the two peers), the CPU time of both peer processes together (all their threads,
// /proc/<pid>/task/*/schedstat, u.cpuNs) and of the app's process; with req/s and
// stats().localTouches (touches kept on the app's node, not multicast) for context. The idle
// rates (heartbeats) are reported too.
// No timing assertion: this only measures.
//   node bench/touch.js   (alone; `npm run bench` runs it as part of bench/index.js)
//   BENCH_TOUCH_CONNECTIONS=32 BENCH_TOUCH_SECONDS=5 BENCH_TOUCH_WARMUP=0 BENCH_TOUCH_SESSIONS=1000
//   BENCH_TOUCH_ROUNDS=1 BENCH_TOUCH_AFTER=0,60 (touchAfter values in seconds; the first is the
//   reference of the ratios) BENCH_TOUCH_RATE=0 (requests/s of the whole load, 0 = unlimited: at
//   a low rate each replicated touch leaves in a datagram of its own, under load they share them)
// With ROUNDS > 1, each touchAfter's figure is its round of median req/s.
const fs = require("fs");
const path = require("path");
const u = require("./util");
const http = require("./http");

const envNumber = (name, fallback) => (process.env[name] !== undefined && process.env[name] !== "" && Number.isFinite(Number(process.env[name])) ? Number(process.env[name]) : fallback);
const CONNECTIONS = envNumber("BENCH_TOUCH_CONNECTIONS", 32);
const SECONDS = envNumber("BENCH_TOUCH_SECONDS", 5);
const WARMUP = envNumber("BENCH_TOUCH_WARMUP", 0);
const SESSIONS = envNumber("BENCH_TOUCH_SESSIONS", 1000);
const ROUNDS = envNumber("BENCH_TOUCH_ROUNDS", 1);
const TOUCH_AFTER = (process.env.BENCH_TOUCH_AFTER || "0,60").split(",").map(Number);
const RATE = envNumber("BENCH_TOUCH_RATE", 0); // requests/s of the whole load; 0: as fast as it goes
const SESSION_BYTES = 1024;
const COOKIE_MAX_AGE_MS = 86400000; // bench/http-server.js's cookie: ≥ 1 hour, so touchAfter 60 applies
const SERVER = path.join(__dirname, "http-server.js");
// What a touch carries besides the sid: the cookie as express-session hands it to store.touch
const TOUCH_COOKIE_JSON_BYTES = JSON.stringify(new (require("express-session").Cookie)({ maxAge: COOKIE_MAX_AGE_MS, httpOnly: true, sameSite: "lax" })).length;

for (const t of TOUCH_AFTER) if (!(t >= 0)) throw new Error(`BENCH_TOUCH_AFTER: "${process.env.BENCH_TOUCH_AFTER}" is not a list of seconds ≥ 0`);

async function startCluster(touchAfter) {
  const options = { ...u.clusterOptions(), touchAfter };
  const server = u.spawnNode(`touch-app-${touchAfter}`, SERVER);
  const peers = [];
  try {
    const started = await server.call("start", "multicast", options, SESSION_BYTES);
    // --no-memory-reducer: see measure(), before the idle baseline
    await u.startPeers(server, options, "touch", peers, { execArgv: ["--expose-gc", "--no-memory-reducer"] });
    return { server, peers, port: started.port, pid: started.pid };
  } catch (err) {
    await u.stop(server, ...peers);
    throw err;
  }
}

// Counters and CPU of the three processes at one instant.
async function snapshot({ server, peers, pid }) {
  const t = process.hrtime.bigint();
  const [app, ...peerStats] = await Promise.all([server.call("stats"), ...peers.map((p) => p.call("stats"))]);
  const peersCpu = { js: 0, net: 0, other: 0 };
  for (const p of peers) {
    const c = u.cpuNs(p.child.pid);
    for (const k of Object.keys(peersCpu)) peersCpu[k] += c[k];
  }
  return { t, app, peers: peerStats, appCpu: u.cpuNs(pid), peersCpu, peersNetWakeups: peers.reduce((n, p) => n + netThreadWakeups(p.child.pid), 0) };
}

const cpuSum = (c) => c.js + c.net + c.other;

// How many times the engine's network thread of a process got on a CPU so far (its wake-ups:
// the third field of /proc/<pid>/task/<tid>/schedstat).
function netThreadWakeups(pid) {
  let n = 0;
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      if (fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, "utf8").startsWith("session-multi")) n += Number(fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, "utf8").split(" ")[2]);
    } catch {
      // the thread ended between the listing and the read
    }
  }
  return n;
}

// What happened between two snapshots: the counters' deltas and the wall time.
function delta(a, b) {
  const d = (x, y, key) => (y[key] || 0) - (x[key] || 0);
  const sumPeers = (key) => b.peers.reduce((s, p, i) => s + d(a.peers[i], p, key), 0);
  return {
    seconds: Number(b.t - a.t) / 1e9,
    sent: d(a.app, b.app, "datagramsSent"),
    bytesSent: d(a.app, b.app, "bytesSent"),
    writeBatches: d(a.app, b.app, "writeBatches"),
    appReceived: d(a.app, b.app, "datagramsReceived"),
    localTouches: d(a.app, b.app, "localTouches"),
    retransmissions: d(a.app, b.app, "retransmissions"),
    peersReceived: sumPeers("datagramsReceived"),
    peersBytesReceived: sumPeers("bytesReceived"),
    peersSent: sumPeers("datagramsSent"),
    peersNaksSent: sumPeers("naksSent"),
    peersCpuNs: cpuSum(b.peersCpu) - cpuSum(a.peersCpu),
    peersNetThreadCpuNs: b.peersCpu.net - a.peersCpu.net,
    peersNetThreadWakeups: b.peersNetWakeups - a.peersNetWakeups,
    appCpuNs: { js: b.appCpu.js - a.appCpu.js, net: b.appCpu.net - a.appCpu.net, other: b.appCpu.other - a.appCpu.other },
  };
}

const load = (port, cookies, seconds) => http.load(port, cookies, seconds, { path: "/read", connections: CONNECTIONS, rate: RATE });

async function peersHold(peers, count, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const lengths = await Promise.all(peers.map((p) => p.call("length")));
    if (lengths.every((n) => n >= count)) return;
    if (Date.now() > deadline) throw new Error(`the peers hold ${lengths.join(", ")} sessions, not ${count}, after ${timeoutMs} ms`);
    await u.sleep(50);
  }
}

async function measure(touchAfter) {
  const cluster = await startCluster(touchAfter);
  const { server, peers, port } = cluster;
  try {
    // logins: the cost of replicating a set of a ≈1 KB session, for comparison with a touch
    const beforeLogins = await snapshot(cluster);
    const cookies = await http.makeSessions(port, SESSIONS);
    await peersHold(peers, SESSIONS, 20000);
    const afterLogins = await snapshot(cluster);
    const logins = delta(beforeLogins, afterLogins);
    const sessionJsonBytes = (await server.call("stats")).sessionBytes / SESSIONS;
    // Full GCs in the peers now, and no memory reducer in them: else V8 collects what start-up
    // left, 8 s or more after it, in the middle of a measured window (the peers' JS and GC
    // threads: 50 to 150 ms of CPU that have nothing to do with touches, which would swamp them).
    // Their JS threads do no work per datagram. Then the logins' tail dies down.
    await Promise.all(peers.map((p) => p.call("memory")));
    await u.sleep(1000);

    // idle baseline: same duration, no request
    const idleStart = await snapshot(cluster);
    await u.sleep(SECONDS * 1000);
    const idle = delta(idleStart, await snapshot(cluster));

    if (WARMUP > 0) await load(port, cookies, WARMUP);
    const loadStart = await snapshot(cluster);
    const r = await load(port, cookies, SECONDS);
    const loaded = delta(loadStart, await snapshot(cluster));
    const ok = Object.entries(r.statusCodeStats || {}).reduce((n, [code, { count }]) => n + (code.startsWith("2") ? Number(count) : 0), 0);
    const length = await server.call("length");
    const peerLengths = await Promise.all(peers.map((p) => p.call("length")));

    // per 2xx response: gross, and net of the idle baseline's rate over the load's wall time
    const perReq = (key) => (ok ? loaded[key] / ok : NaN);
    const netPerReq = (key) => (ok ? (loaded[key] - (idle[key] / idle.seconds) * loaded.seconds) / ok : NaN);
    const idleAppCpu = idle.appCpuNs.js + idle.appCpuNs.net + idle.appCpuNs.other;
    const loadAppCpu = loaded.appCpuNs.js + loaded.appCpuNs.net + loaded.appCpuNs.other;
    return {
      touchAfter,
      reqPerSec: Math.round(ok / r.duration),
      requests: ok,
      non2xx: r.non2xx,
      errors: r.errors,
      timeouts: r.timeouts,
      latencyMs: { p50: r.latency.p50, p99: r.latency.p99 },
      sessionsAfter: length,
      peerSessionsAfter: peerLengths,
      sessionsOk: length === SESSIONS && peerLengths.every((n) => n === SESSIONS),
      localTouches: loaded.localTouches,
      localTouchesPerRequest: u.round3(perReq("localTouches")),
      perRequest: {
        datagramsSent: u.round3(netPerReq("sent")),
        bytesSent: u.round1(netPerReq("bytesSent")),
        writeBatches: u.round3(netPerReq("writeBatches")),
        // each peer (the mean of the two): a multicast datagram reaches each once
        datagramsReceivedPerPeer: u.round3(netPerReq("peersReceived") / peers.length),
        bytesReceivedPerPeer: u.round1(netPerReq("peersBytesReceived") / peers.length),
        peersCpuUs: u.round2(netPerReq("peersCpuNs") / 1000),
        // the engines' network threads only (what receives and applies datagrams; no GC, no JS)
        peersNetThreadCpuUs: u.round2(netPerReq("peersNetThreadCpuNs") / 1000),
        appCpuUs: u.round2(ok ? (loadAppCpu - (idleAppCpu / idle.seconds) * loaded.seconds) / ok / 1000 : NaN),
        appNetThreadCpuUs: u.round2(ok ? (loaded.appCpuNs.net - (idle.appCpuNs.net / idle.seconds) * loaded.seconds) / ok / 1000 : NaN),
      },
      perRequestGross: {
        datagramsSent: u.round3(perReq("sent")),
        bytesSent: u.round1(perReq("bytesSent")),
        datagramsReceivedPerPeer: u.round3(perReq("peersReceived") / peers.length),
        peersCpuUs: u.round2(perReq("peersCpuNs") / 1000),
        peersNetThreadCpuUs: u.round2(perReq("peersNetThreadCpuNs") / 1000),
      },
      idlePerSecond: {
        seconds: u.round2(idle.seconds),
        datagramsSent: u.round1(idle.sent / idle.seconds),
        bytesSent: u.round1(idle.bytesSent / idle.seconds),
        datagramsReceivedPerPeer: u.round1(idle.peersReceived / peers.length / idle.seconds),
        peersCpuUs: u.round1(idle.peersCpuNs / 1000 / idle.seconds),
        peersNetThreadCpuUs: u.round1(idle.peersNetThreadCpuNs / 1000 / idle.seconds),
        peersNetThreadWakeups: u.round1(idle.peersNetThreadWakeups / idle.seconds),
      },
      // the same of the load, for comparison with the idle baseline
      loadPerSecond: {
        seconds: u.round2(loaded.seconds),
        peersNetThreadCpuUs: u.round1(loaded.peersNetThreadCpuNs / 1000 / loaded.seconds),
        peersNetThreadWakeups: u.round1(loaded.peersNetThreadWakeups / loaded.seconds),
      },
      perLogin: {
        sessionJsonBytes: Math.round(sessionJsonBytes),
        datagramsSent: u.round3(logins.sent / SESSIONS),
        bytesSent: u.round1(logins.bytesSent / SESSIONS),
      },
      raw: { logins, idle, load: { ...loaded, autocannonSeconds: r.duration } },
    };
  } finally {
    await server.call("close").catch(() => {});
    await u.stop(server);
    await Promise.all(peers.map(u.leave));
  }
}

const fixed = (x, digits) => (x === null || x === undefined || Number.isNaN(x) ? "n/a" : x.toFixed(digits));

// "touchAfter 60 sends 0.000 datagrams/request vs 1.010 with touchAfter 0: 99× fewer"
function comparison(ref, other) {
  const a = ref.perRequest.datagramsSent;
  const b = other.perRequest.datagramsSent;
  const bytes = u.ratio(ref.perRequest.bytesSent, other.perRequest.bytesSent);
  // below the resolution of the run (one datagram in all its requests) the ratio has no meaning
  const resolution = other.requests ? 1 / other.requests : 0;
  const fewer = b > resolution ? `${fixed(a / b, 1)}× fewer` : `none beyond the idle baseline (fewer than 1 in ${u.fmt(other.requests)} requests), so at least ${u.fmt(a * other.requests)}× fewer`;
  return {
    text: `touchAfter ${other.touchAfter} sends ${fixed(b, 3)} datagrams/request vs ${fixed(a, 3)} with touchAfter ${ref.touchAfter}: ${fewer}; bytes/request ${fixed(other.perRequest.bytesSent, 1)} vs ${fixed(ref.perRequest.bytesSent, 1)}${bytes ? ` (${fixed(bytes, 1)}× fewer)` : ""}; both peers' CPU/request ${fixed(other.perRequest.peersCpuUs, 2)} µs vs ${fixed(ref.perRequest.peersCpuUs, 2)} µs (their network threads ${fixed(other.perRequest.peersNetThreadCpuUs, 2)} vs ${fixed(ref.perRequest.peersNetThreadCpuUs, 2)} µs)`,
    datagramsPerRequest: b > resolution ? u.round2(a / b) : null,
    bytesPerRequest: bytes,
    peersCpuPerRequest: u.ratio(ref.perRequest.peersCpuUs, other.perRequest.peersCpuUs),
  };
}

async function run({ log = console.log } = {}) {
  const runs = Object.fromEntries(TOUCH_AFTER.map((t) => [t, []]));
  for (let r = 0; r < ROUNDS; r++) {
    for (let k = 0; k < TOUCH_AFTER.length; k++) {
      const t = TOUCH_AFTER[(k + r) % TOUCH_AFTER.length]; // rotated order
      const m = await measure(t);
      runs[t].push(m);
      const p = m.perRequest;
      log(
        `  round ${r + 1}: touchAfter ${String(t).padStart(3)}  ${u.fmt(m.reqPerSec).padStart(6)} req/s  sent ${fixed(p.datagramsSent, 3)} dgram ${fixed(p.bytesSent, 1)} B/req  peer recv ${fixed(p.datagramsReceivedPerPeer, 3)} dgram/req  peers CPU ${fixed(p.peersCpuUs, 2)} µs/req  local touches ${u.fmt(m.localTouches)}  non2xx ${m.non2xx} errors ${m.errors}`
      );
    }
  }
  // each touchAfter's figure: its round of median req/s
  const results = TOUCH_AFTER.map((t) => {
    const sorted = [...runs[t]].sort((a, b) => a.reqPerSec - b.reqPerSec);
    return { ...sorted[sorted.length >> 1], rounds: runs[t].map((m) => ({ reqPerSec: m.reqPerSec, datagramsSent: m.perRequest.datagramsSent, bytesSent: m.perRequest.bytesSent, peersCpuUs: m.perRequest.peersCpuUs })) };
  });
  const comparisons = results.slice(1).map((m) => comparison(results[0], m));
  const saved = console.log;
  console.log = log;
  try {
    u.printTable(
      `Touch traffic: GET /read (no change, so express-session touches), node of 3, ${CONNECTIONS} connections${RATE > 0 ? ` at ${u.fmt(RATE)} req/s` : ""} × ${SECONDS} s${WARMUP ? ` after ${WARMUP} s warm-up` : ""}, ${u.fmt(SESSIONS)} sessions of ≈${SESSION_BYTES} B; per request, net of an idle baseline (gross, heartbeats included, in parentheses)`,
      ["touchAfter", "req/s", "dgrams sent/req", "bytes sent/req", "dgrams recv/peer/req", "peers CPU µs/req", "peers net thr µs/req", "app net thr µs/req", "app CPU µs/req", "local touches/req", "idle dgrams sent/s"],
      results.map((m) => [
        `${m.touchAfter} s`,
        u.fmt(m.reqPerSec),
        `${fixed(m.perRequest.datagramsSent, 3)} (${fixed(m.perRequestGross.datagramsSent, 3)})`,
        fixed(m.perRequest.bytesSent, 1),
        fixed(m.perRequest.datagramsReceivedPerPeer, 3),
        `${fixed(m.perRequest.peersCpuUs, 2)} (${fixed(m.perRequestGross.peersCpuUs, 2)})`,
        fixed(m.perRequest.peersNetThreadCpuUs, 2),
        fixed(m.perRequest.appNetThreadCpuUs, 2),
        fixed(m.perRequest.appCpuUs, 1),
        fixed(m.localTouchesPerRequest, 3),
        fixed(m.idlePerSecond.datagramsSent, 1),
      ])
    );
    const login = results[0].perLogin;
    log(`a login (set of a ${login.sessionJsonBytes} B session) sent ${fixed(login.datagramsSent, 2)} datagrams, ${fixed(login.bytesSent, 0)} B (touchAfter ${results[0].touchAfter} run); a touch carries the sid and the cookie (${TOUCH_COOKIE_JSON_BYTES} B of JSON), not the session`);
    for (const c of comparisons) log(c.text);
    for (const m of results) if (!m.sessionsOk || m.non2xx || m.errors) log(`WARNING: touchAfter ${m.touchAfter}: ${m.non2xx} non-2xx, ${m.errors} errors, sessions after: app ${m.sessionsAfter}, peers ${m.peerSessionsAfter.join(", ")} (expected ${SESSIONS})`);
  } finally {
    console.log = saved;
  }
  return {
    method: `Express 5 + express-session (resave false, saveUninitialized false, rolling false, 1-day cookie) in a child process on this store, one node of 3 (two peer processes), all on 127.0.0.1; per touchAfter value a new cluster: ${u.fmt(SESSIONS)} sessions of ≈${SESSION_BYTES} B made first (POST /login), an idle baseline of ${SECONDS} s (no request), then autocannon in the bench process, ${CONNECTIONS} connections${RATE > 0 ? ` limited to ${u.fmt(RATE)} req/s` : ""}, ${SECONDS} s${WARMUP ? ` after a ${WARMUP} s warm-up` : ", no warm-up"}, GET /read with the next session's cookie in turn (reads the session, changes nothing: express-session calls store.touch); per 2xx response, net of the idle baseline's rate: datagrams and bytes the app's node sent (stats()), datagrams each peer received, both peers' CPU time (/proc schedstat, all threads, and their engines' network threads alone; peers run with --no-memory-reducer and are GC'd before the baseline); ${ROUNDS} round(s)${ROUNDS > 1 ? ", the round of median req/s" : ""}`,
    connections: CONNECTIONS,
    seconds: SECONDS,
    warmupSeconds: WARMUP,
    sessions: SESSIONS,
    rounds: ROUNDS,
    rateLimit: RATE || null,
    cookieMaxAgeMs: COOKIE_MAX_AGE_MS,
    touchCookieJsonBytes: TOUCH_COOKIE_JSON_BYTES,
    touchAfter: TOUCH_AFTER,
    results,
    comparisons,
  };
}

module.exports = { run };

if (require.main === module) {
  const report = require("./report");
  u.limitRun("bench/touch.js", 10);
  u.runPartAlone("touch", () => run(), report.withTouchSection);
}
