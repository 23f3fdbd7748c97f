"use strict";
// One store in its own process, driven by the benches (bench/cluster.js, bench/store.js,
// bench/memory.js) over the IPC channel of fork() (serialization "advanced", so BigInt timestamps
// travel as they are). The store is this package's by default; `start(options, kind)` can make it
// connect-redis ("redis", options { port, prefix }), express-session's MemoryStore
// ("MemoryStore") or memorystore ("memorystore") instead, for the comparisons.
//   parent → child: { id, cmd, args } → { id, result } | { id, error }
//   latency relay:  parent → writer { write: i };  reader → parent { seen: i }
//   idle-gap latency: gapWrite (writer) and gapWatch (reader) share a schedule, no relay
// Timestamps are process.hrtime.bigint() (CLOCK_MONOTONIC): comparable between processes of one host.
// The process exits when the parent goes away.
const crypto = require("crypto");
const { PerformanceObserver } = require("perf_hooks");
const session = require("express-session");
const MulticastStore = require("..")(session);
const { redisStore } = require("./redis");
const { makeSession, metronome } = require("./util");

const now = process.hrtime.bigint;
// length() with a callback: MemoryStore's has no Promise form.
const lengthOf = (s) => new Promise((resolve, reject) => s.length((err, n) => (err ? reject(err) : resolve(n))));
const sidOf = (prefix, i) => prefix + String(i).padStart(8, "0"); // 24 + 8 chars, like uid-safe(24)
let store = null;
const logs = [];
const logger = { debug() {}, trace() {}, info: (m) => logs.push(m), warn: (m) => logs.push(m), error: (m) => logs.push(m) };

// A realistic ≈`bytes` session: express-session's Cookie plus user data, grown with cart items.
// Latency, writer side: the parent relays { write: i } once the reader has seen i - 1.
// Timestamps right before set() is called and as soon as it returns (the engine has stored and
// queued the write): the interval to B is measured from both.
let latency = null;
function onWrite(i) {
  const { prefix, sess, called, returned } = latency;
  sess.user.id = i;
  const t = now();
  store.set(sidOf(prefix, i), sess);
  returned[i] = now();
  called[i] = t;
}

// Latency, reader side: polls store.get for the next sid with a loop that yields to the event
// loop through setImmediate between attempts (no busy loop that never yields, no timer: the
// reader's JS thread is busy but the OS can still schedule both engines' threads).
// `relay` false: no { seen } messages (the idle-gap mode, where the writer keeps its own pace).
function watch(prefix, count, timeoutMs, relay = true) {
  const times = new BigInt64Array(count);
  return new Promise((resolve, reject) => {
    let i = 0;
    let since = Date.now();
    const poll = () => store.get(sidOf(prefix, i), check);
    const check = (err, sess) => {
      if (err) return reject(err);
      if (sess) {
        times[i] = now();
        if (relay) process.send({ seen: i });
        if (++i === count) return resolve(times);
        since = Date.now();
      } else if (Date.now() - since > timeoutMs) {
        return reject(new Error(`${sidOf(prefix, i)} not visible after ${timeoutMs} ms`));
      }
      setImmediate(poll);
    };
    if (relay) process.send({ seen: -1 }); // polling for sid 0: the writer may start
    poll();
  });
}

// ---- Idle-gap latency (bench/cluster.js): write k is due at startNs + k × gapNs (hrtime, shared
// by every process of the host), whatever the reader does; both sides know the schedule.
// Writer: one ≈`bytes` session per tick; timestamps right before set() is called, as soon as it
// returns, and in its callback (this store: the engine queued it, or with waitForAck the other
// nodes applied it; connect-redis: redis answered).
// Resolves once every callback ran, with the store's stats() before and after.
function gapWrite(prefix, count, bytes, startNs, gapNs) {
  const sess = makeSession(bytes);
  const called = new BigInt64Array(count);
  const returned = new BigInt64Array(count);
  const acked = new BigInt64Array(count);
  const statsBefore = store.stats ? store.stats() : null;
  return new Promise((resolve, reject) => {
    let done = 0;
    const ticks = metronome(startNs, gapNs, count, (i) => {
      sess.user.id = i;
      const t = now();
      store.set(sidOf(prefix, i), sess, (err) => {
        if (err) return reject(err);
        acked[i] = now();
        if (++done < count) return;
        ticks.terminate();
        resolve({ bytes: JSON.stringify(sess).length, called, returned, acked, statsBefore, statsAfter: store.stats ? store.stats() : null });
      });
      returned[i] = now();
      called[i] = t;
    });
  });
}

