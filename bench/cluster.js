"use strict";
// Cluster replication benchmark: stores in separate Node processes (bench/cluster-node.js), ≈1 KB
// sessions shaped like express-session's (a real Cookie). This store runs on loopback only (ipv4
// 127.0.0.1, multicastTTL 0, a cluster name and a random port of its own); connect-redis, the
// comparison, is the same two processes sharing the bench's redis-server on 127.0.0.1. Each
// scenario uses new processes.
//   1. latency: A writes one session at a time; B polls store.get for it (a loop that yields
//      through setImmediate); latency = set() returned on A → get() returned it on B, both read
//      with process.hrtime.bigint() (CLOCK_MONOTONIC, one clock for every process of the host).
//      Also reported from set() *called* on A, the figure compared with connect-redis (whose
//      set() returns before the command is even sent): on 2 cores, A's own engine thread often
//      preempts A's JS thread inside set(), so "returned" can come after B already sees the
//      write (< 0). The next write is relayed over IPC once B has seen the previous one: IPC time
//      is outside the measured interval.
//   2. throughput: A writes N distinct sessions back to back; B polls (every 2 ms) until it holds
//      all of them; writes/s = N / (first set on A → all visible on B). Then both hash every
//      session: same digest and none missing, and their stats() show what was repaired.
//   3. state transfer: a new process joins A (holding N sessions): new store → ready() resolved,
//      and its length() right after ready must equal A's. Compared with reading the same N
//      sessions from connect-redis with all().
//   node bench/cluster.js  (alone; `npm run bench` runs it as part of bench/index.js)
//   BENCH_LATENCY_WRITES=10000 BENCH_SESSIONS=100000 BENCH_TRANSFERS=3
const crypto = require("crypto");
const fs = require("fs");
const u = require("./util");
const { runAlone } = require("./redis");

const LATENCY_WRITES = Number(process.env.BENCH_LATENCY_WRITES) || 10000;
const LATENCY_WARMUP = 1000;
const SESSIONS = Number(process.env.BENCH_SESSIONS) || 100000;
const TRANSFERS = Number(process.env.BENCH_TRANSFERS) || 3;
const BYTES = 1024;
const BATCH = 1000; // throughput: sets per event-loop turn on A
const NODE_ARGS = { execArgv: ["--expose-gc"] };

const newPrefix = () => crypto.randomBytes(18).toString("base64url");

// kind "multicast": a cluster of two; kind "redis": two processes with connect-redis on one server.
async function startPair(kind, redisPort) {
  const options = kind === "redis" ? { port: redisPort, prefix: `bench-cluster-${newPrefix()}:` } : u.clusterOptions();
  const a = u.spawnNode("A", undefined, NODE_ARGS);
  await a.call("start", options, kind);
  const b = u.spawnNode("B", undefined, NODE_ARGS);
  await b.call("start", options, kind);
  return { options, a, b };
}

// ---- 1. latency
async function latency(kind, redisPort) {
  const { a, b } = await startPair(kind, redisPort);
  try {
    const prefix = newPrefix();
    const count = LATENCY_WARMUP + LATENCY_WRITES;
    const bytes = await a.call("latencyWriter", prefix, count, BYTES);
    b.child.on("message", (msg) => msg.seen !== undefined && msg.seen + 1 < count && a.child.connected && a.child.send({ write: msg.seen + 1 }));
    const seen = await b.call("watch", prefix, count, 5000);
    const { called, returned } = await a.call("latencyTimes");
    const range = [...Array(LATENCY_WRITES).keys()].map((k) => k + LATENCY_WARMUP);
    const fromReturn = u.percentiles(range.map((i) => Number(seen[i] - returned[i]) / 1000));
    const fromCall = u.percentiles(range.map((i) => Number(seen[i] - called[i]) / 1000));
    const setCall = u.percentiles(range.map((i) => Number(returned[i] - called[i]) / 1000));
    return { writes: LATENCY_WRITES, warmup: LATENCY_WARMUP, bytes, unit: "µs", ...fromReturn, fromCall, setCall };
  } finally {
    await u.stop(a, b);
  }
}

