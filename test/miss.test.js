"use strict";
// A get that finds nothing asks the cluster (src/core/miss.rs; docs/how-it-works.md "Reading a session that has not
// arrived yet"). Stores of one cluster in this process, on loopback (ipv4 127.0.0.1, multicastTTL
// 0). A write leaves its node at the end of the event-loop turn that made it, so a get made on
// another store in that same turn truly finds nothing there: the session exists on its writer
// only. A made-up member speaking the wire format (test/wire.js, unsealed) plays a member that
// never answers, and the strangers whose queries must not be answered.
const assert = require("node:assert/strict");
const crypto = require("node:crypto");
const dgram = require("node:dgram");
const { createStore, closeStores, sessionData, viaCallback, sleep } = require("./helpers");
const { clusterOptions, waitUntil } = require("./cluster/harness");
const wire = require("./wire");

const FAST = Object.freeze({ heartbeatInterval: 50, failureTimeout: 1_000 });
// Generous for a busy machine: a query ends as soon as every member asked has answered.
const TIMEOUT = 2_000;
const LOOPBACK = "127.0.0.1";

/** `n` stores of a new cluster, all ready and seeing each other alive. */
async function cluster(n, options = {}) {
  const opts = clusterOptions({ ...FAST, missTimeout: TIMEOUT, ...options });
  const stores = Array.from({ length: n }, () => createStore(opts));
  await Promise.all(stores.map((s) => s.ready()));
  const allAlive = () => stores.every((s) => s.members().filter((m) => m.state === "alive").length === n);
  await waitUntil(allAlive, 5_000, { what: `${n} alive members everywhere` });
  await syncsOver(stores);
  return stores;
}

/**
 * Waits until the syncs that follow a join are over (none for 300 ms): a sync reads the other
 * node's table, so one running during a test would bring a write that has not left its node.
 */
async function syncsOver(stores) {
  const syncs = () => stores.reduce((sum, s) => sum + s.stats().antiEntropySyncs + s.stats().stateTransfers, 0);
  let last = syncs();
  let quietSince = Date.now();
  await waitUntil(() => {
    const now = syncs();
    if (now !== last) [last, quietSince] = [now, Date.now()];
    return Date.now() - quietSince >= 300;
  }, 10_000, { what: "the syncs after the joins are over" });
}

const MISS = ["missQueries", "missesRecovered", "missesNotFound", "missTimeouts", "missesRateLimited"];
const missStats = (store) => Object.fromEntries(MISS.map((key) => [key, store.stats()[key]]));
const counts = (...values) => Object.fromEntries(MISS.map((key, i) => [key, values[i]]));

/** Busy-waits past `ms` without a turn of the event loop: a later write gets a later version. */
function spin(ms) {
  const until = Date.now() + ms;
  while (Date.now() <= until);
}

const sockets = new Set();

async function udpSocket() {
  const socket = dgram.createSocket("udp4");
  await new Promise((resolve) => socket.bind(0, LOOPBACK, resolve));
  socket.unref();
  sockets.add(socket);
  return socket;
}

/**
 * A made-up member of `clusterName` (unsealed): it joins the store listening on `port`, keeps
 * itself alive with heartbeats, records the queries and answers it receives, and answers
 * nothing by itself. `sendFrom(socket, kind, body, node)` sends a packet as any node from any
 * socket.
 */
async function fakeMember(clusterName, port) {
  const socket = await udpSocket();
  const own = socket.address().port;
  const incarnation = BigInt(Date.now());
  const node = crypto.randomBytes(8).readBigUInt64BE();
  let packetNumber = 1n;
  const sendFrom = (from, kind, body, id = node) =>
    from.send(wire.unsealedPacket(clusterName, { kind, node: id, incarnation, packetNumber: packetNumber++ }, body), port, LOOPBACK);
  const member = {
    id: node.toString(16).padStart(16, "0"),
    received: [],
    send: (kind, body) => sendFrom(socket, kind, body),
    sendFrom,
  };
  socket.on("message", (bytes) => {
    const header = wire.decodeHeader(bytes);
    if (header && ["query", "answer"].includes(header.kindName)) member.received.push(wire.parseQueryOrAnswer(bytes));
  });
  member.send(wire.KIND.join, wire.joinBody(LOOPBACK, own, own));
  const heartbeats = setInterval(() => member.send(wire.KIND.heartbeat, wire.heartbeatBody(LOOPBACK, own, own, 0)), 40);
  heartbeats.unref();
  socket.on("close", () => clearInterval(heartbeats));
  return member;
}