// Reader, "scheduled": ticks `marginNs` before each write is due; then polls in a tight loop
// until the session is there, then back to the event loop until the next tick. Every write
// already due and not yet seen is polled, so a late one does not delay the detection of the next.
// The loop allocates nothing per poll: get()'s Promise per ≈1 µs poll made B scavenge every few
// dozen writes, ≈1 ms each on the 2-core bench machine (measured: 40–60 in 1,200 writes, up to
// 8 ms), stalls charged to the store. So it probes what get() reads first, the engine's table
// (`_native.get`: null on a miss; this store only), reads the clock (a BigInt) once every 64
// probes, and on a hit calls the public get() and stamps the time once it has returned the
// session. (performance.now() would allocate nothing, but it is not process.hrtime's clock here:
// 2 ms apart at first, drifting 20 µs/s.) `firstProbe[k]` 1: write k was already visible at its
// first probe (the reader came too late: its latency is overstated).
function gapWatch(prefix, count, startNs, gapNs, marginNs, timeoutMs) {
  const seen = new BigInt64Array(count);
  const hit = new Uint8Array(count); // seen[k] set (a BigInt64Array read allocates)
  const polled = new Uint8Array(count);
  const firstProbe = new Uint8Array(count);
  const sids = Array.from({ length: count }, (_, i) => sidOf(prefix, i));
  const probe = store._native && store._handle !== undefined ? (sid) => store._native.get(store._handle, sid) !== null : null;
  if (!probe) throw new Error("gapWatch: the store has no engine table to probe");
  const wakeAt = (i) => startNs + BigInt(i) * gapNs - marginNs;
  const timeoutNs = BigInt(timeoutMs) * 1000000n;
  const tickLateUs = new Float64Array(count); // tick handled − tick due
  let next = 0; // the first write not seen yet
  let polls = 0;
  let spinNs = 0n;
  return new Promise((resolve, reject) => {
    const spin = async (tick) => {
      const begin = now();
      tickLateUs[tick] = Number(begin - wakeAt(tick)) / 1000;
      if (next === count) return;
      try {
        let t = begin;
        let last = next - 1; // the last write due at t
        for (let round = 1; ; round++) {
          while (last + 1 < count && wakeAt(last + 1) <= t) last++;
          for (let j = next; j <= last; j++) {
            if (hit[j]) continue;
            polls++;
            if (probe(sids[j])) {
              if (!(await store.get(sids[j]))) throw new Error(`${sids[j]}: in the table but get() returned nothing`);
              seen[j] = now();
              hit[j] = 1;
              if (!polled[j]) firstProbe[j] = 1;
            }
            polled[j] = 1;
          }
          while (next < count && hit[next]) next++;
          if (next === count) break;
          if (next > last || round % 64 === 0) {
            t = now();
            if (wakeAt(next) > t) break; // all due writes seen: asleep until the next tick
            if (t - wakeAt(next) > timeoutNs) throw new Error(`${sids[next]} not visible ${timeoutMs} ms after it was due`);
          }
        }
        spinNs += now() - begin;
        if (next === count) {
          ticks.terminate();
          resolve({ seen, polls, firstProbe, spinUs: Number(spinNs / 1000n), tickLateUs });
        }
      } catch (err) {
        ticks.terminate();
        reject(err);
      }
    };
    const ticks = metronome(startNs - marginNs, gapNs, count, spin);
  });
}

let gc = { count: 0, totalMs: 0, maxMs: 0 };
let gcObserver = null;

