"use strict";
// What express-session expects of a store, judged by express-session itself (real Express apps
// driven by supertest): when sessions are attached to requests (disconnect/connect, a network
// that failed at start, close()), values JSON cannot hold, ttl, disableTouch, touchAfter and a
// custom serializer, on one node and across two.
const assert = require("node:assert/strict");
const dgram = require("node:dgram");
const express = require("express");
const supertest = require("supertest");
const { session, createStore, closeStores, sessionData, sleep, sleepUntil, assertBefore } = require("./helpers");
const { clusterOptions, waitUntil } = require("./cluster/harness");

const FAST = Object.freeze({ heartbeatInterval: 50, failureTimeout: 1_000 });

/** An Express app on `store`; every error that reaches Express is recorded in `errors`. */
function makeApp(store, sessionOptions = {}) {
  const app = express();
  const errors = [];
  app.use(express.json());
  app.use(session({ secret: "test", store, resave: false, saveUninitialized: false, cookie: { maxAge: 60_000 }, ...sessionOptions }));
  app.post("/login", (req, res) => {
    req.session.user = req.body.user;
    res.json({ sid: req.sessionID });
  });
  app.get("/me", (req, res) => {
    res.json({ hasSession: req.session !== undefined, user: req.session?.user ?? null });
  });
  // Puts a value JSON cannot hold into the session (a BigInt, a Map, a cycle).
  app.post("/bad/:kind", (req, res) => {
    const cycle = {};
    cycle.self = cycle;
    req.session.bad = { bigint: 10n, map: new Map([["a", 1]]), cycle }[req.params.kind];
    res.json({ ok: true });
  });
  // Answers once the test says so (`release()`), then saves a change: a request in flight.
  app.post("/slow", (req, res) => {
    req.session.slow = true;
    app.locals.released.then(() => res.json({ ok: true }));
  });
  app.use((err, req, res, _next) => {
    errors.push(err);
    if (res.headersSent) return; // express-session already answered: the save failed after
    res.status(500).json({ code: err.code });
  });
  let release;
  app.locals.released = new Promise((resolve) => (release = resolve));
  return { app, errors, agent: supertest.agent(app), release };
}

async function login(agent, user = "alice") {
  const res = await agent.post("/login").send({ user }).expect(200);
  return res.body.sid;
}

const storedExpiry = async (store, sid) => Date.parse((await store.get(sid)).cookie.expires);

/** Two stores of one cluster on loopback, both ready and seeing each other. */
async function twoNodes(options = {}) {
  const opts = clusterOptions({ ...FAST, ...options });
  const a = createStore(opts);
  const b = createStore(opts);
  await Promise.all([a.ready(), b.ready()]);
  await waitUntil(() => a.stats().members === 2 && b.stats().members === 2, 5_000, { what: "two members" });
  return [a, b];
}

