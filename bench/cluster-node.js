"use strict";
// One store in its own process, driven by the benches (bench/cluster.js, bench/store.js,
// bench/memory.js) over the IPC channel of fork() (serialization "advanced", so BigInt timestamps
// travel as they are). The store is this package's by default; `start(options, kind)` can make it
// connect-redis ("redis", options { port, prefix }), express-session's MemoryStore
// ("MemoryStore") or memorystore ("memorystore") instead, for the comparisons.
//   parent → child: { id, cmd, args } → { id, result } | { id, error }
//   latency relay:  parent → writer { write: i };  reader → parent { seen: i }
// Timestamps are process.hrtime.bigint() (CLOCK_MONOTONIC): comparable between processes of one host.
// The process exits when the parent goes away.
const crypto = require("crypto");
const session = require("express-session");
const MulticastStore = require("..")(session);
const { redisStore } = require("./redis");
const { makeSession } = require("./util");

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
function watch(prefix, count, timeoutMs) {
  const times = new BigInt64Array(count);
  return new Promise((resolve, reject) => {
    let i = 0;
    let since = Date.now();
    const poll = () => store.get(sidOf(prefix, i), check);
    const check = (err, sess) => {
      if (err) return reject(err);
      if (sess) {
        times[i] = now();
        process.send({ seen: i });
        if (++i === count) return resolve(times);
        since = Date.now();
      } else if (Date.now() - since > timeoutMs) {
        return reject(new Error(`${sidOf(prefix, i)} not visible after ${timeoutMs} ms`));
      }
      setImmediate(poll);
    };
    process.send({ seen: -1 }); // polling for sid 0: the writer may start
    poll();
  });
}

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
