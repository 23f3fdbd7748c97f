"use strict";
// One store with `persist` in its own process, driven by bench/persist.js over IPC (fork, bench/
// util.js spawnNode: { id, cmd, args } → { id, result } | { id, error }). Not networked
// (multicast: false): what is measured is the snapshot. Exits when the parent goes away.
const crypto = require("crypto");
const session = require("express-session");
const MulticastStore = require("..")(session);
const { makeSession, readThrough } = require("./util");

const now = process.hrtime.bigint;
const ms = (from) => Number(now() - from) / 1e6;
const sidOf = (i) => `bench-persist-${String(i).padStart(18, "0")}`; // 32 chars, like uid-safe(24)
let store = null;
let count = 0;
const logs = [];
const logger = { trace() {}, debug: (m) => logs.push(m), info: (m) => logs.push(m), warn: (m) => logs.push(m), error: (m) => logs.push(m) };

const commands = {
  /** Creates the store (which loads the snapshot, if there is one): how long the constructor took. */
  open(options) {
    const t = now();
    store = new MulticastStore({ ...options, logger });
    const ctorMs = ms(t);
    return { ctorMs, stats: store.stats() };
  },
  /** `n` distinct ≈`bytes` sessions, 1,000 per event-loop turn: the same sessions bench/persist.js writes to redis. */
  async fill(n, bytes) {
    const sess = makeSession(bytes);
    const t = now();
    for (let i = 0; i < n; ) {
      const end = Math.min(n, i + 1000);
      await new Promise((resolve, reject) => {
        for (; i < end; i++) {
          sess.user.id = i;
          sess.csrfSecret = crypto.randomBytes(18).toString("base64url");
          store.set(sidOf(i), sess, i === end - 1 ? (err) => (err ? reject(err) : resolve()) : undefined);
        }
      });
      await new Promise(setImmediate);
    }
    count = n;
    return { ms: ms(t), sessionBytes: JSON.stringify(sess).length };
  },
  stats: () => store.stats(),
  logs: () => logs.splice(0),
  /**
   * Until epoch ms `until`: a set, then a get, of random sessions of the table, each awaited
   * (called → callback), then 1 ms of idle; as a busy server's requests come. Samples are
   * [epoch ms when called, µs called → callback], pairs in a Float64Array; and every 50 pairs,
   * from stats(), each snapshot written since: [[epoch ms when it began, ms it took], …].
   * The last run's samples, sent to the parent, are garbage: a full collection first (node
   * --expose-gc), and samples go into arrays allocated once, so that no collection of them falls
   * into the run, during a snapshot more than elsewhere.
   */
  async latency(until, bytes) {
    if (global.gc) global.gc();
    const sess = makeSession(bytes);
    const room = 2 * Math.max(1, until - Date.now() + 16);
    const [sets, gets] = [new Float64Array(room), new Float64Array(room)];
    const snapshots = [];
    let n = 0;
    let seen = store.stats().lastSnapshotAt;
    // One pair at least: a caller that only wants a change (a snapshot to come) gets one.
    while ((n === 0 || Date.now() < until) && n < room) {
      if (n % 100 === 0) {
        const s = store.stats();
        if (s.lastSnapshotAt !== seen) snapshots.push([(seen = s.lastSnapshotAt), s.lastSnapshotMs]);
      }
      const i = crypto.randomInt(count);
      sess.user.id = i;
      let at = Date.now();
      let t = now();
      await new Promise((resolve, reject) => store.set(sidOf(i), sess, (err) => (err ? reject(err) : resolve())));
      sets[n] = at;
      sets[n + 1] = Number(now() - t) / 1e3;
      at = Date.now();
      t = now();
      await new Promise((resolve, reject) => store.get(sidOf(crypto.randomInt(count)), (err, s) => (err || !s ? reject(err || new Error("a session is missing")) : resolve())));
      gets[n] = at;
      gets[n + 1] = Number(now() - t) / 1e3;
      n += 2;
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    return { sets: sets.subarray(0, n), gets: gets.subarray(0, n), snapshots };
  },
  /**
   * The floor of a load of `file` (bench/persist.js), in a process that opened no store: read
   * the file (from the page cache or the disk, 1 MiB at a time), and write as many bytes of new
   * memory (64 MiB buffers, kept until the end), as a load writes the sessions it decodes.
   */
  floor(file) {
    const t = now();
    const bytes = readThrough(file);
    const memory = [];
    for (let left = bytes; left > 0; left -= 1 << 26) memory.push(Buffer.allocUnsafeSlow(Math.min(left, 1 << 26)).fill(0x20));
    return { ms: ms(t) };
  },
  /** close(): with persist, it writes the last snapshot (when something changed). */
  close() {
    const t = now();
    store.close();
    return { closeMs: ms(t), stats: store.stats() };
  },
};

process.on("message", async ({ id, cmd, args }) => {
  try {
    if (!Object.hasOwn(commands, cmd)) throw new Error(`unknown command ${cmd}`);
    process.send({ id, result: await commands[cmd](...args) });
  } catch (err) {
    process.send({ id, error: err && err.stack ? err.stack : String(err) });
  }
});
process.on("disconnect", () => process.exit(0));
