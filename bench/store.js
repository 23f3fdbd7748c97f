"use strict";
// Store-level benchmark: express-session's MemoryStore vs memorystore vs this store, same process,
// same session objects. Each op runs sequentially (the next op starts in the previous op's
// callback) over a fixed set of sids; every figure is the median ops/s of ROUNDS rounds.
//   npm run bench            (BENCH_SIDS=10000 BENCH_ROUNDS=5 by default)
const crypto = require("crypto");
const fs = require("fs");
const os = require("os");
const path = require("path");
const v8 = require("v8");
const vm = require("vm");
const session = require("express-session");

const SIDS = Number(process.env.BENCH_SIDS) || 10000;
const ROUNDS = Number(process.env.BENCH_ROUNDS) || 5;
const WARMUP_SIDS = Math.min(SIDS, 2000);
const SIZES = [1024, 16 * 1024];
const OPS = ["set", "get", "touch", "destroy"]; // set populates, destroy empties: a round leaves the store empty
const TARGET = 0.9; // get and set >= 0.9x MemoryStore
const RESULTS = path.join(__dirname, "results", "store.json");

// A full GC before each measurement, so one store's garbage is not collected on another's clock.
v8.setFlagsFromString("--expose-gc");
const gc = vm.runInNewContext("gc");

const STORES = {
  MemoryStore: () => new session.MemoryStore(),
  memorystore: () => new (require("memorystore")(session))({ checkPeriod: 86400000 }),
  multicast: () => new (require("..")(session))({ ipv4: "127.0.0.1", multicastTTL: 0, multicast: false }),
};

async function shutdown(store) {
  if (typeof store.stopInterval === "function") store.stopInterval(); // memorystore's prune timer
  if (typeof store.close === "function") await store.close(); // multicast: sockets and threads
}

// One op = one store call; `done` must run exactly once, from the store's callback.
const CALLS = {
  set: (store, sid, sess, done) => store.set(sid, sess, done),
  get: (store, sid, sess, done) => store.get(sid, (err, s) => done(err || (s ? null : new Error(`get ${sid}: miss`)))),
  touch: (store, sid, sess, done) => store.touch(sid, sess, done),
  destroy: (store, sid, sess, done) => store.destroy(sid, done),
};

// Runs `op` once per sid, each call started in the previous call's callback; resolves to ops/s.
function measure(store, op, sids, sess) {
  gc();
  const call = CALLS[op];
  return new Promise((resolve, reject) => {
    let i = 0;
    const start = process.hrtime.bigint();
    const next = (err) => {
      if (err) return reject(err);
      if (i < sids.length) return call(store, sids[i++], sess, next);
      const seconds = Number(process.hrtime.bigint() - start) / 1e9;
      resolve(sids.length / seconds);
    };
    next();
  });
}

// A realistic session: express-session's Cookie (with an `expires` Date) plus user data,
// grown with cart items until its JSON reaches `bytes`.
function makeSession(bytes) {
  const sess = {
    cookie: new session.Cookie({ maxAge: 86400000, httpOnly: true, sameSite: "lax" }),
    user: { id: 48213, name: "Ada Lovelace", email: "ada@example.com", roles: ["user", "editor"], locale: "en-GB" },
    csrfSecret: crypto.randomBytes(18).toString("base64url"),
    returnTo: "/account/orders?page=2",
    flash: { info: ["Welcome back!"] },
    cart: [],
  };
  for (let i = 0; JSON.stringify(sess).length < bytes; i++) {
    sess.cart.push({ sku: `SKU-${100000 + i}`, name: `Product #${i}`, qty: 1 + (i % 3), price: 9.99 + i, addedAt: 1700000000000 + i * 60000 });
  }
  return sess;
}

const makeSids = (n) => Array.from({ length: n }, () => crypto.randomBytes(24).toString("base64url")); // like uid-safe(24)
const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const fmt = (n) => Math.round(n).toLocaleString("en-US");
const kb = (bytes) => `${Math.round(bytes / 1024)} KB`;

// One round = set, get, touch, destroy over all sids, on every store, in a rotated store order.
async function round(stores, names, r, sids, sess, samples) {
  for (let k = 0; k < names.length; k++) {
    const name = names[(k + r) % names.length];
    for (const op of OPS) {
      const opsPerSec = await measure(stores[name], op, sids, sess);
      if (samples) samples[op][name].push(Math.round(opsPerSec));
    }
  }
}

async function main() {
  const names = Object.keys(STORES);
  const stores = Object.fromEntries(names.map((name) => [name, STORES[name]()]));
  if (stores.multicast.ready) await stores.multicast.ready();
  const machine = { node: process.version, cpu: os.cpus()[0].model, cpus: os.cpus().length, platform: `${os.platform()} ${os.arch()}` };
  console.log(`Node ${machine.node} | ${machine.cpu} (${machine.cpus} CPUs) | ${machine.platform}`);
  console.log(`${SIDS.toLocaleString("en-US")} sids per op, median of ${ROUNDS} rounds, ops/s (sequential, callback to callback)`);
  console.log(`targets: get and set >= ${TARGET}x MemoryStore`);

  const sids = makeSids(SIDS);
  const results = [];
  try {
    for (const size of SIZES) {
      const sess = makeSession(size);
      const bytes = JSON.stringify(sess).length;
      const samples = Object.fromEntries(OPS.map((op) => [op, Object.fromEntries(names.map((n) => [n, []]))]));
      await round(stores, names, 0, sids.slice(0, WARMUP_SIDS), sess, null); // warm-up, not recorded
      for (let r = 0; r < ROUNDS; r++) await round(stores, names, r, sids, sess, samples);

      const ops = {};
      for (const op of OPS) {
        const row = Object.fromEntries(names.map((n) => [n, Math.round(median(samples[op][n]))]));
        ops[op] = { ...row, ratio: Number((row.multicast / row.MemoryStore).toFixed(2)), samples: samples[op] };
      }
      results.push({ size: kb(bytes), bytes, ops });
      printTable(`session ≈${kb(bytes)} (${bytes.toLocaleString("en-US")} bytes of JSON)`, names, ops);
    }
  } finally {
    await Promise.all(names.map((n) => shutdown(stores[n])));
  }

  const verdict = results.flatMap(({ size, ops }) =>
    ["get", "set"].map((op) => `${op} ${size}: ${ops[op].ratio.toFixed(2)}x ${ops[op].ratio >= TARGET ? "ok" : "MISSED"}`)
  );
  console.log(`\ntargets (>= ${TARGET}x MemoryStore): ${verdict.join(", ")}`);

  fs.mkdirSync(path.dirname(RESULTS), { recursive: true });
  const report = { date: new Date().toISOString(), machine, sids: SIDS, rounds: ROUNDS, unit: "ops/s (median)", target: { ops: ["get", "set"], minRatioToMemoryStore: TARGET }, results };
  fs.writeFileSync(RESULTS, JSON.stringify(report, null, 2) + "\n");
  console.log(`written ${path.relative(process.cwd(), RESULTS)}`);
}

function printTable(title, names, ops) {
  const header = ["op", ...names, "ratio (multicast / MemoryStore)"];
  const rows = OPS.map((op) => [op, ...names.map((n) => fmt(ops[op][n])), ops[op].ratio.toFixed(2)]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  const line = (cells) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(" | ");
  console.log(`\n${title}`);
  console.log(line(header));
  console.log(widths.map((w) => "-".repeat(w)).join("-|-"));
  rows.forEach((row) => console.log(line(row)));
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
