"use strict";
// What a get costs for a sid that exists nowhere (docs/how-it-works.md "Reading a session that has not arrived
// yet"), next to a hit. This process's store is one node of 3 on loopback (the two others are
// bench/cluster-node.js children; ipv4 127.0.0.1, multicastTTL 0), ≈1 KB sessions. Each get
// starts in the previous one's callback:
//   hit:               a sid this node holds;
//   unknown, asked:    a sid no node holds, missTimeout at its default: a query to both peers
//                      and their two answers. QUERY_BURST gets in a row after a pause that
//                      refills the rate limit's bucket, so every one of them asks;
//   unknown, limited:  the same right after, the bucket empty: answered null without asking;
//   unknown, off:      the same with missTimeout 0 (another cluster): null from the local table.
// Per get: µs (median of the rounds; for asked gets also p50/p99 of single gets), and the ratio
// to a hit of the same cluster.
//   node bench/miss.js    BENCH_MISS_ROUNDS=5 BENCH_MISS_GETS=20000
const v8 = require("v8");
const vm = require("vm");
const session = require("express-session");
const u = require("./util");

const ROUNDS = Number(process.env.BENCH_MISS_ROUNDS) || 5;
const GETS = Number(process.env.BENCH_MISS_GETS) || 20000;
const QUERY_BURST = 100; // src/core/miss.rs
const REFILL_MS = 1100; // the bucket refills 100 tokens a second
const SESSIONS = 1000;

v8.setFlagsFromString("--expose-gc");
const gc = vm.runInNewContext("gc");
const quietLogger = { trace() {}, debug() {}, info() {}, warn() {}, error: (m) => console.error(m) };
const now = process.hrtime.bigint;

async function startCluster(missTimeout) {
  const MulticastStore = require("..")(session);
  const options = { ...u.clusterOptions(), missTimeout };
  const store = new MulticastStore({ ...options, logger: quietLogger });
  await store.ready();
  const peers = [u.spawnNode(`miss-${missTimeout}-peer1`), u.spawnNode(`miss-${missTimeout}-peer2`)];
  for (const peer of peers) await peer.call("start", options);
  const deadline = Date.now() + 10000;
  while (store.members().filter((m) => m.state === "alive").length < 3) {
    if (Date.now() > deadline) throw new Error(`the store sees ${store.members().length} members, not 3 alive`);
    await u.sleep(50);
  }
  const sids = u.makeSids(SESSIONS);
  const sess = u.makeSession(1024);
  for (const sid of sids) await store.set(sid, sess);
  return { store, peers, sids };
}

async function stopCluster({ store, peers }) {
  await store.close();
  await Promise.all(peers.map(u.leave));
}

/** Gets `sids` one after the other; resolves with the ns each took (call to callback). */
function gets(store, sids, expectFound) {
  gc();
  const took = new Float64Array(sids.length);
  return new Promise((resolve, reject) => {
    let i = 0;
    let started = now();
    const next = () => {
      started = now();
      store.get(sids[i], done);
    };
    const done = (err, found) => {
      took[i] = Number(now() - started);
      if (err) return reject(err);
      if (Boolean(found) !== expectFound) return reject(new Error(`get ${sids[i]}: ${found ? "found" : "missed"}`));
      if (++i === sids.length) return resolve(took);
      next();
    };
    next();
  });
}

const sum = (xs) => xs.reduce((a, b) => a + b, 0);
const usPerGet = (took) => u.round2(sum(took) / took.length / 1000);
const cycle = (sids, n) => Array.from({ length: n }, (_, i) => sids[i % sids.length]);
const missStats = (store) => {
  const s = store.stats();
  return { queries: s.missQueries, recovered: s.missesRecovered, notFound: s.missesNotFound, timeouts: s.missTimeouts, limited: s.missesRateLimited };
};

async function measureAsking() {
  const cluster = await startCluster(undefined); // the default missTimeout
  const { store, sids } = cluster;
  try {
    await gets(store, cycle(sids, GETS), true); // warm-up
    const hit = [];
    const asked = [];
    const askedSingles = [];
    const limited = [];
    for (let r = 0; r < ROUNDS; r++) {
      hit.push(usPerGet(await gets(store, cycle(sids, GETS), true)));
      await u.sleep(REFILL_MS);
      const before = missStats(store);
      const took = await gets(store, u.makeSids(QUERY_BURST), false);
      const after = missStats(store);
      if (after.queries - before.queries !== QUERY_BURST) throw new Error(`asked ${after.queries - before.queries} of ${QUERY_BURST} gets`);
      asked.push(usPerGet(took));
      askedSingles.push(...Array.from(took, (ns) => ns / 1000));
      limited.push(usPerGet(await gets(store, u.makeSids(GETS), false)));
    }
    return { hit, asked, askedSingles: u.percentiles(askedSingles), limited, stats: missStats(store) };
  } finally {
    await stopCluster(cluster);
  }
}

async function measureOff() {
  const cluster = await startCluster(0);
  const { store, sids } = cluster;
  try {
    await gets(store, cycle(sids, GETS), true);
    const hit = [];
    const off = [];
    for (let r = 0; r < ROUNDS; r++) {
      hit.push(usPerGet(await gets(store, cycle(sids, GETS), true)));
      off.push(usPerGet(await gets(store, u.makeSids(GETS), false)));
    }
    return { hit, off, stats: missStats(store) };
  } finally {
    await stopCluster(cluster);
  }
}

async function run({ log = console.log } = {}) {
  const asking = await measureAsking();
  const off = await measureOff();
  const hitOn = u.median(asking.hit);
  const hitOff = u.median(off.hit);
  const rows = [
    ["hit (missTimeout 20)", hitOn, hitOn],
    ["unknown, asked (2 peers answer)", u.median(asking.asked), hitOn],
    ["unknown, over the rate limit", u.median(asking.limited), hitOn],
    ["hit (missTimeout 0)", hitOff, hitOff],
    ["unknown, missTimeout 0", u.median(off.off), hitOff],
  ].map(([what, us, hit]) => ({ what, usPerGet: us, toHit: u.ratio(us, hit) }));
  u.printTable(
    `get, node of 3 on loopback, ≈1 KB sessions, sequential, median of ${ROUNDS} rounds (asked: ${QUERY_BURST} gets a round)`,
    ["get", "µs per get", "× a hit"],
    rows.map((r) => [r.what, r.usPerGet.toFixed(2), u.fmtRatio(r.toHit)])
  );
  const s = asking.askedSingles;
  log(`asked gets, one by one: p50 ${s.p50} µs, p90 ${s.p90} µs, p99 ${s.p99} µs, max ${s.max} µs`);
  log(`miss stats of the asking node: ${JSON.stringify(asking.stats)}`);
  return { rounds: ROUNDS, gets: GETS, queryBurst: QUERY_BURST, rows, askedSingles: s, samples: { asking, off } };
}

module.exports = { run };

if (require.main === module) {
  u.limitRun("miss", 10);
  const machine = u.machine();
  console.log(`Node ${machine.node} | ${machine.cpus} × ${machine.cpu} | engine ${u.addonHash()} | load ${require("os").loadavg()[0].toFixed(2)}`);
  run()
    .then((result) => {
      console.log(`wrote ${u.writeJSON("miss.json", { machine, engine: u.addonHash(), ...result })}`);
      process.exit(0);
    })
    .catch((err) => {
      console.error(err);
      process.exit(1);
    });
}
