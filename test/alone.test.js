"use strict";
// A node with no member to hear it sends no writes (src/driver/outbox.rs, "audience"): whoever joins
// later gets them by its state transfer. Stores of one process on a loopback cluster.
const assert = require("node:assert/strict");
const { createStore, closeStores, sessionData, uniqueCluster } = require("./helpers");
const { waitUntil } = require("./cluster/harness");

describe("a node alone", function () {
  this.timeout(30_000);
  afterEach(closeStores);

  it("sends no writes, and a node that joins later gets them all; once it leaves, nothing is sent again", async () => {
    const shared = { cluster: uniqueCluster("alone"), multicastPort: 20_000 + Math.floor(Math.random() * 40_000), heartbeatInterval: 100, failureTimeout: 600 };
    const a = createStore(shared);
    await a.ready();
    for (let i = 0; i < 100; i++) await a.set(`s${i}`, sessionData({ i }));
    await a.destroy("s0");
    assert.equal(a.stats().writeBatches, 0, "writes of a node alone are not handed to the network");

    const b = createStore(shared);
    await b.ready();
    assert.equal(await b.length(), 99, "the joiner got every write by its state transfer");
    assert.equal(await b.get("s0"), null, "and the destroy");
    await waitUntil(() => a.stats().members === 2, 5_000, { what: "A sees B" });
    await a.set("after-join", sessionData());
    await waitUntil(async () => (await b.get("after-join")) !== null, 2_000, { what: "B gets A's write once it is a member" });
    assert.ok(a.stats().writeBatches > 0);

    await b.close();
    await waitUntil(() => a.members().every((m) => m.self || m.state === "left"), 5_000, { what: "B left" });
    const batches = a.stats().writeBatches;
    await a.set("after-leave", sessionData());
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(a.stats().writeBatches, batches, "alone again: nothing sent");
    const c = createStore(shared);
    await c.ready();
    assert.ok(await c.get("after-leave"), "a later joiner has it");
  });
});
