"use strict";
// Fault tolerance between real hosts: every node runs in a network namespace of its own, with its
// own address, on a bridge this suite creates (test/netns/topology.js). Faults are injected with
// iptables and link state inside those namespaces. Nothing is sent outside them (docs/design.md §4):
// stores use the namespace's address and multicastTTL 1, and no namespace has a route out.
// Without root, `ip` or iptables, every test skips with the reason printed.
//
// Each scenario prints one line of figures and appends a row to bench/results/faults.json.
const assert = require("node:assert/strict");
const crypto = require("node:crypto");
const fs = require("node:fs");
const path = require("node:path");
const { isDeepStrictEqual } = require("node:util");
const { setTimeout: sleep } = require("node:timers/promises");
const topology = require("./netns/topology");
const { startNode, stopAll, diagnostics, waitUntil, allAlive } = require("./cluster/harness");
const { tableDigest } = require("./cluster/node");

const APP_SCRIPT = path.join(__dirname, "netns", "app.js");
const CLIENT_SCRIPT = path.join(__dirname, "netns", "client.js");
const RESULTS = path.join(__dirname, "..", "bench", "results", "faults.json");
const FAST = Object.freeze({ heartbeatInterval: 100, failureTimeout: 600 });
const HOUR = 3_600_000;

const iso = (t) => new Date(t).toISOString();
const seconds = (ms) => `${(ms / 1000).toFixed(2)} s`;

/** A session shaped like express-session's, expiring at `expiresAt` (epoch ms). */
function sess(data, expiresAt) {
  return { cookie: { originalMaxAge: HOUR, expires: iso(expiresAt), httpOnly: true, path: "/" }, ...data };
}

/** Options of a new cluster: unique name and port, multicastTTL 1 (the bridge is one hop). */
function clusterOptions(overrides = {}) {
  return {
    cluster: `netns-${process.pid}-${crypto.randomBytes(4).toString("hex")}`,
    multicastPort: 20_000 + crypto.randomInt(40_000),
    multicastTTL: 1,
    ...FAST,
    ...overrides,
  };
}

/** The store options of a node on `host`: its own address, IPv4 or IPv6. */
function hostOptions(host, base, { v6 = false } = {}) {
  return v6 ? { ...base, use: "v6", ipv6: host.ipv6 } : { ...base, ipv4: host.ipv4 };
}

/** Starts one node per host, one after the other, each ready before the next. Named A, B, C… */
async function startHosts(hosts, base, { v6 = false, script } = {}) {
  const nodes = [];
  for (const [i, host] of hosts.entries()) nodes.push(await startOn(host, base, String.fromCharCode(65 + i), { v6, script }));
  return nodes;
}

async function startOn(host, base, name, { v6 = false, script } = {}) {
  const node = await startNode(hostOptions(host, base, { v6 }), { name, netns: host.ns, script });
  node.host = host;
  await node.callWithTimeout(20_000, "ready");
  return node;
}

/**
 * Polls the digests of `nodes` every 50 ms until they are all equal (and equal to `expected`, a
 * tableDigest(), when given; holding `count` sessions, when given). Resolves with the ms elapsed
 * since `since`.
 */
async function converge(nodes, { expected = null, count = null, since = Date.now(), timeoutMs = 30_000 } = {}) {
  let last = null;
  try {
    await waitUntil(
      async () => {
        last = await Promise.all(nodes.map((n) => n.call("digest")));
        const target = expected || last[0];
        return last.every((d) => d.digest === target.digest) && (count === null || last[0].count === count);
      },
      timeoutMs,
      { intervalMs: 50, what: "identical tables" }
    );
  } catch (err) {
    const seen = last ? nodes.map((n, i) => `${n.name}: ${last[i].count} sessions ${last[i].digest.slice(0, 12)}`).join(", ") : "none";
    throw new Error(`${err.message}; expected ${expected ? `${expected.count} sessions ${expected.digest.slice(0, 12)}` : "equal digests"}; seen ${seen}`);
  }
  return Date.now() - since;
}

/**
 * Expected state of a last-writer-wins table, fed the writes in the order they happened: two
 * registers per sid as in the engine (data: set/destroy; cookie: set/touch).
 */
class Model {
  constructor() {
    this.sids = new Map();
    this.clock = 0;
  }

  apply([op, sid, value]) {
    const t = ++this.clock;
    const entry = this.sids.get(sid) || { data: null, dataT: 0, cookie: null, cookieT: 0 };
    if (op === "set") Object.assign(entry, { data: value, dataT: t, cookie: value.cookie, cookieT: t });
    else if (op === "destroy") Object.assign(entry, { data: null, dataT: t });
    else if (op === "touch") Object.assign(entry, { cookie: value.cookie, cookieT: t });
    this.sids.set(sid, entry);
  }

  /** sid → session, of the live sessions. */
  table() {
    const out = {};
    for (const [sid, e] of this.sids) if (e.data) out[sid] = { ...e.data, cookie: e.cookieT > e.dataT ? e.cookie : e.data.cookie };
    return out;
  }

  /** sids whose last word is a destroy. */
  destroyed() {
    return [...this.sids].filter(([, e]) => e.data === null && e.dataT > 0).map(([sid]) => sid);
  }
}

/**
 * Compares every node's all() with `expected`: lost = expected sessions missing or different on
 * some node; resurrected = sessions present that should not be. Returns the figures and details.
 */
async function compareTables(nodes, expected, { ignore = () => false } = {}) {
  const lost = new Set();
  const resurrected = new Set();
  const details = [];
  for (const node of nodes) {
    const all = await node.call("all");
    for (const [sid, value] of Object.entries(expected)) {
      if (!isDeepStrictEqual(all[sid], value)) {
        lost.add(sid);
        if (details.length < 10) details.push(`${node.name} ${sid}: ${JSON.stringify(all[sid] ?? null).slice(0, 160)} ≠ expected ${JSON.stringify(value).slice(0, 160)}`);
      }
    }
    for (const sid of Object.keys(all)) {
      if (!(sid in expected) && !ignore(sid)) {
        resurrected.add(sid);
        if (details.length < 10) details.push(`${node.name} ${sid}: present, expected absent`);
      }
    }
  }
  return { lost: lost.size, resurrected: resurrected.size, details };
}

