"use strict";
// Clock skew between nodes. A store in this process keeps the host's clock; its peer is a separate
// process whose clock (JS and engine alike) libfaketime shifts by an hour. Loopback only (ipv4
// 127.0.0.1, multicastTTL 0), a cluster name and a random port of its own per test.
//
// What is checked: each side's members() reports the other's offset (clockOffsetMs), metrics()
// exports it, each side logs one warning (rate-limited) naming the member; maxClockSkew: 0 keeps
// the estimate but not the warning; unshifted processes report a small offset and no warning;
// and what docs/how-it-works.md ("Clocks") says skew does to expiry (an absolute time on the writer's clock).
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const { createStore, closeStores, makeLogger, sleep } = require("./helpers");
const { clusterOptions, startNode, stopAll, diagnostics, waitUntil } = require("./cluster/harness");

const HOUR = 3_600_000;
const FAST = Object.freeze({ heartbeatInterval: 100, failureTimeout: 600 });
/** Lifetime of the sessions written without a cookie expiry in the expiry test. */
const TTL_S = 2;
/** How far an estimate may be from the shift (loopback delays are microseconds; rounding, IPC). */
const TOLERANCE_MS = 1_000;

/** libfaketime's preload library (Debian package faketime), or null. */
function findLibfaketime() {
  const dirs = ["/usr/lib/faketime", "/usr/local/lib/faketime", "/usr/lib64/faketime"];
  for (const base of ["/usr/lib", "/usr/lib64"]) {
    try {
      for (const entry of fs.readdirSync(base)) dirs.push(path.join(base, entry, "faketime"));
    } catch {
      // no such directory
    }
  }
  return dirs.map((dir) => path.join(dir, "libfaketime.so.1")).find((file) => fs.existsSync(file)) || null;
}

const LIBFAKETIME = process.platform === "linux" ? findLibfaketime() : null;

/** Environment that shifts a process's wall clock by `shift` ("+1h"), its monotonic clock untouched. */
function shifted(shift) {
  return { LD_PRELOAD: LIBFAKETIME, FAKETIME: shift, FAKETIME_DONT_FAKE_MONOTONIC: "1" };
}

const warningsIn = (logger) =>
  logger.records.filter((r) => r.level === "warn" && /clock skew/.test(r.args[0])).map((r) => r.args[0]);

/** The member `id` in `members`, once its offset is known. */
const offsetOf = (members, id) => {
  const member = members.find((m) => m.id === id);
  return member && member.clockOffsetMs !== null ? member.clockOffsetMs : undefined;
};

/** This store (host clock) and a peer process with `env`, both ready. */
async function pair(options, env, storeOptions = {}) {
  const logger = makeLogger();
  const store = createStore({ ...options, ...storeOptions, logger });
  const peer = await startNode(options, { name: "P", env });
  await Promise.all([store.ready(), peer.call("ready")]);
  const self = store.members().find((m) => m.self);
  return { store, logger, self, peer };
}

