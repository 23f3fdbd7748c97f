"use strict";
// Store-level benchmark: the stores a user would pick, in this process, with the same session
// objects and sids: express-session's MemoryStore, memorystore, connect-redis (against the
// bench's own redis-server on 127.0.0.1), this store as a single node (`multicast: false`) and
// this store as one node of a 3-process cluster (the two other nodes are child processes on
// loopback that receive every write).
//   sequential:   each op starts in the previous op's callback;
//   64 in flight: 64 ops are started, and each callback starts the next one until all are done.
// One round = set, get, touch, destroy over all sids, for every store and both modes, stores in
// a rotated order; every figure is the median ops/s of ROUNDS rounds, after one warm-up round.
//   node bench/store.js     (alone; `npm run bench` runs it as part of bench/index.js)
//   BENCH_SIDS=10000 (1 KB; 16 KB uses a third of it) BENCH_ROUNDS=3
const session = require("express-session");
const v8 = require("v8");
const vm = require("vm");
const u = require("./util");
const { redisStore, runAlone } = require("./redis");

const SIDS = Number(process.env.BENCH_SIDS) || 10000;
const ROUNDS = Number(process.env.BENCH_ROUNDS) || 3;
const SIZES = [1024, 16 * 1024];
const OPS = ["set", "get", "touch", "destroy"]; // set populates, destroy empties: a round leaves the store empty
const MODES = { sequential: 1, inflight64: 64 };
const MODE_LABELS = { sequential: "sequential", inflight64: "64 in flight" };
const { STORE_LABELS } = u;

// A full GC before each measurement, so one store's garbage is not collected on another's clock.
v8.setFlagsFromString("--expose-gc");
const gc = vm.runInNewContext("gc");

const quietLogger = { logs: [], trace() {}, debug() {}, info(m) { this.logs.push(m); }, warn(m) { this.logs.push(m); }, error(m) { this.logs.push(m); } };

async function openStores(redisPort) {
  const MulticastStore = require("..")(session);
  const stores = {
    MemoryStore: new session.MemoryStore(),
    memorystore: new (require("memorystore")(session))({ checkPeriod: 86400000 }),
    redis: await redisStore(redisPort, `bench-store-${process.pid}:`),
    multicast: new MulticastStore({ ipv4: "127.0.0.1", multicastTTL: 0, multicast: false, logger: quietLogger }),
    // The first node of a cluster: multicast on, no member yet (it sends no writes: docs/how-it-works.md "A node alone").
    multicastAlone: new MulticastStore({ ...u.clusterOptions(), logger: quietLogger }),
  };
  // A 3-node cluster on loopback: this process's store and two peers in child processes.
  const options = u.clusterOptions();
  const peers = [u.spawnNode("peer1"), u.spawnNode("peer2")];
  stores.multicastCluster = new MulticastStore({ ...options, logger: quietLogger });
  await stores.multicastCluster.ready();
  for (const peer of peers) await peer.call("start", options);
  const deadline = Date.now() + 10000;
  while (stores.multicastCluster.members().length < 3) {
    if (Date.now() > deadline) throw new Error(`the cluster node sees ${stores.multicastCluster.members().length} members, not 3`);
    await u.sleep(50);
  }
  await stores.multicast.ready();
  await stores.multicastAlone.ready();
  return { stores, peers };
}

async function closeStores({ stores, peers }) {
  for (const store of Object.values(stores)) {
    if (typeof store.stopInterval === "function") store.stopInterval(); // memorystore's prune timer
    if (typeof store.close === "function") await store.close();
  }
  await Promise.all(peers.map(u.leave));
}

// One op = one store call; `done` must run exactly once, from the store's callback.
const CALLS = {
  set: (store, sid, sess, done) => store.set(sid, sess, done),
  get: (store, sid, sess, done) => store.get(sid, (err, s) => done(err || (s ? null : new Error(`get ${sid}: miss`)))),
  touch: (store, sid, sess, done) => store.touch(sid, sess, done),
  destroy: (store, sid, sess, done) => store.destroy(sid, done),
};

// Runs `op` once per sid with `inflight` calls outstanding at any time (1 = sequential: each
// call started in the previous call's callback); resolves to ops/s.
function measure(store, op, sids, sess, inflight) {
  gc();
  const call = CALLS[op];
  return new Promise((resolve, reject) => {
    const n = sids.length;
    let issued = 0;
    let done = 0;
    let failed = false;
    const start = process.hrtime.bigint();
    const onDone = (err) => {
      if (failed) return;
      if (err) {
        failed = true;
        return reject(err);
      }
      if (++done === n) return resolve(n / (Number(process.hrtime.bigint() - start) / 1e9));
      if (issued < n) call(store, sids[issued++], sess, onDone);
    };
    for (let k = 0; k < Math.min(inflight, n); k++) call(store, sids[issued++], sess, onDone);
  });
}

// CPU time the node-of-3 cluster spends per set, summed over rounds: what replication costs
// besides the JS work every store does (on this machine, all three nodes share its CPUs).
const CPU_PARTS = ["js", "net", "peers"];
function cpuSnapshot(pids) {
  const [self, ...peers] = pids.map(u.cpuNs);
  return { js: self.js, net: self.net, peers: peers.reduce((sum, p) => sum + p.js + p.net + p.other, 0) };
}

