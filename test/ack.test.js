"use strict";
// waitForAck (README "Guarantees"): a write calls back once every member alive when it left has
// applied it, or at ackTimeout. Stores of one process share a cluster on loopback (a read on B
// right after A's callback is the test), and a member that stalls is a separate process
// (test/cluster/harness.js) stopped with SIGSTOP.
const assert = require("node:assert/strict");
const fs = require("node:fs");
const { createStore, closeStores, sessionData, uniqueCluster, makeLogger, sleep } = require("./helpers");
const { startNode, stopAll, waitUntil, diagnostics } = require("./cluster/harness");

const portFor = () => 20_000 + Math.floor(Math.random() * 40_000);

/** `n` stores of one new cluster in this process, ready and seeing each other alive. */
async function cluster(n, options = {}) {
  const shared = { cluster: uniqueCluster("ack"), multicastPort: portFor(), heartbeatInterval: 100, failureTimeout: 600, ...options };
  const stores = [];
  for (let i = 0; i < n; i++) {
    stores.push(createStore(shared));
    await stores[i].ready();
  }
  await waitUntil(() => stores.every((s) => s.stats().members === n), 5_000, { what: `${n} members everywhere` });
  return stores;
}

const aliveMembers = (store) => store.members().filter((m) => !m.self && m.state === "alive").length;

/** Stops a node's process (SIGSTOP) and waits until the kernel shows it stopped. */
async function stall(node) {
  node.child.kill("SIGSTOP");
  const stopped = () => fs.readFileSync(`/proc/${node.pid}/stat`, "utf8").replace(/^.*\) /s, "")[0] === "T";
  await waitUntil(stopped, 2_000, { intervalMs: 1, what: `${node.name} stopped` });
}

