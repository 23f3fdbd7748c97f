"use strict";
// Cluster replication benchmark: stores in separate Node processes (bench/cluster-node.js) on
// loopback only (ipv4 127.0.0.1, multicastTTL 0, a cluster name and a random port of their own),
// ≈1 KB sessions shaped like express-session's (a real Cookie). Each scenario uses new processes.
//   1. latency: A writes one session at a time; B polls store.get for it (a loop that yields
//      through setImmediate); latency = set() returned on A → get() returned it on B, both read
//      with process.hrtime.bigint() (CLOCK_MONOTONIC, one clock for every process of the host).
//      Also reported from set() *called* on A: on 2 cores, A's own engine thread often preempts
//      A's JS thread inside set(), so "returned" can come after B already sees the write (< 0).
//      The next write is relayed over IPC once B has seen the previous one: IPC time is outside
//      the measured interval.
//   2. throughput: A writes N distinct sessions back to back; B polls (every 2 ms) until it holds
//      all of them; writes/s = N / (first set on A → all visible on B). Then both hash every
//      session: same digest and none missing, and their stats() show what was repaired.
//   3. state transfer: a new process joins A (holding N sessions): new store → ready() resolved,
//      and B's length() right after ready must equal A's.
//   npm run bench   (BENCH_LATENCY_WRITES=10000 BENCH_SESSIONS=100000 BENCH_TRANSFERS=3)
const crypto = require("crypto");
const fs = require("fs");
const os = require("os");
const path = require("path");
const { fork } = require("child_process");

const LATENCY_WRITES = Number(process.env.BENCH_LATENCY_WRITES) || 10000;
const LATENCY_WARMUP = 1000;
const SESSIONS = Number(process.env.BENCH_SESSIONS) || 100000;
const TRANSFERS = Number(process.env.BENCH_TRANSFERS) || 3;
const BYTES = 1024;
const BATCH = 1000; // throughput: sets per event-loop turn on A
const TARGETS = { p50Us: 100, p99Us: 1000, writesPerSec: 50000, transferMs: 2000 };
const RESULTS = path.join(__dirname, "results", "cluster.json");
const ADDON = path.join(__dirname, "..", "express_session_multicast.node");

// ---- child processes: every one is tracked and SIGKILLed at the end, on error and on exit
const children = new Set();
function spawnNode(name) {
  const child = fork(path.join(__dirname, "cluster-node.js"), [], { serialization: "advanced", stdio: ["ignore", "inherit", "inherit", "ipc"] });
  children.add(child);
  const pending = new Map();
  let nextId = 0;
  child.on("message", (msg) => {
    const call = msg.id !== undefined && pending.get(msg.id);
    if (!call) return;
    pending.delete(msg.id);
    msg.error ? call.reject(new Error(`${name}: ${msg.error}`)) : call.resolve(msg.result);
  });
  child.on("exit", (code, signal) => {
    children.delete(child);
    for (const call of pending.values()) call.reject(new Error(`${name} exited (${signal || code})`));
  });
  const call = (cmd, ...args) =>
    new Promise((resolve, reject) => {
      const id = ++nextId;
      pending.set(id, { resolve, reject });
      child.send({ id, cmd, args }, (err) => err && pending.delete(id) && reject(err));
    });
  return { name, child, call };
}
function killAll() {
  for (const child of children) child.kill("SIGKILL");
}
// SIGKILL; resolves once the processes have exited.
function stop(...nodes) {
  return Promise.all(
    nodes.map(({ child }) => {
      if (child.exitCode !== null || child.signalCode !== null) return null;
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGKILL");
      return exited;
    })
  );
}
// Graceful leave first (so A does not keep a dead member around), then stop.
async function leave(node) {
  await node.call("close").catch(() => {});
  await stop(node);
}
process.on("exit", killAll);
setTimeout(() => {
  console.error("cluster bench: no result after 110 s, giving up");
  process.exit(1);
}, 110000).unref();
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => process.exit(130));

