"use strict";
const assert = require("node:assert/strict");
const path = require("node:path");
const { spawn } = require("node:child_process");
const { once } = require("node:events");
const { Worker } = require("node:worker_threads");
const { createStore, closeStores, sessionData } = require("./helpers");

const FIXTURES = path.join(__dirname, "fixtures");
const EXIT_BUDGET_MS = 5_000;

/**
 * Runs test/fixtures/child.js <mode>. Resolves with { code, signal, lines, stderr }; if the child
 * is still running after `budgetMs`, it is killed and the promise rejects.
 * `onLine(line, child)` sees each stdout line as it arrives.
 */
function runChild(mode, { budgetMs = EXIT_BUDGET_MS, onLine } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(FIXTURES, "child.js"), mode], {
      cwd: path.join(__dirname, ".."),
      stdio: ["ignore", "pipe", "pipe"],
    });
    const lines = [];
    let stderr = "";
    let pending = "";
    child.stdout.setEncoding("utf8").on("data", (chunk) => {
      pending += chunk;
      let nl;
      while ((nl = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        lines.push(line);
        if (onLine) onLine(line, child);
      }
    });
    child.stderr.setEncoding("utf8").on("data", (chunk) => (stderr += chunk));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`child "${mode}" still running after ${budgetMs} ms (it hangs); stdout: ${lines.join("\n")} stderr: ${stderr}`));
    }, budgetMs);
    child.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, lines, stderr, result: lines.length ? safeParse(lines[lines.length - 1]) : undefined });
    });
  });
}

function safeParse(line) {
  try {
    return JSON.parse(line);
  } catch {
    return undefined;
  }
}

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
