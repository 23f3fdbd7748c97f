"use strict";
// Shared pieces of the benchmarks: session shapes, the machine, child processes driven over IPC
// (every one tracked and SIGKILLed at the end, on error and on exit), loopback-only cluster
// options, percentiles and formatting.
const crypto = require("crypto");
const fs = require("fs");
const os = require("os");
const path = require("path");
const { fork } = require("child_process");
const { Worker } = require("worker_threads");
const session = require("express-session");

const ADDON = path.join(__dirname, "..", "express_session_multicast.node");
const RESULTS_DIR = path.join(__dirname, "results");

// A realistic session: express-session's Cookie (with an `expires` Date) plus user data, grown
// with cart items until its JSON reaches `bytes`.
function makeSession(bytes, id = 48213) {
  const sess = {
    cookie: new session.Cookie({ maxAge: 86400000, httpOnly: true, sameSite: "lax" }),
    user: { id, name: "Ada Lovelace", email: "ada@example.com", roles: ["user", "editor"], locale: "en-GB" },
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

/** The stores every bench compares, and how tables name them. */
const STORE_LABELS = {
  MemoryStore: "MemoryStore",
  memorystore: "memorystore",
  redis: "connect-redis",
  multicast: "multicast (1 node)",
  multicastAlone: "multicast (alone, multicast on)",
  multicastCluster: "multicast (node of 3)",
};

const makeSids = (n) => Array.from({ length: n }, () => crypto.randomBytes(24).toString("base64url")); // like uid-safe(24)

function machine() {
  const cpus = os.cpus();
  return {
    node: process.version,
    cpu: cpus[0].model,
    cpus: cpus.length,
    memoryGB: Math.round(os.totalmem() / 2 ** 30),
    platform: `${os.platform()} ${os.release()} ${os.arch()}`,
  };
}
const addonHash = () => crypto.createHash("sha256").update(fs.readFileSync(ADDON)).digest("hex").slice(0, 12);

// Loopback only, a cluster of our own: its own name and a random port.
const clusterOptions = () => ({
  ipv4: "127.0.0.1",
  multicastTTL: 0,
  cluster: `bench-${process.pid}-${crypto.randomBytes(4).toString("hex")}`,
  multicastPort: 20000 + crypto.randomInt(40000),
});

// ---- child processes
const children = new Set();
function killAll() {
  for (const child of children) child.kill("SIGKILL");
}
process.on("exit", killAll);

// Forks `script` and returns { name, child, call(cmd, ...args) }; the script answers
// { id, cmd, args } with { id, result } | { id, error } (serialization "advanced": BigInts travel).
function spawnNode(name, script = path.join(__dirname, "cluster-node.js"), { execArgv = [] } = {}) {
  const child = fork(script, [], { serialization: "advanced", stdio: ["ignore", "inherit", "inherit", "ipc"], execArgv });
  children.add(child);
  const pending = new Map();
  let nextId = 0;
  child.on("message", (msg) => {
    const call = msg && msg.id !== undefined && pending.get(msg.id);
    if (!call) return;
    pending.delete(msg.id);
    msg.error ? call.reject(new Error(`${name}: ${msg.error}`)) : call.resolve(msg.result);
  });
  child.on("exit", (code, signal) => {
    children.delete(child);
    for (const call of pending.values()) call.reject(new Error(`${name} exited (${signal || code})`));
    pending.clear();
  });
  const call = (cmd, ...args) =>
    new Promise((resolve, reject) => {
      const id = ++nextId;
      pending.set(id, { resolve, reject });
      child.send({ id, cmd, args }, (err) => err && pending.delete(id) && reject(err));
    });
  return { name, child, call };
}

// SIGKILL; resolves once the processes have exited.
function stop(...nodes) {
  return Promise.all(
    nodes.filter(Boolean).map(({ child }) => {
      if (child.exitCode !== null || child.signalCode !== null) return null;
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGKILL");
      return exited;
    })
  );
}
// Graceful leave first (so the others do not keep a dead member around), then stop.
/** Starts two peers (cluster-node.js, pushed to `peers` at once, for the caller's clean-up) in
 * `options`' cluster; resolves once `server`'s store (an app's process answering "stats") sees
 * all three nodes. */
async function startPeers(server, options, label, peers, spawnOptions) {
  for (const k of [1, 2]) {
    const peer = spawnNode(`${label}-peer${k}`, undefined, spawnOptions);
    peers.push(peer);
    await peer.call("start", options);
  }
  const deadline = Date.now() + 10000;
  while ((await server.call("stats")).members < 3) {
    if (Date.now() > deadline) throw new Error(`${label}: the app's store does not see 3 members`);
    await sleep(50);
  }
}

/** A bench run alone gives up after `minutes`, and a signal ends it (exit kills its children). */
function limitRun(label, minutes) {
  const guard = setTimeout(() => {
    console.error(`${label}: not done after ${minutes} minutes, giving up`);
    process.exit(1);
  }, minutes * 60 * 1000);
  guard.unref();
  for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => process.exit(130));
}

async function leave(node) {
  await node.call("close").catch(() => {});
  await stop(node);
}

// Serves `script`'s IPC protocol in a child: `commands` by name. Exits when the parent goes away.
function serve(commands) {
  process.on("message", async (msg) => {
    if (!msg || msg.id === undefined) return;
    try {
      const result = await commands[msg.cmd](...(msg.args || []));
      process.send({ id: msg.id, result });
    } catch (err) {
      process.send({ id: msg.id, error: String((err && err.stack) || err) });
    }
  });
  process.on("disconnect", () => process.exit(0));
}

// ---- Idle-gap schedules (bench/cluster.js, bench/floor/node_floor.js)
// metronome(): a worker thread sleeps in a futex (Atomics.wait takes fractional ms; it wakes
// ≈50–100 µs late, timer slack included) until each tick, then posts its index; this thread
// handles it from its event loop. So this thread never sleeps outside its event loop (a blocked
// event loop would hold back I/O callbacks, e.g. connect-redis's reply), and no thread spins.
function metronome(startNs, gapNs, count, onTick) {
  const source = `
    const { parentPort, workerData: { startNs, gapNs, count } } = require("worker_threads");
    const cell = new Int32Array(new SharedArrayBuffer(4));
    const now = process.hrtime.bigint;
    for (let i = 0; i < count; i++) {
      const t = startNs + BigInt(i) * gapNs;
      for (let ms = Number(t - now()) / 1e6; ms > 0; ms = Number(t - now()) / 1e6) Atomics.wait(cell, 0, 0, ms);
      parentPort.postMessage(i);
    }`;
  const worker = new Worker(source, { eval: true, workerData: { startNs, gapNs, count } });
  worker.on("message", onTick);
  return worker;
}

// ---- numbers
// p50…max of samples; `negative`: how many are below 0.
function percentiles(samples) {
  const xs = [...samples].sort((x, y) => x - y);
  const at = (p) => round1(xs[Math.min(xs.length - 1, Math.floor(p * xs.length))]);
  return { min: round1(xs[0]), p50: at(0.5), p90: at(0.9), p99: at(0.99), p999: at(0.999), max: round1(xs[xs.length - 1]), negative: xs.filter((x) => x < 0).length };
}
/** Reads `file` through, 1 MiB at a time, into one reused buffer (into the page cache, when it was not); its size. */
function readThrough(file) {
  const fd = fs.openSync(file, "r");
  const chunk = Buffer.allocUnsafe(1 << 20);
  let bytes = 0;
  for (let n; (n = fs.readSync(fd, chunk, 0, chunk.length, null)) > 0; ) bytes += n;
  fs.closeSync(fd);
  return bytes;
}
const round1 = (x) => Math.round(x * 10) / 10;
const round2 = (x) => Math.round(x * 100) / 100;
const round3 = (x) => Math.round(x * 1000) / 1000;
const median = (xs) => [...xs].sort((x, y) => x - y)[xs.length >> 1];
const fmt = (n) => (n === null || n === undefined || Number.isNaN(n) ? "n/a" : Math.round(n).toLocaleString("en-US"));
const ratio = (a, b) => (a > 0 && b > 0 ? round2(a / b) : null);
const fmtRatio = (r) => (r === null || r === undefined ? "n/a" : `${r.toFixed(2)}×`);
const kb = (bytes) => `${Math.round(bytes / 1024)} KB`;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function printTable(title, header, rows) {
  const widths = header.map((h, i) => Math.max(String(h).length, ...rows.map((row) => String(row[i]).length)));
  const line = (cells) => cells.map((c, i) => (i === 0 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join(" | ");
  if (title) console.log(`\n${title}`);
  console.log(line(header));
  console.log(widths.map((w) => "-".repeat(w)).join("-|-"));
  rows.forEach((row) => console.log(line(row)));
}

function writeJSON(name, data) {
  fs.mkdirSync(RESULTS_DIR, { recursive: true });
  const file = path.join(RESULTS_DIR, name);
  fs.writeFileSync(file, JSON.stringify(data, null, 2) + "\n");
  return file;
}

// Resident set size of any process of this host, in bytes (Linux /proc).
function rssOf(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) * 1024 : NaN;
}

// On-CPU time of a process so far, in ns, split into its main (JS) thread, the engine's network
// thread ("session-multicast") and the rest (GC, libuv): Linux /proc/<pid>/task/*/schedstat.
function cpuNs(pid) {
  const cpu = { js: 0, net: 0, other: 0 };
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      const ns = Number(fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, "utf8").split(" ")[0]);
      const comm = fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, "utf8");
      cpu[tid === String(pid) ? "js" : comm.startsWith("session-multi") ? "net" : "other"] += ns;
    } catch {
      // the thread ended between the listing and the read
    }
  }
  return cpu;
}

