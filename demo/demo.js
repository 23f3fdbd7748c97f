#!/usr/bin/env node
"use strict";
// express-session-multicast demo: three Express servers, each with its own store in its own
// process, behind a round-robin front. A visit counter keeps counting whichever node answers,
// survives one of the nodes being killed, and the restarted node picks it up again.
//
//   npm run demo             scripted part, then keeps running for a browser until Ctrl-C
//   npm run demo -- --once   scripted part only; exits 1 if the counter ever went wrong
//
// Everything stays on this host: 127.0.0.1, multicastTTL 0, a cluster name and multicast port
// of its own. PORT (default 3000) is the front; the nodes use the three ports after it.
const http = require("node:http");
const path = require("node:path");
const crypto = require("node:crypto");
const { fork } = require("node:child_process");
const { setTimeout: sleep } = require("node:timers/promises");

const ONCE = process.argv.includes("--once");
const HOST = "127.0.0.1";
const FRONT_PORT = Number(process.env.PORT) || 3000;
const storeOptions = {
  ipv4: HOST,
  multicastTTL: 0,
  cluster: `demo-${process.pid}`,
  multicastPort: 20_000 + crypto.randomInt(40_000),
  secret: crypto.randomBytes(16).toString("hex"),
  heartbeatInterval: 200,
  failureTimeout: 1_000,
};

const nodes = [1, 2, 3].map((i) => ({ name: `node-${i}`, port: FRONT_PORT + i, up: false, child: null, id: null }));
const nameOf = (id) => (nodes.find((n) => n.id === id) || { name: id }).name;
const deaths = []; // { observer, node, at }
let phase = "starting"; // then "running", "stopping"

function startNode(node) {
  node.child = fork(path.join(__dirname, "server.js"), [JSON.stringify({ name: node.name, port: node.port, storeOptions })]);
  node.child.on("exit", () => {
    if (node.up && phase === "running") console.log(`    · front: ${node.name} is gone, taking it out of the rotation`);
    node.up = false;
  });
  return new Promise((resolve, reject) => {
    node.child.on("exit", (code, signal) => reject(new Error(`${node.name} exited during start-up (code ${code}, signal ${signal})`)));
    node.child.on("message", (msg) => {
      if (msg.type === "started") node.id = msg.self.id;
      if (msg.type === "listening") {
        node.up = true;
        const members = msg.members.map((m) => `${nameOf(m.id)} ${m.state}`).join(", ");
        console.log(`  ${node.name} ready on http://${HOST}:${node.port}, members: ${members}`);
        resolve();
      }
      if (msg.type === "member" && phase === "running") {
        const { type, node: member } = msg.event;
        console.log(`    · ${node.name} sees ${nameOf(member.id)}: ${type}`);
        if (type === "dead") deaths.push({ observer: node.name, node: nameOf(member.id), at: Date.now() });
      }
    });
  });
}

// The front: a tiny round-robin proxy that skips nodes it cannot connect to.
let turn = 0;
const front = http.createServer((req, res) => {
  const body = [];
  req.on("data", (chunk) => body.push(chunk));
  req.on("end", () => forward(req, res, Buffer.concat(body)));
});

function forward(req, res, body) {
  const up = nodes.filter((n) => n.up);
  if (up.length === 0) {
    res.writeHead(502).end("no node is up\n");
    return;
  }
  const node = up[turn++ % up.length];
  const upstream = http.request({ host: HOST, port: node.port, method: req.method, path: req.url, headers: req.headers, agent: false }, (r) => {
    res.writeHead(r.statusCode, r.headers);
    r.pipe(res);
  });
  upstream.on("error", (err) => {
    if (err.code === "ECONNREFUSED" && !res.headersSent) {
      node.up = false;
      console.log(`    · front: ${node.name} refuses connections, taking it out of the rotation`);
      forward(req, res, body);
    } else if (!res.headersSent) {
      res.writeHead(502).end(`${node.name}: ${err.message}\n`);
    } else {
      res.destroy(err);
    }
  });
  upstream.end(body);
}

