"use strict";
const assert = require("node:assert/strict");
const { once, EventEmitter } = require("node:events");
const factory = require("..");
const {
  session,
  MulticastStore,
  SAFE_OPTIONS,
  uniqueCluster,
  makeLogger,
  createStore,
  closeStores,
  viaCallback,
  callbackValue,
  sessionData,
  sleep,
  sleepUntil,
  assertBefore,
  spy,
} = require("./helpers");
const { waitUntil } = require("./cluster/harness");

/** JSON round trip: what a store is expected to give back for a session it was given. */
const asStored = (sess) => JSON.parse(JSON.stringify(sess));

/** Rejects if `promise` does not settle within `ms`. */
function within(ms, promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not happen within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// The two call styles of every store method: callback (never called synchronously), and
// Promise when the callback is omitted.
const STYLES = {
  callback: (store, method, ...args) => callbackValue((cb) => store[method](...args, cb)),
  promise: (store, method, ...args) => {
    const result = store[method](...args);
    assert.equal(typeof (result && result.then), "function", `${method}() without a callback must return a Promise`);
    return result;
  },
};

describe("factory", () => {
  afterEach(closeStores);

  it("accepts express-session and returns a subclass of session.Store", () => {
    const store = createStore();
    assert.ok(store instanceof MulticastStore);
    assert.ok(store instanceof session.Store);
    assert.ok(store instanceof EventEmitter);
  });

  it("accepts the connect shape ({ session: { Store } })", () => {
    const connect = { session: { Store: session.Store } };
    const Store = factory(connect);
    const store = new Store({ ...SAFE_OPTIONS, multicast: false, logger: makeLogger() });
    try {
      assert.ok(store instanceof session.Store);
    } finally {
      store.close();
    }
  });

  it("throws a TypeError when given nothing usable", () => {
    for (const arg of [undefined, null, {}, { session: {} }, 42]) {
      assert.throws(() => factory(arg), TypeError, `factory(${String(arg)})`);
    }
  });
});

describe("store methods", () => {
  let store;
  beforeEach(() => {
    store = createStore();
  });
  afterEach(closeStores);

  for (const [style, call] of Object.entries(STYLES)) {
    describe(`${style} style`, () => {
      it("set then get returns the session", async () => {
        const sess = sessionData({ user: "alice" });
        assert.equal(await call(store, "set", "sid-1", sess), undefined);
        assert.deepEqual(await call(store, "get", "sid-1"), asStored(sess));
      });

      it("get of an unknown sid gives no session", async () => {
        const value = await call(store, "get", "nope");
        assert.ok(value == null, `expected null or undefined, got ${JSON.stringify(value)}`);
      });

      it("destroy removes the session and leaves the others", async () => {
        await call(store, "set", "a", sessionData({ n: 1 }));
        await call(store, "set", "b", sessionData({ n: 2 }));
        await call(store, "destroy", "a");
        assert.ok((await call(store, "get", "a")) == null);
        assert.equal((await call(store, "get", "b")).n, 2);
        await call(store, "destroy", "never-existed");
      });

      it("touch updates the stored cookie", async () => {
        await call(store, "set", "a", sessionData({ n: 1 }, { maxAge: 1000 }));
        const touched = sessionData({ n: 1 }, { expiresAt: Date.now() + 120_000, maxAge: 120_000 });
        await call(store, "touch", "a", touched);
        assert.deepEqual((await call(store, "get", "a")).cookie, touched.cookie);
      });

      it("all returns every session keyed by sid", async () => {
        const a = sessionData({ n: 1 });
        const b = sessionData({ n: 2 });
        await call(store, "set", "a", a);
        await call(store, "set", "b", b);
        assert.deepEqual({ ...(await call(store, "all")) }, { a: asStored(a), b: asStored(b) });
      });

      it("length counts the sessions", async () => {
        assert.equal(await call(store, "length"), 0);
        await call(store, "set", "a", sessionData());
        await call(store, "set", "b", sessionData());
        await call(store, "set", "a", sessionData({ again: true }));
        assert.equal(await call(store, "length"), 2);
      });

      it("clear removes every session", async () => {
        await call(store, "set", "a", sessionData());
        await call(store, "set", "b", sessionData());
        await call(store, "clear");
        assert.equal(await call(store, "length"), 0);
        assert.deepEqual({ ...(await call(store, "all")) }, {});
        assert.ok((await call(store, "get", "a")) == null);
      });
    });
  }

  describe("get", () => {
    it("returns a fresh object every call", async () => {
      const sess = sessionData({ user: { name: "alice", roles: ["admin"] } });
      await store.set("sid", sess);
      const first = await store.get("sid");
      const second = await store.get("sid");
      assert.notEqual(first, second);
      first.user.name = "mallory";
      first.user.roles.push("root");
      first.cookie.expires = "garbage";
      delete first.cookie.path;
      assert.deepEqual(await store.get("sid"), asStored(sess));
    });
  });

  describe("set", () => {
    it("does not mutate the session it is given (plain object)", async () => {
      const sess = {
        cookie: { originalMaxAge: 60_000, expires: new Date(Date.now() + 60_000), httpOnly: true, path: "/" },
        user: { name: "alice" },
        list: [1, 2, 3],
      };
      const snapshot = structuredClone(sess);
      const cookieRef = sess.cookie;
      const expiresRef = sess.cookie.expires;
      await store.set("sid", sess);
      assert.deepStrictEqual(sess, snapshot);
      assert.equal(sess.cookie, cookieRef);
      assert.equal(sess.cookie.expires, expiresRef);
    });

    it("does not mutate the session it is given (express-session Cookie)", async () => {
      const sess = { cookie: new session.Cookie({ maxAge: 60_000 }), views: 3 };
      const before = JSON.stringify(sess);
      const expires = sess.cookie.expires.getTime();
      const keys = Object.keys(sess.cookie);
      const cookieRef = sess.cookie;
      await store.set("sid", sess);
      assert.equal(JSON.stringify(sess), before);
      assert.equal(sess.cookie, cookieRef);
      assert.ok(sess.cookie instanceof session.Cookie);
      assert.equal(sess.cookie.expires.getTime(), expires);
      assert.deepEqual(Object.keys(sess.cookie), keys);
    });

    it("accepts a session without a cookie", async () => {
      await callbackValue((cb) => store.set("bare", { user: "bob" }, cb));
      assert.deepEqual(await store.get("bare"), { user: "bob" });
      assert.equal(await store.length(), 1);
      assert.deepEqual({ ...(await store.all()) }, { bare: { user: "bob" } });
    });

    it("round-trips any text: non-ASCII data, emoji, lone surrogates, long and non-ASCII sids", async () => {
      const sess = sessionData({ name: "Zoë Ł. 日本語", emoji: "😀👍", lone: "\ud800x\udfff", plain: "ascii" });
      const sids = ["s".repeat(124), "s".repeat(125), "long-".repeat(100), "sïd-é-日本-😀", "😀".repeat(40)];
      for (const sid of sids) await store.set(sid, sess);
      for (const sid of sids) assert.deepEqual(await store.get(sid), asStored(sess), `sid of ${sid.length} chars`);
      assert.equal(await store.length(), sids.length);
      assert.deepEqual(Object.keys(await store.all()).sort(), [...sids].sort());
      for (const sid of sids) await store.destroy(sid);
      assert.equal(await store.length(), 0);
    });

    it("a sid that is not a string fails the call's callback with a TypeError (nothing thrown, nothing stored)", async () => {
      for (const sid of [42, null, undefined, { id: "x" }]) {
        for (const [method, args] of [["set", [sessionData()]], ["touch", [sessionData()]], ["get", []], ["destroy", []]]) {
          const err = await new Promise((resolve) => store[method](sid, ...args, (e) => resolve(e)));
          assert.ok(err instanceof TypeError, `${method}(${String(sid)}): ${err}`);
          assert.match(err.message, /express-session-multicast: expected a string/);
        }
      }
      assert.equal(await store.length(), 0);
    });

    it("overwrites the previous value of the sid", async () => {
      await store.set("sid", sessionData({ v: 1 }));
      await store.set("sid", sessionData({ v: 2 }));
      assert.equal((await store.get("sid")).v, 2);
    });
  });

  describe("expiry", () => {
    it("is millisecond precise: visible before cookie.expires, invisible to get/all/length after", async () => {
      const t0 = Date.now();
      await store.set("long", sessionData({ keep: true }));
      await store.set("short", sessionData({ keep: false }, { expiresAt: t0 + 30 }));

      await sleepUntil(t0 + 10);
      assertBefore(t0 + 30, "short still readable");
      assert.equal((await store.get("short")).keep, false);
      assert.deepEqual(Object.keys(await store.all()).sort(), ["long", "short"]);
      assert.equal(await store.length(), 2);

      await sleepUntil(t0 + 50);
      assert.ok((await store.get("short")) == null, "expired session returned by get");
      assert.deepEqual(Object.keys(await store.all()), ["long"], "expired session returned by all");
      assert.equal(await store.length(), 1, "expired session counted by length");
    });

    it("treats expires <= now as expired", async () => {
      await store.set("past", sessionData({}, { expiresAt: Date.now() - 1 }));
      assert.ok((await store.get("past")) == null);
      // expires === now: repeated so that several rounds land within the same millisecond.
      for (let i = 0; i < 200; i++) {
        const sid = `now-${i}`;
        await store.set(sid, sessionData({}, { expiresAt: Date.now() }));
        const got = await store.get(sid);
        assert.ok(got == null, `session with expires == now was visible (round ${i})`);
      }
      assert.equal(await store.length(), 0);
    });
  });

  describe("touch", () => {
    it("moves the expiry", async () => {
      const t0 = Date.now();
      await store.set("sid", sessionData({ n: 1 }, { expiresAt: t0 + 40 }));
      await sleepUntil(t0 + 20);
      assertBefore(t0 + 40, "touch before the original expiry");
      await store.touch("sid", sessionData({ n: 1 }, { expiresAt: t0 + 500 }));
      await sleepUntil(t0 + 80);
      assert.equal((await store.get("sid")).n, 1, "touched session expired at its old expiry");
      assert.equal(await store.length(), 1);
    });

    it("does not go through set", async () => {
      await store.set("sid", sessionData({ n: 1 }));
      const setCalls = spy(store, "set");
      await callbackValue((cb) => store.touch("sid", sessionData({ n: 1 }, { expiresAt: Date.now() + 90_000 }), cb));
      await store.touch("sid", sessionData({ n: 1 }, { expiresAt: Date.now() + 95_000 }));
      assert.equal(setCalls.length, 0);
    });

    it("persists the new cookie but keeps the stored data", async () => {
      await store.set("sid", sessionData({ user: "newer", cart: [1, 2] }, { maxAge: 1000 }));
      // The session object handed to touch carries stale data: only its cookie may be used.
      const stale = sessionData({ user: "older" }, { expiresAt: Date.now() + 120_000, maxAge: 120_000 });
      await store.touch("sid", stale);
      const got = await store.get("sid");
      assert.equal(got.user, "newer");
      assert.deepEqual(got.cart, [1, 2]);
      assert.equal(got.cookie.expires, stale.cookie.expires);
      assert.equal(got.cookie.originalMaxAge, 120_000);
    });

    it("of an unknown sid does not create a visible session", async () => {
      await store.touch("ghost", sessionData({ user: "ghost" }));
      assert.ok((await store.get("ghost")) == null);
      assert.equal(await store.length(), 0);
      assert.deepEqual({ ...(await store.all()) }, {});
    });

    it("of a destroyed sid does not bring it back", async () => {
      await store.set("sid", sessionData({ n: 1 }));
      await store.destroy("sid");
      await store.touch("sid", sessionData({ n: 1 }, { expiresAt: Date.now() + 120_000 }));
      assert.ok((await store.get("sid")) == null);
      assert.equal(await store.length(), 0);
    });
  });

  describe("destroy", () => {
    it("works without a callback", async () => {
      await store.set("sid", sessionData());
      const result = store.destroy("sid");
      assert.equal(typeof (result && result.then), "function");
      await result;
      assert.ok((await store.get("sid")) == null);
      assert.equal(await store.length(), 0);
    });

    it("a set after destroy makes the session visible again", async () => {
      await store.set("sid", sessionData({ v: 1 }));
      await store.destroy("sid");
      await store.set("sid", sessionData({ v: 2 }));
      assert.equal((await store.get("sid")).v, 2);
    });
  });

  describe("all", () => {
    it("returns the same shape as express-session's MemoryStore", async () => {
      const memory = new session.MemoryStore();
      const sessions = {
        a: sessionData({ user: "alice" }),
        b: sessionData({ views: 7, nested: { deep: [1, { x: null }] } }),
        c: sessionData({}, { expiresAt: Date.now() + 5_000 }),
      };
      for (const [sid, sess] of Object.entries(sessions)) {
        await store.set(sid, sess);
        await new Promise((resolve, reject) => memory.set(sid, sess, (err) => (err ? reject(err) : resolve())));
      }
      const expected = await new Promise((resolve, reject) => memory.all((err, all) => (err ? reject(err) : resolve(all))));
      const actual = await store.all();
      assert.equal(typeof actual, "object");
      assert.ok(!Array.isArray(actual));
      assert.deepEqual({ ...actual }, { ...expected });
    });

    it("returns a fresh object every call", async () => {
      await store.set("a", sessionData({ n: 1 }));
      const first = await store.all();
      first.a.n = 99;
      delete first.a;
      assert.equal((await store.all()).a.n, 1);
    });
  });

  describe("clear", () => {
    it("a set after clear is visible", async () => {
      await store.set("a", sessionData({ v: 1 }));
      await store.clear();
      await store.set("a", sessionData({ v: 2 }));
      await store.set("b", sessionData({ v: 3 }));
      assert.equal((await store.get("a")).v, 2);
      assert.equal(await store.length(), 2);
    });
  });

  describe("maxSessionBytes", () => {
    let small;
    beforeEach(() => {
      small = createStore({ maxSessionBytes: 1000 });
    });

    const big = () => sessionData({ blob: "x".repeat(2048) });

    it("refuses a larger session with ERR_SESSION_TOO_LARGE (callback) and stores nothing", async () => {
      await small.set("ok", sessionData({ user: "alice", pad: "y".repeat(400) }));
      const { err, sync } = await viaCallback((cb) => small.set("big", big(), cb));
      assert.equal(sync, false, "callback was called synchronously");
      assert.ok(err instanceof Error, "expected an Error");
      assert.equal(err.code, "ERR_SESSION_TOO_LARGE");
      assert.ok((await small.get("big")) == null, "the too-large session was stored");
      assert.equal((await small.get("ok")).user, "alice");
      assert.equal(await small.length(), 1);
      assert.deepEqual(Object.keys(await small.all()), ["ok"]);
    });

    it("rejects the Promise with ERR_SESSION_TOO_LARGE", async () => {
      await assert.rejects(small.set("big", big()), (err) => err instanceof Error && err.code === "ERR_SESSION_TOO_LARGE");
      assert.equal(await small.length(), 0);
    });
  });

  describe("close", () => {
    const CLOSED_CALLS = {
      get: ["sid"],
      set: ["sid", { cookie: { expires: null }, n: 1 }],
      destroy: ["sid"],
      touch: ["sid", { cookie: { expires: null } }],
      all: [],
      length: [],
      clear: [],
    };

    it("makes every method fail with ERR_STORE_CLOSED, in both styles", async () => {
      await store.set("sid", sessionData());
      await store.close();
      for (const [method, args] of Object.entries(CLOSED_CALLS)) {
        const { err, sync } = await viaCallback((cb) => store[method](...args, cb));
        assert.equal(sync, false, `${method}: callback was called synchronously`);
        assert.equal(err && err.code, "ERR_STORE_CLOSED", `${method} (callback)`);
        await assert.rejects(store[method](...args), (e) => e.code === "ERR_STORE_CLOSED", `${method} (promise)`);
      }
    });

    it("is idempotent and returns a Promise both times", async () => {
      const first = store.close();
      const second = store.close();
      assert.ok(first instanceof Promise);
      assert.ok(second instanceof Promise);
      await first;
      await second;
      const third = store.close();
      assert.ok(third instanceof Promise);
      await third;
    });
  });

  describe("events, ready, stats, members", () => {
    it("never emits connect or disconnect while it can serve (express-session starts out attached)", async () => {
      const s = createStore();
      const seen = [];
      for (const event of ["connect", "disconnect"]) s.on(event, () => seen.push(event));
      await s.ready();
      await s.set("sid", sessionData());
      await sleep(50);
      assert.deepEqual(seen, []);
      await s.close();
      await sleep(20);
      assert.deepEqual(seen, ["disconnect"]);
    });

    it("emits disconnect (once) after close", async () => {
      let count = 0;
      store.on("disconnect", () => count++);
      const disconnected = once(store, "disconnect");
      await store.close();
      await within(5_000, disconnected, "disconnect");
      await store.close();
      await sleep(20);
      assert.equal(count, 1);
    });

    it("ready() returns a Promise that resolves (multicast on loopback)", async () => {
      const result = store.ready();
      assert.ok(result instanceof Promise);
      await within(10_000, result, "ready()");
    });

    it("ready() resolves without multicast", async () => {
      await within(10_000, createStore({ multicast: false }).ready(), "ready()");
    });

    it("stats() is a plain object counting sessions and tombstones", async () => {
      const empty = store.stats();
      assert.equal(Object.getPrototypeOf(empty), Object.prototype);
      assert.equal(typeof empty.sessions, "number");
      assert.equal(typeof empty.tombstones, "number");
      assert.equal(empty.sessions, 0);

      await store.set("a", sessionData());
      await store.set("b", sessionData());
      await store.destroy("a");
      const after = store.stats();
      assert.equal(after.sessions, 1);
      assert.ok(after.tombstones >= 1, `destroy should leave a tombstone (tombstones = ${after.tombstones})`);
    });

    it("members() lists this node alone, with self: true", () => {
      const members = store.members();
      assert.ok(Array.isArray(members));
      assert.equal(members.length, 1);
      assert.equal(members[0].self, true);
    });
  });
});

describe("several stores in one process", () => {
  afterEach(closeStores);

  it("are independent with multicast: false", async () => {
    const a = createStore({ multicast: false });
    const b = createStore({ multicast: false });
    await a.set("sid", sessionData({ owner: "a" }));
    await b.set("other", sessionData({ owner: "b" }));
    assert.ok((await b.get("sid")) == null);
    assert.ok((await a.get("other")) == null);
    assert.equal(await a.length(), 1);
    assert.equal(await b.length(), 1);
    await b.clear();
    assert.equal(await a.length(), 1);
  });

  it("ignore each other with different cluster names on the same group and port", async () => {
    const a = createStore({ cluster: uniqueCluster("iso-a") });
    const b = createStore({ cluster: uniqueCluster("iso-b") });
    await within(10_000, Promise.all([a.ready(), b.ready()]), "ready()");
    await a.set("sid", sessionData({ owner: "a" }));
    await sleep(1_000);
    assert.ok((await b.get("sid")) == null, "a session crossed clusters");
    assert.equal(await b.length(), 0);
    assert.equal(a.members().length, 1);
    assert.equal(b.members().length, 1);
  });
});

describe("writes to the network", () => {
  afterEach(closeStores);
  const KB = "x".repeat(1_000); // ≈1 KB sessions: one datagram each

  async function pair(heartbeatInterval = 100) {
    const cluster = uniqueCluster("flush");
    const a = createStore({ cluster, heartbeatInterval, failureTimeout: 4 * heartbeatInterval });
    const b = createStore({ cluster, heartbeatInterval, failureTimeout: 4 * heartbeatInterval });
    await within(10_000, Promise.all([a.ready(), b.ready()]), "ready()");
    await waitUntil(() => a.members().length === 2 && b.members().length === 2, 5_000);
    return { a, b };
  }

  it("a lone write replicates as one batch", async () => {
    const { a, b } = await pair();
    const before = a.stats().writeBatches;
    await a.set("lone", sessionData({ pad: KB }));
    await waitUntil(async () => (await b.get("lone")) != null, 2_000);
    assert.equal(a.stats().writeBatches, before + 1);
  });

  it("writes made in one event-loop turn share wake-ups of the network thread, and every one replicates", async () => {
    const { a, b } = await pair();
    const before = a.stats();
    const count = 2_000;
    // One turn: one flush at its end, plus the engine's hand-overs every 256 writes or 256 KB (src/driver/outbox.rs).
    const written = [];
    for (let i = 0; i < count; i++) written.push(callbackValue((cb) => a.set(`s${i}`, sessionData({ i, pad: KB }), cb)));
    await Promise.all(written);
    await waitUntil(async () => (await b.length()) === count, 10_000);
    const after = a.stats();
    const batches = after.writeBatches - before.writeBatches;
    assert.ok(after.datagramsSent - before.datagramsSent >= count, "one datagram per write at least");
    assert.ok(batches <= count / 100, `${count} writes in one turn took ${batches} batches`);
    assert.equal((await b.get("s1999")).i, 1999);
  });

  it("a lone write after the event loop slept is sent from the JS thread; a thread that never sleeps hands its writes over", async () => {
    const { a, b } = await pair();
    const pause = () => new Promise((resolve) => setTimeout(resolve, 2));
    const before = a.stats();
    for (let i = 0; i < 20; i++) {
      await pause();
      a.set(`idle${i}`, sessionData({ i }), () => {});
    }
    await pause();
    const idle = a.stats();
    assert.equal(idle.writeBatches - before.writeBatches, 20);
    // Sent from this thread unless the network thread held the engine's state at that moment.
    assert.ok(idle.directBatches - before.directBatches >= 10, JSON.stringify(idle));
    // Busy: 200 µs of work between writes, each write in a turn of its own, the loop never asleep.
    for (let i = 0; i < 50; i++) {
      const until = performance.now() + 0.2;
      while (performance.now() < until);
      a.set(`busy${i}`, sessionData({ i }), () => {});
      await new Promise(setImmediate);
    }
    const busy = a.stats();
    assert.ok(busy.directBatches - idle.directBatches <= 1, `direct batches while busy: ${busy.directBatches - idle.directBatches}`);
    await waitUntil(async () => (await b.length()) === 70, 5_000);
  });

  it("a write's callback runs before the flush that sends it: the send does not delay it", async () => {
    const { a, b } = await pair();
    await new Promise((resolve) => setTimeout(resolve, 2));
    const before = a.stats().writeBatches;
    const atCallback = await new Promise((resolve, reject) =>
      a.set("first", sessionData(), (err) => (err ? reject(err) : resolve(a.stats().writeBatches)))
    );
    assert.equal(atCallback, before, "nothing sent yet when the callback ran");
    await waitUntil(() => a.stats().writeBatches === before + 1, 2_000);
    await waitUntil(async () => (await b.get("first")) != null, 2_000);
  });

  it("writes made in one synchronous loop leave without waiting for the turn to end", async () => {
    // Heartbeats every 5 s: the cluster's tick (its fallback flush) runs every 100 ms at most.
    const { a, b } = await pair(5_000);
    const before = a.stats().writeBatches;
    for (let i = 0; i < 1_000; i++) a.set(`sync${i}`, sessionData({ i, pad: KB }), () => {});
    // Still inside the turn (the JS thread blocks below, so the turn's flush cannot come): the
    // engine hands over every 256 writes by itself (3 batches at least), where the ticks alone
    // make two at most, however long it waits (a tick takes every write queued since the tick
    // before it). The wait is long so that a slow machine cannot fail the test.
    const deadline = Date.now() + 3_000;
    while (a.stats().writeBatches - before < 3 && Date.now() < deadline) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 2);
    assert.ok(a.stats().writeBatches - before >= 3, `batches before the turn ended: ${JSON.stringify(a.stats())}`);
    await waitUntil(async () => (await b.length()) === 1_000, 10_000);
  });
});