const commands = {
  // Creates the store and awaits ready(); `length` is read right after ready resolved.
  async start(options, kind = "multicast") {
    const startNs = now();
    if (kind === "multicast") {
      store = new MulticastStore({ ...options, logger });
      await store.ready();
    } else if (kind === "redis") {
      store = await redisStore(options.port, options.prefix);
    } else if (kind === "MemoryStore") {
      store = new session.MemoryStore();
    } else if (kind === "memorystore") {
      store = new (require("memorystore")(session))({ checkPeriod: 86400000 });
    } else {
      throw new Error(`unknown store kind ${kind}`);
    }
    const readyNs = now();
    return { startNs, readyNs, length: await lengthOf(store), stats: store.stats ? store.stats() : null, logs };
  },
  // Memory: `count` distinct ≈`bytes` sessions, written `batch` per event-loop turn. Resolves
  // with the JSON bytes written (the raw session bytes) and the sid bytes.
  async fill(prefix, count, bytes, batch) {
    const sess = makeSession(bytes);
    let jsonBytes = 0;
    for (let i = 0; i < count; ) {
      const end = Math.min(count, i + batch);
      await new Promise((resolve, reject) => {
        for (; i < end; i++) {
          sess.user.id = i;
          sess.csrfSecret = crypto.randomBytes(18).toString("base64url");
          jsonBytes += JSON.stringify(sess).length;
          store.set(sidOf(prefix, i), sess, i === end - 1 ? (err) => (err ? reject(err) : resolve()) : undefined);
        }
      });
      await new Promise(setImmediate);
    }
    return { count, jsonBytes, sidBytes: count * sidOf(prefix, 0).length };
  },
  // process.memoryUsage() after full garbage collections (the process runs with --expose-gc).
  async memory() {
    for (let k = 0; k < 3; k++) {
      if (global.gc) global.gc();
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    return process.memoryUsage();
  },
  latencyWriter(prefix, count, bytes) {
    latency = { prefix, sess: makeSession(bytes), called: new BigInt64Array(count), returned: new BigInt64Array(count) };
    return JSON.stringify(latency.sess).length;
  },
  latencyTimes: () => ({ called: latency.called, returned: latency.returned }),
  watch,
  gapWrite,
  gapWatch,
  // Garbage collections from gcWatch() on: count, total and longest pause (ms), by gcReport().
  gcWatch() {
    gc = { count: 0, totalMs: 0, maxMs: 0 };
    if (!gcObserver) {
      gcObserver = new PerformanceObserver((list) => {
        for (const e of list.getEntries()) {
          gc.count++;
          gc.totalMs += e.duration;
          gc.maxMs = Math.max(gc.maxMs, e.duration);
        }
      });
      gcObserver.observe({ entryTypes: ["gc"] });
    }
  },
  gcReport: () => new Promise((resolve) => setImmediate(() => resolve({ count: gc.count, totalMs: Math.round(gc.totalMs * 10) / 10, maxMs: Math.round(gc.maxMs * 100) / 100 }))),
  // Writes `count` distinct sessions back to back, yielding to the event loop every `batch`.
  async burst(prefix, count, bytes, batch) {
    const sess = makeSession(bytes);
    const startNs = now();
    for (let i = 0; i < count; ) {
      const end = Math.min(count, i + batch);
      await new Promise((resolve, reject) => {
        for (; i < end; i++) {
          sess.user.id = i;
          store.set(sidOf(prefix, i), sess, i === end - 1 ? (err) => (err ? reject(err) : resolve()) : undefined);
        }
      });
      await new Promise(setImmediate);
    }
    return { startNs, writtenNs: now() };
  },
  // Waits until the store holds `count` sessions: cheap get of the last sid every `everyMs`, and
  // length() (which counts the whole table) only once that one is there.
  // `lastOnly`: the last sid is enough (connect-redis: A's writes go down one connection in
  // order, so the last one visible means all are; its length() scans every key, far too slow
  // to poll).
  awaitLength(prefix, count, everyMs, timeoutMs, lastOnly = false) {
    const last = sidOf(prefix, count - 1);
    const deadline = Date.now() + timeoutMs;
    return new Promise((resolve, reject) => {
      const poll = async () => {
        if ((await store.get(last)) && (lastOnly || (await lengthOf(store)) >= count)) return resolve({ doneNs: now() });
        if (Date.now() > deadline) return reject(new Error(`length ${await lengthOf(store)} < ${count} after ${timeoutMs} ms`));
        setTimeout(poll, everyMs);
      };
      poll();
    });
  },
  // sha256 over every sid and its session, and how many are missing.
  async digest(prefix, count) {
    const hash = crypto.createHash("sha256");
    let missing = 0;
    for (let i = 0; i < count; i++) {
      const sess = await store.get(sidOf(prefix, i));
      if (!sess) missing++;
      hash.update(`${i}\0${JSON.stringify(sess)}\n`);
    }
    return { digest: hash.digest("hex"), missing, length: await lengthOf(store) };
  },
  // all() of the whole store, timed: what reading the whole state from connect-redis costs.
  async readAll() {
    const start = now();
    const all = await store.all();
    return { ms: Number(now() - start) / 1e6, count: Array.isArray(all) ? all.length : Object.keys(all).length };
  },
  length: () => lengthOf(store),
  stats: () => (store.stats ? store.stats() : null),
  close: () => {
    if (typeof store.stopInterval === "function") store.stopInterval();
    return store.close ? store.close() : undefined;
  },
};

process.on("message", async (msg) => {
  if (msg.write !== undefined) return onWrite(msg.write);
  try {
    const result = await commands[msg.cmd](...msg.args);
    process.send({ id: msg.id, result });
  } catch (err) {
    process.send({ id: msg.id, error: String((err && err.stack) || err) });
  }
});
process.on("disconnect", () => process.exit(0));
