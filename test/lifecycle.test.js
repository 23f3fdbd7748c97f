"use strict";
const assert = require("node:assert/strict");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { once } = require("node:events");
const { Worker } = require("node:worker_threads");
const { createStore, closeStores, sessionData, runChild, safeParse } = require("./helpers");
const { clusterOptions, waitUntil } = require("./cluster/harness");

const FIXTURES = path.join(__dirname, "fixtures");
const EXIT_BUDGET_MS = 5_000;

function assertCleanExit(run, mode) {
  assert.equal(run.signal, null, `child "${mode}" died of ${run.signal}; stderr: ${run.stderr}`);
  assert.equal(run.code, 0, `child "${mode}" exited with ${run.code}; stderr: ${run.stderr}`);
}

/** Runs test/fixtures/worker.js; resolves with its first message and its exit code. */
function runWorker(workerData, budgetMs = EXIT_BUDGET_MS) {
  return new Promise((resolve, reject) => {
    const worker = new Worker(path.join(FIXTURES, "worker.js"), { workerData });
    let message;
    const timer = setTimeout(() => {
      worker.terminate();
      reject(new Error(`worker ${JSON.stringify(workerData)} did not exit within ${budgetMs} ms (message: ${JSON.stringify(message)})`));
    }, budgetMs);
    worker.once("message", (m) => (message = m));
    worker.once("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    worker.once("exit", (code) => {
      clearTimeout(timer);
      resolve({ message, code });
    });
  });
}

function assertWorkerResult({ message, code }, sid, name) {
  assert.ok(message, "the worker posted nothing");
  assert.equal(message.error, undefined, message.error);
  assert.equal(message.got.owner, name);
  assert.equal(message.length, 1);
  assert.equal(message.members, 1);
  assert.equal(code, 0, `worker exit code ${code}`);
}