async function round(stores, names, r, sids, sess, samples, cpu) {
  for (let k = 0; k < names.length; k++) {
    const name = names[(k + r) % names.length];
    for (const mode of Object.keys(MODES)) {
      for (const op of OPS) {
        const metered = cpu && name === "multicastCluster" && op === "set";
        if (metered) await u.sleep(100); // the previous op's replication is over
        const before = metered && cpuSnapshot(cpu.pids);
        const opsPerSec = await measure(stores[name], op, sids, sess, MODES[mode]);
        if (metered) {
          await u.sleep(100); // the peers finish applying the last writes
          const after = cpuSnapshot(cpu.pids);
          for (const part of CPU_PARTS) cpu.ns[mode][part] += after[part] - before[part];
          cpu.sets[mode] += sids.length;
        }
        if (samples) samples[mode][op][name].push(Math.round(opsPerSec));
      }
    }
  }
}

async function run({ redisPort, log = console.log } = {}) {
  const opened = await openStores(redisPort);
  const { stores, peers } = opened;
  const names = Object.keys(STORE_LABELS);
  const sizes = [];
  try {
    for (const size of SIZES) {
      const count = size > 4096 ? Math.round(SIDS / 3) : SIDS;
      const sids = u.makeSids(count);
      const sess = u.makeSession(size);
      const bytes = JSON.stringify(sess).length;
      const samples = Object.fromEntries(Object.keys(MODES).map((m) => [m, Object.fromEntries(OPS.map((op) => [op, Object.fromEntries(names.map((n) => [n, []]))]))]));
      await round(stores, names, 0, sids.slice(0, Math.min(count, 2000)), sess, null); // warm-up, not recorded
      const cpu = {
        pids: [process.pid, ...peers.map((p) => p.child.pid)],
        ns: Object.fromEntries(Object.keys(MODES).map((m) => [m, { js: 0, net: 0, peers: 0 }])),
        sets: Object.fromEntries(Object.keys(MODES).map((m) => [m, 0])),
      };
      for (let r = 0; r < ROUNDS; r++) await round(stores, names, r, sids, sess, samples, cpu);
      const modes = {};
      for (const mode of Object.keys(MODES)) {
        modes[mode] = {};
        for (const op of OPS) {
          const opsPerSec = Object.fromEntries(names.map((n) => [n, u.median(samples[mode][op][n])]));
          const ratios = {};
          for (const n of ["multicast", "multicastAlone", "multicastCluster"]) {
            ratios[n] = { toMemoryStore: u.ratio(opsPerSec[n], opsPerSec.MemoryStore), toRedis: u.ratio(opsPerSec[n], opsPerSec.redis) };
          }
          modes[mode][op] = { opsPerSec, ratios, samples: samples[mode][op] };
        }
        // µs of CPU per set on the node of 3: its JS thread, its network thread, both peers together
        modes[mode].set.clusterCpuUsPerSet = Object.fromEntries(CPU_PARTS.map((part) => [part, u.round2(cpu.ns[mode][part] / cpu.sets[mode] / 1000)]));
      }
      sizes.push({ size: u.kb(bytes), bytes, sids: count, modes });
      for (const mode of Object.keys(MODES)) printSize(log, sizes[sizes.length - 1], mode, names);
    }
    const peerStats = await Promise.all(peers.map((p) => p.call("stats")));
    const clusterStats = { node: pickStats(stores.multicastCluster.stats()), peers: peerStats.map(pickStats) };
    log(`cluster node: ${JSON.stringify(clusterStats.node)}; peers: ${clusterStats.peers.map((s) => JSON.stringify(s)).join(" ")}`);
    return { sidsPerOp: SIDS, rounds: ROUNDS, unit: "ops/s (median of rounds)", stores: STORE_LABELS, modes: MODE_LABELS, sizes, clusterStats };
  } finally {
    await closeStores(opened);
  }
}

function pickStats(s) {
  const keys = ["sessions", "datagramsSent", "datagramsReceived", "retransmissions", "naksSent", "naksReceived", "duplicates", "antiEntropySyncs", "dropped"];
  return Object.fromEntries(keys.filter((k) => k in s).map((k) => [k, s[k]]));
}

function printSize(log, { size, bytes, sids, modes }, mode, names) {
  const header = ["op", ...names.map((n) => STORE_LABELS[n]), "1 node / MemoryStore", "1 node / redis", "alone / MemoryStore", "node of 3 / MemoryStore", "node of 3 / redis"];
  const rows = OPS.map((op) => {
    const { opsPerSec, ratios } = modes[mode][op];
    return [op, ...names.map((n) => u.fmt(opsPerSec[n])), u.fmtRatio(ratios.multicast.toMemoryStore), u.fmtRatio(ratios.multicast.toRedis), u.fmtRatio(ratios.multicastAlone.toMemoryStore), u.fmtRatio(ratios.multicastCluster.toMemoryStore), u.fmtRatio(ratios.multicastCluster.toRedis)];
  });
  const saved = console.log;
  console.log = log;
  try {
    u.printTable(`session ≈${size} (${bytes.toLocaleString("en-US")} bytes of JSON), ${MODE_LABELS[mode]}, ${sids.toLocaleString("en-US")} sids, ops/s`, header, rows);
    const c = modes[mode].set.clusterCpuUsPerSet;
    console.log(`CPU per set on the node of 3: JS thread ${c.js} µs, network thread ${c.net} µs, the two peers ${c.peers} µs`);
  } finally {
    console.log = saved;
  }
}

module.exports = { run, OPS, MODES, MODE_LABELS, STORE_LABELS };

if (require.main === module) {
  runAlone("store.json", (redis) => run({ redisPort: redis.port }));
}
