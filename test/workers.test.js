"use strict";
// Several workers on one host (pm2, Node's `cluster` module), each a process of its own here
// (test/cluster/harness.js): the engine opens its sockets itself, not through Node's handle
// sharing, so forked processes bind exactly as `cluster` workers do. Loopback only (ipv4
// 127.0.0.1, multicastTTL 0), a cluster name and ports of each test's own.
const assert = require("node:assert/strict");
const { clusterOptions, startNode, stopAll, diagnostics, waitUntil, allAlive, replicated } = require("./cluster/harness");
const { sessionData } = require("./helpers");

const FAST = Object.freeze({ heartbeatInterval: 100, failureTimeout: 600 });

/** The "peers name only this node" warnings a node logged. */
const onlyMeWarnings = (node) => node.logs.filter((l) => l.level === "warn" && /resolve to this node only/.test(l.message));

const escape = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

describe("several workers on one host", function () {
  this.timeout(15_000);
  afterEach(async function () {
    if (this.currentTest.state === "failed") console.log(`    nodes of the failed test:\n${diagnostics()}`);
    await stopAll();
  });

  it("the same options in every worker, peers naming the one shared port: each stays alone and warns once, saying what to do", async () => {
    const options = clusterOptions({ multicast: false, ...FAST });
    const port = options.multicastPort;
    options.peers = [`127.0.0.1:${port}`];
    const workers = await Promise.all(["A", "B"].map((name) => startNode(options, { name })));
    await Promise.all(workers.map((w) => w.call("ready")));
    for (const w of workers) {
      await waitUntil(() => onlyMeWarnings(w).length > 0, 2_000, { what: `${w.name} warned that its peers name only itself` });
      // Each of them binds the shared port and skips the only peer as itself: alone.
      assert.equal((await w.call("members")).length, 1, `${w.name} is alone`);
    }
    for (const w of workers) {
      const [warning, ...more] = onlyMeWarnings(w);
      assert.equal(more.length, 0, `${w.name} warned once`);
      const me = escape(`127.0.0.1:${port}`);
      assert.match(warning.message, new RegExp(`peers \\["${me}"\\] resolve to this node only \\(${me}, its own multicastPort\\)`));
      for (const part of [/no one to replicate to/, new RegExp(`multicastPort of its own \\(e\\.g\\. ${port} \\+ worker index\\)`), /multicastTTL 0/]) {
        assert.match(warning.message, part);
      }
    }
  });

  it("a peer name that resolves to this node counts as this node", async () => {
    const options = clusterOptions({ multicast: false, ...FAST });
    options.peers = [`localhost:${options.multicastPort}`];
    const node = await startNode(options, { name: "A" });
    await node.call("ready");
    await waitUntil(() => onlyMeWarnings(node).length === 1, 2_000, { what: "A warned" });
    assert.match(onlyMeWarnings(node)[0].message, new RegExp(`peers \\["localhost:${options.multicastPort}"\\] resolve to this node only`));
  });

  it("a multicastPort each and every worker's port in peers (one list for all): they find each other, replicate, and none warns", async () => {
    const base = clusterOptions({ multicast: false, ...FAST });
    const ports = [base.multicastPort, base.multicastPort + 1];
    const peers = ports.map((p) => `127.0.0.1:${p}`);
    const workers = await Promise.all(ports.map((multicastPort, i) => startNode({ ...base, multicastPort, peers }, { name: "AB"[i] })));
    await Promise.all(workers.map((w) => w.call("ready")));
    await allAlive(workers);
    const [a, b] = workers;
    const fromA = sessionData({ by: "A" });
    await a.call("set", "sid-a", fromA);
    await replicated([b], "sid-a", fromA);
    const fromB = sessionData({ by: "B" });
    await b.call("set", "sid-b", fromB);
    await replicated([a], "sid-b", fromB);
    for (const w of workers) assert.deepEqual(onlyMeWarnings(w), [], `${w.name} logged no warning about its peers`);
  });
});