// ---- 2. throughput, then 3. state transfer from the same A (multicast) / all() (redis)
async function throughputAndTransfer(kind, redisPort) {
  const { options, a, b } = await startPair(kind, redisPort);
  const joiners = [];
  try {
    const prefix = newPrefix();
    const snmpBefore = udpCounters();
    const memBefore = await b.call("memory");
    const arrived = b.call("awaitLength", prefix, SESSIONS, 2, 60000, kind === "redis");
    const { startNs, writtenNs } = await a.call("burst", prefix, SESSIONS, BYTES, BATCH);
    const { doneNs } = await arrived;
    const snmpAfter = udpCounters();
    const memAfter = await b.call("memory");
    const seconds = Number(doneNs - startNs) / 1e9;
    const throughput = {
      sessions: SESSIONS,
      batch: BATCH,
      seconds: u.round3(seconds),
      writesPerSec: Math.round(SESSIONS / seconds),
      writerOnlyPerSec: Math.round(SESSIONS / (Number(writtenNs - startNs) / 1e9)),
      lagMs: u.round1(Number(doneNs - writtenNs) / 1e6), // B complete after A's last set returned
      rssDeltaOnB: memAfter.rss - memBefore.rss,
    };
    if (kind === "redis") {
      throughput.lengthB = await b.call("length");
      throughput.missingOnB = SESSIONS - throughput.lengthB;
      const all = await b.call("readAll");
      return { throughput, readAll: { ms: u.round1(all.ms), count: all.count } };
    }
    const [da, db] = await Promise.all([a.call("digest", prefix, SESSIONS), b.call("digest", prefix, SESSIONS)]);
    const [statsA, statsB] = await Promise.all([a.call("stats"), b.call("stats")]);
    Object.assign(throughput, {
      lengthA: da.length,
      lengthB: db.length,
      missingOnB: db.missing,
      digestsEqual: da.digest === db.digest,
      stats: { A: pickStats(statsA), B: pickStats(statsB) },
      kernelUdp: snmpBefore && snmpAfter && Object.fromEntries(Object.keys(snmpAfter).map((k) => [k, snmpAfter[k] - snmpBefore[k]])),
    });

    await u.leave(b); // A alone holds the sessions: it is the donor
    const transfers = [];
    for (let r = 0; r < TRANSFERS; r++) {
      const c = u.spawnNode(`joiner${r + 1}`, undefined, NODE_ARGS);
      joiners.push(c);
      const joined = await c.call("start", options);
      const lengthA = await a.call("length");
      const ms = Number(joined.readyNs - joined.startNs) / 1e6;
      const log = joined.logs.find((l) => /state transfer from/.test(l)) || "";
      const m = /: (\d+) entries, (\d+) bytes in (\d+) ms/.exec(log);
      transfers.push({
        readyMs: u.round1(ms),
        sessionsPerSec: Math.round(joined.length / (ms / 1000)),
        mbPerSec: u.round1(joined.stats.sessionBytes / 1e6 / (ms / 1000)),
        length: joined.length,
        lengthA,
        sessionBytes: joined.stats.sessionBytes,
        engineTransfer: m ? { entries: Number(m[1]), bytes: Number(m[2]), ms: Number(m[3]) } : null,
      });
      await u.leave(c);
    }
    return { throughput, transfers };
  } finally {
    await u.stop(a, b, ...joiners);
  }
}

const pickStats = (s) => {
  const keys = ["datagramsSent", "datagramsReceived", "retransmissions", "naksSent", "naksReceived", "duplicates", "antiEntropySyncs", "syncEntriesReceived", "dropped"];
  return Object.fromEntries(keys.map((k) => [k, s[k]]));
};

// Kernel-wide UDP counters (Linux): receive-buffer overflows show datagrams the kernel dropped.
function udpCounters() {
  try {
    const lines = fs.readFileSync("/proc/net/snmp", "utf8").split("\n").filter((l) => l.startsWith("Udp:"));
    const [names, values] = lines.map((l) => l.split(/\s+/).slice(1));
    const all = Object.fromEntries(names.map((n, i) => [n, Number(values[i])]));
    return { RcvbufErrors: all.RcvbufErrors, SndbufErrors: all.SndbufErrors, InErrors: all.InErrors };
  } catch {
    return null;
  }
}

