"use strict";
// Read your writes across nodes: the scenario of test/readyourwrites.test.js, as a benchmark.
// Three Express apps with express-session (test/fixtures/session-app.js), each in its own
// process on one cluster (127.0.0.1, multicastTTL 0, a cluster name, port and secret of its
// own). A client logs in on A (POST /login) and, as soon as A's response has ended, sends its
// next request to B (GET /me) with the cookie A set; variants (the fixture's VARIANTS): plain,
// regenerate (the login regenerates an anonymous session), bWrites (B's page writes the session
// too: a B that finds no session makes a new one and sends its cookie, a logout for good).
// Per variant, waitForAck off and on, and off with missTimeout 0 (a get that finds nothing does
// not ask the other nodes, src/core/miss.rs): stale reads (B did not see the user), logouts for good
// (B sent a cookie of another sid), for stale reads how long after A's response ended B had the
// login, and the login's response time on A (request sent → response ended: what waitForAck
// costs a user) and the next request's on B. One cluster per mode, all up at once; the modes
// take turns in blocks of BLOCK iterations, so load from elsewhere on the host falls on both.
//   node bench/readyourwrites.js [iterations]   (default 5,000 per variant and mode; alone, or
//   `node bench/index.js readyourwrites`; `npm run bench` runs it as part of bench/index.js)
const crypto = require("crypto");
const u = require("./util");
const report = require("./report");
const { VARIANTS, startApps, stopApps, loginThenNext } = require("../test/fixtures/session-app");

const ITERATIONS = 5000;
const WARMUP = 200; // per cluster and variant, before its first block
const BLOCK = 500;
const MODES = [
  { id: "noMiss", label: "waitForAck off, missTimeout 0", options: { missTimeout: 0 } },
  { id: "off", label: "waitForAck off", options: {} },
  { id: "on", label: "waitForAck on", options: { waitForAck: true } },
];

const withMean = (xs) => ({ ...u.percentiles(xs), mean: u.round1(xs.reduce((sum, x) => sum + x, 0) / xs.length) });

async function run({ iterations = ITERATIONS, log = console.log } = {}) {
  const clusters = [];
  const results = {};
  const ackTimeouts = {};
  try {
    for (const mode of MODES) {
      const options = { ...u.clusterOptions(), secret: crypto.randomBytes(16).toString("hex"), ...mode.options };
      clusters.push({ mode, apps: await startApps(3, options) });
    }
    for (const variant of Object.keys(VARIANTS)) {
      const runs = Object.fromEntries(MODES.map((m) => [m.id, []]));
      for (let done = 0; done < iterations; done += BLOCK) {
        for (const { mode, apps } of clusters) {
          const warmup = done === 0 ? WARMUP : 0;
          runs[mode.id].push(await loginThenNext(apps[0], apps[1], { variant, iterations: Math.min(BLOCK, iterations - done), warmup, tag: `${mode.id}-${done}` }));
        }
      }
      for (const mode of MODES) {
        const blocks = runs[mode.id];
        const sum = (k) => blocks.reduce((s, b) => s + b[k], 0);
        const all = (k) => blocks.flatMap((b) => b[k]);
        results[`${mode.id}:${variant}`] = {
          mode: mode.id,
          variant,
          iterations: sum("iterations"),
          stale: sum("stale"),
          logouts: sum("logouts"),
          originalLost: sum("originalLost"),
          notRegenerated: sum("notRegenerated"),
          staleDelayUs: all("staleDelayUs").length ? withMean(all("staleDelayUs")) : null,
          loginUs: withMean(all("loginUs")),
          nextUs: withMean(all("nextUs")),
        };
      }
    }
    for (const { mode, apps } of clusters) ackTimeouts[mode.id] = (await apps[0].request("GET", "/status")).body.stats.ackTimeouts;
  } finally {
    await stopApps(clusters.flatMap((c) => c.apps));
  }
  const out = {
    method: `3 apps (Express + express-session, resave false, saveUninitialized false) in separate processes on one loopback cluster; per iteration a login (POST /login, ≈1 KB session) on A, then as soon as A's response has ended GET /me on B with its cookie; variants: ${Object.entries(VARIANTS).map(([k, v]) => `${k} (${v})`).join("; ")}. ${iterations} iterations per variant and mode (after ${WARMUP} of warm-up), the modes' clusters taking turns in blocks of ${BLOCK}. Stale read: B did not see the user; logout for good: B answered with a cookie of another sid. Stale read → B had it: from A's response ended to B's store returning the session (B polls from its miss on). Times: request sent → response ended, seen by the client`,
    iterations,
    warmup: WARMUP,
    block: BLOCK,
    ackTimeouts,
    results,
  };
  const t = report.readYourWritesTable(out);
  const saved = console.log;
  console.log = log;
  try {
    u.printTable("read your writes: login on A, next request on B (3 apps on loopback)", t.header, t.rows);
  } finally {
    console.log = saved;
  }
  log(`A's ackTimeouts with waitForAck: ${out.ackTimeouts.on}`);
  return out;
}

module.exports = { run };

if (require.main === module) {
  u.limitRun("bench/readyourwrites.js", 15);
  u.runPartAlone("readyourwrites", () => run({ iterations: Number(process.argv[2]) || ITERATIONS }), report.withReadYourWritesSection);
}
