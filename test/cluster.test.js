"use strict";
// Replication between separate Node processes (test/cluster/harness.js). Every cluster here is
// loopback-only (ipv4 127.0.0.1, multicastTTL 0) with a name and a multicast port of its own.
const assert = require("node:assert/strict");
const crypto = require("node:crypto");
const { isDeepStrictEqual } = require("node:util");
const { setTimeout: sleep } = require("node:timers/promises");
const {
  startCluster,
  startNode,
  stopAll,
  diagnostics,
  waitUntil,
  bulkSession,
  REPLICATION_MS,
  short,
  replicated,
  lengthEverywhere,
  allAlive,
} = require("./cluster/harness");

const FAST = Object.freeze({ heartbeatInterval: 100, failureTimeout: 600 });
const MiB = 1024 * 1024;

const iso = (t) => new Date(t).toISOString();

/** A session shaped like express-session's, expiring at `expiresAt` (epoch ms). */
function sess(data, expiresAt = Date.now() + 3_600_000) {
  return { cookie: { originalMaxAge: 3_600_000, expires: iso(expiresAt), httpOnly: true, path: "/" }, ...data };
}

/** Asserts that every node holds exactly `expected` (all()). No waiting. */
async function assertAll(nodes, expected, when) {
  for (const node of nodes) {
    const all = await node.call("all");
    const got = Object.keys(all).length;
    assert.equal(got, Object.keys(expected).length, `${node.name} holds ${got} sessions ${when}`);
    assert.ok(isDeepStrictEqual(all, expected), `${node.name}.all() differs from the expected sessions ${when}`);
  }
}

