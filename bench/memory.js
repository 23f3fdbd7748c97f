"use strict";
// Memory per session: a fresh process (bench/cluster-node.js, --expose-gc) holds N distinct
// ≈1 KB sessions written through its store; resident memory per session = (RSS after − RSS
// before, both after full GCs) / N, compared with the raw session bytes (the JSON of each
// session, as express-session hands it over; the 32-byte sids are not counted in "raw").
// This store is a single node (`multicast: false`); MemoryStore in the same kind of process is
// the in-process reference; for connect-redis the figure is the redis-server process's RSS
// delta (and its own used_memory delta), the sessions being written by a client process.
//   node bench/memory.js   (alone; `npm run bench` runs it as part of bench/index.js)
//   BENCH_MEMORY_COUNTS=100000,1000000
const crypto = require("crypto");
const u = require("./util");
const { runAlone } = require("./redis");

const COUNTS = (process.env.BENCH_MEMORY_COUNTS || "100000,1000000").split(",").map(Number);
const BYTES = 1024;
const BATCH = 1000;
const KINDS = { multicast: "multicast (1 node)", MemoryStore: "MemoryStore", redis: "connect-redis (redis-server)" };
const NODE_ARGS = { execArgv: ["--expose-gc", "--max-old-space-size=8192"] };

async function measure(kind, count, redis) {
  const node = u.spawnNode(`memory-${kind}`, undefined, NODE_ARGS);
  try {
    const prefix = crypto.randomBytes(18).toString("base64url");
    if (kind === "redis") await redis.flush();
    await node.call("start", kind === "redis" ? { port: redis.port, prefix: "sess:" } : { ipv4: "127.0.0.1", multicastTTL: 0, multicast: false }, kind);
    const before = kind === "redis" ? { rss: redis.rss(), used: Number((await redis.info("memory")).used_memory) } : await node.call("memory");
    const t0 = Date.now();
    const filled = await node.call("fill", prefix, count, BYTES, BATCH);
    const fillMs = Date.now() - t0;
    let after;
    if (kind === "redis") {
      after = { rss: redis.rss(), used: Number((await redis.info("memory")).used_memory) };
    } else {
      await u.sleep(200);
      after = await node.call("memory");
    }
    const length = await node.call("length"); // after the measurement: MemoryStore's parses every session
    const stats = kind === "multicast" ? await node.call("stats") : null;
    const rawPerSession = filled.jsonBytes / count;
    const rssPerSession = (after.rss - before.rss) / count;
    const result = {
      count,
      length,
      fillMs,
      rawBytesPerSession: Math.round(rawPerSession),
      rssDeltaBytes: after.rss - before.rss,
      rssPerSession: Math.round(rssPerSession),
      ratioToRaw: u.round2(rssPerSession / rawPerSession),
    };
    if (kind === "redis") {
      result.usedMemoryPerSession = Math.round((after.used - before.used) / count);
      result.usedMemoryRatioToRaw = u.round2((after.used - before.used) / count / rawPerSession);
    } else {
      result.heapUsedPerSession = Math.round((after.heapUsed - before.heapUsed) / count);
      result.externalPerSession = Math.round((after.external + after.arrayBuffers - before.external - before.arrayBuffers) / count);
    }
    if (stats) result.engine = { sessions: stats.sessions, sessionBytes: stats.sessionBytes, entries: stats.entries };
    if (length !== count) throw new Error(`${kind}: ${length} sessions held, ${count} written`);
    return result;
  } finally {
    await u.stop(node);
    if (kind === "redis") await redis.flush();
  }
}

async function run({ redis, log = console.log } = {}) {
  const results = {};
  for (const count of COUNTS) {
    results[count] = {};
    for (const kind of Object.keys(KINDS)) {
      const r = await measure(kind, count, redis);
      results[count][kind] = r;
      log(`  ${u.fmt(count)} × ${KINDS[kind]}: ${u.fmt(r.rssPerSession)} B/session RSS (${r.ratioToRaw}× raw ${r.rawBytesPerSession} B)${r.usedMemoryPerSession ? `, used_memory ${u.fmt(r.usedMemoryPerSession)} B` : ""}, filled in ${u.fmt(r.fillMs)} ms`);
    }
    results[count].ratios = {
      toRaw: results[count].multicast.ratioToRaw,
      toMemoryStore: u.ratio(results[count].multicast.rssPerSession, results[count].MemoryStore.rssPerSession),
      toRedis: u.ratio(results[count].multicast.rssPerSession, results[count].redis.rssPerSession),
    };
  }
  const rows = [];
  for (const count of COUNTS) {
    const r = results[count];
    rows.push([
      u.fmt(count),
      `${u.fmt(r.multicast.rssPerSession)} B (${r.multicast.ratioToRaw}×)`,
      `${u.fmt(r.MemoryStore.rssPerSession)} B (${r.MemoryStore.ratioToRaw}×)`,
      `${u.fmt(r.redis.rssPerSession)} B (${r.redis.ratioToRaw}×)`,
      `${r.multicast.rawBytesPerSession} B`,
      u.fmtRatio(r.ratios.toMemoryStore),
      u.fmtRatio(r.ratios.toRedis),
    ]);
  }
  const saved = console.log;
  console.log = log;
  try {
    u.printTable("resident memory per session (RSS delta / sessions; × raw JSON bytes)", ["sessions", "multicast", "MemoryStore", "redis-server", "raw JSON", "multicast / MemoryStore", "multicast / redis"], rows);
  } finally {
    console.log = saved;
  }
  return {
    method: "fresh process per store and count; RSS (Linux VmRSS) after full GCs, before and after writing N distinct ≈1 KB sessions through the store, 1000 per event-loop turn; redis: redis-server's RSS and used_memory deltas; raw = the sessions' JSON bytes",
    stores: KINDS,
    counts: COUNTS,
    results,
  };
}

module.exports = { run, COUNTS };

if (require.main === module) {
  runAlone("memory.json", (redis) => run({ redis }));
}