// Loopback only, a cluster of our own.
const clusterOptions = () => ({
  ipv4: "127.0.0.1",
  multicastTTL: 0,
  cluster: `bench-${process.pid}-${crypto.randomBytes(4).toString("hex")}`,
  multicastPort: 20000 + crypto.randomInt(40000),
});
const newPrefix = () => crypto.randomBytes(18).toString("base64url");
async function startPair() {
  const options = clusterOptions();
  const a = spawnNode("A");
  await a.call("start", options);
  const b = spawnNode("B");
  await b.call("start", options);
  return { options, a, b };
}

// ---- 1. latency
async function latency() {
  const { a, b } = await startPair();
  try {
    const prefix = newPrefix();
    const count = LATENCY_WARMUP + LATENCY_WRITES;
    const bytes = await a.call("latencyWriter", prefix, count, BYTES);
    b.child.on("message", (msg) => msg.seen !== undefined && msg.seen + 1 < count && a.child.connected && a.child.send({ write: msg.seen + 1 }));
    const seen = await b.call("watch", prefix, count, 5000);
    const { called, returned } = await a.call("latencyTimes");
    const range = [...Array(LATENCY_WRITES).keys()].map((k) => k + LATENCY_WARMUP);
    const fromReturn = percentiles(range.map((i) => Number(seen[i] - returned[i]) / 1000));
    const fromCall = percentiles(range.map((i) => Number(seen[i] - called[i]) / 1000));
    const setCall = percentiles(range.map((i) => Number(returned[i] - called[i]) / 1000));
    return { writes: LATENCY_WRITES, warmup: LATENCY_WARMUP, bytes, unit: "µs", ...fromReturn, fromCall, setCall };
  } finally {
    await stop(a, b);
  }
}

