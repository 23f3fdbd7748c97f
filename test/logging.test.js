"use strict";
// The `logger` option with console, pino, winston and bunyan, each writing to an in-memory stream.
// The store under test runs in this process; its peers are separate processes
// (test/cluster/harness.js), so one of them can be SIGKILLed. Loopback only (ipv4 127.0.0.1,
// multicastTTL 0), a cluster name and a random port of its own per test.
//
// What is checked, per logger: one line per cluster event (join, leave, dead, state transfer)
// at the right level (info, warn for dead), the unauthenticated warning once per store, no
// line per request at info level, and debug detail (member suspect) only through `debug`.
const assert = require("node:assert/strict");
const path = require("node:path");
const { Writable } = require("node:stream");
const { Console } = require("node:console");
const { spawn } = require("node:child_process");
const pino = require("pino");
const winston = require("winston");
const bunyan = require("bunyan");
const { createStore, closeStores, sessionData, sleep } = require("./helpers");
const { clusterOptions, startNode, stopAll, diagnostics, waitUntil } = require("./cluster/harness");

const PREFIX = "express-session-multicast: ";
const FAST = Object.freeze({ heartbeatInterval: 100, failureTimeout: 800 });
const LEVELS = ["trace", "debug", "info", "warn", "error"];
const rank = (level) => LEVELS.indexOf(level);

/** A Writable that keeps every line written to it. */
function memoryStream() {
  const lines = [];
  let pending = "";
  const stream = new Writable({
    write(chunk, _encoding, callback) {
      pending += chunk.toString();
      let nl;
      while ((nl = pending.indexOf("\n")) >= 0) {
        lines.push(pending.slice(0, nl));
        pending = pending.slice(nl + 1);
      }
      callback();
    },
  });
  return { stream, lines };
}

/**
 * Each kind: make(level) → { logger, records() }, where records() is every line the logger
 * wrote, as { level, message }, read back from what it wrote to its in-memory stream.
 */
const KINDS = {
  // A real Console writing to in-memory streams; each level method is wrapped only to note
  // which one wrote the line (console.info and console.debug both write to stdout).
  console() {
    const out = memoryStream();
    const written = [];
    const console = new Console({ stdout: out.stream, stderr: out.stream });
    for (const name of ["debug", "info", "warn", "error", "trace"]) {
      const original = console[name].bind(console);
      console[name] = (...args) => {
        const before = out.lines.length;
        original(...args);
        for (const line of out.lines.slice(before)) written.push({ level: name, message: line });
      };
    }
    // Console has no level of its own: `level` does not apply.
    return { logger: console, records: () => written };
  },
  pino(level) {
    const out = memoryStream();
    const logger = pino({ level, base: null }, out.stream);
    return {
      logger,
      records: () =>
        out.lines.map((line) => {
          const rec = JSON.parse(line);
          return { level: pino.levels.labels[rec.level], message: rec.msg };
        }),
    };
  },
  winston(level) {
    const out = memoryStream();
    const logger = winston.createLogger({
      level,
      format: winston.format.json(),
      transports: [new winston.transports.Stream({ stream: out.stream })],
    });
    return {
      logger,
      records: () =>
        out.lines.map((line) => {
          const rec = JSON.parse(line);
          return { level: rec.level, message: rec.message };
        }),
    };
  },
  bunyan(level) {
    const out = memoryStream();
    const logger = bunyan.createLogger({ name: "app", level, streams: [{ level, stream: out.stream }] });
    return {
      logger,
      records: () =>
        out.lines.map((line) => {
          const rec = JSON.parse(line);
          return { level: bunyan.nameFromLevel[rec.level], message: rec.msg };
        }),
    };
  },
};

// What the store logs, by kind of line.
const MEMBER_LINE = /^member ([0-9a-f]{16}) at \S+ (join|leave|suspect|dead|alive)$/;
const TRANSFER_LINE = /^state transfer from \S+: \d+ entries, \d+ bytes in \d+ ms$/;
const UNAUTHENTICATED_LINE = /is unauthenticated/;

function classify(record) {
  assert.ok(
    typeof record.message === "string" && record.message.startsWith(PREFIX),
    `every line starts with "${PREFIX}": ${JSON.stringify(record)}`
  );
  const text = record.message.slice(PREFIX.length);
  const member = MEMBER_LINE.exec(text);
  if (member) return { ...record, kind: member[2], id: member[1] };
  if (TRANSFER_LINE.test(text)) return { ...record, kind: "transfer" };
  if (UNAUTHENTICATED_LINE.test(text)) return { ...record, kind: "unauthenticated" };
  return { ...record, kind: "other" };
}

