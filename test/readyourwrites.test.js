"use strict";
// Read your writes across nodes, as users meet it (README "Guarantees"): three Express apps with
// express-session, each in its own process on one loopback cluster (test/fixtures/session-app.js).
// A client logs in on A and, as soon as A's response has ended, sends its next request to B
// with the cookie A set. Variants: plain; regenerate (the login regenerates an anonymous
// session); bWrites (B's page also writes the session: when B finds no session, express-session
// makes a new one and sends a new cookie, and the user is logged out for good).
// With waitForAck, A's response waits until B (and C) applied the login: no stale read (the
// exceptions, an ackTimeout or a member no longer alive, are visible: A's ackTimeouts is checked).
// Without it B can read before the login arrives; the counts are printed, not asserted (they
// depend on timing), but a logout for good must not happen: a get that finds nothing asks the
// other nodes (the miss path, src/core/miss.rs).
// RYW_ITERATIONS=5000 for a longer run (default 400 per variant and mode).
const assert = require("node:assert/strict");
const crypto = require("node:crypto");
const { clusterOptions } = require("./cluster/harness");
const { VARIANTS, startApps, stopApps, loginThenNext } = require("./fixtures/session-app");

const ITERATIONS = Number(process.env.RYW_ITERATIONS) || 400;

function summary(r) {
  const delays = [...r.staleDelayUs].sort((x, y) => x - y);
  const delay = delays.length ? `; B had it ${Math.round(delays[delays.length >> 1])} µs (median), ${Math.round(delays[delays.length - 1])} µs (max) after A's response ended` : "";
  return `${r.variant}: ${r.stale} stale reads, ${r.logouts} logouts for good in ${r.iterations}${delay}`;
}

/** Every variant on a new cluster of 3 apps with these store options. */
function measure(options) {
  const results = {};
  before(async function () {
    this.timeout(60_000 + ITERATIONS * 100);
    const apps = await startApps(3, clusterOptions({ secret: crypto.randomBytes(16).toString("hex"), ...options }));
    try {
      for (const variant of Object.keys(VARIANTS)) results[variant] = await loginThenNext(apps[0], apps[1], { variant, iterations: ITERATIONS, warmup: 20 });
      results.ackTimeouts = (await apps[0].request("GET", "/status")).body.stats.ackTimeouts;
    } finally {
      await stopApps(apps);
    }
  });
  return results;
}

/** What every run must show, whatever the mode: the scenario did what it says. */
function assertScenario(results) {
  for (const variant of Object.keys(VARIANTS)) {
    const r = results[variant];
    assert.equal(r.loginUs.length, ITERATIONS);
    assert.equal(r.notRegenerated, 0, `${variant}: the login kept the anonymous session's sid`);
    assert.equal(r.originalLost, 0, `${variant}: A no longer saw the user under the login's cookie`);
    if (variant !== "bWrites") assert.equal(r.logouts, 0, `${variant}: B changed the cookie without writing`);
  }
}

describe("read your writes: login on A, the next request on B (3 apps, separate processes)", function () {
  this.timeout(60_000);

  describe("waitForAck: true", () => {
    const results = measure({ waitForAck: true });

    it("no stale read and no logout for good, in every variant", () => {
      assertScenario(results);
      for (const variant of Object.keys(VARIANTS)) {
        const r = results[variant];
        console.log(`      waitForAck on,  ${summary(r)}`);
        assert.equal(r.stale, 0, `${summary(r)} (A's ackTimeouts: ${results.ackTimeouts})`);
        assert.equal(r.logouts, 0, summary(r));
      }
      assert.equal(results.ackTimeouts, 0, "A's writes were all acknowledged before ackTimeout");
    });
  });

  describe("waitForAck: false (the default)", () => {
    const results = measure({});

    it("stale reads and logouts for good (counted and printed: they depend on timing)", () => {
      for (const variant of Object.keys(VARIANTS)) console.log(`      waitForAck off, ${summary(results[variant])}`);
      assertScenario(results);
    });

    it("no logout for good: B asks the other nodes before it makes a new session", () => {
      assert.equal(results.bWrites.logouts, 0, summary(results.bWrites));
    });
  });
});