describe("cluster: stores in separate processes (loopback multicast)", function () {
  this.timeout(60_000);
  afterEach(async function () {
    if (this.currentTest.state === "failed") console.log(`    nodes of the failed test:\n${diagnostics()}`);
    await stopAll();
  });

  for (const n of [2, 3]) {
    describe(`${n} processes`, () => {
      let nodes;
      beforeEach(async () => {
        nodes = await startCluster(n, { ...FAST, maxSessionBytes: 2 * MiB });
      });

      it("members() on every node lists every node, alive, with itself marked self", async () => {
        await allAlive(nodes);
        const ids = nodes.map((node) => node.self.id).sort();
        assert.equal(new Set(ids).size, n, "node ids must be unique");
        for (const node of nodes) {
          const members = await node.call("members");
          assert.deepEqual(members.map((m) => m.id).sort(), ids, `${node.name}.members()`);
          for (const m of members) {
            assert.equal(m.state, "alive", `${node.name} sees ${m.id} as ${m.state}`);
            assert.equal(m.address, "127.0.0.1");
            assert.equal(m.self, m.id === node.self.id, `${node.name}: self flag of ${m.id}`);
            const owner = nodes.find((x) => x.self.id === m.id);
            assert.equal(m.incarnation, owner.self.incarnation, `${node.name}: incarnation of ${owner.name}`);
          }
        }
        // Each node was told about every node that joined after it.
        for (const [i, node] of nodes.entries()) {
          for (const later of nodes.slice(i + 1)) {
            await node.waitForEvent((e) => e.type === "join" && e.node.id === later.self.id, 2_000, `join of ${later.name}`);
          }
        }
      });

      it("a set on A is read on every other node", async () => {
        const value = sess({ user: "ada", cart: [1, 2, 3], nested: { ok: true } });
        await nodes[0].call("set", "sid-a", value);
        await replicated(nodes, "sid-a", value);
        // …and the other way round, from the last node.
        const other = sess({ user: "grace" });
        await nodes[n - 1].call("set", "sid-z", other);
        await replicated(nodes, "sid-z", other);
        await lengthEverywhere(nodes, 2);
      });

      it("touch replicates the cookie and expiry, and never reverts data written later elsewhere", async () => {
        const [A, B] = nodes;
        const t1 = Date.now() + 600_000;
        await A.call("set", "t", sess({ n: 1 }, t1));
        await replicated(nodes, "t", sess({ n: 1 }, t1));
        await B.call("set", "t", sess({ n: 2 }, t1));
        await replicated(nodes, "t", sess({ n: 2 }, t1));

        // A touches with the stale session it read before (n: 1) and a later expiry.
        const touched = sess({ n: 1 }, t1 + 600_000);
        await A.call("touch", "t", touched);
        await replicated(nodes, "t", { ...sess({ n: 2 }), cookie: touched.cookie });
      });

      it("destroy replicates (and destroys only that session)", async () => {
        const doomed = sess({ doomed: true });
        const kept = sess({ kept: true });
        await nodes[0].call("set", "doomed", doomed);
        await nodes[0].call("set", "kept", kept);
        await replicated(nodes, "doomed", doomed);
        await replicated(nodes, "kept", kept);
        await nodes[n - 1].call("destroy", "doomed");
        await replicated(nodes, "doomed", null);
        await lengthEverywhere(nodes, 1);
        await replicated(nodes, "kept", kept);
      });

      it("clear replicates, and a write made after it survives", async () => {
        for (const node of nodes) await node.call("bulkSet", `${node.name}-`, 20, 50);
        await lengthEverywhere(nodes, 20 * n);
        await nodes[1].call("clear");
        await lengthEverywhere(nodes, 0);
        const after = sess({ afterClear: true });
        await nodes[0].call("set", "after", after);
        await replicated(nodes, "after", after);
        await lengthEverywhere(nodes, 1);
      });

      it("200 rounds of writes to one sid from every node at once converge to one identical value", async () => {
        const ROUNDS = 200;
        const expiresAt = Date.now() + 3_600_000;
        for (let round = 0; round < ROUNDS; round++) {
          await Promise.all(nodes.map((node) => node.call("set", "hot", sess({ writer: node.name, round }, expiresAt))));
        }
        const values = await waitUntil(
          async () => {
            const got = await Promise.all(nodes.map((node) => node.call("get", "hot")));
            return got[0] && got.every((v) => isDeepStrictEqual(v, got[0])) ? got : null;
          },
          REPLICATION_MS,
          { what: "get('hot') is the same on every node" }
        );
        const winner = values[0];
        assert.equal(winner.round, ROUNDS - 1, `the winner must be one of the last writes, got ${short(winner)}`);
        assert.ok(nodes.some((node) => node.name === winner.writer));
        // Converged for good: a few heartbeats later every node still holds the same value.
        await sleep(5 * FAST.heartbeatInterval);
        for (const node of nodes) assert.deepEqual(await node.call("get", "hot"), winner, `${node.name} changed its mind`);
        await lengthEverywhere(nodes, 1, 0);
      });

      it("a 1 MB session replicates (two at once, from two nodes)", async () => {
        const bigA = sess({ blob: crypto.randomBytes(768 * 1024).toString("base64") }); // 1 MiB of base64
        const bigZ = sess({ blob: crypto.randomBytes(768 * 1024).toString("base64") });
        assert.ok(JSON.stringify(bigA).length > MiB);
        await Promise.all([nodes[0].call("set", "big-a", bigA), nodes[n - 1].call("set", "big-z", bigZ)]);
        await replicated(nodes, "big-a", bigA, 10_000);
        await replicated(nodes, "big-z", bigZ, 10_000);
      });
    });
  }

  it("three nodes started at the same time find each other and share sessions", async () => {
    const nodes = await startCluster(3, FAST, { concurrent: true });
    await allAlive(nodes);
    const value = sess({ concurrentStart: true });
    await nodes[2].call("set", "s", value);
    await replicated(nodes, "s", value);
  });

  describe("state transfer", () => {
    it("a node that joins a cluster holding 10,000 sessions has all of them when ready() resolves", async () => {
      const COUNT = 10_000;
      const BYTES = 200;
      const nodes = await startCluster(2, FAST);
      const [A, B] = nodes;
      const { expires } = await A.call("bulkSet", "s-", COUNT, BYTES);
      await lengthEverywhere(nodes, COUNT, 20_000);

      const C = await startNode(nodes.options, { name: "C" });
      await C.call("ready");
      // No polling: everything must be there the moment ready() resolved.
      assert.equal(await C.call("length"), COUNT, "length() right after ready()");
      const sample = [0, 1, COUNT - 1, ...Array.from({ length: 200 }, () => crypto.randomInt(COUNT))];
      const got = await C.call("getMany", sample.map((i) => `s-${i}`));
      for (const i of sample) assert.deepEqual(got[`s-${i}`], bulkSession("s-", i, BYTES, expires), `s-${i} on C`);
      assert.equal((await C.call("stats")).sessions, COUNT);
      assert.equal(await B.call("length"), COUNT);
    });

    it("writes made while a node joins reach it as well", async () => {
      const nodes = await startCluster(2, FAST);
      const [A, B] = nodes;
      await A.call("bulkSet", "s-", 5_000, 200);
      await lengthEverywhere(nodes, 5_000, 20_000);

      const C = await startNode(nodes.options, { name: "C" });
      const joining = C.call("ready");
      // Meanwhile: new sessions on A, destroys on B.
      const writes = (async () => {
        for (let i = 0; i < 300; i++) {
          await A.call("set", `live-${i}`, sess({ i }));
          if (i < 100) await B.call("destroy", `s-${i}`);
        }
      })();
      await Promise.all([joining, writes]);
      await lengthEverywhere([A, B, C], 5_000 - 100 + 300, REPLICATION_MS);
      const expected = await A.call("all");
      await assertAll([B, C], expected, "after the join and the concurrent writes");
    });
  });

  describe("failure detection", () => {
    it("a node killed with SIGKILL is reported dead within failureTimeout + one heartbeat; the others keep every session; a restart recovers everything", async () => {
      const nodes = await startCluster(3, FAST);
      const [A, B, C] = nodes;
      for (const node of nodes) await node.call("bulkSet", `${node.name}-`, 100, 100);
      await lengthEverywhere(nodes, 300);
      await allAlive(nodes);
      const before = await A.call("all");

      await C.kill("SIGKILL");
      for (const node of [A, B]) {
        const dead = await node.waitForEvent((e) => e.type === "dead" && e.node.id === C.self.id, 5_000, "dead of C");
        const elapsed = dead.at - C.killedAt;
        const budget = FAST.failureTimeout + FAST.heartbeatInterval;
        assert.ok(elapsed <= budget, `${node.name} reported C dead ${elapsed} ms after SIGKILL (budget ${budget} ms)`);
        // …and not before failureTimeout of silence.
        const silence = dead.at - dead.node.lastHeard;
        assert.ok(
          silence >= FAST.failureTimeout,
          `${node.name} reported C dead after only ${silence} ms of silence (failureTimeout ${FAST.failureTimeout} ms)`
        );
        const suspect = node.eventsAbout(C.self.id, "suspect")[0];
        assert.ok(suspect && suspect.at <= dead.at, `${node.name}: C should be suspect before dead`);
        const entry = (await node.call("members")).find((m) => m.id === C.self.id);
        assert.equal(entry && entry.state, "dead", `${node.name}.members() entry of C`);
      }
      await assertAll([A, B], before, "after C died");

      // Restart: a new process with the same options.
      const C2 = await startNode(nodes.options, { name: "C2" });
      await C2.call("ready");
      await assertAll([C2], before, "right after ready() (restarted node)");
      assert.ok(
        C2.self.id !== C.self.id || C2.self.incarnation > C.self.incarnation,
        `the restarted node must be a new incarnation (${short(C.self)} → ${short(C2.self)})`
      );
      for (const node of [A, B]) {
        await node.waitForEvent(
          (e) => (e.type === "join" || e.type === "alive") && e.node.id === C2.self.id && e.node.incarnation === C2.self.incarnation,
          3_000,
          "join of C2"
        );
      }
      await allAlive([A, B, C2]);
      const fresh = sess({ afterRestart: true });
      await C2.call("set", "after-restart", fresh);
      await replicated([A, B, C2], "after-restart", fresh);
    });

    const LEAVE = Object.freeze({ heartbeatInterval: 100, failureTimeout: 1_500 });
    const LEAVE_BUDGET_MS = 300; // "at once": a fifth of failureTimeout

    async function assertLeft(observers, gone, since) {
      for (const node of observers) {
        const leave = await node.waitForEvent((e) => e.type === "leave" && e.node.id === gone.self.id, 3_000, `leave of ${gone.name}`);
        const elapsed = leave.at - since;
        assert.ok(elapsed < LEAVE_BUDGET_MS, `${node.name} reported the leave of ${gone.name} after ${elapsed} ms (failureTimeout ${LEAVE.failureTimeout} ms)`);
        const entry = (await node.call("members")).find((m) => m.id === gone.self.id);
        assert.ok(!entry || entry.state === "left", `${node.name}.members() shows ${gone.name} as ${entry && entry.state}`);
      }
      // A node that left is never suspected nor declared dead afterwards.
      await sleep(LEAVE.failureTimeout + 2 * LEAVE.heartbeatInterval);
      for (const node of observers) {
        const bad = node.eventsAbout(gone.self.id).filter((e) => e.type === "suspect" || e.type === "dead");
        assert.deepEqual(bad, [], `${node.name} reported ${gone.name} ${bad.map((e) => e.type).join(", ")} after its leave`);
      }
    }

    it("a gracefully closed node is reported as leave at once, never as dead", async () => {
      const nodes = await startCluster(3, LEAVE);
      const [A, B, C] = nodes;
      const value = sess({ from: "C" });
      await C.call("set", "from-c", value);
      await replicated(nodes, "from-c", value);
      await allAlive(nodes);

      const since = Date.now();
      await C.close();
      await assertLeft([A, B], C, since);
      await replicated([A, B], "from-c", value, 0);
    });

    it("SIGTERM (gracefullShutdown) announces the leave, then the process dies of SIGTERM", async () => {
      const nodes = await startCluster(3, LEAVE);
      const [A, B, C] = nodes;
      await allAlive(nodes);
      const { signal } = await C.kill("SIGTERM");
      assert.equal(signal, "SIGTERM");
      await assertLeft([A, B], C, C.killedAt);
    });

    it("a node whose JS event loop is blocked for 3 × failureTimeout is not reported suspect or dead", async () => {
      const nodes = await startCluster(2, FAST);
      const [A, B] = nodes;
      await allAlive(nodes);
      await B.callWithTimeout(10_000, "block", 3 * FAST.failureTimeout);
      await sleep(2 * FAST.heartbeatInterval);
      const bad = A.eventsAbout(B.self.id).filter((e) => e.type === "suspect" || e.type === "dead");
      assert.deepEqual(bad, [], "heartbeats must come from the engine's threads, not the JS event loop");
      await allAlive(nodes, 0);
    });
  });
});
