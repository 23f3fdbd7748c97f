"use strict";
// One store in its own process, driven by bench/cluster.js over the IPC channel of fork()
// (serialization "advanced", so BigInt timestamps travel as they are).
//   parent → child: { id, cmd, args } → { id, result } | { id, error }
//   latency relay:  parent → writer { write: i };  reader → parent { seen: i }
// Timestamps are process.hrtime.bigint() (CLOCK_MONOTONIC): comparable between processes of one host.
// The process exits when the parent goes away.
const crypto = require("crypto");
const session = require("express-session");
const MulticastStore = require("..")(session);

const now = process.hrtime.bigint;
const sidOf = (prefix, i) => prefix + String(i).padStart(8, "0"); // 24 + 8 chars, like uid-safe(24)
let store = null;
const logs = [];
const logger = { debug() {}, trace() {}, info: (m) => logs.push(m), warn: (m) => logs.push(m), error: (m) => logs.push(m) };

// A realistic ≈`bytes` session: express-session's Cookie plus user data, grown with cart items.
function makeSession(bytes) {
  const sess = {
    cookie: new session.Cookie({ maxAge: 86400000, httpOnly: true, sameSite: "lax" }),
    user: { id: 0, name: "Ada Lovelace", email: "ada@example.com", roles: ["user", "editor"], locale: "en-GB" },
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
  async start(options) {
    const startNs = now();
    store = new MulticastStore({ ...options, logger });
    await store.ready();
    const readyNs = now();
    return { startNs, readyNs, length: await store.length(), stats: store.stats(), logs };
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
  awaitLength(prefix, count, everyMs, timeoutMs) {
    const last = sidOf(prefix, count - 1);
    const deadline = Date.now() + timeoutMs;
    return new Promise((resolve, reject) => {
      const poll = async () => {
        if ((await store.get(last)) && (await store.length()) >= count) return resolve({ doneNs: now() });
        if (Date.now() > deadline) return reject(new Error(`length ${await store.length()} < ${count} after ${timeoutMs} ms`));
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
    return { digest: hash.digest("hex"), missing, length: await store.length() };
  },
  length: () => store.length(),
  stats: () => store.stats(),
  close: () => store.close(),
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