// A client with a cookie jar of one cookie.
let cookie = null;
function visit() {
  return new Promise((resolve, reject) => {
    const headers = { accept: "application/json", ...(cookie && { cookie }) };
    http
      .get({ host: HOST, port: FRONT_PORT, path: "/", headers, agent: false }, (res) => {
        const setCookie = res.headers["set-cookie"];
        if (setCookie) cookie = setCookie[0].split(";")[0];
        let text = "";
        res.setEncoding("utf8").on("data", (chunk) => (text += chunk));
        res.on("end", () => {
          try {
            resolve(JSON.parse(text));
          } catch {
            reject(new Error(`unexpected answer (${res.statusCode}): ${text.trim()}`));
          }
        });
      })
      .on("error", reject);
  });
}

let visitCount = 0;
let expected = 1;
let wrong = 0;
async function visits(count) {
  for (let i = 0; i < count; i++) {
    const { node, views } = await visit();
    const ok = views === expected;
    if (!ok) wrong += 1;
    visitCount += 1;
    console.log(`  visit ${String(visitCount).padStart(2)} → ${node}: views = ${views}${ok ? "" : `   ✗ expected ${expected}`}`);
    expected = views + 1;
    await sleep(150);
  }
}

async function shutdown(code) {
  phase = "stopping";
  front.close();
  // Disconnecting makes each node close its store (a graceful leave) and exit.
  const exits = nodes.filter((n) => n.child && n.child.exitCode === null && n.child.signalCode === null).map((n) => new Promise((r) => n.child.once("exit", r)));
  for (const n of nodes) if (n.child && n.child.connected) n.child.disconnect();
  await Promise.race([Promise.all(exits), sleep(3_000)]);
  for (const n of nodes) if (n.child && n.child.exitCode === null && n.child.signalCode === null) n.child.kill("SIGKILL");
  process.exit(code);
}

async function main() {
  console.log(`Starting three nodes (cluster "${storeOptions.cluster}", multicast ${HOST} port ${storeOptions.multicastPort}, TTL 0):`);
  for (const node of nodes) await startNode(node);
  phase = "running";
  await new Promise((resolve, reject) => front.once("error", reject).listen(FRONT_PORT, HOST, resolve));
  console.log(`\nRound-robin front on http://${HOST}:${FRONT_PORT}. One client, one cookie:`);
  await visits(6);

  const victim = nodes[2];
  console.log(`\nKilling ${victim.name} with SIGKILL (it cannot say goodbye):`);
  const killedAt = Date.now();
  victim.child.kill("SIGKILL");
  await visits(6);

  const deadline = Date.now() + 5_000;
  while (deaths.filter((d) => d.node === victim.name).length < 2 && Date.now() < deadline) await sleep(50);
  const seen = deaths.filter((d) => d.node === victim.name);
  for (const d of seen) console.log(`  ${d.observer} declared ${victim.name} dead ${d.at - killedAt} ms after the kill`);

  console.log(`\nRestarting ${victim.name} (a new process): it gets every session from the others before it serves:`);
  await startNode(victim);
  await visits(3);

  const ok = wrong === 0 && seen.length === 2;
  console.log(
    ok
      ? `\nOK: the counter went 1 → ${expected - 1} across every node, survived the loss of ${victim.name} and its restart.`
      : `\nFAILED: ${wrong} wrong counter value(s); ${seen.length}/2 survivors declared ${victim.name} dead.`
  );

  if (ONCE) return shutdown(ok ? 0 : 1);
  console.log(`\nThe cluster keeps running: open http://${HOST}:${FRONT_PORT}/ in a browser and reload. Ctrl-C to stop.`);
  process.on("SIGINT", () => shutdown(0));
  process.on("SIGTERM", () => shutdown(0));
}

main().catch((err) => {
  console.error(`demo failed: ${err.message}`);
  shutdown(1);
});