/** The network faults of a scenario are no failure the application must hear of (no `error` event). */
function assertNoErrors(nodes) {
  for (const node of nodes) assert.deepEqual(node.errors.map((e) => `${e.code} ${e.message}`), [], `error events of ${node.name}`);
}

/** Prints a scenario's figures and appends them to bench/results/faults.json. */
function report(row) {
  const full = { scenario: row.scenario, nodes: row.nodes, writes: row.writes, loss: row.loss, convergenceMs: row.convergenceMs, sessionsLost: row.sessionsLost, ...row, at: new Date().toISOString() };
  const extra = row.note ? `, ${row.note}` : "";
  console.log(
    `      [${row.scenario}] nodes ${row.nodes}, writes ${row.writes}, loss ${Math.round(row.loss * 100)}%, ` +
      `converged in ${seconds(row.convergenceMs)}, lost ${row.sessionsLost}${extra}`
  );
  let rows = [];
  try {
    rows = JSON.parse(fs.readFileSync(RESULTS, "utf8"));
    if (!Array.isArray(rows)) rows = [];
  } catch {
    rows = [];
  }
  rows.push(full);
  fs.mkdirSync(path.dirname(RESULTS), { recursive: true });
  fs.writeFileSync(RESULTS, `${JSON.stringify(rows.slice(-200), null, 2)}\n`);
}

/** Sends `ops` to `node` in chunks of `chunk` writes; resolves with { startedAt, endedAt }. */
async function applyInChunks(node, ops, chunk = 250) {
  let startedAt = null;
  let endedAt = null;
  for (let i = 0; i < ops.length; i += chunk) {
    const r = await node.call("apply", ops.slice(i, i + chunk));
    startedAt ??= r.startedAt;
    endedAt = r.endedAt;
  }
  return { startedAt, endedAt };
}