describe("waitForAck", function () {
  this.timeout(30_000);
  afterEach(async function () {
    if (this.currentTest.state === "failed") console.log(diagnostics());
    await closeStores();
    await stopAll();
  });

  it("a set calls back once every other node holds it: a read there right after sees it", async () => {
    const [a, b, c] = await cluster(3, { waitForAck: true });
    let stale = 0;
    for (let i = 0; i < 300; i++) {
      await a.set(`s${i}`, sessionData({ i }));
      // Sync reads through the engine, right after the callback: nothing had time to arrive later.
      for (const other of [b, c]) if (!(await other.get(`s${i}`))) stale++;
      if (i % 10 === 0) await sleep(2); // idle gaps, as real traffic has
    }
    assert.equal(stale, 0, "reads on B and C that missed a write A had called back for");
    assert.equal(a.stats().ackTimeouts, 0);
    assert.ok(a.stats().acksReceived >= 300, `acks received: ${a.stats().acksReceived}`);
  });

  it("lone writes leave from the JS thread (directBatches) and still wait for every member's ack", async () => {
    const [a, b, c] = await cluster(3, { waitForAck: true });
    const before = a.stats();
    let stale = 0;
    for (let i = 0; i < 100; i++) {
      await a.set(`lone${i}`, sessionData({ i }));
      for (const other of [b, c]) if (!(await other.get(`lone${i}`))) stale++;
      await sleep(2); // idle: the network thread is asleep when the next write leaves
    }
    const after = a.stats();
    assert.equal(stale, 0, "reads on B and C that missed a write A had called back for");
    assert.equal(after.ackTimeouts, 0);
    const direct = after.directBatches - before.directBatches;
    assert.equal(after.writeBatches - before.writeBatches, 100, "one batch per lone write");
    // Sent from this thread unless the network thread held the state lock at that moment.
    assert.ok(direct >= 50, `direct batches: ${direct} of 100`);
  });

  it("touch, destroy and clear wait too, with callbacks and with Promises", async () => {
    const [a, b] = await cluster(2, { waitForAck: true });
    await a.set("t", sessionData({ v: 1 }));
    const later = Date.now() + 3_600_000;
    await new Promise((resolve, reject) => a.touch("t", sessionData({ v: 1 }, { expiresAt: later }), (e) => (e ? reject(e) : resolve())));
    assert.equal((await b.get("t")).cookie.expires, new Date(later).toISOString());
    await new Promise((resolve, reject) => a.destroy("t", (e) => (e ? reject(e) : resolve())));
    assert.equal(await b.get("t"), null);
    await b.set("u", sessionData());
    assert.ok(await a.get("u"));
    await b.clear();
    assert.equal(await a.length(), 0);
  });

  it("acknowledgements trim the retransmit buffer: nothing is kept once every member has it", async () => {
    const [a, b] = await cluster(2, { waitForAck: true });
    for (let i = 0; i < 50; i++) await a.set(`s${i}`, sessionData({ pad: "x".repeat(500) }));
    assert.equal(a.stats().retransmitBufferBytes, 0);
    // Without waitForAck the periodic acks trim it within a few ticks.
    await b.set("b", sessionData({ pad: "x".repeat(500) }));
    await waitUntil(() => b.stats().retransmitBufferBytes === 0, 2_000, { what: "B's buffer trimmed" });
  });

  it("a node alone calls back at once, and a closing store calls back every waiting write", async () => {
    const [alone] = await cluster(1, { waitForAck: true });
    const started = Date.now();
    for (let i = 0; i < 20; i++) await alone.set(`s${i}`, sessionData());
    assert.ok(Date.now() - started < 1_000, "writes of a node alone do not wait");
    assert.equal(alone.stats().ackTimeouts, 0);
    // A member that stalls; the writes to it are called back by close() (its leave waited for them).
    const [a] = await cluster(1, { waitForAck: true, ackTimeout: 20_000, heartbeatInterval: 1_000, failureTimeout: 10_000 });
    const b = await startNode({ ...a.options, secret: undefined, waitForAck: true }, { name: "B" });
    await waitUntil(() => aliveMembers(a) === 1, 5_000, { what: "A sees B" });
    await stall(b);
    try {
      const pending = a.set("x", sessionData());
      let called = false;
      pending.then(() => (called = true));
      await sleep(100);
      assert.equal(called, false, "the write waits for the stalled member");
      await a.close();
      await pending;
    } finally {
      b.child.kill("SIGCONT");
    }
  });

  it("a member that dies while a write waits for it is not waited for once it is suspect", async () => {
    // B stalls (SIGSTOP): after 2.5 heartbeats A sees it suspect, and the write is called back then,
    // long before ackTimeout.
    const [a] = await cluster(1, { waitForAck: true, ackTimeout: 20_000 });
    const b = await startNode({ ...a.options, secret: undefined }, { name: "B" });
    await waitUntil(() => aliveMembers(a) === 1, 5_000, { what: "A sees B" });
    await a.set("before", sessionData());
    await stall(b);
    try {
      const started = Date.now();
      await a.set("while-stalled", sessionData());
      const waited = Date.now() - started;
      assert.ok(waited >= 100 && waited < 5_000, `called back after ${waited} ms (B turns suspect after ~250 ms)`);
      assert.equal(a.members().find((m) => m.id === b.self.id).state !== "alive", true, "B is no longer alive");
      assert.equal(a.stats().ackTimeouts, 0, "settled by the member's failure, not by the timeout");
    } finally {
      b.child.kill("SIGCONT");
    }
    // B comes back and gets the write it missed (NAK or sync).
    await waitUntil(async () => (await b.call("get", "while-stalled")) !== null, 5_000, { what: "B repaired" });
  });

  it("a member alive but silent: the write is called back at ackTimeout, counted and logged", async () => {
    const logger = makeLogger();
    const [a] = await cluster(1, { waitForAck: true, ackTimeout: 150, heartbeatInterval: 1_000, failureTimeout: 10_000, logger });
    const b = await startNode({ ...a.options, secret: undefined }, { name: "B" });
    await waitUntil(() => aliveMembers(a) === 1, 5_000, { what: "A sees B" });
    await stall(b);
    try {
      const started = Date.now();
      await a.set("late", sessionData());
      await a.set("late2", sessionData());
      const waited = Date.now() - started;
      assert.ok(waited >= 140 && waited < 2_000, `called back after ${waited} ms (ackTimeout 150)`);
      assert.equal(aliveMembers(a), 1, "B is still seen alive: the timeout, not its failure, settled the write");
      assert.equal(a.stats().ackTimeouts, 2);
      const warnings = logger.records.filter((r) => r.level === "warn" && /waitForAck/.test(r.args[0]));
      assert.equal(warnings.length, 1, "one warning per interval, however many timeouts");
      assert.match(warnings[0].args[0], new RegExp(b.self.id), "it names the member that did not acknowledge");
      assert.equal(await a.get("late").then(Boolean), true, "the write is stored here");
    } finally {
      b.child.kill("SIGCONT");
    }
    await waitUntil(async () => (await b.call("get", "late2")) !== null, 5_000, { what: "B gets the write after all" });
  });
});