describe("express-session semantics", function () {
  this.timeout(20_000);
  afterEach(closeStores);

  describe("when express-session attaches sessions", () => {
    it("express-session itself: after 'disconnect' requests get no session, until 'connect'", async () => {
      const store = createStore({ multicast: false });
      const { agent } = makeApp(store);
      await login(agent);
      store.emit("disconnect");
      assert.deepEqual((await agent.get("/me").expect(200)).body, { hasSession: false, user: null });
      store.emit("connect");
      assert.deepEqual((await agent.get("/me").expect(200)).body, { hasSession: true, user: "alice" });
    });

    it("a store whose cluster port is taken at start still gives every request its session", async () => {
      const blocker = dgram.createSocket({ type: "udp4", reuseAddr: false });
      await new Promise((resolve) => blocker.bind(0, "0.0.0.0", resolve));
      try {
        const store = createStore({ multicastPort: blocker.address().port });
        const failures = [];
        store.on("error", (e) => failures.push(e.code));
        const { agent } = makeApp(store);
        await store.ready();
        await waitUntil(() => failures.length > 0, 2_000, { what: "the ERR_NETWORK error event" });
        await login(agent, "bob");
        assert.deepEqual((await agent.get("/me").expect(200)).body, { hasSession: true, user: "bob" });
        assert.deepEqual(failures, ["ERR_NETWORK"]);
        assert.equal(store.stats().network, "failed");
      } finally {
        blocker.close();
      }
    });

    it("after close(): requests run without a session, and a request in flight gets ERR_STORE_CLOSED from its save", async () => {
      const store = createStore({ multicast: false });
      const { agent, errors, release } = makeApp(store);
      await login(agent);
      const inFlight = agent.post("/slow").then((r) => r, (e) => e);
      await sleep(100); // the request has read its session and waits
      await store.close();
      release();
      // express-session has already answered 200 when the save fails: the error goes to next().
      assert.equal((await inFlight).status, 200);
      await waitUntil(() => errors.length > 0, 2_000, { what: "the save's error reaches Express" });
      assert.deepEqual(errors.map((e) => e.code), ["ERR_STORE_CLOSED"]);
      assert.deepEqual((await agent.get("/me").expect(200)).body, { hasSession: false, user: null });
    });
  });

  describe("values JSON cannot hold", () => {
    // express-session hashes each session with JSON.stringify, so a BigInt or a cycle in
    // req.session fails in express-session before the store sees it; a Map gets through it.
    it("a Map in req.session fails the save with ERR_SESSION_NOT_SERIALIZABLE naming the sid; the stored session is unchanged", async () => {
      const store = createStore({ multicast: false });
      const { agent, errors } = makeApp(store);
      const sid = await login(agent);
      await agent.post("/bad/map");
      await waitUntil(() => errors.length > 0, 2_000, { what: "the save's error reaches Express" });
      assert.equal(errors.length, 1, `errors: ${errors.map((e) => e.message)}`);
      assert.equal(errors[0].code, "ERR_SESSION_NOT_SERIALIZABLE");
      assert.ok(errors[0].message.includes(`session "${sid}"`), errors[0].message);
      assert.ok(errors[0].message.includes("session.bad is a Map"), errors[0].message);
      const stored = await store.get(sid);
      assert.equal(stored.user, "alice");
      assert.equal("bad" in stored, false);
    });

    it("direct calls: a BigInt or a cycle fails with ERR_SESSION_NOT_SERIALIZABLE, naming the sid and the cause; nothing changes", async () => {
      const store = createStore({ multicast: false });
      await store.set("sid", sessionData({ n: 1 }));
      const cycle = {};
      cycle.self = cycle;
      for (const [bad, cause] of [[10n, /BigInt/], [cycle, /circular/]]) {
        await assert.rejects(store.set("sid", sessionData({ bad })), (e) => {
          assert.equal(e.code, "ERR_SESSION_NOT_SERIALIZABLE");
          assert.match(e.message, /session "sid" cannot be stored/);
          assert.match(e.cause.message, cause);
          return true;
        });
      }
      assert.equal((await store.get("sid")).n, 1);
    });

    it("direct calls: a Set deep in an array, the key path named; a Date is fine", async () => {
      const store = createStore({ multicast: false });
      await assert.rejects(store.set("s", sessionData({ list: [1, { tags: new Set(["x"]) }] })), (e) => {
        assert.equal(e.code, "ERR_SESSION_NOT_SERIALIZABLE");
        assert.match(e.message, /session\.list\[1\]\.tags is a Set/);
        return true;
      });
      assert.equal(await store.get("s"), null);
      await store.set("d", sessionData({ at: new Date(0) }));
      assert.equal((await store.get("d")).at, new Date(0).toISOString());
    });
  });

  describe("ttl", () => {
    it("a number: the lifetime of a session whose cookie has no expiry; a cookie's expiry wins", async () => {
      const store = createStore({ multicast: false, ttl: 0.3 });
      const { agent } = makeApp(store, { cookie: {} }); // a browser-session cookie: no expires
      const t0 = Date.now();
      const sid = await login(agent);
      await store.set("with-cookie", sessionData({}, { expiresAt: t0 + 60_000 }));
      assertBefore(t0 + 250, "the session is read before its ttl");
      assert.equal((await agent.get("/me").expect(200)).body.user, "alice");
      await sleepUntil(t0 + 400);
      assert.equal(await store.get(sid), null, "the session outlived ttl");
      assert.equal((await agent.get("/me").expect(200)).body.user, null);
      assert.ok(await store.get("with-cookie"), "ttl overrode the cookie's expiry");
    });

    it("a function of the session; useSessionTTL caps it", async () => {
      const store = createStore({ multicast: false, ttl: (s) => (s.long ? 60 : 0.2) });
      const capped = createStore({ multicast: false, ttl: () => 60, useSessionTTL: true, sessionTTL: 0.2 });
      const t0 = Date.now();
      await store.set("short", { long: false });
      await store.set("long", { long: true });
      await capped.set("capped", { n: 1 });
      await sleepUntil(t0 + 350);
      assert.equal(await store.get("short"), null);
      assert.deepEqual(await store.get("long"), { long: true });
      assert.equal(await capped.get("capped"), null, "useSessionTTL did not cap ttl");
    });

    it("a function returning no positive number fails that set and touch with ERR_INVALID_TTL; nothing changes", async () => {
      let answer = 60;
      const store = createStore({ multicast: false, ttl: () => answer });
      await store.set("sid", { n: 1 });
      for (const bad of [0, -1, NaN, Infinity, "60", undefined]) {
        answer = bad;
        for (const call of [() => store.set("sid", { n: 2 }), () => store.touch("sid", { n: 2 })]) {
          await assert.rejects(call(), (e) => e.code === "ERR_INVALID_TTL" && /"sid"/.test(e.message), `ttl() = ${String(bad)}`);
        }
      }
      answer = () => {
        throw new Error("boom");
      };
      const throwing = createStore({ multicast: false, ttl: () => answer() });
      await assert.rejects(throwing.set("x", {}), (e) => e.code === "ERR_INVALID_TTL" && e.cause.message === "boom");
      assert.deepEqual(await store.get("sid"), { n: 1 });
      assert.equal(await throwing.get("x"), null);
    });
  });

  describe("disableTouch", () => {
    it("read-only requests move the stored expiry, except with disableTouch", async () => {
      for (const disableTouch of [false, true]) {
        const store = createStore({ multicast: false, disableTouch });
        const { agent } = makeApp(store);
        const sid = await login(agent);
        const before = await storedExpiry(store, sid);
        await sleep(20);
        await agent.get("/me").expect(200);
        const after = await storedExpiry(store, sid);
        if (disableTouch) assert.equal(after, before, "disableTouch: the touch was stored");
        else assert.ok(after > before, "the touch did not move the expiry");
      }
    });
  });

  describe("touchAfter", () => {
    it("read-only requests on A: with touchAfter 10 nothing reaches B and A counts local touches; with 0 every touch does", async () => {
      for (const touchAfter of [0, 10]) {
        const [a, b] = await twoNodes({ touchAfter }); // the cookies live 60 s
        const { agent } = makeApp(a);
        const sid = await login(agent);
        await waitUntil(async () => await b.get(sid), 2_000, { what: "the login reaches B" });
        const onB = await storedExpiry(b, sid);
        for (let i = 0; i < 10; i++) await agent.get("/me").expect(200);
        await sleep(300);
        if (touchAfter) {
          assert.equal(a.stats().localTouches, 10);
          assert.equal(await storedExpiry(b, sid), onB, "a small touch was replicated");
        } else {
          assert.equal(a.stats().localTouches, 0);
          assert.ok((await storedExpiry(b, sid)) > onB, "touches did not reach B");
        }
        await closeStores();
      }
    });

    it("a session touched on A expires on B at most touchAfter early, and on A when its touch says", async () => {
      const [a, b] = await twoNodes({ touchAfter: 2.5 });
      assert.equal(a.options.touchAfter, 2.5);
      const t0 = Date.now();
      await a.set("sid", sessionData({ user: "alice" }, { expiresAt: t0 + 4_000, maxAge: 4_000 }));
      await waitUntil(async () => await b.get("sid"), 2_000, { what: "the set reaches B" });
      await sleepUntil(t0 + 1_000);
      // Moves the expiry 1 s on: less than touchAfter, so B keeps t0 + 4 s.
      await a.touch("sid", sessionData({ user: "alice" }, { expiresAt: Date.now() + 4_000, maxAge: 4_000 }));
      assert.equal(a.stats().localTouches, 1);
      await sleepUntil(t0 + 4_400);
      assertBefore(t0 + 4_900, "A still holds the session");
      assert.equal((await a.get("sid"))?.user, "alice", "A lost the session its touch extended");
      assert.equal(await b.get("sid"), null, "B kept the session past its replicated expiry");
      // A touch close to the replicated expiry is always replicated.
      await b.set("late", sessionData({}, { expiresAt: Date.now() + 2_000 }));
      await waitUntil(async () => await a.get("late"), 2_000);
      await b.touch("late", sessionData({}, { expiresAt: Date.now() + 2_500 }));
      await waitUntil(async () => (await storedExpiry(a, "late")) === (await storedExpiry(b, "late")), 2_000, { what: "the near-expiry touch reaches A" });
      assert.equal(b.stats().localTouches, 0);
    });
  });

  describe("serializer", () => {
    // Round-trips Maps, BigInts and Dates, which JSON cannot. The replacer looks at this[key],
    // the value before its toJSON, so it sees Dates (and BigInts an app gave a toJSON).
    const serializer = {
      stringify: (s) =>
        JSON.stringify(s, function (key, value) {
          const raw = this[key];
          if (raw instanceof Map) return { $map: [...raw] };
          if (raw instanceof Date) return { $date: raw.getTime() };
          return typeof raw === "bigint" ? { $bigint: String(raw) } : value;
        }),
      parse: (text) =>
        JSON.parse(text, (key, v) => (v?.$map ? new Map(v.$map) : v?.$date ? new Date(v.$date) : v?.$bigint ? BigInt(v.$bigint) : v)),
    };

    it("a Map and a Date round-trip through Express on two nodes; touches move the cookie on both and keep the data", async () => {
      const [a, b] = await twoNodes({ serializer });
      const appA = express();
      appA.use(session({ secret: "test", store: a, resave: false, saveUninitialized: false, cookie: { maxAge: 60_000 } }));
      appA.get("/login", (req, res) => {
        req.session.cart = new Map([["apple", 3]]);
        req.session.since = new Date(1_000);
        res.json({ sid: req.sessionID });
      });
      appA.get("/read", (req, res) => res.json({ apples: req.session.cart.get("apple"), since: req.session.since.getTime() }));
      const agent = supertest.agent(appA);
      const { sid } = (await agent.get("/login").expect(200)).body;
      const fromB = await waitUntil(async () => await b.get(sid), 2_000, { what: "the session reaches B" });
      assert.ok(fromB.cart instanceof Map && fromB.cart.get("apple") === 3);
      assert.ok(fromB.since instanceof Date && fromB.since.getTime() === 1_000);
      const before = await storedExpiry(b, sid);
      await sleep(20);
      assert.deepEqual((await agent.get("/read").expect(200)).body, { apples: 3, since: 1_000 });
      await waitUntil(async () => (await storedExpiry(b, sid)) > before, 2_000, { what: "the touch reaches B" });
      const touched = await b.get(sid);
      assert.equal(touched.cart.get("apple"), 3, "the touch damaged the data");
      assert.equal(touched.cookie.expires, (await a.get(sid)).cookie.expires);
      assert.ok((await a.all())[sid].cart instanceof Map, "all() does not use the serializer");
    });

    it("direct calls: a BigInt and a Map round-trip; touch replaces only the cookie", async () => {
      const store = createStore({ multicast: false, serializer });
      await store.set("sid", sessionData({ points: 2n ** 70n, cart: new Map([["pear", 1n]]) }));
      const later = Date.now() + 120_000;
      await store.touch("sid", sessionData({}, { expiresAt: later }));
      const got = await store.get("sid");
      assert.equal(got.points, 2n ** 70n);
      assert.equal(got.cart.get("pear"), 1n);
      assert.equal(Date.parse(got.cookie.expires), later);
    });

    it("a serializer that throws or returns no string fails the set with ERR_SESSION_NOT_SERIALIZABLE", async () => {
      const throwing = createStore({ multicast: false, serializer: { stringify: () => { throw new Error("nope"); }, parse: JSON.parse } });
      const silent = createStore({ multicast: false, serializer: { stringify: () => undefined, parse: JSON.parse } });
      await assert.rejects(throwing.set("s", sessionData()), (e) => e.code === "ERR_SESSION_NOT_SERIALIZABLE" && e.cause.message === "nope");
      await assert.rejects(silent.set("s", sessionData()), (e) => e.code === "ERR_SESSION_NOT_SERIALIZABLE" && /not a string/.test(e.message));
    });
  });
});