describe("lifecycle", () => {
  afterEach(closeStores);

  describe("a process exits on its own (code 0, within 5 s)", () => {
    it("after only requiring the package", async () => {
      assertCleanExit(await runChild("require"), "require");
    });

    it("with an idle store it never closed", async () => {
      assertCleanExit(await runChild("idle"), "idle");
    });

    it("with an idle multicast: false store it never closed", async () => {
      assertCleanExit(await runChild("idle-unicast"), "idle-unicast");
    });

    it("with a store that holds sessions and was never closed", async () => {
      const run = await runChild("sessions");
      assertCleanExit(run, "sessions");
      assert.deepEqual(run.result, { length: 5, got: 3 });
    });

    it("with a persist store (multicast: false, a snapshot every second) it never closed: its last snapshot is written at exit", async () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "esm-lifecycle-"));
      try {
        const file = path.join(dir, "s.snap");
        const cluster = `lifecycle-persist-${process.pid}`;
        const run = await runChild("persist-never-closed", { args: [JSON.stringify({ cluster, persist: { path: file, interval: 1 } })] });
        assertCleanExit(run, "persist-never-closed");
        assert.deepEqual(run.result, { length: 5 });
        const again = createStore({ multicast: false, cluster, persist: file });
        assert.equal(await again.length(), 5, "the snapshot written at exit holds the sessions");
        assert.equal(again.stats().snapshotLoadedSessions, 5);
      } finally {
        await closeStores();
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });

    it("after closing its store", async () => {
      assertCleanExit(await runChild("closed"), "closed");
    });

    it("with several stores closed in any order and a new one opened", async () => {
      const run = await runChild("many");
      assertCleanExit(run, "many");
      assert.deepEqual(run.result, { fresh: true });
    });
  });

  describe("signals (gracefullShutdown, default true)", () => {
    const signalChild = (mode, sig) =>
      runChild(mode, {
        onLine: (line, child) => {
          if (safeParse(line)?.ready) child.kill(sig);
        },
      });

    for (const sig of ["SIGTERM", "SIGINT"]) {
      it(`${sig} still terminates a process that has no handler of its own`, async () => {
        const run = await signalChild("signal", sig);
        assert.equal(run.signal, sig, `expected death by ${sig}, got code ${run.code} signal ${run.signal}; stderr: ${run.stderr}`);
      });

      it(`${sig} does not kill a process whose app handles it`, async () => {
        const run = await signalChild("signal-handled", sig);
        assert.ok(run.lines.some((l) => safeParse(l)?.handled === sig), "the app's handler did not run");
        assertCleanExit(run, "signal-handled");
      });
    }
  });

  // The same, with a networked store in the child and a peer in this process watching for its
  // leave (test/cluster.test.js checks SIGTERM with processes on both sides).
  describe("signals with a peer watching", function () {
    this.timeout(20_000);
    const TIMING = Object.freeze({ heartbeatInterval: 100, failureTimeout: 1_500 });
    const LEAVE_BUDGET_MS = 300;

    /** Starts `mode` in a new cluster with a peer here; sends `sig` once the peer knows the child. */
    async function signalWithPeer(mode, sig, childOptions = {}) {
      const opts = clusterOptions(TIMING);
      const peer = createStore({ ...opts, gracefullShutdown: false });
      const events = [];
      peer.on("member", (e) => events.push({ at: Date.now(), type: e.type, id: e.node.id }));
      await peer.ready();
      const sent = {};
      const run = await runChild(mode, {
        args: [JSON.stringify({ ...opts, ...childOptions })],
        budgetMs: 10_000,
        onLine: (line, child) => {
          const msg = safeParse(line);
          if (!msg || !msg.ready) return;
          sent.id = msg.self.id;
          waitUntil(() => events.some((e) => e.type === "join" && e.id === sent.id), 3_000)
            .catch(() => {}) // the assertions below tell what went wrong
            .finally(() => {
              sent.at = Date.now();
              child.kill(sig);
            });
        },
      });
      assert.ok(sent.at, `the child never got ready; stderr: ${run.stderr}`);
      const about = (type) => events.find((e) => e.type === type && e.id === sent.id);
      assert.ok(events.some((e) => e.type === "join" && e.id === sent.id), "the peer never saw the child join");
      return { run, sent, events, about, peer };
    }

    for (const sig of ["SIGTERM", "SIGINT"]) {
      it(`${sig} with no other handler: the peer sees the leave at once, the process dies of ${sig}`, async () => {
        const { run, sent, about } = await signalWithPeer("signal-peer", sig);
        assert.equal(run.signal, sig, `expected death by ${sig}, got code ${run.code} signal ${run.signal}; stderr: ${run.stderr}`);
        const leave = await waitUntil(() => about("leave"), 2_000, { what: "the peer sees the leave" });
        assert.ok(leave.at - sent.at < LEAVE_BUDGET_MS, `leave seen ${leave.at - sent.at} ms after ${sig}`);
        assert.equal(about("dead"), undefined);
      });

      it(`${sig} with the app's own handler: the store serves while the app drains, and leaves when the process exits`, async () => {
        const { run, about, peer } = await signalWithPeer("signal-peer-handled", sig);
        assertCleanExit(run, "signal-peer-handled");
        const messages = run.lines.map(safeParse).filter(Boolean);
        const handled = messages.find((m) => m.handled);
        assert.equal(handled && handled.handled, sig, "the app's handler did not run");
        const exiting = messages.find((m) => m.exiting);
        assert.ok(exiting, "the process ended before the app let it");
        assert.ok(run.exitedAt >= exiting.exiting && exiting.exiting - handled.at >= 290, "the process kept running after the signal");
        assert.equal(messages.find((m) => m.drained)?.drained, "ok", "a write during the drain failed");
        const leave = await waitUntil(() => about("leave"), 2_000, { what: "the peer sees the leave" });
        assert.ok(leave.at >= exiting.exiting - 5, `leave seen ${exiting.exiting - leave.at} ms before the app let the process end`);
        assert.ok(leave.at - run.exitedAt < LEAVE_BUDGET_MS, `leave seen ${leave.at - run.exitedAt} ms after the exit`);
        assert.equal((await peer.get("drained"))?.sig, sig, "the write made during the drain did not reach the peer");
      });

      it(`${sig} with gracefullShutdown: false: no leave (the peer declares it dead later), the signal still kills`, async () => {
        const { run, sent, about } = await signalWithPeer("signal-peer", sig, { gracefullShutdown: false });
        assert.equal(run.signal, sig, `expected death by ${sig}, got code ${run.code} signal ${run.signal}; stderr: ${run.stderr}`);
        const dead = await waitUntil(() => about("dead"), TIMING.failureTimeout + 2_000, { what: "the peer declares the child dead" });
        assert.ok(dead.at - sent.at >= TIMING.failureTimeout - 2 * TIMING.heartbeatInterval, `dead after only ${dead.at - sent.at} ms`);
        assert.equal(about("leave"), undefined, "no leave was announced");
      });
    }
  });

  describe("worker_threads", () => {
    it("a store works inside a worker", async () => {
      assertWorkerResult(await runWorker({ sid: "w1", name: "one" }), "w1", "one");
    });

    it("two workers at once, then a store in the main thread", async () => {
      const [a, b] = await Promise.all([runWorker({ sid: "wa", name: "a" }), runWorker({ sid: "wb", name: "b" })]);
      assertWorkerResult(a, "wa", "a");
      assertWorkerResult(b, "wb", "b");
      const store = createStore();
      await store.set("main", sessionData({ owner: "main" }));
      assert.equal((await store.get("main")).owner, "main");
    });

    it("a worker that never closes its store still exits on its own", async () => {
      assertWorkerResult(await runWorker({ sid: "w2", name: "open", close: false }), "w2", "open");
    });

    it("terminating a worker with an open store leaves this process healthy", async () => {
      const worker = new Worker(path.join(FIXTURES, "worker.js"), {
        workerData: { sid: "w3", name: "held", close: false, hold: true },
      });
      const [message] = await once(worker, "message");
      assert.equal(message.error, undefined, message.error);
      assert.equal(message.got.owner, "held");
      await worker.terminate();
      const store = createStore();
      await store.set("after", sessionData({ ok: true }));
      assert.equal((await store.get("after")).ok, true);
    });
  });

  describe("close() during writes", () => {
    afterEach(closeStores);

    it("delivers every write: lone ones sent from the JS thread, bursts handed to the network thread, the last turn's still queued", async () => {
      for (let run = 0; run < 3; run++) {
        const { cluster, multicastPort } = clusterOptions();
        const options = { cluster, multicastPort, heartbeatInterval: 100, failureTimeout: 600 };
        const a = createStore(options);
        const b = createStore(options);
        await Promise.all([a.ready(), b.ready()]);
        await waitUntil(() => a.stats().members === 2 && b.stats().members === 2, 5_000, { what: "A and B see each other" });
        const pad = "x".repeat(1_000);
        let n = 0;
        for (let turn = 0; turn < 40; turn++) {
          // Odd turns: 10 writes of ≈1 KB (too many for the JS thread to send); even turns: one,
          // after the event loop slept (sent from this thread).
          if (turn % 2 === 0) await new Promise((resolve) => setTimeout(resolve, 1));
          for (let k = turn % 2 ? 10 : 1; k > 0; k--) a.set(`r${run}-${n++}`, sessionData({ pad }), () => {});
          await new Promise(setImmediate);
        }
        for (let k = 0; k < 5; k++) a.set(`r${run}-${n++}`, sessionData({ pad }), () => {}); // not flushed yet
        const stats = a.stats();
        assert.ok(stats.directBatches > 0 && stats.writeBatches > stats.directBatches, JSON.stringify(stats));
        await a.close();
        assert.equal(await b.length(), n, `run ${run}: sessions on B when A's close() returned`);
        await b.close();
      }
    });
  });

  describe("several stores in this process", () => {
    it("close in any order, then a new one works", async () => {
      const stores = [createStore(), createStore({ multicast: false }), createStore(), createStore()];
      for (const [i, s] of stores.entries()) await s.set("sid", sessionData({ i }));
      await stores[2].close();
      assert.equal((await stores[0].get("sid")).i, 0, "closing one store affected another");
      assert.equal((await stores[3].get("sid")).i, 3);
      await Promise.all([stores[3].close(), stores[0].close()]);
      assert.equal((await stores[1].get("sid")).i, 1);
      await stores[1].close();

      const fresh = createStore();
      await fresh.set("sid", sessionData({ fresh: true }));
      assert.equal((await fresh.get("sid")).fresh, true);
      assert.equal(fresh.members().length, 1);
    });
  });
});