describe("netns: fault tolerance between hosts in network namespaces", function () {
  this.timeout(120_000);
  let topo = null;

  before(function () {
    const probe = topology.probe();
    if (!probe.ok) {
      console.log(`      skipped: ${probe.reason}`);
      this.skip();
    }
    topo = topology.create({ hosts: 4, extra: ["client"] });
  });

  after(async () => {
    await stopAll();
    topology.destroy(topo);
  });

  afterEach(async function () {
    if (this.currentTest && this.currentTest.state === "failed") console.log(`    nodes of the failed test:\n${diagnostics()}`);
    await stopAll();
    if (topo) topology.heal(topo);
  });

  const hosts = (n) => topo.hosts.filter((h) => /^h\d+$/.test(h.name)).slice(0, n);

  it("loss: 20% random UDP loss on every host during 10,000 writes spread over 4 nodes; every node ends with the identical table", async () => {
    const LOSS = 0.2;
    const PER_NODE = 2_500;
    const base = clusterOptions({ failureTimeout: 1_500 });
    const nodes = await startHosts(hosts(4), base);
    await allAlive(nodes);
    for (const host of hosts(4)) topology.udpLoss(host, LOSS);

    // Each node writes sids of its own, so their final state is fully determined: 1,900 sets
    // (100 of them fragmented), then 250 updates, 125 touches (cookie only) and 125 destroys of those sids. Interleaved
    // with them, 100 writes to 50 "hot" sids every node writes to at the same time: there, the
    // nodes must agree on one winner, one of the last writes of some node.
    const t0 = Date.now();
    const model = new Model();
    const HOT = 50;
    const hot = (node, round, j) => sess({ node: node.name, round, j }, t0 + HOUR);
    const opsOf = (node) => {
      const ops = [];
      const first = t0 + HOUR;
      // Every 19th session is 4 KB: fragmented into 3–4 datagrams, each of which may be lost.
      const pad = (i) => (i % 19 === 0 ? crypto.createHash("sha256").update(`${node.name}${i}`).digest("hex").repeat(64) : "x".repeat(64));
      for (let i = 0; i < 1_900; i++) ops.push(["set", `${node.name}-${i}`, sess({ node: node.name, i, rev: 1, pad: pad(i) }, first)]);
      for (let i = 0; i < 250; i++) ops.push(["set", `${node.name}-${i}`, sess({ node: node.name, i, rev: 2 }, first)]);
      for (let i = 250; i < 375; i++) ops.push(["touch", `${node.name}-${i}`, sess({ node: node.name, i, rev: 1, pad: pad(i) }, first + HOUR)]);
      for (let i = 375; i < 500; i++) ops.push(["destroy", `${node.name}-${i}`]);
      for (let round = 0; round < 2; round++) {
        for (let j = 0; j < HOT; j++) ops.splice(round * 1_200 + j * 20, 0, ["set", `hot-${j}`, hot(node, round, j)]);
      }
      assert.equal(ops.length, PER_NODE);
      return ops;
    };
    const allOps = nodes.map(opsOf);
    allOps.forEach((ops) => ops.filter(([, sid]) => !sid.startsWith("hot-")).forEach((op) => model.apply(op)));
    const expected = model.table();
    const expectedCount = Object.keys(expected).length + HOT;

    const started = Date.now();
    await Promise.all(nodes.map((node, i) => applyInChunks(node, allOps[i])));
    const lastWrite = Date.now();
    const convergenceMs = await converge(nodes, { since: lastWrite, timeoutMs: 60_000, count: expectedCount });

    const isHot = (sid) => sid.startsWith("hot-");
    const { lost, resurrected, details } = await compareTables(nodes, expected, { ignore: isHot });
    const table = await nodes[0].call("all");
    for (let j = 0; j < HOT; j++) {
      const winner = table[`hot-${j}`];
      const lastWrites = nodes.map((node) => hot(node, 1, j));
      assert.ok(lastWrites.some((v) => isDeepStrictEqual(v, winner)), `hot-${j} is ${JSON.stringify(winner)}, not one of the last writes`);
    }
    const dropped = hosts(4).reduce((sum, h) => sum + topology.droppedPackets(h).v4, 0);
    const stats = await Promise.all(nodes.map((n) => n.call("stats")));
    const received = stats.reduce((sum, s) => sum + s.datagramsReceived, 0);
    const naks = stats.reduce((sum, s) => sum + s.naksSent, 0);
    const retransmissions = stats.reduce((sum, s) => sum + s.retransmissions, 0);
    const syncs = stats.reduce((sum, s) => sum + s.antiEntropySyncs, 0);

    // A fifth host joins under the same loss: ready, then the identical table.
    const joinHost = topo.byName.client;
    topology.udpLoss(joinHost, LOSS);
    const joinAt = Date.now();
    const E = await startOn(joinHost, base, "E");
    const joinReadyMs = Date.now() - joinAt;
    const joinMs = await converge([...nodes, E], { since: joinAt, timeoutMs: 30_000, count: expectedCount });
    assertNoErrors([...nodes, E]);
    report({
      scenario: "loss",
      nodes: nodes.length,
      writes: nodes.length * PER_NODE,
      loss: LOSS,
      convergenceMs,
      sessionsLost: lost,
      resurrected,
      sessions: expectedCount,
      writeMs: lastWrite - started,
      droppedDatagrams: dropped,
      measuredLoss: +(dropped / (dropped + received)).toFixed(3),
      naksSent: naks,
      retransmissions,
      antiEntropySyncs: syncs,
      joinReadyMs,
      joinConvergedMs: joinMs,
      note:
        `${dropped} datagrams dropped (${((100 * dropped) / (dropped + received)).toFixed(1)}%), ${naks} NAKs, ` +
        `${retransmissions} retransmissions, ${syncs} anti-entropy syncs; a 5th node joining under the loss: ready in ${joinReadyMs} ms, identical in ${joinMs} ms`,
    });
    assert.ok(dropped > 0, "the iptables rules dropped nothing: the loss was not applied");
    assert.deepEqual(details, []);
    assert.equal(lost, 0, "sessions lost");
    assert.equal(resurrected, 0, "sessions resurrected");
  });

  it("leave: under 20% UDP loss on every host, a node that writes 200 sessions and leaves at once (close() 10 times, then SIGTERM 10 times) leaves all 200 on the other two", async () => {
    const LOSS = 0.2;
    const SESSIONS = 200;
    const three = hosts(3);
    const runs = [...Array(10).fill("close"), ...Array(10).fill("SIGTERM")];
    const results = [];
    const started = Date.now();
    for (const [run, how] of runs.entries()) {
      const nodes = await startHosts(three, clusterOptions());
      const [A, B, C] = nodes;
      await allAlive(nodes);
      for (const host of three) topology.udpLoss(host, LOSS);
      const expires = Date.now() + HOUR;
      const ops = Array.from({ length: SESSIONS }, (_, i) => ["set", `leave-${run}-${i}`, sess({ run, i }, expires)]);
      const model = new Model();
      ops.forEach((op) => model.apply(op));
      const expected = model.table();
      // Each write awaited (its callback called), then close() or the signal in the same turn.
      let closeMs = null;
      if (how === "close") ({ closeMs } = await A.call("applyThenLeave", ops, how));
      else {
        A.call("applyThenLeave", ops, how).catch(() => {}); // no answer: the process dies of the signal
        const exit = await A.exited;
        assert.equal(exit.signal, how, `A died of ${how}`);
      }
      // At once: the leave waited until B and C had everything (no repair comes later: A is gone).
      const counts = [];
      for (const node of [B, C]) {
        const all = await node.call("all");
        counts.push(Object.entries(expected).filter(([sid, value]) => isDeepStrictEqual(all[sid], value)).length);
      }
      // Then nothing of A's stream is missing, and A is left (dead if both copies of its Leave
      // were lost on the way to that node). Recorded, asserted after the last run.
      const settled = async () => {
        const stats = await Promise.all([B, C].map((n) => n.call("stats")));
        const members = await Promise.all([B, C].map((n) => n.call("members")));
        const seenAs = members.map((list) => list.find((m) => m.id === A.self.id)?.state);
        const missing = stats.map((s) => s.missingDatagrams);
        return { missing, seenAs, done: missing.every((n) => n === 0) && seenAs.every((s) => s === "left" || s === "dead") };
      };
      const until = async () => {
        const now = await settled();
        return now.done && now;
      };
      const { missing, seenAs } = await waitUntil(until, 2_000).catch(settled);
      const warnings = A.logs.filter((l) => /leave: after/.test(l.message)).map((l) => l.message);
      results.push({ how, counts, closeMs, seenAs, missing, warnings });
      await stopAll();
      topology.heal(topo);
    }
    const elapsedMs = Date.now() - started;
    const perfect = results.filter((r) => r.counts.every((n) => n === SESSIONS)).length;
    const closeMs = results.filter((r) => r.closeMs !== null).map((r) => r.closeMs);
    report({
      scenario: "leave",
      nodes: 3,
      writes: SESSIONS * runs.length,
      loss: LOSS,
      convergenceMs: Math.max(...closeMs), // B and C held every write when A's close() returned
      sessionsLost: results.reduce((sum, r) => sum + r.counts.reduce((s, n) => s + SESSIONS - n, 0), 0),
      runs: results,
      note:
        `${perfect}/${runs.length} runs with ${SESSIONS}/${SESSIONS} on both others (B/C: ${results.map((r) => `${r.how === "close" ? "" : `${r.how} `}${r.counts.join("/")}`).join(", ")}); ` +
        `close() took ${Math.min(...closeMs)}–${Math.max(...closeMs)} ms; A then seen as ${results.map((r) => r.seenAs.join("/")).join(", ")}; ` +
        `missingDatagrams after: ${results.map((r) => r.missing.join("/")).join(", ")}; ${elapsedMs} ms in all`,
    });
    assert.deepEqual(results.filter((r) => r.counts.some((n) => n !== SESSIONS)), [], "runs where B or C missed some of A's writes");
    assert.deepEqual(results.filter((r) => r.missing.some((n) => n !== 0)), [], "runs after which B or C still NAK the departed A");
    assert.deepEqual(results.filter((r) => r.seenAs.some((s) => s !== "left" && s !== "dead")), [], "runs after which B or C still list A");
    assert.deepEqual(results.flatMap((r) => r.warnings), [], "leaves that timed out");
  });

  it("crash: a node SIGKILLed during writes is reported dead within failureTimeout + one heartbeat, nothing is lost, and it converges after a restart", async () => {
    const base = clusterOptions();
    const nodes = await startHosts(hosts(4), base);
    const [A, B, C, D] = nodes;
    await allAlive(nodes);

    const expires = Date.now() + HOUR;
    const value = (name, i) => sess({ node: name, i }, expires);
    const acked = new Map(nodes.map((n) => [n.name, 0])); // writes acknowledged per node (sids name-0…)
    let stop = false;
    const writer = async (node) => {
      for (let i = 0; !stop; i += 50) {
        const ops = Array.from({ length: 50 }, (_, k) => ["set", `${node.name}-${i + k}`, value(node.name, i + k)]);
        try {
          await node.call("apply", ops);
        } catch (err) {
          if (node === D) return; // killed under our feet
          throw err;
        }
        acked.set(node.name, i + 50);
        await sleep(25);
      }
    };
    const writers = Promise.all(nodes.map(writer));
    await sleep(1_000);
    await D.kill("SIGKILL");
    await sleep(1_000);
    stop = true;
    await writers;
    const lastWrite = Date.now();

    // Failure detection: dead within failureTimeout + one heartbeat, never before failureTimeout of silence.
    const budget = FAST.failureTimeout + FAST.heartbeatInterval;
    const detection = [];
    for (const node of [A, B, C]) {
      const dead = await node.waitForEvent((e) => e.type === "dead" && e.node.id === D.self.id, 5_000, "dead of D");
      const elapsed = dead.at - D.killedAt;
      detection.push(elapsed);
      assert.ok(elapsed <= budget, `${node.name} reported D dead ${elapsed} ms after SIGKILL (budget ${budget} ms)`);
      assert.ok(dead.at - dead.node.lastHeard >= FAST.failureTimeout, `${node.name} reported D dead after ${dead.at - dead.node.lastHeard} ms of silence`);
    }

    // Survivors: identical tables holding every write they acknowledged; of D's writes, the ones
    // they have are D's values (what D never sent before dying cannot be required).
    const survivors = [A, B, C];
    const convergenceMs = await converge(survivors, { since: lastWrite });
    const table = await A.call("all");
    let lost = 0;
    for (const node of survivors) for (let i = 0; i < acked.get(node.name); i++) if (!isDeepStrictEqual(table[`${node.name}-${i}`], value(node.name, i))) lost += 1;
    const ofD = Object.keys(table).filter((sid) => sid.startsWith("D-"));
    for (const sid of ofD) assert.deepEqual(table[sid], value("D", Number(sid.slice(2))), `${sid} on the survivors`);
    const survivorWrites = survivors.reduce((sum, n) => sum + acked.get(n.name), 0);
    assert.equal(Object.keys(table).length, survivorWrites + ofD.length);

    // Restart D on its host: ready, then the identical table.
    const restartedAt = Date.now();
    const D2 = await startOn(D.host, base, "D2");
    const readyMs = Date.now() - restartedAt;
    // The survivors are idle: right after ready(), D2 must hold exactly their table.
    const [atReady, reference] = await Promise.all([D2.call("digest"), A.call("digest")]);
    const rejoinMs = await converge([A, B, C, D2], { since: restartedAt, timeoutMs: 10_000 });
    for (const node of survivors) {
      await node.waitForEvent((e) => (e.type === "join" || e.type === "alive") && e.node.id === D2.self.id && e.node.incarnation === D2.self.incarnation, 3_000, "join of D2");
    }
    const fresh = sess({ afterRestart: true }, expires);
    await D2.call("set", "after-restart", fresh);
    await waitUntil(async () => (await Promise.all(survivors.map((n) => n.call("get", "after-restart")))).every((v) => isDeepStrictEqual(v, fresh)), 5_000, { what: "D2's write on A, B, C" });

    assertNoErrors([A, B, C, D2]);
    report({
      scenario: "crash",
      nodes: nodes.length,
      writes: survivorWrites + acked.get("D"),
      loss: 0,
      convergenceMs,
      sessionsLost: lost,
      deadDetectionMs: detection,
      dWritesAcked: acked.get("D"),
      dWritesKept: ofD.length,
      restartReadyMs: readyMs,
      restartConvergedMs: rejoinMs,
      identicalAtReady: atReady.digest === reference.digest,
      note: `dead reported after ${detection.join("/")} ms (budget ${budget}), D wrote ${acked.get("D")} (survivors kept ${ofD.length}), restart: ready in ${readyMs} ms with ${atReady.count}/${reference.count} sessions, identical ${rejoinMs} ms after the restart`,
    });
    assert.equal(lost, 0, "sessions the survivors wrote are missing");
    assert.deepEqual(atReady, reference, "D2's table right after ready() (survivors idle)");
  });

  it("partition: a host cut off for 10 s with writes and crossed destroys on both sides converges to the last-writer-wins state, and no destroyed session comes back", async () => {
    const base = clusterOptions();
    const nodes = await startHosts(hosts(4), base);
    const [A, B, C, D] = nodes;
    await allAlive(nodes);
    const expires = Date.now() + HOUR;
    const model = new Model();
    let writes = 0;

    // Before: 200 shared sessions p-0…p-199, on every node.
    const seed = Array.from({ length: 200 }, (_, i) => ["set", `p-${i}`, sess({ i, by: "seed" }, expires)]);
    await A.call("apply", seed);
    seed.forEach((op) => model.apply(op));
    writes += seed.length;
    await converge(nodes, { expected: tableDigest(model.table()), timeoutMs: 10_000 });

    const range = (from, to) => Array.from({ length: to - from }, (_, k) => from + k);
    const sets = (ids, by, prefix = "p-") => ids.map((i) => ["set", `${prefix}${i}`, sess({ i, by }, expires)]);
    const destroys = (ids, prefix = "p-") => ids.map((i) => ["destroy", `${prefix}${i}`]);
    const touches = (ids) => ids.map((i) => ["touch", `p-${i}`, sess({}, expires + HOUR)]);

    // Each phase: batches on disjoint sids, run at once on their nodes. Every conflict pairs a
    // write of phase 1 with one of phase 2 on the other side, so which is later is certain.
    const phase1 = [
      [D, [...destroys(range(0, 25)), ...sets(range(75, 100), "D1"), ...sets(range(150, 175), "D1"), ...sets(range(0, 100), "D", "d-")]],
      [A, [...sets(range(25, 50), "A1"), ...sets(range(0, 100), "A", "ma-")]],
      [B, [...destroys(range(50, 75)), ...sets(range(0, 100), "B", "mb-")]],
      [C, [...sets(range(100, 150), "C1"), ...sets(range(175, 200), "C1"), ...sets(range(0, 100), "C", "mc-")]],
    ];
    const phase2 = [
      [A, [...sets(range(0, 25), "A2"), ...destroys(range(0, 10), "ma-")]], // update after D's destroy: exists
      [D, [...destroys(range(25, 50)), ...sets(range(50, 75), "D2"), ...sets(range(100, 125), "D2"), ...touches(range(175, 200)), ...destroys(range(0, 10), "d-")]],
      [C, [...destroys(range(75, 100))]], // destroy after D's update: gone
      [B, [...sets(range(150, 175), "B2")]], // update after D's: B's
    ];
    const runPhase = async (batches) => {
      const times = await Promise.all(batches.map(([node, ops]) => node.call("apply", ops)));
      for (const [, ops] of batches) ops.forEach((op) => model.apply(op));
      writes += batches.reduce((sum, [, ops]) => sum + ops.length, 0);
      return { startedAt: Math.min(...times.map((t) => t.startedAt)), endedAt: Math.max(...times.map((t) => t.endedAt)) };
    };

    const cutAt = Date.now();
    topology.linkDown(D.host);
    await sleep(1_000);
    const p1 = await runPhase(phase1);
    await sleep(Math.max(0, cutAt + 5_000 - Date.now()));
    const p2 = await runPhase(phase2);
    // Ordering by wall clock on this one machine (all nodes share it): phase 1 ended well before phase 2.
    assert.ok(p1.endedAt + 500 < p2.startedAt, `phase 1 ended at ${p1.endedAt}, phase 2 started at ${p2.startedAt}`);
    // Both sides saw the other one die.
    await A.waitForEvent((e) => e.type === "dead" && e.node.id === D.self.id, 5_000, "dead of D");
    await D.waitForEvent((e) => e.type === "dead" && e.node.id === A.self.id, 5_000, "dead of A on D");
    await sleep(Math.max(0, cutAt + 10_000 - Date.now()));

    const expected = model.table();
    const expectedDigest = tableDigest(expected);
    const healedAt = Date.now();
    topology.linkUp(D.host);
    const convergenceMs = await converge(nodes, { expected: expectedDigest, since: healedAt, timeoutMs: 30_000 });
    // …for good: ten heartbeats later (syncs of the healed members done), nothing moved.
    await sleep(10 * FAST.heartbeatInterval);
    await converge(nodes, { expected: expectedDigest, timeoutMs: 0 });
    const { lost, resurrected, details } = await compareTables(nodes, expected);

    // The expected state, spelled out (the model above must agree with it).
    const gone = [...range(25, 50), ...range(75, 100)].map((i) => `p-${i}`);
    for (const sid of gone) assert.ok(!(sid in expected), `${sid} should be destroyed`);
    assert.equal(expected["p-0"].by, "A2");
    assert.equal(expected["p-50"].by, "D2");
    assert.equal(expected["p-100"].by, "D2");
    assert.equal(expected["p-125"].by, "C1");
    assert.equal(expected["p-150"].by, "B2");
    assert.equal(expected["p-175"].by, "C1");
    assert.equal(expected["p-175"].cookie.expires, iso(expires + HOUR), "D's later touch keeps its cookie");

    const stats = await Promise.all(nodes.map((n) => n.call("stats")));
    assertNoErrors(nodes);
    report({
      scenario: "partition",
      nodes: nodes.length,
      writes,
      loss: 0,
      convergenceMs,
      sessionsLost: lost,
      resurrected,
      partitionMs: healedAt - cutAt,
      sessions: expectedDigest.count,
      antiEntropySyncs: stats.map((s) => s.antiEntropySyncs),
      note: `cut ${seconds(healedAt - cutAt)}, ${expectedDigest.count} sessions, ${gone.length} crossed destroys won, ${resurrected} resurrected`,
    });
    assert.deepEqual(details, []);
    assert.equal(lost, 0, "sessions lost");
    assert.equal(resurrected, 0, "destroyed sessions came back");
  });

  it("rolling restart: 3 Express nodes restarted one after another under requests from a client; no session is lost", async () => {
    const PORT = 8080;
    const SESSIONS = 50;
    const base = clusterOptions();
    const nodes = await startHosts(hosts(3), base, { script: APP_SCRIPT });
    for (const node of nodes) await node.call("listen", node.host.ipv4, PORT);
    const everyNode = [...nodes];
    await allAlive(nodes);
    const targets = nodes.map((n) => ({ host: n.host.ipv4, port: PORT }));
    const client = await startNode({}, { name: "client", netns: topo.byName.client.ns, script: CLIENT_SCRIPT });
    const sids = await client.call("create", targets, SESSIONS);
    assert.equal(new Set(sids).size, SESSIONS);

    await client.call("start", 5);
    const rollStarted = Date.now();
    await sleep(1_000);
    const restarts = [];
    for (const [i, node] of nodes.entries()) {
      const t = Date.now();
      await node.call("unlisten");
      await node.close();
      const next = await startOn(node.host, base, `${node.name}2`, { script: APP_SCRIPT });
      await next.call("listen", node.host.ipv4, PORT);
      nodes[i] = next;
      everyNode.push(next);
      restarts.push(Date.now() - t);
      await sleep(500);
    }
    await sleep(1_000);
    const run = await client.call("stop");
    const rollMs = Date.now() - rollStarted;

    // Afterwards: every node holds every session, at the views the client saw last.
    const expectedViews = Object.fromEntries(run.sessions.map((s) => [s.sid, s.views]));
    let convergenceMs;
    let lost = 0;
    try {
      convergenceMs = await converge(nodes, { timeoutMs: 10_000 });
    } finally {
      const tables = await Promise.all(nodes.map((n) => n.call("all")));
      for (const sid of sids) if (!tables.every((t) => t[sid] && t[sid].views === expectedViews[sid])) lost += 1;
    }
    const peeks = await client.call("peekAll");
    const badPeeks = peeks.filter((p) => p.status !== 200 || p.fresh || p.sidSeen !== p.sid || p.views !== expectedViews[p.sid]);
    const failures = run.failures;
    assertNoErrors(everyNode);
    report({
      scenario: "rolling-restart",
      nodes: nodes.length,
      writes: run.ok,
      loss: 0,
      convergenceMs,
      sessionsLost: lost,
      requests: run.requests,
      retries: run.retries,
      retryReasons: run.retryReasons,
      failedRequests: failures.length,
      staleReads: run.stale,
      restartMs: restarts,
      rollMs,
      note: `${run.ok} requests ok, ${run.retries} retried elsewhere, ${failures.length} failed, ${run.stale} stale reads, restarts ${restarts.join("/")} ms`,
    });
    assert.deepEqual(failures.slice(0, 10), [], `${failures.length} requests failed`);
    assert.deepEqual(badPeeks.slice(0, 10), [], "every node serves every session at its last views");
    assert.equal(lost, 0, "sessions lost");
    assert.ok(run.ok > 100, `only ${run.ok} requests went through`);
  });

  describe("persist: the whole cluster stopped at once and started again", () => {
    let dir = null;
    beforeEach(() => {
      dir = fs.mkdtempSync(path.join(require("node:os").tmpdir(), "esm-netns-persist-"));
    });
    afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

    const NAMES = ["A", "B", "C"];
    const shuffled = (xs) => {
      const out = [...xs];
      for (let i = out.length - 1; i > 0; i--) {
        const j = crypto.randomInt(i + 1);
        [out[i], out[j]] = [out[j], out[i]];
      }
      return out;
    };
    /** Each node's options: the cluster's, and a snapshot file of its own. */
    const persisted = (base, host) => ({ ...base, persist: { path: path.join(dir, `${host.name}.snap`), interval: 1 } });
    /** Writes on every node at once (each its own batch), fed to the model in that order. */
    const runOn = async (model, batches) => {
      await Promise.all(batches.map(([node, ops]) => applyInChunks(node, ops)));
      batches.forEach(([, ops]) => ops.forEach((op) => model.apply(op)));
      return batches.reduce((sum, [, ops]) => sum + ops.length, 0);
    };
    /** SIGTERM to every node at once: each writes its last snapshot, then the signal ends it. */
    const stopAllAtOnce = async (nodes) => {
      const exits = await Promise.all(nodes.map((n) => n.kill("SIGTERM")));
      assert.deepEqual(exits.map((e) => e.signal), nodes.map(() => "SIGTERM"));
    };
    /** Starts the nodes of `three` in `order` (indices), each ready before the next, named NAMES[i] + `suffix`. */
    const startInOrder = async (three, base, order, suffix = "") => {
      const nodes = [];
      for (const i of order) nodes.push(await startOn(three[i], persisted(base, three[i]), `${NAMES[i]}${suffix}`));
      await allAlive(nodes);
      return nodes;
    };
    const sets = (name, from, to, rev, expires) => Array.from({ length: to - from }, (_, k) => ["set", `${name}-${from + k}`, sess({ node: name, i: from + k, rev }, expires)]);
    const destroys = (name, from, to) => Array.from({ length: to - from }, (_, k) => ["destroy", `${name}-${from + k}`]);
    const touches = (name, from, to, expires) => Array.from({ length: to - from }, (_, k) => ["touch", `${name}-${from + k}`, sess({}, expires)]);

    it("3 nodes, writes and destroys, all stopped at once and restarted in a random order: every session back, no destroyed one", async () => {
      const three = hosts(3);
      const base = clusterOptions({ secret: "netns persist" });
      const nodes = await startInOrder(three, base, [0, 1, 2]);
      const expires = Date.now() + HOUR;
      const model = new Model();
      let writes = await runOn(model, nodes.map((n) => [n, sets(n.name, 0, 300, 1, expires)]));
      // Then each node destroys, updates and touches sessions the others wrote.
      writes += await runOn(model, [
        [nodes[0], [...destroys("B", 0, 40), ...sets("C", 0, 40, 2, expires)]],
        [nodes[1], [...destroys("C", 40, 80), ...touches("A", 0, 40, expires + HOUR)]],
        [nodes[2], [...destroys("A", 40, 80), ...sets("B", 40, 80, 2, expires)]],
      ]);
      const expected = model.table();
      await converge(nodes, { expected: tableDigest(expected), timeoutMs: 10_000 });
      await stopAllAtOnce(nodes);
      for (const host of three) assert.ok(fs.existsSync(path.join(dir, `${host.name}.snap`)), `${host.name} wrote its snapshot`);

      const order = shuffled([0, 1, 2]);
      const startedAt = Date.now();
      const again = await startInOrder(three, base, order, "2");
      const convergenceMs = await converge(again, { expected: tableDigest(expected), since: startedAt, timeoutMs: 5_000 });
      const { lost, resurrected, details } = await compareTables(again, expected);
      const loaded = await Promise.all(again.map((n) => n.call("stats")));
      assertNoErrors(again);
      report({
        scenario: "persist-restart-all",
        nodes: 3,
        writes,
        loss: 0,
        convergenceMs,
        sessionsLost: lost,
        resurrected,
        order: order.map((i) => NAMES[i]).join(""),
        note: `restarted in the order ${order.map((i) => NAMES[i]).join(", ")}; loaded ${loaded.map((s) => s.snapshotLoadedSessions).join("/")} sessions; ${model.destroyed().length} destroyed, ${resurrected} back`,
      });
      assert.deepEqual(details, []);
      assert.equal(lost, 0, "sessions lost");
      assert.equal(resurrected, 0, "destroyed sessions came back");
    });

    it("one node's snapshot much older than the others': it starts first, and still no stale value and no destroyed session survives", async () => {
      const three = hosts(3);
      const base = clusterOptions({ secret: "netns persist" });
      const nodes = await startInOrder(three, base, [0, 1, 2]);
      const expires = Date.now() + HOUR;
      const model = new Model();
      let writes = await runOn(model, nodes.map((n) => [n, sets(n.name, 0, 200, 1, expires)]));
      await converge(nodes, { expected: tableDigest(model.table()), timeoutMs: 10_000 });
      // C's snapshot as it is now: every session at rev 1.
      const phase1 = Date.now();
      await waitUntil(async () => (await nodes[2].call("stats")).lastSnapshotAt > phase1, 10_000, { what: "a snapshot of C after phase 1" });
      const cFile = path.join(dir, `${three[2].name}.snap`);
      const stale = fs.readFileSync(cFile);
      // Then updates, destroys and new sessions everywhere.
      writes += await runOn(model, [
        [nodes[0], [...sets("B", 0, 60, 2, expires), ...destroys("C", 0, 50), ...sets("A", 200, 260, 1, expires)]],
        [nodes[1], [...destroys("A", 0, 50), ...sets("C", 50, 110, 2, expires), ...touches("B", 60, 100, expires + HOUR)]],
        [nodes[2], [...destroys("B", 100, 150), ...sets("A", 50, 110, 2, expires)]],
      ]);
      const expected = model.table();
      await converge(nodes, { expected: tableDigest(expected), timeoutMs: 10_000 });
      await stopAllAtOnce(nodes);
      fs.writeFileSync(cFile, stale, { mode: 0o600 });

      // C first, alone with its stale sessions, then A and B in a random order.
      const order = [2, ...shuffled([0, 1])];
      const startedAt = Date.now();
      const again = await startInOrder(three, base, order, "2");
      let convergenceMs;
      try {
        convergenceMs = await converge(again, { expected: tableDigest(expected), since: startedAt, timeoutMs: 5_000 });
      } finally {
        const { lost, resurrected, details } = await compareTables(again, expected);
        report({
          scenario: "persist-stale-snapshot",
          nodes: 3,
          writes,
          loss: 0,
          convergenceMs: convergenceMs ?? null,
          sessionsLost: lost,
          resurrected,
          order: order.map((i) => NAMES[i]).join(""),
          note: `C's snapshot from before ${writes - 600} updates, destroys and new sessions; restarted C, then ${order.slice(1).map((i) => NAMES[i]).join(", ")}; ${resurrected} destroyed back, ${lost} lost or stale`,
        });
        assert.deepEqual(details, []);
        assert.equal(lost, 0, "sessions lost or stale");
        assert.equal(resurrected, 0, "destroyed sessions came back");
      }
      assertNoErrors(again);
    });
  });

  it("IPv6: set, get and destroy replicate over IPv6 multicast between hosts, and a joining host gets the state", async function () {
    if (!topo.ipv6) {
      console.log("      skipped: this kernel has no IPv6 (/proc/sys/net/ipv6 is missing)");
      this.skip();
    }
    const base = clusterOptions(); // default IPv6 group
    const nodes = await startHosts(hosts(3), base, { v6: true });
    const [A, B, C] = nodes;
    await allAlive(nodes);
    for (const node of nodes) {
      const members = await node.call("members");
      for (const m of members) {
        const owner = nodes.find((n) => n.self.id === m.id);
        assert.equal(m.address, owner.host.ipv6, `${node.name} sees ${owner.name} at ${m.address}`);
      }
    }
    const expires = Date.now() + HOUR;
    const started = Date.now();
    const value = sess({ user: "ada", v6: true }, expires);
    await A.call("set", "v6-a", value);
    await waitUntil(async () => (await Promise.all(nodes.map((n) => n.call("get", "v6-a")))).every((v) => isDeepStrictEqual(v, value)), 5_000, { what: "v6-a everywhere" });
    const setMs = Date.now() - started;
    await B.call("bulkSet", "bulk-", 1_000, 200);
    await C.call("destroy", "v6-a");
    await converge(nodes, { timeoutMs: 10_000 });
    for (const node of nodes) assert.equal(await node.call("get", "v6-a"), null, `v6-a destroyed on ${node.name}`);
    for (const node of nodes) assert.equal(await node.call("length"), 1_000, `length() on ${node.name}`);

    const joinedAt = Date.now();
    const D = await startOn(hosts(4)[3], base, "D", { v6: true });
    const readyMs = Date.now() - joinedAt;
    assert.equal(await D.call("length"), 1_000, "the joining node holds every session when ready() resolves");
    const convergenceMs = await converge([...nodes, D], { since: joinedAt, timeoutMs: 10_000 });
    const { lost } = await compareTables([D], await A.call("all"));
    const stats = await D.call("stats");
    assertNoErrors([...nodes, D]);
    report({
      scenario: "ipv6",
      nodes: 4,
      writes: 1_002,
      loss: 0,
      convergenceMs,
      sessionsLost: lost,
      setReplicatedMs: setMs,
      joinReadyMs: readyMs,
      note: `default group ff15::5, join: ready in ${readyMs} ms with ${stats.sessions} sessions (${stats.stateTransfers} state transfer)`,
    });
    assert.equal(lost, 0);
  });

  it("no multicast: with the group dropped by every host's firewall, nodes find each other through peers given by host name, replicate, and a restarted node gets the state back", async () => {
    const three = hosts(3);
    topology.nameHosts(topo);
    for (const host of three) topology.dropMulticast(host);
    const base = clusterOptions();
    const options = { ...base, peers: three.map((h) => `${h.name}:${base.multicastPort}`) };
    const nodes = await startHosts(three, options);
    const [A, B, C] = nodes;
    await allAlive(nodes);
    for (const node of nodes) {
      const others = (await node.call("members")).filter((m) => !m.self);
      assert.deepEqual(others.map((m) => m.address).sort(), nodes.filter((n) => n !== node).map((n) => n.host.ipv4).sort(), `${node.name} knows the others`);
    }
    const started = Date.now();
    for (const [i, node] of nodes.entries()) await node.call("bulkSet", `p${i}-`, 300, 200);
    await B.call("destroy", "p0-7");
    const convergenceMs = await converge(nodes, { count: 899, since: started, timeoutMs: 15_000 });
    const dropped = three.map((h) => topology.droppedPackets(h).v4);
    assert.ok(dropped.every((n) => n > 0), `each host's firewall dropped the group's datagrams: ${dropped}`);
    // The silent group is reported once per node, at the end of its discovery window.
    const silentGroup = (n) => n.logs.some((l) => /heard neither its own datagrams nor any other node/.test(l.message));
    await waitUntil(() => nodes.every(silentGroup), 5_000, { what: "each node logged that it hears nothing on the group" });

    await C.kill("SIGKILL");
    await A.call("bulkSet", "after-", 100, 200);
    const C2 = await startOn(three[2], options, "C2");
    assert.equal(await C2.call("length"), 999, "the restarted node holds every session when ready() resolves");
    await converge([A, B, C2], { count: 999, timeoutMs: 15_000 });
    assertNoErrors([A, B, C2]);
    report({ scenario: "peers-no-multicast", nodes: 3, writes: 1_001, loss: 0, convergenceMs, sessionsLost: 0, note: `group datagrams dropped per host: ${dropped.join(", ")}` });
  });

  it("a node whose JS event loop is blocked for 5 s is not declared dead, and replication resumes after", async () => {
    const BLOCK_MS = 5_000;
    const base = clusterOptions({ failureTimeout: 1_000 });
    const nodes = await startHosts(hosts(3), base);
    const [A, B, C] = nodes;
    await allAlive(nodes);
    const expires = Date.now() + HOUR;

    const blocked = B.callWithTimeout(BLOCK_MS + 20_000, "block", BLOCK_MS);
    await sleep(200);
    // Writes on A and C while B's JS thread is stuck: B's engine keeps receiving them.
    const during = [A, C].map((node) => Array.from({ length: 500 }, (_, i) => ["set", `${node.name}-during-${i}`, sess({ i, during: true }, expires)]));
    await Promise.all([A.call("apply", during[0]), C.call("apply", during[1])]);
    await blocked;
    const unblockedAt = Date.now();
    // B reads the writes made while it was blocked, and its own writes reach the others.
    const after = Array.from({ length: 200 }, (_, i) => ["set", `B-after-${i}`, sess({ i }, expires)]);
    await B.call("apply", after);
    const model = new Model();
    [...during[0], ...during[1], ...after].forEach((op) => model.apply(op));
    const expected = model.table();
    const convergenceMs = await converge(nodes, { expected: tableDigest(expected), since: unblockedAt, timeoutMs: 10_000 });
    const { lost } = await compareTables(nodes, expected);

    const bad = [];
    for (const node of nodes) {
      for (const other of nodes) {
        if (other === node) continue;
        for (const e of node.eventsAbout(other.self.id)) if (e.type === "suspect" || e.type === "dead" || e.type === "leave") bad.push(`${node.name}: ${other.name} ${e.type}`);
      }
    }
    await allAlive(nodes, 0);
    assertNoErrors(nodes);
    report({
      scenario: "blocked-event-loop",
      nodes: nodes.length,
      writes: 1_200,
      loss: 0,
      convergenceMs,
      sessionsLost: lost,
      blockedMs: BLOCK_MS,
      failureTimeout: base.failureTimeout,
      falseSuspicions: bad.length,
      note: `B blocked ${BLOCK_MS} ms (failureTimeout ${base.failureTimeout}), ${bad.length} suspect/dead reports`,
    });
    assert.deepEqual(bad, [], "heartbeats come from the engine's threads, not the JS event loop");
    assert.equal(lost, 0);
  });
});