describe("clock skew between members", function () {
  this.timeout(60_000);
  afterEach(async function () {
    if (this.currentTest.state === "failed") console.log(`    nodes of the failed test:\n${diagnostics()}`);
    await closeStores();
    await stopAll();
  });

  it("members on one host report a small offset, and nothing is logged", async () => {
    const { store, logger, self, peer } = await pair(clusterOptions(FAST));
    await sleep(20 * FAST.heartbeatInterval); // well past a window of samples
    const offset = offsetOf(store.members(), peer.self.id);
    const seen = offsetOf(await peer.call("members"), self.id);
    for (const [who, ms] of [["this store", offset], ["the peer", seen]]) {
      assert.ok(Math.abs(ms) < 250, `${who} sees an offset of ${ms} ms between two processes of one host`);
    }
    assert.equal(store.members().find((m) => m.self).clockOffsetMs, null, "none for this node itself");
    assert.match(store.metrics(), new RegExp(`session_multicast_member_clock_offset_seconds\\{node="${peer.self.id}",address="127.0.0.1"\\} -?0(\\.\\d+)?(e-\\d+)?\\n`));
    assert.deepEqual(warningsIn(logger), []);
    assert.deepEqual(peer.logs.filter((l) => /clock skew/.test(l.message)), []);
  });

  describe("a member under libfaketime", function () {
    before(function () {
      if (!LIBFAKETIME) {
        console.log("    libfaketime.so.1 (Debian package faketime) not found in /usr/lib/<multiarch>/faketime, /usr/lib/faketime or /usr/local/lib/faketime: skipping the clock-shift tests");
        this.skip();
      }
    });

    for (const [shift, shiftMs] of [["+1h", HOUR], ["-1h", -HOUR]]) {
      it(`${shift}: both sides see the offset in members() and metrics(), and each logs one warning`, async () => {
        const { store, logger, self, peer } = await pair(clusterOptions(FAST), shifted(shift));
        const peerNow = await peer.call("now");
        assert.ok(Math.abs(peerNow - Date.now() - shiftMs) < 60_000, `libfaketime did not shift the peer's clock (${peerNow - Date.now()} ms)`);

        const near = (ms) => ms !== undefined && Math.abs(ms - shiftMs) <= TOLERANCE_MS;
        const offset = await waitUntil(() => near(offsetOf(store.members(), peer.self.id)) && offsetOf(store.members(), peer.self.id), 3_000, {
          what: `this store reports the peer's clock offset ≈ ${shiftMs} ms`,
        });
        const seen = await waitUntil(async () => {
          const ms = offsetOf(await peer.call("members"), self.id);
          return ms !== undefined && Math.abs(ms + shiftMs) <= TOLERANCE_MS && ms;
        }, 3_000, { what: `the peer reports this store's clock offset ≈ ${-shiftMs} ms` });
        assert.ok(Math.abs(offset + seen) <= TOLERANCE_MS, `the two estimates disagree: ${offset} and ${seen} ms`);

        const line = store.metrics().split("\n").find((l) => l.startsWith(`session_multicast_member_clock_offset_seconds{node="${peer.self.id}"`));
        assert.ok(line, `no clock offset gauge for the peer in:\n${store.metrics()}`);
        assert.ok(Math.abs(Number(line.split(" ").pop()) * 1000 - shiftMs) <= TOLERANCE_MS, line);

        const ahead = shiftMs > 0 ? "ahead of" : "behind";
        const warning = await waitUntil(() => warningsIn(logger)[0], 3_000, { what: "a clock skew warning on this store" });
        assert.ok(warning.startsWith(`express-session-multicast: clock skew: member ${peer.self.id} at 127.0.0.1:`), warning);
        assert.match(warning, new RegExp(`its clock is 3\\d{3}\\.\\d{3} s ${ahead} this node's \\(maxClockSkew 1000 ms\\)`));
        for (const part of ["absolute time on the writer's clock", "concurrent writes", "NTP", "chrony"]) {
          assert.ok(warning.includes(part), `${JSON.stringify(part)} missing from: ${warning}`);
        }
        const peerWarning = await waitUntil(() => peer.logs.find((l) => /clock skew/.test(l.message)), 3_000, { what: "a clock skew warning on the peer" });
        assert.equal(peerWarning.level, "warn");
        assert.ok(peerWarning.message.includes(`member ${self.id} at 127.0.0.1:`), peerWarning.message);

        // Rate-limited: 30 more heartbeats, no second warning.
        await sleep(30 * FAST.heartbeatInterval);
        assert.equal(warningsIn(logger).length, 1, warningsIn(logger).join("\n"));
        assert.equal(peer.logs.filter((l) => /clock skew/.test(l.message)).length, 1);
      });
    }

    it("maxClockSkew: 0 keeps the estimate and drops the warning", async () => {
      const { store, logger, peer } = await pair(clusterOptions(FAST), shifted("+1h"), { maxClockSkew: 0 });
      await waitUntil(() => Math.abs(offsetOf(store.members(), peer.self.id) - HOUR) <= TOLERANCE_MS, 3_000, { what: "the offset" });
      await sleep(20 * FAST.heartbeatInterval);
      assert.deepEqual(warningsIn(logger), []);
      assert.ok(peer.logs.some((l) => /clock skew/.test(l.message)), "the peer, with the default maxClockSkew, warns");
    });

    for (const [shift, shiftMs] of [["+1h", HOUR], ["-1h", -HOUR]]) {
      it(`${shift}: an expiry is an absolute time on the writer's clock (docs/how-it-works.md's account of skew)`, async () => {
        const { store, peer } = await pair(clusterOptions({ ...FAST, ttl: TTL_S }), shifted(shift));
        // Without a cookie expiry, a session lives `ttl` from its write, by the writer's engine.
        const marker = (now) => ({ cookie: { originalMaxAge: 3 * HOUR, expires: new Date(now + 3 * HOUR).toISOString(), path: "/" } });
        const writtenAt = Date.now();
        await store.set("short-here", { by: "store" });
        await store.set("marker-here", marker(Date.now()));
        await peer.call("set", "short-peer", { by: "peer" });
        await peer.call("set", "marker-peer", marker(await peer.call("now")));
        // The markers come after the short sessions in each writer's stream: once a marker is
        // there, so is the short session before it (expired or not).
        await waitUntil(async () => (await store.get("marker-peer")) && (await peer.call("get", "marker-here")), 5_000, { what: "both markers replicated" });
        assert.ok(Date.now() - writtenAt < TTL_S * 1000 - 300, "too slow to check before the sessions' ttl");

        // The fast node's writes are dated an hour ahead: they outlive their ttl an hour on the
        // slow one. The slow node's are an hour late on the fast one: expired on arrival.
        const get = { here: (sid) => store.get(sid), peer: (sid) => peer.call("get", sid) };
        const [fast, slow] = shiftMs > 0 ? ["peer", "here"] : ["here", "peer"];
        assert.equal(await get[fast](`short-${slow}`), null, `the slow node's session is expired on arrival on the fast node`);
        assert.deepEqual(await get[slow](`short-${fast}`), { by: fast === "here" ? "store" : "peer" });
        assert.ok(await get[slow](`short-${slow}`), "a session is live on its writer within its ttl");

        await sleep(Math.max(0, writtenAt + TTL_S * 1000 + 500 - Date.now()));
        assert.equal(await get[fast](`short-${fast}`), null, "expired on its writer after its ttl");
        assert.equal(await get[slow](`short-${slow}`), null, "expired on its writer after its ttl");
        assert.ok(await get[slow](`short-${fast}`), "the fast node's session outlives its ttl on the slow node");
      });
    }
  });
});
