"use strict";
// One demo node: an Express app whose sessions live in a MulticastStore, in a process of its own.
// Started by demo.js with one JSON argument: { name, port, storeOptions }.
const express = require("express");
const session = require("express-session");
const MulticastStore = require("..")(session);

const { name, port, storeOptions } = JSON.parse(process.argv[2]);
const send = (message) => process.connected && process.send(message);

const logger = { info() {}, warn: (...a) => console.warn(`[${name}]`, ...a), error: (...a) => console.error(`[${name}]`, ...a) };
const store = new MulticastStore({ ...storeOptions, logger });
const self = () => store.members().find((m) => m.self);
store.on("member", (event) => send({ type: "member", event }));
send({ type: "started", self: self() });

const app = express();
app.use(session({ name: "demo.sid", secret: "demo cookie secret", resave: false, saveUninitialized: false, store }));

app.get("/", (req, res) => {
  req.session.views = (req.session.views || 0) + 1;
  res.set("X-Served-By", name);
  const members = store.members().map((m) => ({ id: m.id, state: m.state, self: m.self }));
  if (req.accepts(["json", "html"]) === "json") return res.json({ node: name, views: req.session.views, members });
  res.type("html").send(`<!doctype html><title>express-session-multicast demo</title>
<body style="font: 18px system-ui; margin: 3em">
<h1>Served by ${name}</h1>
<p>Visits in this session: <b>${req.session.views}</b> (the counter lives in the replicated session store)</p>
<p>Members seen by ${name}: ${members.map((m) => `${m.id}${m.self ? " (me)" : ""}: ${m.state}`).join(", ")}</p>
<p><a href="/">Reload</a>: the front sends each request to the next node.</p>`);
});

store.ready().then(() => {
  const server = app.listen(port, "127.0.0.1", () => send({ type: "listening", members: store.members() }));
  server.on("error", (err) => {
    console.error(`[${name}] cannot listen on 127.0.0.1:${port}: ${err.message}`);
    process.exit(1);
  });
});

// demo.js went away (or asked us to stop by disconnecting): leave the cluster and exit.
process.on("disconnect", () => store.close().finally(() => process.exit(0)));