describe("a get that finds nothing asks the cluster", function () {
  this.timeout(30_000);
  afterEach(async () => {
    for (const socket of sockets) socket.close();
    sockets.clear();
    await closeStores();
  });

  it("a session written on B that has not reached A: A's get asks, returns it, and the next get is local", async () => {
    const [a, b] = await cluster(2);
    const login = sessionData({ user: "ada" });
    b.set("login", login); // leaves B at the end of this turn
    assert.deepEqual(await a.get("login"), login);
    assert.deepEqual(missStats(a), counts(1, 1, 0, 0, 0));
    assert.deepEqual(await a.get("login"), login);
    assert.equal(a.stats().missQueries, 1, "merged on A: the second get was local");

    const other = sessionData({ user: "grace" });
    const { err, value, sync } = await viaCallback((callback) => {
      b.set("callback", other);
      a.get("callback", callback);
    });
    assert.deepEqual({ err, value, sync }, { err: null, value: other, sync: false });
    assert.deepEqual(missStats(a), counts(2, 2, 0, 0, 0));
    assert.equal(b.stats().missQueries, 0);
  });

  it("a session too large for a datagram is fetched over TCP, sealed or not", async () => {
    for (const secret of [undefined, crypto.randomBytes(32)]) {
      const [a, b] = await cluster(2, { secret });
      const large = sessionData({ pad: "x".repeat(100_000) });
      b.set("large", large);
      assert.deepEqual(await a.get("large"), large, secret ? "sealed" : "unsealed");
      assert.deepEqual(missStats(a), counts(1, 1, 0, 0, 0));
      assert.deepEqual(a.stats().dropped, {});
    }
  });

  it("a sid that exists nowhere answers null after one round trip, not after the timeout", async function () {
    const [a] = await cluster(2);
    const started = performance.now();
    assert.equal(await a.get("nowhere"), null);
    const ms = performance.now() - started;
    assert.ok(ms < TIMEOUT / 4, `took ${ms.toFixed(1)} ms`);
    assert.deepEqual(missStats(a), counts(1, 0, 1, 0, 0));
    this.test.title += ` [${ms.toFixed(2)} ms]`;
  });

  it("a sid destroyed on B before A heard of it answers null, and stays destroyed", async () => {
    const [a, b] = await cluster(2);
    b.set("gone", sessionData({ user: "ada" }));
    b.destroy("gone");
    assert.equal(await a.get("gone"), null);
    assert.equal(a.stats().tombstones, 1, "B's tombstone was merged");
    await sleep(300); // B's set and destroy arrive meanwhile
    assert.equal(await a.get("gone"), null);
    assert.deepEqual(missStats(a), counts(1, 0, 1, 0, 0), "the tombstone answered the second get here");
  });

  it("the newest version any member holds wins, a tombstone included", async () => {
    const [a, b, c] = await cluster(3);
    b.set("s", sessionData({ n: 1 }));
    b.set("t", sessionData({ n: 1 }));
    spin(2);
    c.set("s", sessionData({ n: 2 }));
    c.destroy("t");
    const [s, t] = await Promise.all([a.get("s"), a.get("t")]);
    assert.equal(s && s.n, 2);
    assert.equal(t, null);
    assert.deepEqual(missStats(a), counts(2, 1, 1, 0, 0));
  });

  it("concurrent gets of one sid share one query", async () => {
    const [a, b] = await cluster(2);
    const shared = sessionData({ user: "ada" });
    b.set("shared", shared);
    const got = await Promise.all(Array.from({ length: 20 }, () => a.get("shared")));
    for (const session of got) assert.deepEqual(session, shared);
    assert.deepEqual(missStats(a), counts(1, 1, 0, 0, 0));
  });

  it("a flood of unknown sids sends at most the rate limit's queries (a burst of 100, then 100 a second)", async function () {
    const [a, b] = await cluster(2);
    const started = performance.now();
    const got = await Promise.all(Array.from({ length: 300 }, (_, i) => a.get(`flood-${i}`)));
    const ms = performance.now() - started;
    assert.ok(got.every((session) => session === null));
    const { missQueries, missesNotFound, missesRateLimited } = missStats(a);
    assert.ok(missQueries >= 100 && missQueries <= 101 + Math.ceil(ms / 10), `${missQueries} queries in ${ms.toFixed(1)} ms`);
    assert.equal(missQueries + missesRateLimited, 300);
    assert.equal(missesNotFound, missQueries);
    await sleep(100); // about 10 tokens
    const late = sessionData({ user: "ada" });
    b.set("late", late);
    assert.deepEqual(await a.get("late"), late, "asked again once the bucket refilled");
    this.test.title += ` [${missQueries} queries, ${missesRateLimited} limited, ${ms.toFixed(1)} ms]`;
  });

  it("missTimeout 0: a get never asks", async () => {
    const [a, b] = await cluster(2, { missTimeout: 0 });
    assert.equal(a.options.missTimeout, 0);
    b.set("x", sessionData({ user: "ada" }));
    assert.equal(await a.get("x"), null);
    assert.deepEqual(missStats(a), counts(0, 0, 0, 0, 0));
  });

  it("a member that does not answer: the get answers null at missTimeout", async () => {
    const opts = clusterOptions({ ...FAST, missTimeout: 300 });
    const a = createStore(opts);
    await a.ready();
    const silent = await fakeMember(opts.cluster, a.members()[0].port);
    await waitUntil(() => a.members().some((m) => m.id === silent.id && m.state === "alive"), 3_000, { what: "the fake member is alive" });
    const started = performance.now();
    assert.equal(await a.get("unanswered"), null);
    const ms = performance.now() - started;
    assert.ok(ms >= 290 && ms < 1_500, `took ${ms.toFixed(1)} ms`);
    assert.deepEqual(missStats(a), counts(1, 0, 0, 1, 0));
    assert.deepEqual(silent.received.map(({ kindName, sid }) => [kindName, sid]), [["query", "unanswered"]]);
  });

  it("answers go only to a member at its announced address; stray answers are counted and dropped", async () => {
    const opts = clusterOptions({ ...FAST, missTimeout: 300 });
    const a = createStore(opts);
    await a.ready();
    await a.set("held", sessionData({ user: "ada" }));
    const member = await fakeMember(opts.cluster, a.members()[0].port);
    await waitUntil(() => a.members().some((m) => m.id === member.id && m.state === "alive"), 3_000, { what: "the fake member is alive" });

    member.send(wire.KIND.query, wire.queryBody(7n, "held"));
    member.send(wire.KIND.query, wire.queryBody(8n, "not-held"));
    const replies = await waitUntil(() => member.received.length === 2 && member.received, 3_000, { what: "two answers" });
    assert.deepEqual(
      replies.map(({ kindName, token, reply }) => [kindName, token, reply]),
      [["answer", 7n, 1], ["answer", 8n, 0]],
      "the entry, and nothing"
    );

    // The member's id from another socket, and a node that never joined: not answered.
    const elsewhere = await udpSocket();
    const answeredElsewhere = [];
    elsewhere.on("message", (bytes) => answeredElsewhere.push(bytes));
    member.sendFrom(elsewhere, wire.KIND.query, wire.queryBody(9n, "held"));
    member.sendFrom(elsewhere, wire.KIND.query, wire.queryBody(10n, "held"), 0x5e4d0001n);
    // An answer to no query in flight, and one that does not decode.
    member.send(wire.KIND.answer, wire.answerBody(11n));
    member.send(wire.KIND.answer, wire.answerBody(12n, wire.u8(9)));
    // And the pull of a joining member (it may bring sessions from a persist snapshot): this fake
    // member serves no TCP, so that digest sync fails once.
    const expected = { queryFromStranger: 2, unexpectedAnswer: 1, malformed: 1, syncFailed: 1 };
    await waitUntil(() => Object.entries(expected).every(([reason, n]) => a.stats().dropped[reason] === n), 3_000, {
      what: `dropped ${JSON.stringify(expected)}`,
    });
    await sleep(100);
    assert.deepEqual(a.stats().dropped, expected);
    assert.equal(answeredElsewhere.length, 0);
    assert.equal(member.received.length, 2);
  });
});
