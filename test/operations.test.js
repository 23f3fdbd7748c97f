"use strict";
// Operations: members() and member events, stats(), metrics() (Prometheus), the /metrics route,
// and the lifecycle around the network: close() and the leave, a port in use, a missing
// interface, close then reopen on the same port. A store in this process, peers in processes of
// their own (test/cluster/harness.js). Loopback only (ipv4 127.0.0.1, multicastTTL 0), with a
// cluster name and a random port of its own per test.
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const dgram = require("node:dgram");
const express = require("express");
const supertest = require("supertest");
const { createStore, closeStores, makeLogger, sessionData, sleep, runChild } = require("./helpers");
const { clusterOptions, startNode, stopAll, diagnostics, waitUntil } = require("./cluster/harness");
const { declarations, dtsInterface, docTable, codeNames } = require("./declarations");

const FAST = Object.freeze({ heartbeatInterval: 100, failureTimeout: 800 });
const MEMBER_FIELDS = ["address", "clockOffsetMs", "id", "incarnation", "lastHeard", "port", "self", "state", "tcpPort"];

/** Records the store's `member` events as { at, type, node }. */
function recordEvents(store) {
  const events = [];
  store.on("member", (e) => events.push({ at: Date.now(), ...e }));
  events.waitFor = (type, id, timeoutMs = 5_000) =>
    waitUntil(() => events.find((e) => e.type === type && e.node.id === id), timeoutMs, {
      intervalMs: 5,
      what: `a "${type}" event about ${id}`,
    });
  return events;
}

/** A peer process in the cluster of `opts`, started and ready. */
async function peer(opts, name = "P") {
  const node = await startNode(opts, { name });
  await node.call("ready");
  return node;
}

/**
 * SIGSTOPs a process (all its threads, the engine's included) and waits until it is stopped:
 * kill() returns before the stop has taken effect on every thread.
 */
async function stopProcess(pid) {
  process.kill(pid, "SIGSTOP");
  await waitUntil(() => {
    try {
      return fs.readFileSync(`/proc/${pid}/stat`, "utf8").replace(/^.*\) /s, "")[0] === "T";
    } catch {
      return sleep(50).then(() => true); // no /proc: give it time
    }
  }, 2_000, { intervalMs: 2, what: `process ${pid} stopped` });
}

/** Asserts the shape of one members() entry (or a member event's node). */
function assertMember(m, what) {
  assert.deepEqual(Object.keys(m).sort(), MEMBER_FIELDS, `${what}: fields`);
  assert.match(m.id, /^[0-9a-f]{16}$/, `${what}: id`);
  assert.equal(m.address, "127.0.0.1", `${what}: address`);
  assert.ok(Number.isInteger(m.port) && m.port > 0 && m.port < 65536, `${what}: port ${m.port}`);
  assert.ok(Number.isInteger(m.tcpPort) && m.tcpPort > 0 && m.tcpPort < 65536, `${what}: tcpPort ${m.tcpPort}`);
  assert.ok(Number.isInteger(m.incarnation) && m.incarnation > 0, `${what}: incarnation ${m.incarnation}`);
  assert.ok(["alive", "suspect", "dead", "left"].includes(m.state), `${what}: state ${m.state}`);
  assert.equal(typeof m.self, "boolean", `${what}: self`);
  if (m.self) {
    assert.equal(m.lastHeard, null, `${what}: lastHeard of itself`);
    assert.equal(m.clockOffsetMs, null, `${what}: clockOffsetMs of itself`);
  } else {
    assert.ok(Number.isInteger(m.lastHeard) && Math.abs(m.lastHeard - Date.now()) < 60_000, `${what}: lastHeard ${m.lastHeard}`);
    // One host, one clock: the estimate is off by the heartbeat's delay at most.
    assert.ok(m.clockOffsetMs === null || Math.abs(m.clockOffsetMs) < 250, `${what}: clockOffsetMs ${m.clockOffsetMs}`);
  }
}

/** The field names of an interface of index.d.ts. */
function declaredFields(interfaceName) {
  return dtsInterface(interfaceName).map((f) => f.name).sort();
}

// ---------------------------------------------------------------------------------------------
// Prometheus text exposition format (0.0.4), parsed strictly.

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/;
const LABEL = /^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(?:,|$)/;