const linesOf = (capture) => capture.records().map(classify);
const count = (lines, kind, id) => lines.filter((l) => l.kind === kind && (!id || l.id === id)).length;
const atInfoOrAbove = (lines) => lines.filter((l) => rank(l.level) >= rank("info"));

/** Waits until the logger has written a line of `kind` (about `id`), returns it. */
async function logged(capture, kind, id, timeoutMs = 5_000) {
  return waitUntil(
    () => linesOf(capture).find((l) => l.kind === kind && (!id || l.id === id)),
    timeoutMs,
    { intervalMs: 10, what: `a "${kind}" line${id ? ` about ${id}` : ""} in the log` }
  );
}

/**
 * The whole story, seen from a store in this process logging through `capture.logger`:
 * B and C (processes) start; the store joins them and receives the state; 1,000 rounds of
 * set/get/touch/destroy; C is SIGKILLed (suspect, then dead); B closes (leave).
 */
async function clusterStory(capture) {
  const opts = clusterOptions(FAST);
  const [B, C] = await Promise.all([startNode(opts, { name: "B" }), startNode(opts, { name: "C" })]);
  await Promise.all([B.call("ready"), C.call("ready")]);
  await B.call("set", "from-b", sessionData({ from: "B" }));
  // Either may be the donor of the state transfer: both hold the session first.
  await waitUntil(async () => (await C.call("get", "from-b")) !== null, 5_000, { what: "C has B's session" });

  const store = createStore({ ...opts, logger: capture.logger });
  await store.ready();
  await waitUntil(() => store.members().filter((m) => m.state === "alive").length === 3, 3_000, {
    what: "the store sees B and C alive",
  });
  await logged(capture, "join", B.self.id);
  await logged(capture, "join", C.self.id);
  await logged(capture, "transfer");
  assert.equal((await store.get("from-b")).from, "B", "the state transfer brought B's session");

  // Requests: nothing at info level, however many.
  await sleep(100);
  const before = atInfoOrAbove(linesOf(capture)).length;
  for (let i = 0; i < 1_000; i++) {
    const sid = `req-${i}`;
    await store.set(sid, sessionData({ i }));
    await store.get(sid);
    await store.touch(sid, sessionData({ i }));
    await store.destroy(sid);
  }
  await sleep(300); // replication of those writes, and anything they might log
  const noise = atInfoOrAbove(linesOf(capture)).slice(before);
  assert.deepEqual(noise, [], "4,000 store operations must not log at info level or above");

  await C.kill("SIGKILL");
  await logged(capture, "dead", C.self.id, FAST.failureTimeout + 3_000);
  const closedAt = Date.now();
  await B.close();
  await logged(capture, "leave", B.self.id);
  assert.ok(Date.now() - closedAt < FAST.failureTimeout, "the leave is logged at once, not after failureTimeout");
  await sleep(50);
  return { B, C, lines: linesOf(capture) };
}