async function run({ redisPort, log = console.log } = {}) {
  const lat = await latency("multicast");
  const redisLat = await latency("redis", redisPort);
  const { throughput: tp, transfers } = await throughputAndTransfer("multicast");
  const { throughput: redisTp, readAll } = await throughputAndTransfer("redis", redisPort);
  const transferMs = u.median(transfers.map((t) => t.readyMs));
  const mid = transfers.find((t) => t.readyMs === transferMs);
  const transferOk = transfers.every((t) => t.length === t.lengthA);
  const lossless = tp.missingOnB === 0 && tp.digestsEqual && tp.lengthB === SESSIONS;

  const ratios = {
    // < 1 is better for times: multicast / connect-redis
    latencyP50: u.ratio(lat.fromCall.p50, redisLat.fromCall.p50),
    latencyP99: u.ratio(lat.fromCall.p99, redisLat.fromCall.p99),
    writesPerSec: u.ratio(tp.writesPerSec, redisTp.writesPerSec),
    transferVsRedisAll: u.ratio(transferMs, readAll.ms),
  };
  const rows = [
    ["latency p50, set() called on A → get() on B", `${lat.fromCall.p50} µs`, `${redisLat.fromCall.p50} µs`, u.fmtRatio(ratios.latencyP50)],
    ["latency p99, set() called on A → get() on B", `${lat.fromCall.p99} µs`, `${redisLat.fromCall.p99} µs`, u.fmtRatio(ratios.latencyP99)],
    ["  multicast from set() returned: p50 / p99", `${lat.p50} / ${lat.p99} µs`, "", ""],
    [`replicated writes/s (${u.fmt(SESSIONS)}, A → all visible on B)`, `${u.fmt(tp.writesPerSec)}${lossless ? "" : " (LOSSY)"}`, u.fmt(redisTp.writesPerSec), u.fmtRatio(ratios.writesPerSec)],
    [`state transfer of ${u.fmt(mid.length)} sessions (median of ${transfers.length}) / redis all()`, `${u.fmt(transferMs)} ms${transferOk ? "" : " (INCOMPLETE)"}`, `${u.fmt(readAll.ms)} ms`, u.fmtRatio(ratios.transferVsRedisAll)],
  ];
  const saved = console.log;
  console.log = log;
  try {
    u.printTable("cluster (≈1 KB sessions, processes on loopback)", ["measure", "multicast", "connect-redis", "ratio"], rows);
  } finally {
    console.log = saved;
  }
  log(`multicast throughput: ${u.fmt(SESSIONS)} in ${tp.seconds} s; B length ${u.fmt(tp.lengthB)}, missing ${tp.missingOnB}, digests ${tp.digestsEqual ? "equal" : "DIFFER"}`);
  for (const [n, s] of Object.entries(tp.stats)) {
    log(`  ${n}: sent ${u.fmt(s.datagramsSent)} rcvd ${u.fmt(s.datagramsReceived)} retransmissions ${s.retransmissions} naksSent ${s.naksSent} duplicates ${s.duplicates} antiEntropy ${s.antiEntropySyncs} dropped ${JSON.stringify(s.dropped)}`);
  }
  if (tp.kernelUdp) log(`  kernel UDP (whole host, during the run): ${JSON.stringify(tp.kernelUdp)}`);
  log(`state transfer: ${transfers.map((t) => `${u.fmt(t.readyMs)} ms (length ${u.fmt(t.length)} / A ${u.fmt(t.lengthA)})`).join(", ")}`);

  return {
    method: {
      latency: "B polls store.get for the next sid in a loop yielding through setImmediate; latency = hrtime when set() is called on A (multicast also: after set() returns) → hrtime when get() returns the session on B; next write relayed over IPC after B has seen the previous one",
      throughput: `A writes back to back (${BATCH} sets per event-loop turn); B polls every 2 ms (get of the last sid, then length(); connect-redis: the last sid only); writes/s from the first set on A to all ${SESSIONS} visible on B; multicast: digests of all sessions compared`,
      transfer: "a new process: new store → ready() resolved; length() right after ready compared with A's; compared with connect-redis all() of the same number of sessions (the time to read the whole state from redis)",
    },
    multicast: { latency: lat, throughput: tp, transfer: { medianMs: transferMs, complete: transferOk, runs: transfers } },
    redis: { latency: redisLat, throughput: redisTp, readAll },
    lossless,
    ratios,
  };
}

module.exports = { run, SESSIONS };

if (require.main === module) {
  setTimeout(() => {
    console.error("cluster bench: no result after 180 s, giving up");
    process.exit(1);
  }, 180000).unref();
  runAlone("cluster.json", (redis) => run({ redisPort: redis.port }));
}