/** Parses an exposition; asserts its syntax. Returns Map(name → { type, help, samples: [{ labels, value }] }). */
function parseExposition(text) {
  assert.equal(typeof text, "string");
  assert.ok(text.endsWith("\n"), "the exposition ends with a newline");
  const families = new Map();
  let current = null;
  const family = (name) => {
    if (!families.has(name)) families.set(name, { name, help: null, type: null, samples: [] });
    return families.get(name);
  };
  for (const [i, line] of text.slice(0, -1).split("\n").entries()) {
    const where = `line ${i + 1}: ${JSON.stringify(line)}`;
    assert.notEqual(line, "", `${where}: no empty lines`);
    if (line.startsWith("#")) {
      const m = /^# (HELP|TYPE) (\S+) (.*)$/.exec(line);
      assert.ok(m, `${where}: a comment is "# HELP name text" or "# TYPE name type"`);
      const [, kind, name, rest] = m;
      assert.match(name, METRIC_NAME, where);
      const f = family(name);
      assert.equal(f.samples.length, 0, `${where}: ${kind} must come before the samples of ${name}`);
      if (kind === "HELP") {
        assert.equal(f.help, null, `${where}: one HELP per family`);
        assert.ok(rest.trim().length > 0, `${where}: HELP text`);
        f.help = rest;
      } else {
        assert.equal(f.type, null, `${where}: one TYPE per family`);
        assert.ok(["counter", "gauge", "histogram", "summary", "untyped"].includes(rest), `${where}: type`);
        f.type = rest;
      }
      current = f;
      continue;
    }
    const m = SAMPLE.exec(line);
    assert.ok(m, `${where}: a sample is "name{labels} value"`);
    const [, name, labelText, valueText] = m;
    assert.ok(current && current.name === name, `${where}: samples follow the HELP and TYPE of their own family`);
    assert.ok(current.help !== null && current.type !== null, `${where}: HELP and TYPE come before the samples of ${name}`);
    const labels = {};
    if (labelText !== undefined) {
      let rest = labelText;
      while (rest.length) {
        const l = LABEL.exec(rest);
        assert.ok(l, `${where}: labels are name="value" pairs`);
        assert.match(l[1], LABEL_NAME, where);
        assert.ok(!(l[1] in labels), `${where}: label ${l[1]} repeated`);
        labels[l[1]] = l[2].replace(/\\(["\\n])/g, (_, c) => (c === "n" ? "\n" : c));
        rest = rest.slice(l[0].length);
      }
    }
    assert.match(valueText, /^(?:[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)|NaN|[+-]Inf)$/, `${where}: value`);
    const value = Number(valueText.replace("Inf", "Infinity"));
    const key = JSON.stringify(Object.entries(labels).sort());
    assert.ok(!current.samples.some((s) => s.key === key), `${where}: the same series twice`);
    current.samples.push({ labels, value, key });
  }
  for (const f of families.values()) {
    assert.ok(f.help !== null && f.type !== null, `${f.name}: HELP and TYPE`);
  }
  return families;
}

/** The value of a family's sample with exactly `labels` (undefined when absent). */
function sampleValue(families, name, labels = {}) {
  const f = families.get(name);
  const key = JSON.stringify(Object.entries(labels).sort());
  return f && f.samples.find((s) => s.key === key)?.value;
}

const PREFIX = "session_multicast_";
// The figures of stats() (src/stats.rs), and the metric families made from members().
const { stats: STATS, memberMetrics: MEMBER_METRICS } = declarations();
// The figures exported as one series each: the key, the metric, and whether it is a counter (can only grow).
const SERIES = STATS.filter((s) => s.metric && s.metric.scale !== undefined);

describe("operations", function () {
  this.timeout(30_000);
  afterEach(async function () {
    if (this.currentTest.state === "failed") console.log(`    nodes of the failed test:\n${diagnostics()}`);
    await closeStores();
    await stopAll();
  });

  describe("members() and member events", () => {
    it("members() entries have id, address, port, tcpPort, incarnation, state, self and lastHeard", async () => {
      const opts = clusterOptions(FAST);
      const P = await peer(opts);
      const store = createStore(opts);
      await store.ready();
      await waitUntil(() => store.members().length === 2, 3_000);
      const members = store.members();
      const me = members.find((m) => m.self);
      const other = members.find((m) => !m.self);
      assertMember(me, "self");
      assertMember(other, "peer");
      assert.equal(members[0], me, "this node comes first");
      assert.equal(me.state, "alive");
      assert.deepEqual(other, { ...P.self, self: false, lastHeard: other.lastHeard, clockOffsetMs: other.clockOffsetMs }, "the peer as it describes itself");
      assert.equal(other.state, "alive");
      assert.ok(Date.now() - other.lastHeard < 1_000, `heard from the peer ${Date.now() - other.lastHeard} ms ago`);
      // Its own entry as the peer sees it.
      const seen = (await P.call("members")).find((m) => m.id === me.id);
      assert.deepEqual({ ...seen, self: true, lastHeard: null, clockOffsetMs: null }, me);
    });

    it("join, suspect, dead, alive and leave events carry the member (SIGSTOP, SIGCONT, close)", async () => {
      const opts = clusterOptions(FAST);
      const store = createStore(opts);
      const events = recordEvents(store);
      await store.ready();
      const P = await peer(opts);
      const id = P.self.id;

      const join = await events.waitFor("join", id);
      let alive;
      try {
        await stopProcess(P.pid); // silent: no heartbeat from its threads either
        const suspect = await events.waitFor("suspect", id);
        const dead = await events.waitFor("dead", id, FAST.failureTimeout + 2_000);
        assert.ok(suspect.at <= dead.at);
        assert.equal(store.members().find((m) => m.id === id).state, "dead");
      } finally {
        process.kill(P.pid, "SIGCONT");
      }
      alive = await events.waitFor("alive", id, 3_000);
      assert.equal(store.members().find((m) => m.id === id).state, "alive");
      await P.close();
      const leave = await events.waitFor("leave", id);

      const expectedState = { join: "alive", suspect: "suspect", dead: "dead", alive: "alive", leave: "left" };
      for (const e of events.filter((x) => x.node.id === id)) {
        assertMember(e.node, `${e.type} event`);
        assert.equal(e.node.state, expectedState[e.type], `state carried by the ${e.type} event`);
        assert.equal(e.node.self, false);
        assert.equal(e.node.incarnation, P.self.incarnation);
        assert.equal(e.node.port, P.self.port);
        assert.equal(e.node.tcpPort, P.self.tcpPort);
      }
      assert.ok(alive.node.lastHeard > join.node.lastHeard, "lastHeard moves on");
      assert.deepEqual(
        events.filter((e) => e.node.id === id).map((e) => e.type),
        ["join", "suspect", "dead", "alive", "leave"]
      );
      assert.equal(store.members().find((m) => m.id === id)?.state ?? "left", "left");
      assert.ok(leave.at > alive.at);
    });
  });

  describe("stats()", () => {
    it("has every field of index.d.ts MulticastStoreStats, and nothing else, while networked with persist", async () => {
      const opts = clusterOptions(FAST);
      const P = await peer(opts);
      const dir = fs.mkdtempSync(path.join(require("node:os").tmpdir(), "esm-ops-"));
      const store = createStore({ ...opts, persist: path.join(dir, "s.snap") });
      await store.ready();
      const stats = store.stats();
      // networkError is there only after a failed start (see "Errors at start" below).
      assert.deepEqual(Object.keys(stats).sort(), declaredFields("MulticastStoreStats").filter((k) => k !== "networkError"));
      const persisted = STATS.filter((s) => s.persisted).map((s) => s.key);
      assert.ok(persisted.length >= 8, `${persisted}`);
      const withoutPersist = createStore(clusterOptions({ multicast: false })).stats();
      assert.deepEqual(persisted.filter((k) => k in withoutPersist), [], "the snapshot figures are there with persist only");
      await store.close();
      fs.rmSync(dir, { recursive: true, force: true });
      for (const key of [
        "sessions",
        "tombstones",
        "sessionBytes",
        "members",
        "datagramsSent",
        "bytesSent",
        "datagramsReceived",
        "bytesReceived",
        "retransmissions",
        "naksSent",
        "naksReceived",
        "dropped",
        "stateTransfers",
        "replicationLagMs",
      ]) {
        assert.ok(key in stats, `stats().${key} (issue 8)`);
      }
      for (const [key, value] of Object.entries(stats)) {
        if (key === "ready") assert.equal(value, true);
        else if (key === "network") assert.equal(value, "up");
        else if (key === "dropped") {
          assert.equal(Object.getPrototypeOf(value), Object.prototype);
          for (const [reason, n] of Object.entries(value)) assert.ok(Number.isInteger(n) && n > 0, `dropped.${reason} = ${n}`);
        } else assert.ok(typeof value === "number" && Number.isFinite(value) && value >= 0, `stats().${key} = ${value}`);
      }
      assert.equal(stats.members, 2);
      assert.equal(stats.stateTransfers, 1, "joined a cluster that had a member");
      assert.ok(stats.datagramsSent > 0 && stats.bytesSent > stats.datagramsSent);
      assert.ok(stats.datagramsReceived > 0 && stats.bytesReceived > stats.datagramsReceived);
      void P;
    });

    it("without a network, the local figures only", async () => {
      const store = createStore({ multicast: false });
      const keys = Object.keys(store.stats()).sort();
      assert.deepEqual(keys, ["entries", "localTouches", "members", "network", "purged", "ready", "rejectedTooLarge", "sessionBytes", "sessions", "tombstones"]);
      assert.equal(store.stats().network, "off");
    });

    it("counts what happens: sessions, bytes, tombstones, traffic, drops by reason", async () => {
      const opts = clusterOptions(FAST);
      const P = await peer(opts);
      const store = createStore(opts);
      await store.ready();
      const before = store.stats();
      const sessions = [sessionData({ a: 1 }), sessionData({ b: "x".repeat(500) }), sessionData({ c: [1, 2, 3] })];
      for (const [i, s] of sessions.entries()) await store.set(`s${i}`, s);
      await store.destroy("s2");
      const bytes = Buffer.byteLength(JSON.stringify(sessions[0])) + Buffer.byteLength(JSON.stringify(sessions[1]));
      // A datagram that is not ours, to this node's own UDP port (loopback).
      const me = store.members()[0];
      const socket = dgram.createSocket("udp4");
      await new Promise((resolve, reject) => socket.send(Buffer.from("not a datagram of this protocol"), me.port, "127.0.0.1", (e) => (e ? reject(e) : resolve())));
      socket.close();
      await waitUntil(async () => (await P.call("length")) === 2, 3_000, { what: "the writes reach the peer" });
      const after = await waitUntil(() => {
        const s = store.stats();
        return Object.keys(s.dropped).length > 0 && s;
      }, 3_000, { what: "the bad datagram is counted in stats().dropped" });
      assert.equal(after.sessions, 2);
      assert.equal(after.tombstones, 1);
      assert.equal(after.sessionBytes, bytes, "sessionBytes is the size of the stored JSON");
      assert.ok(after.datagramsSent > before.datagramsSent, "the writes were sent");
      assert.ok(after.bytesSent - before.bytesSent >= bytes, "at least the session bytes were sent");
      assert.ok(after.datagramsReceived > before.datagramsReceived);
      assert.equal(Object.values(after.dropped).reduce((a, b) => a + b, 0), 1, JSON.stringify(after.dropped));
      const peerStats = await P.call("stats");
      assert.ok(peerStats.datagramsReceived > 0 && peerStats.sessions === 2);
    });

    it("replicationLagMs estimates how old remote writes are when they arrive", async () => {
      const opts = clusterOptions({ heartbeatInterval: 100, failureTimeout: 3_000 });
      const store = createStore(opts);
      await store.ready();
      const O = await peer(opts, "O");
      await waitUntil(() => store.members().length === 2, 3_000);
      // Written here while O is stopped: they reach O's engine ~600 ms late.
      try {
        await stopProcess(O.pid);
        for (let i = 0; i < 50; i++) await store.set(`late-${i}`, sessionData({ i }));
        await sleep(600);
      } finally {
        process.kill(O.pid, "SIGCONT");
      }
      await waitUntil(async () => (await O.call("length")) === 50, 5_000, { what: "O receives the writes" });
      const oStats = await O.call("stats");
      const late = oStats.replicationLagMs;
      assert.ok(late >= 100 && late <= 5_000, `O's replicationLagMs after ~600 ms late writes: ${late} (${JSON.stringify(oStats)})`);
      // Writes that arrive at once on loopback pull the average down.
      const fresh = await peer(opts, "F");
      await waitUntil(() => store.members().length === 3, 3_000);
      await fresh.call("bulkSet", "f-", 200, 100);
      await waitUntil(async () => (await store.length()) === 250, 5_000);
      assert.ok(store.stats().replicationLagMs < 100, `replicationLagMs on loopback: ${store.stats().replicationLagMs}`);
    });
  });

  describe("the declaration of every figure (src/stats.rs) is what index.d.ts and docs/operations.md name", () => {
    const OPERATIONS = "docs/operations.md";
    const STATS_TABLE = "## Counters and gauges: `stats()`";
    const METRICS_TABLE = "## Prometheus: `metrics()`";

    /** Throws unless index.d.ts (its text: `dts`) declares exactly the declared figures. */
    function checkDts(dts) {
      const fields = dtsInterface("MulticastStoreStats", dts);
      assert.deepEqual(fields.map((f) => f.name).sort(), STATS.map((s) => s.key).sort(), "MulticastStoreStats names every figure, and only those");
      for (const s of STATS) {
        const optional = s.networked || s.persisted || s.key === "networkError";
        assert.equal(fields.find((f) => f.name === s.key).optional, optional, `${s.key}: optional in index.d.ts iff not always there`);
      }
    }

    /** Throws unless the stats() and metrics() tables of docs/operations.md (its text: `doc`) name every figure and metric. */
    function checkDoc(doc) {
      const keys = docTable(OPERATIONS, STATS_TABLE, doc).flatMap((row) => codeNames(row[0]));
      for (const s of STATS) assert.ok(keys.includes(s.key), `the stats() table names ${s.key}`);
      for (const key of keys) assert.ok(STATS.some((s) => s.key === key), `the stats() table names ${key}, which is not a figure`);
      const rows = docTable(OPERATIONS, METRICS_TABLE, doc);
      const families = [...STATS.filter((s) => s.metric).map((s) => ({ ...s.metric, from: s.key })), ...MEMBER_METRICS];
      for (const f of families) {
        const row = rows.find((cells) => codeNames(cells[0]).some((n) => n.replace(/\{.*\}$/, "") === f.name));
        assert.ok(row, `the metrics() table names ${f.name}`);
        assert.equal(row[1], f.type, `${f.name}: its type in the metrics() table`);
        if (f.from) assert.ok(codeNames(row[2]).includes(f.from), `${f.name}: the metrics() table says it comes from stats().${f.from}`);
      }
      assert.equal(rows.length, families.length, "the metrics() table has a row per metric and no more");
    }

    it("every figure once, each with its help text; metric names by the conventions", () => {
      const keys = STATS.map((s) => s.key);
      assert.equal(new Set(keys).size, keys.length);
      for (const s of STATS) {
        assert.ok(s.help.length > 0, `${s.key}: help`);
        if (!s.metric) continue;
        assert.ok(s.metric.name.startsWith(PREFIX), s.metric.name);
        assert.equal(s.metric.type === "counter", s.metric.name.endsWith("_total"), `${s.metric.name}: _total for counters`);
      }
    });

    it("index.d.ts: MulticastStoreStats", () => {
      checkDts(undefined);
    });

    it("docs/operations.md: the stats() and metrics() tables", () => {
      checkDoc(undefined);
    });

    it("fails when index.d.ts or docs/operations.md leaves a figure out", () => {
      const dts = fs.readFileSync(path.join(__dirname, "..", "index.d.ts"), "utf8");
      const doc = fs.readFileSync(path.join(__dirname, "..", "docs", "operations.md"), "utf8");
      const dtsWithout = dts.replace("        reassemblyBytes?: number;\n", "");
      assert.notEqual(dtsWithout, dts);
      assert.throws(() => checkDts(dtsWithout), /MulticastStoreStats names every figure/);
      const withoutStat = doc.replace(/\n\| `reassemblyBytes` \|.*/, "");
      assert.notEqual(withoutStat, doc);
      assert.throws(() => checkDoc(withoutStat), /stats\(\) table names reassemblyBytes/);
      const withoutMetric = doc.replace(/\n\| `session_multicast_reassembly_bytes` \|.*/, "");
      assert.notEqual(withoutMetric, doc);
      assert.throws(() => checkDoc(withoutMetric), /metrics\(\) table names session_multicast_reassembly_bytes/);
    });
  });

  describe("metrics() (Prometheus text exposition)", () => {
    /** A store in a cluster with a peer, some sessions, a tombstone and a dropped datagram. */
    async function busyStore() {
      const opts = clusterOptions(FAST);
      const P = await peer(opts);
      // With persist, so that every figure is there (the file in a directory of its own).
      const dir = fs.mkdtempSync(path.join(require("node:os").tmpdir(), "esm-metrics-"));
      const store = createStore({ ...opts, persist: path.join(dir, "s.snap") });
      store.once("disconnect", () => fs.rmSync(dir, { recursive: true, force: true }));
      await store.ready();
      for (let i = 0; i < 20; i++) await store.set(`m${i}`, sessionData({ i }));
      await store.destroy("m0");
      await P.call("set", "from-peer", sessionData({ p: true }));
      const socket = dgram.createSocket("udp4");
      await new Promise((resolve) => socket.send(Buffer.from("junk"), store.members()[0].port, "127.0.0.1", resolve));
      socket.close();
      await waitUntil(() => Object.keys(store.stats().dropped).length > 0 && store.stats().sessions === 20, 3_000);
      return { store, P };
    }

    it("is valid text exposition: HELP and TYPE before each family, names and units by the conventions", async () => {
      const { store } = await busyStore();
      const text = store.metrics();
      const families = parseExposition(text);
      assert.ok(families.size >= 10, `${families.size} families`);
      for (const f of families.values()) {
        assert.ok(f.name.startsWith(PREFIX), `${f.name}: one prefix for every metric`);
        if (f.type === "counter") assert.ok(f.name.endsWith("_total"), `counter ${f.name} ends with _total`);
        else assert.ok(!f.name.endsWith("_total"), `${f.type} ${f.name} does not end with _total`);
        assert.doesNotMatch(f.name, /(_ms|_millis|milliseconds|_kb|_mb|kilobytes)(_|$)/, `${f.name}: base units (seconds, bytes)`);
        if (/bytes/.test(f.name)) assert.match(f.name, /_bytes(_total)?$/, `${f.name}: the unit is a suffix`);
        assert.ok(f.samples.length > 0 || f.name === `${PREFIX}dropped_total`, `${f.name} has samples`);
      }
      assert.equal(families.get(`${PREFIX}replication_lag_seconds`)?.type, "gauge", "replication lag in seconds");
      assert.equal(families.get(`${PREFIX}session_bytes`)?.type, "gauge");
      assert.equal(families.get(`${PREFIX}sent_bytes_total`)?.type, "counter");
      assert.deepEqual(
        families.get(`${PREFIX}members`).samples.map((s) => s.labels.state).sort(),
        ["alive", "dead", "left", "suspect"]
      );
      assert.ok(families.get(`${PREFIX}dropped_total`).samples.length >= 1, "dropped by reason");
    });

    it("agrees with stats() and members()", async () => {
      const { store } = await busyStore();
      await sleep(100);
      const s1 = store.stats();
      const families = parseExposition(store.metrics());
      const s2 = store.stats();
      const members = store.members();
      assert.ok(SERIES.length >= 30, `${SERIES.length} figures exported as one series`);
      for (const { key, metric } of SERIES) {
        const value = sampleValue(families, metric.name);
        assert.notEqual(value, undefined, `${metric.name} (stats().${key})`);
        const [v1, v2] = [s1[key], s2[key]].map((v) => Number(v) * metric.scale);
        if (metric.type === "counter") assert.ok(v1 <= value && value <= v2, `${metric.name} = ${value}, stats().${key} went ${s1[key]} → ${s2[key]}`);
        else if (v1 === v2) assert.ok(Math.abs(value - v1) < 1e-9, `${metric.name} = stats().${key} × ${metric.scale}`);
      }
      assert.equal(sampleValue(families, `${PREFIX}ready`), 1);
      assert.ok(Math.abs(sampleValue(families, `${PREFIX}replication_lag_seconds`) - s1.replicationLagMs / 1000) < 1e-9);
      for (const state of ["alive", "suspect", "dead", "left"]) {
        const n = members.filter((m) => m.state === state).length;
        assert.equal(sampleValue(families, `${PREFIX}members`, { state }), n, `members{state="${state}"}`);
      }
      assert.equal(
        sampleValue(families, `${PREFIX}members`, { state: "alive" }) + sampleValue(families, `${PREFIX}members`, { state: "suspect" }),
        s1.members
      );
      for (const [reason, n] of Object.entries(s2.dropped)) {
        const value = sampleValue(families, `${PREFIX}dropped_total`, { reason });
        assert.ok((s1.dropped[reason] ?? 0) <= value && value <= n, `dropped_total{reason="${reason}"}`);
      }
      for (const state of ["up", "off", "failed", "closed"]) {
        assert.equal(sampleValue(families, `${PREFIX}network`, { state }), state === s1.network ? 1 : 0, `network{state="${state}"}`);
      }
      // Every stats() figure is exported but ownLoopback (a diagnostic of the doctor) and members
      // (exported by state, from members()).
      assert.deepEqual(STATS.filter((s) => !s.metric).map((s) => s.key).sort(), ["members", "networkError", "ownLoopback"]);
      assert.deepEqual(Object.keys(s1).filter((k) => !STATS.some((s) => s.key === k)), []);
    });

    it("works without a network and after close()", async () => {
      const local = createStore({ multicast: false });
      await local.set("a", sessionData());
      const families = parseExposition(local.metrics());
      assert.equal(sampleValue(families, `${PREFIX}sessions`), 1);
      assert.equal(sampleValue(families, `${PREFIX}members`, { state: "alive" }), 1);
      await local.close();
      parseExposition(local.metrics());
    });

    it("can be served on the app's own /metrics route", async () => {
      const { store } = await busyStore();
      const app = express();
      app.get("/metrics", (req, res) => {
        res.type("text/plain; version=0.0.4").send(store.metrics());
      });
      const res = await supertest(app).get("/metrics").expect(200);
      assert.match(res.headers["content-type"], /^text\/plain; ?version=0\.0\.4; charset=utf-8$/);
      const families = parseExposition(res.text);
      assert.equal(sampleValue(families, `${PREFIX}sessions`), 20);
      assert.equal(sampleValue(families, `${PREFIX}tombstones`), 1);
      assert.equal(sampleValue(families, `${PREFIX}members`, { state: "alive" }), 2);
    });
  });

  describe("lifecycle", () => {
    it("close() resolves once the leave is sent: the peer reports it at once; the process then exits on its own", async () => {
      const opts = clusterOptions({ heartbeatInterval: 100, failureTimeout: 5_000 });
      const store = createStore({ ...opts, gracefullShutdown: false });
      const events = recordEvents(store);
      await store.ready();
      const run = await runChild("close-peer", { args: [JSON.stringify(opts)], budgetMs: 10_000 });
      assert.equal(run.signal, null, `stderr: ${run.stderr}`);
      assert.equal(run.code, 0, `stderr: ${run.stderr}`);
      const { self } = JSON.parse(run.lines[0]);
      const { closing, closed } = run.result;
      const leave = await events.waitFor("leave", self.id, 1_000);
      assert.ok(leave.at >= closing, "the leave was sent by close()");
      assert.ok(leave.at - closed < 300, `the peer saw the leave ${leave.at - closed} ms after close() resolved`);
      assert.ok(closed - closing < 1_000, `close() took ${closed - closing} ms`);
      assert.ok(run.exitedAt - closed < 2_000, `the process exited ${run.exitedAt - closed} ms after close() resolved`);
      assert.equal(events.find((e) => e.type === "dead"), undefined);
    });

    /** A UDP port held by a socket bound without SO_REUSEADDR on the wildcard address. */
    async function heldPort() {
      const blocker = dgram.createSocket({ type: "udp4", reuseAddr: false });
      await new Promise((resolve) => blocker.bind(0, "0.0.0.0", resolve));
      return blocker;
    }

    /**
     * A store that failed to start: its `error` events and `disconnect` count, once the error
     * came and ready() resolved. A store that still serves never emits disconnect (express-session
     * would stop attaching sessions to requests).
     */
    async function failedStore(options) {
      const store = createStore(options);
      const seen = { store, errors: [], disconnects: 0 };
      store.on("error", (e) => seen.errors.push(e));
      store.on("disconnect", () => seen.disconnects++);
      await store.ready();
      await waitUntil(() => seen.errors.length > 0, 2_000, { what: "error event" });
      await sleep(50);
      assert.equal(seen.disconnects, 0, "a store that still serves emitted disconnect");
      return seen;
    }

    it("port in use: error ERR_NETWORK, no disconnect; the app goes on, the store serves alone and says so", async () => {
      const blocker = await heldPort();
      try {
        const { store, errors } = await failedStore({ multicastPort: blocker.address().port });
        assert.equal(errors.length, 1);
        assert.ok(errors[0] instanceof Error);
        assert.equal(errors[0].code, "ERR_NETWORK");
        assert.match(errors[0].message, /^express-session-multicast: /);
        assert.match(errors[0].message, /in use/i);
        await store.set("local", sessionData({ ok: true }));
        assert.equal((await store.get("local")).ok, true);
        assert.equal(await store.length(), 1);
        assert.equal(store.members().length, 1);
        assert.equal(store.members()[0].state, "isolated");
        const stats = store.stats();
        assert.equal(stats.sessions, 1);
        assert.equal(stats.datagramsSent, undefined, "no network figures");
        assert.equal(stats.network, "failed");
        assert.match(stats.networkError, /in use/i);
        assert.equal(sampleValue(parseExposition(store.metrics()), `${PREFIX}network`, { state: "failed" }), 1);
      } finally {
        blocker.close();
      }
    });

    it("port in use: the error message names the port", async () => {
      const blocker = await heldPort();
      try {
        const port = blocker.address().port;
        const { errors } = await failedStore({ multicastPort: port });
        assert.match(errors[0].message, new RegExp(`\\b${port}\\b`), `the message names the port: ${errors[0].message}`);
      } finally {
        blocker.close();
      }
    });

    it("close() after a failed start emits disconnect once", async () => {
      const seen = await failedStore({ ipv4: "203.0.113.77" });
      await seen.store.close();
      await sleep(50);
      assert.equal(seen.disconnects, 1, `disconnect emitted ${seen.disconnects} times for one stop`);
      assert.equal(seen.store.stats().network, "closed");
    });

    it("interface missing: error ERR_NETWORK naming the address, no disconnect; the store works locally", async () => {
      // TEST-NET-3: on no interface of this host, so the bind fails and nothing is sent.
      const { store, errors } = await failedStore({ ipv4: "203.0.113.77" });
      assert.equal(errors.length, 1);
      assert.equal(errors[0].code, "ERR_NETWORK");
      assert.match(errors[0].message, /203\.0\.113\.77/);
      assert.match(errors[0].message, /ipv4/);
      await store.set("local", sessionData({ ok: true }));
      assert.equal((await store.get("local")).ok, true);
      assert.deepEqual(Object.keys(await store.all()), ["local"]);
    });

    it("without an error listener, the error goes to logger.error instead of crashing the app", async () => {
      const logger = makeLogger();
      const store = createStore({ ipv4: "203.0.113.77", logger });
      assert.equal(store.listenerCount("error"), 0);
      await store.ready();
      const errors = await waitUntil(() => {
        const logged = logger.records.filter((r) => r.level === "error");
        return logged.length > 0 && logged;
      }, 2_000, { what: "logger.error" });
      assert.equal(errors.length, 1, JSON.stringify(logger.records));
      assert.match(errors[0].args.join(" "), /^express-session-multicast: .*203\.0\.113\.77/);
      await store.set("still", sessionData({ ok: true }));
      assert.equal((await store.get("still")).ok, true);
    });

    it("close, then a new store on the same port in the same process joins the cluster again", async () => {
      const opts = clusterOptions(FAST);
      const P = await peer(opts);
      await P.call("set", "from-peer", sessionData({ p: 1 }));
      const first = createStore(opts);
      await first.ready();
      assert.equal(first.members().length, 2);
      const firstId = first.members()[0].id;
      await first.close();
      await waitUntil(async () => (await P.call("members")).find((m) => m.id === firstId)?.state === "left", 2_000);

      const second = createStore(opts);
      const errors = [];
      second.on("error", (e) => errors.push(e));
      await second.ready();
      const secondId = second.members()[0].id;
      assert.notEqual(secondId, firstId, "a new node");
      assert.equal((await second.get("from-peer")).p, 1, "state transfer from the peer");
      await P.waitForEvent((e) => e.type === "join" && e.node.id === secondId, 3_000, "join of the new store");
      await second.set("from-second", sessionData({ s: 2 }));
      await waitUntil(async () => (await P.call("get", "from-second"))?.s === 2, 3_000);
      assert.deepEqual(errors, []);
      assert.equal(second.stats().members, 2);
    });
  });
});
