"use strict";
const assert = require("node:assert/strict");
const express = require("express");
const supertest = require("supertest");
const { session, createStore, closeStores, sleep, spy } = require("./helpers");

/** An Express app using express-session with a fresh isolated store. */
function makeApp(sessionOptions = {}) {
  const store = createStore({ multicast: false });
  const app = express();
  app.use(express.json());
  app.use(
    session({
      secret: "test",
      store,
      resave: false,
      saveUninitialized: false,
      cookie: { maxAge: 60_000 },
      ...sessionOptions,
    })
  );
  app.post("/login", (req, res) => {
    req.session.user = req.body.user;
    res.json({ sid: req.sessionID });
  });
  app.get("/me", (req, res) => {
    res.json({ user: req.session.user ?? null, sid: req.sessionID });
  });
  app.get("/count", (req, res) => {
    req.session.views = (req.session.views || 0) + 1;
    res.json({ views: req.session.views });
  });
  app.post("/logout", (req, res, next) => {
    req.session.destroy((err) => (err ? next(err) : res.json({ ok: true })));
  });
  app.get("/noop", (req, res) => res.json({ ok: true }));
  return { app, store, agent: supertest.agent(app) };
}

const setCookie = (res) => (res.headers["set-cookie"] || []).find((c) => c.startsWith("connect.sid="));

async function login(agent, user = "alice") {
  const res = await agent.post("/login").send({ user }).expect(200);
  assert.ok(setCookie(res), "login did not set the session cookie");
  return res.body.sid;
}

describe("express-session end to end", () => {
  afterEach(closeStores);

  it("login then /me sees the user through the cookie", async () => {
    const { app, agent, store } = makeApp();
    const sid = await login(agent);
    const me = await agent.get("/me").expect(200);
    assert.deepEqual(me.body, { user: "alice", sid });
    assert.equal((await store.get(sid)).user, "alice");
    // Another browser (no cookie) is not logged in.
    const anonymous = await supertest(app).get("/me").expect(200);
    assert.equal(anonymous.body.user, null);
  });

  it("a visit counter increments across requests", async () => {
    const { agent } = makeApp();
    for (let expected = 1; expected <= 4; expected++) {
      const res = await agent.get("/count").expect(200);
      assert.equal(res.body.views, expected);
    }
  });

  it("logout destroys the session", async () => {
    const { agent, store } = makeApp();
    const sid = await login(agent);
    await agent.post("/logout").expect(200);
    assert.ok((await store.get(sid)) == null, "the store still has the session");
    const me = await agent.get("/me").expect(200);
    assert.equal(me.body.user, null);
    assert.equal(await store.length(), 0);
  });

  it("rolling: true sends the cookie on every response and moves the stored expiry", async () => {
    const { agent, store } = makeApp({ rolling: true });
    const sid = await login(agent);
    let previous = Date.parse((await store.get(sid)).cookie.expires);
    for (let i = 0; i < 3; i++) {
      await sleep(25);
      const res = await agent.get("/me").expect(200);
      assert.ok(setCookie(res), `no Set-Cookie on rolling request ${i}`);
      const expires = Date.parse((await store.get(sid)).cookie.expires);
      assert.ok(expires > previous, `stored cookie.expires did not move (${previous} -> ${expires})`);
      previous = expires;
    }
    assert.equal((await store.get(sid)).user, "alice");
  });

  it("resave: false touches an unmodified session instead of saving it", async () => {
    const { agent, store } = makeApp({ resave: false });
    await login(agent);
    const setCalls = spy(store, "set");
    const touchCalls = spy(store, "touch");
    await agent.get("/me").expect(200);
    await agent.get("/me").expect(200);
    assert.equal(setCalls.length, 0);
    assert.equal(touchCalls.length, 2);
  });

  it("resave: true saves the session on every request", async () => {
    const { agent, store } = makeApp({ resave: true });
    await login(agent);
    const setCalls = spy(store, "set");
    await agent.get("/me").expect(200);
    await agent.get("/me").expect(200);
    await agent.get("/me").expect(200);
    assert.equal(setCalls.length, 3);
    assert.equal((await store.get(setCalls[0][0])).user, "alice");
  });

  it("saveUninitialized: false stores nothing for a visit that does not use the session", async () => {
    const { agent, store } = makeApp({ saveUninitialized: false });
    const setCalls = spy(store, "set");
    const res = await agent.get("/noop").expect(200);
    assert.equal(setCookie(res), undefined);
    assert.equal(setCalls.length, 0);
    assert.equal(await store.length(), 0);
  });
});
