"use strict";
// The HTTP bench's server, in its own process, driven by bench/http.js over IPC: a tiny Express
// app with express-session (resave false, saveUninitialized false, a 1-day cookie) on one store:
//   POST /login  creates a session of ≈1 KB (user, csrf secret, a cart) with a counter at 0
//   GET  /       reads the session's counter, increments it (so the session is saved) and
//                answers { count }; 401 without a session
//   GET  /read   reads the session and leaves it as it is, so express-session does not save it
//                but calls store.touch (bench/touch.js); 401 without a session
// Listens on 127.0.0.1, on a port the OS picks.
const http = require("http");
const express = require("express");
const session = require("express-session");
const { makeSession, serve } = require("./util");
const { redisStore } = require("./redis");

let server = null;
let store = null;
const logs = [];
const logger = { trace() {}, debug() {}, info: (m) => logs.push(m), warn: (m) => logs.push(m), error: (m) => logs.push(m) };

async function makeStore(kind, options) {
  if (kind === "MemoryStore") return new session.MemoryStore();
  if (kind === "memorystore") return new (require("memorystore")(session))({ checkPeriod: 86400000 });
  if (kind === "redis") return redisStore(options.port, options.prefix);
  if (kind === "multicast") {
    const s = new (require("..")(session))({ ...options, logger });
    await s.ready();
    return s;
  }
  throw new Error(`unknown store kind ${kind}`);
}

serve({
  async start(kind, options, sessionBytes = 1024) {
    store = await makeStore(kind, options);
    const app = express();
    app.disable("x-powered-by");
    app.disable("etag");
    app.use(
      session({
        secret: "bench secret, not a real one",
        resave: false,
        saveUninitialized: false,
        rolling: false,
        store,
        cookie: { maxAge: 86400000, httpOnly: true, sameSite: "lax" },
      })
    );
    const template = makeSession(sessionBytes);
    delete template.cookie;
    app.post("/login", (req, res) => {
      Object.assign(req.session, JSON.parse(JSON.stringify(template)));
      req.session.count = 0;
      res.json({ ok: true });
    });
    app.get("/", (req, res) => {
      if (!req.session.user) return res.status(401).json({ error: "no session" });
      req.session.count = (req.session.count || 0) + 1;
      res.json({ count: req.session.count });
    });
    app.get("/read", (req, res) => {
      if (!req.session.user) return res.status(401).json({ error: "no session" });
      res.json({ id: req.session.user.id, count: req.session.count });
    });
    server = http.createServer(app);
    server.keepAliveTimeout = 60000;
    await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
    return { port: server.address().port, pid: process.pid };
  },
  length: () => new Promise((resolve, reject) => store.length((err, n) => (err ? reject(err) : resolve(n)))),
  stats: () => (store.stats ? store.stats() : null),
  logs: () => logs,
  async close() {
    if (server) {
      const closed = new Promise((resolve) => server.close(resolve));
      server.closeAllConnections();
      await closed;
    }
    if (typeof store.stopInterval === "function") store.stopInterval();
    if (store.close) await store.close();
  },
});