describe("logging through the logger option", function () {
  this.timeout(30_000);
  afterEach(async function () {
    if (this.currentTest.state === "failed") console.log(`    nodes of the failed test:\n${diagnostics()}`);
    await closeStores();
    await stopAll();
  });

  for (const kind of Object.keys(KINDS)) {
    describe(kind, () => {
      it("one line per cluster event at info (dead at warn), the unauthenticated warning once, nothing per request, suspect only at debug", async () => {
        const capture = KINDS[kind]("debug");
        const { B, C, lines } = await clusterStory(capture);
        const shown = () => lines.map((l) => `${l.level} ${l.message}`).join("\n");

        assert.equal(count(lines, "unauthenticated"), 1, `one unauthenticated warning:\n${shown()}`);
        assert.equal(lines.find((l) => l.kind === "unauthenticated").level, "warn");
        for (const node of [B, C]) assert.equal(count(lines, "join", node.self.id), 1, `one join line for ${node.name}:\n${shown()}`);
        assert.equal(count(lines, "transfer"), 1, `one state transfer line:\n${shown()}`);
        assert.equal(count(lines, "dead", C.self.id), 1, `one dead line for C:\n${shown()}`);
        assert.equal(count(lines, "leave", B.self.id), 1, `one leave line for B:\n${shown()}`);
        assert.equal(count(lines, "dead", B.self.id), 0, "B left: it is never declared dead");

        const levelOf = (k) => [...new Set(lines.filter((l) => l.kind === k).map((l) => l.level))];
        assert.deepEqual(levelOf("join"), ["info"]);
        assert.deepEqual(levelOf("transfer"), ["info"]);
        assert.deepEqual(levelOf("leave"), ["info"]);
        assert.deepEqual(levelOf("dead"), ["warn"]);
        // C went silent, so it was suspect before dead: that detail is for debug only.
        assert.ok(count(lines, "suspect", C.self.id) >= 1, `C's suspicion is logged at debug:\n${shown()}`);
        assert.deepEqual(levelOf("suspect"), ["debug"]);
        // Nothing at info or above but cluster events (an "alive" after a slow heartbeat is one).
        const unexpected = atInfoOrAbove(lines).filter((l) => l.kind === "other" || l.kind === "suspect");
        assert.deepEqual(unexpected, [], `unexpected lines at info or above:\n${shown()}`);
        for (const l of lines.filter((x) => x.kind === "alive")) assert.equal(l.level, "info");
      });

      // Console has no levels: what it writes at each one is checked above.
      if (kind === "console") return;
      it("at level info, debug detail is not written", async () => {
        const capture = KINDS[kind]("info");
        const opts = clusterOptions(FAST);
        const peer = await startNode(opts, { name: "P" });
        await peer.call("ready");
        const store = createStore({ ...opts, logger: capture.logger });
        await store.ready();
        await logged(capture, "join", peer.self.id);
        const suspect = new Promise((resolve) => store.on("member", (e) => e.type === "suspect" && resolve(e)));
        await peer.kill("SIGKILL");
        await suspect;
        await logged(capture, "dead", peer.self.id, FAST.failureTimeout + 3_000);
        const lines = linesOf(capture);
        assert.equal(count(lines, "suspect"), 0, "suspect is debug detail");
        assert.deepEqual(lines.filter((l) => rank(l.level) < rank("info")), []);
      });
    });
  }

  it("a logger without debug and trace works (debug detail is dropped)", async () => {
    const records = [];
    const logger = {
      info: (...args) => records.push({ level: "info", message: args.join(" ") }),
      warn: (...args) => records.push({ level: "warn", message: args.join(" ") }),
      error: (...args) => records.push({ level: "error", message: args.join(" ") }),
    };
    const capture = { logger, records: () => records };
    const opts = clusterOptions(FAST);
    const peer = await startNode(opts, { name: "P" });
    await peer.call("ready");
    const store = createStore({ ...opts, logger });
    const events = [];
    store.on("member", (e) => events.push(e.type));
    await store.ready();
    await logged(capture, "join", peer.self.id);
    await peer.kill("SIGKILL");
    await logged(capture, "dead", peer.self.id, FAST.failureTimeout + 3_000);
    assert.ok(events.includes("suspect"), `the suspect event is still emitted (events: ${events})`);
    const lines = linesOf(capture);
    assert.equal(count(lines, "suspect"), 0);
    assert.equal(lines.find((l) => l.kind === "dead").level, "warn");
    await store.set("s", sessionData({ ok: true }));
    assert.equal((await store.get("s")).ok, true);
  });

  it("the unauthenticated warning is logged once per store, and not with a secret", async () => {
    const opts = clusterOptions(FAST);
    const captures = [KINDS.pino("info"), KINDS.pino("info"), KINDS.pino("info")];
    const stores = [
      createStore({ ...opts, logger: captures[0].logger }),
      createStore({ ...opts, logger: captures[1].logger }),
      createStore({ ...clusterOptions(FAST), secret: "correct horse battery staple", logger: captures[2].logger }),
    ];
    await Promise.all(stores.map((s) => s.ready()));
    await sleep(300);
    assert.equal(count(linesOf(captures[0]), "unauthenticated"), 1);
    assert.equal(count(linesOf(captures[1]), "unauthenticated"), 1);
    assert.equal(count(linesOf(captures[2]), "unauthenticated"), 0, "a sealed cluster is authenticated");
  });

  it("console is the default logger: a process's stderr gets the warning, its stdout no request lines", async () => {
    const opts = clusterOptions(FAST);
    const child = spawn(process.execPath, [path.join(__dirname, "fixtures", "child.js"), "default-logger", JSON.stringify(opts)], {
      cwd: path.join(__dirname, ".."),
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (d) => (stdout += d));
    child.stderr.setEncoding("utf8").on("data", (d) => (stderr += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
    const [code, signal] = await new Promise((resolve) => child.on("close", (...a) => resolve(a)));
    clearTimeout(timer);
    assert.equal(signal, null, `the child died of ${signal}; stderr: ${stderr}`);
    assert.equal(code, 0, `the child exited with ${code}; stderr: ${stderr}`);
    const warnings = stderr.split("\n").filter((l) => l.includes("is unauthenticated"));
    assert.equal(warnings.length, 1, `stderr:\n${stderr}`);
    assert.ok(warnings[0].startsWith(PREFIX));
    const lines = stdout.trim().split("\n");
    assert.deepEqual(JSON.parse(lines.at(-1)), { ops: 4_000 });
    assert.deepEqual(lines.slice(0, -1), [], "nothing but the child's own result on stdout");
  });
});
