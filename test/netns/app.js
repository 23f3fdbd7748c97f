"use strict";
// A cluster node (test/cluster/node.js protocol) that also serves an Express app with
// express-session on its store, for the rolling-restart scenario. Run it in a host namespace:
// startNode(storeOptions, { netns, script: this file }), then call("listen", host, port).
//
//   GET /visit  increments req.session.views; answers { sid, views, node, fresh }, where `fresh`
//               means express-session found no session for the request's cookie (or it had none)
//   GET /peek   answers { sid, views, fresh } without changing the session (express-session still
//               touches it: rolling cookie)
const express = require("express");
const session = require("express-session");
const { main } = require("../cluster/node");

main((store) => {
  let server = null;
  let serving = false;
  const app = express();
  // Only requests that start after close began are refused: the client retries them elsewhere.
  app.use((req, res, next) => (serving ? next() : res.status(503).set("Connection", "close").end()));
  app.use(
    session({
      secret: "netns-rolling-restart",
      store,
      resave: false,
      saveUninitialized: false,
      rolling: true,
      cookie: { maxAge: 600_000 },
    })
  );
  // express-session creates a new session (with a new sid) when the cookie names none it can load.
  const fresh = (req) => req.session.views === undefined;
  app.get("/visit", (req, res) => {
    const wasFresh = fresh(req);
    req.session.views = (req.session.views || 0) + 1;
    res.json({ sid: req.sessionID, views: req.session.views, node: process.pid, fresh: wasFresh });
  });
  app.get("/peek", (req, res) => {
    res.json({ sid: req.sessionID, views: req.session.views ?? null, fresh: fresh(req) });
  });

  return {
    /** Starts serving on host:port once the store is ready; resolves when listening. */
    async listen(host, port) {
      await store.ready();
      serving = true;
      await new Promise((resolve, reject) => {
        server = app.listen(port, host, resolve);
        server.once("error", reject);
      });
      server.keepAliveTimeout = 1_000;
      return { host, port };
    },
    /** Graceful stop: refuses new requests, waits for those in flight, closes the server. */
    async unlisten() {
      if (!server) return null;
      serving = false;
      await new Promise((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
      });
      server = null;
      return null;
    },
  };
});