// ---- 2. throughput, then 3. state transfer from the same A
async function throughputAndTransfer() {
  const { options, a, b } = await startPair();
  const joiners = [];
  try {
    const prefix = newPrefix();
    const snmpBefore = udpCounters();
    const arrived = b.call("awaitLength", prefix, SESSIONS, 2, 60000);
    const { startNs, writtenNs } = await a.call("burst", prefix, SESSIONS, BYTES, BATCH);
    const { doneNs } = await arrived;
    const snmpAfter = udpCounters();
    const [da, db] = await Promise.all([a.call("digest", prefix, SESSIONS), b.call("digest", prefix, SESSIONS)]);
    const [statsA, statsB] = await Promise.all([a.call("stats"), b.call("stats")]);
    const seconds = Number(doneNs - startNs) / 1e9;
    const throughput = {
      sessions: SESSIONS,
      batch: BATCH,
      seconds: round3(seconds),
      writesPerSec: Math.round(SESSIONS / seconds),
      writerOnlyPerSec: Math.round(SESSIONS / (Number(writtenNs - startNs) / 1e9)),
      lagMs: round1(Number(doneNs - writtenNs) / 1e6), // B complete after A's last set returned
      lengthA: da.length,
      lengthB: db.length,
      missingOnB: db.missing,
      digestsEqual: da.digest === db.digest,
      stats: { A: pickStats(statsA), B: pickStats(statsB) },
      kernelUdp: snmpBefore && snmpAfter && Object.fromEntries(Object.keys(snmpAfter).map((k) => [k, snmpAfter[k] - snmpBefore[k]])),
    };

    await leave(b); // A alone holds the sessions: it is the donor
    const transfers = [];
    for (let r = 0; r < TRANSFERS; r++) {
      const c = spawnNode(`joiner${r + 1}`);
      joiners.push(c);
      const joined = await c.call("start", options);
      const lengthA = await a.call("length");
      const ms = Number(joined.readyNs - joined.startNs) / 1e6;
      const log = joined.logs.find((l) => /state transfer from/.test(l)) || "";
      const m = /: (\d+) entries, (\d+) bytes in (\d+) ms/.exec(log);
      transfers.push({
        readyMs: round1(ms),
        sessionsPerSec: Math.round(joined.length / (ms / 1000)),
        mbPerSec: round1(joined.stats.sessionBytes / 1e6 / (ms / 1000)),
        length: joined.length,
        lengthA,
        sessionBytes: joined.stats.sessionBytes,
        engineTransfer: m ? { entries: Number(m[1]), bytes: Number(m[2]), ms: Number(m[3]) } : null,
      });
      await leave(c);
    }
    return { throughput, transfers };
  } finally {
    await stop(a, b, ...joiners);
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

// p50…max of samples; `negative`: how many are below 0.
function percentiles(samples) {
  const xs = [...samples].sort((x, y) => x - y);
  const at = (p) => round1(xs[Math.min(xs.length - 1, Math.floor(p * xs.length))]);
  return { min: round1(xs[0]), p50: at(0.5), p90: at(0.9), p99: at(0.99), p999: at(0.999), max: round1(xs[xs.length - 1]), negative: xs.filter((x) => x < 0).length };
}
const round1 = (x) => Math.round(x * 10) / 10;
const round3 = (x) => Math.round(x * 1000) / 1000;
const median = (xs) => [...xs].sort((x, y) => x - y)[xs.length >> 1];
const fmt = (n) => Math.round(n).toLocaleString("en-US");
const addonHash = () => crypto.createHash("sha256").update(fs.readFileSync(ADDON)).digest("hex").slice(0, 12);

async function main() {
  const machine = { node: process.version, cpu: os.cpus()[0].model, cpus: os.cpus().length, platform: `${os.platform()} ${os.release()} ${os.arch()}` };
  const engine = addonHash();
  console.log(`Node ${machine.node} | ${machine.cpu} (${machine.cpus} CPUs) | ${machine.platform} | engine ${engine}`);
  console.log(`separate processes on loopback, sessions ≈${BYTES} bytes of JSON with an express-session Cookie`);

  const lat = await latency();
  const { throughput: tp, transfers } = await throughputAndTransfer();
  const transferMs = median(transfers.map((t) => t.readyMs));
  const mid = transfers.find((t) => t.readyMs === transferMs);
  const transferOk = transfers.every((t) => t.length === t.lengthA);
  const lossless = tp.missingOnB === 0 && tp.digestsEqual && tp.lengthB === SESSIONS;

  const rows = [
    ["latency p50 (set on A → get on B)", `${lat.p50} µs`, `< ${TARGETS.p50Us} µs`, lat.p50 < TARGETS.p50Us],
    ["latency p99", `${lat.p99} µs`, `< ${TARGETS.p99Us} µs`, lat.p99 < TARGETS.p99Us],
    ["latency p99.9 / max", `${lat.p999} / ${lat.max} µs`, "", null],
    ["  from set() called on A: p50 / p99", `${lat.fromCall.p50} / ${lat.fromCall.p99} µs`, "(same)", lat.fromCall.p50 < TARGETS.p50Us && lat.fromCall.p99 < TARGETS.p99Us],
    [`replicated writes/s (${fmt(SESSIONS)}, none lost)`, fmt(tp.writesPerSec), `>= ${fmt(TARGETS.writesPerSec)}`, tp.writesPerSec >= TARGETS.writesPerSec && lossless],
    ["  A's sets/s; B complete after A's last set", `${fmt(tp.writerOnlyPerSec)}; +${tp.lagMs} ms`, "", null],
    [`state transfer ${fmt(mid.length)} sessions (median of ${transfers.length})`, `${fmt(transferMs)} ms`, `< ${fmt(TARGETS.transferMs)} ms`, transferMs < TARGETS.transferMs && transferOk],
    ["  sessions/s, MB/s", `${fmt(mid.sessionsPerSec)}, ${mid.mbPerSec}`, "", null],
    ["  engine's own transfer (its log line)", mid.engineTransfer ? `${fmt(mid.engineTransfer.ms)} ms, ${round1(mid.engineTransfer.bytes / 1e6)} MB` : "n/a", "", null],
  ];
  printTable(["measure", "result", "target", ""], rows.map(([m, r, t, ok]) => [m, r, t, ok === null ? "" : ok ? "pass" : "MISS"]));

  const line = (p) => `p50 ${p.p50}, p90 ${p.p90}, p99 ${p.p99}, p99.9 ${p.p999}, max ${p.max} µs`;
  console.log(`\nlatency: ${fmt(lat.writes)} writes of ${lat.bytes} bytes after ${fmt(lat.warmup)} warm-up; B polls store.get, yielding through setImmediate`);
  console.log(`  from set() returned on A: min ${lat.min}, ${line(lat)} ${lat.negative ? `(${lat.negative} below 0: A's JS thread was preempted inside set() after the write left)` : ""}`);
  console.log(`  from set() called on A:   min ${lat.fromCall.min}, ${line(lat.fromCall)}`);
  console.log(`  set() itself on A:        ${line(lat.setCall)}`);
  console.log(`throughput: ${fmt(SESSIONS)} sessions in ${tp.seconds} s; B length ${fmt(tp.lengthB)}, missing ${tp.missingOnB}, digests ${tp.digestsEqual ? "equal" : "DIFFER"}`);
  for (const [n, s] of Object.entries(tp.stats)) {
    console.log(`  ${n}: sent ${fmt(s.datagramsSent)} rcvd ${fmt(s.datagramsReceived)} retransmissions ${s.retransmissions} naksSent ${s.naksSent} duplicates ${s.duplicates} antiEntropy ${s.antiEntropySyncs} dropped ${JSON.stringify(s.dropped)}`);
  }
  if (tp.kernelUdp) console.log(`  kernel UDP (whole host, during the run): ${JSON.stringify(tp.kernelUdp)}`);
  console.log(`state transfer: ${transfers.map((t) => `${fmt(t.readyMs)} ms (length ${fmt(t.length)} / A ${fmt(t.lengthA)})`).join(", ")}`);
  if (addonHash() !== engine) console.log("WARNING: the engine changed during the run: rerun");

  fs.mkdirSync(path.dirname(RESULTS), { recursive: true });
  const report = {
    date: new Date().toISOString(),
    machine,
    engine: { addonSha256: engine },
    method: {
      latency: "B polls store.get for the next sid in a loop yielding through setImmediate; latency = hrtime after set() returns on A (fromCall: before set() is called) → hrtime when get() returns the session on B; next write relayed over IPC after B has seen the previous one",
      throughput: `A writes back to back (${BATCH} sets per event-loop turn); B polls every 2 ms (get of the last sid, then length()); writes/s from the first set on A to all ${SESSIONS} visible on B; digests of all sessions compared`,
      transfer: "a new process: new store → ready() resolved; length() right after ready compared with A's",
    },
    targets: TARGETS,
    pass: { p50: lat.p50 < TARGETS.p50Us, p99: lat.p99 < TARGETS.p99Us, writesPerSec: tp.writesPerSec >= TARGETS.writesPerSec && lossless, transfer: transferMs < TARGETS.transferMs && transferOk },
    latency: lat,
    throughput: tp,
    transfer: { medianMs: transferMs, runs: transfers },
  };
  fs.writeFileSync(RESULTS, JSON.stringify(report, null, 2) + "\n");
  console.log(`written ${path.relative(process.cwd(), RESULTS)}`);
}

function printTable(header, rows) {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  const line = (cells) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(" | ");
  console.log(`\n${line(header)}`);
  console.log(widths.map((w) => "-".repeat(w)).join("-|-"));
  rows.forEach((row) => console.log(line(row)));
}

main()
  .catch((err) => {
    console.error(err);
    process.exitCode = 1;
  })
  .finally(killAll);