/**
 * Runs one bench part on its own (`node bench/<part>.js`): prints the machine, awaits `run()`,
 * writes `<name>.json`, and replaces (or adds) the part's section of summary.md with
 * `withSection(before, data)`, the rest of the file as it was.
 */
function runPartAlone(name, run, withSection) {
  (async () => {
    const m = machine();
    const engine = addonHash();
    console.log(`Node ${m.node} | ${m.cpu} (${m.cpus} CPUs) | ${m.platform} | engine ${engine}`);
    const started = Date.now();
    const result = await run();
    const data = { date: new Date().toISOString(), seconds: (Date.now() - started) / 1000, machine: m, engine: { addonSha256: engine, changed: addonHash() !== engine }, ...result };
    const written = writeJSON(`${name}.json`, data);
    const summary = path.join(RESULTS_DIR, "summary.md");
    fs.mkdirSync(RESULTS_DIR, { recursive: true });
    const before = fs.existsSync(summary) ? fs.readFileSync(summary, "utf8") : "# Benchmark results\n";
    fs.writeFileSync(summary, withSection(before, data));
    console.log(`written ${written} and its section of ${summary}`);
  })()
    .catch((err) => {
      console.error(err);
      process.exitCode = 1;
    })
    .finally(killAll);
}

module.exports = {
  metronome,
  runPartAlone,
  limitRun,
  startPeers,
  STORE_LABELS,
  ADDON,
  RESULTS_DIR,
  makeSession,
  makeSids,
  machine,
  addonHash,
  clusterOptions,
  spawnNode,
  stop,
  leave,
  killAll,
  serve,
  percentiles,
  readThrough,
  round1,
  round2,
  round3,
  median,
  fmt,
  ratio,
  fmtRatio,
  kb,
  sleep,
  printTable,
  writeJSON,
  rssOf,
  cpuNs,
};
