"use strict";
// One cluster node in its own process, driven by test/cluster/harness.js over the IPC channel of
// child_process.fork(). Usage: fork(__filename, [JSON.stringify(storeOptions)]).
// Another script can add commands of its own: require(this file).main((store) => ({ cmd() {} })).
//
// Options travel as JSON: a Buffer in them (JSON form { type: "Buffer", data }) is revived, so
// `secret` can be a Buffer or a key ring holding Buffers.
//
// Parent → child: { id, cmd, args }          Child → parent: { id, result } | { id, error }
// Child → parent, unsolicited:
//   { type: "started", pid, self, options }  the store exists (self = its own member entry)
//   { type: "member", at, event }            a `member` event, `at` = Date.now() when it fired
//   { type: "error", at, error }             an `error` event of the store
//   { type: "log", at, level, message }      what the store logged (warn and error only)
//   { type: "fatal", error }                 the store could not be created (the process exits 1)
// The process exits when the parent disconnects (or dies): it closes its store first.

const crypto = require("node:crypto");
const session = require("express-session");

/** JSON with the keys of every object sorted: equal values give equal text. */
function canonicalJSON(value) {
  if (Array.isArray(value)) return `[${value.map(canonicalJSON).join(",")}]`;
  if (value && typeof value === "object") {
    return `{${Object.keys(value)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJSON(value[k])}`)
      .join(",")}}`;
  }
  return JSON.stringify(value);
}

/** { count, digest } of a table of sessions keyed by sid: equal tables give equal digests. */
function tableDigest(all) {
  const hash = crypto.createHash("sha256");
  const sids = Object.keys(all).sort();
  for (const sid of sids) hash.update(`${JSON.stringify(sid)}=${canonicalJSON(all[sid])}\n`);
  return { count: sids.length, digest: hash.digest("hex") };
}

/** The session bulkSet() stores under `${prefix}${i}`: the parent can rebuild it to compare. */
function bulkSession(prefix, i, bytesEach, expires) {
  const seed = `${prefix}${i}:`;
  return {
    cookie: { originalMaxAge: 3_600_000, expires, httpOnly: true, path: "/" },
    i,
    data: seed.repeat(Math.ceil(bytesEach / seed.length)).slice(0, bytesEach),
  };
}

/** JSON.parse reviver turning the JSON form of a Buffer back into a Buffer. */
function reviveBuffers(key, value) {
  return value && value.type === "Buffer" && Array.isArray(value.data) ? Buffer.from(value.data) : value;
}

function serializeError(err) {
  if (!(err instanceof Error)) return { message: String(err) };
  return { message: err.message, code: err.code, name: err.name, stack: err.stack };
}

function main(extraCommands) {
  const send = (message) => {
    if (process.connected) process.send(message);
  };
  const logger = {};
  for (const level of ["trace", "debug", "info", "warn", "error"]) {
    logger[level] = (...args) => {
      if (level === "warn" || level === "error") {
        send({ type: "log", at: Date.now(), level, message: args.map((a) => (typeof a === "string" ? a : JSON.stringify(a))).join(" ") });
      }
    };
  }

  let store;
  try {
    const MulticastStore = require("../..")(session);
    store = new MulticastStore({ ...JSON.parse(process.argv[2] || "{}", reviveBuffers), logger });
  } catch (err) {
    send({ type: "fatal", error: serializeError(err) });
    process.exitCode = 1;
    process.disconnect();
    return;
  }

  store.on("member", (event) => send({ type: "member", at: Date.now(), event }));
  store.on("error", (err) => send({ type: "error", at: Date.now(), error: serializeError(err) }));

  const commands = {
    set: (sid, sess) => store.set(sid, sess),
    get: (sid) => store.get(sid),
    touch: (sid, sess) => store.touch(sid, sess),
    destroy: (sid) => store.destroy(sid),
    clear: () => store.clear(),
    length: () => store.length(),
    all: () => store.all(),
    stats: () => store.stats(),
    members: () => store.members(),
    ready: () => store.ready(),
    close: () => store.close(),
    ping: () => process.pid,
    /** This process's wall clock (epoch ms): shifted when it runs under libfaketime. */
    now: () => Date.now(),
    /** process.memoryUsage() of this node's process (rss, heapUsed…, in bytes). */
    memory: () => process.memoryUsage(),
    /** Stores `count` sessions of `bytesEach` bytes of data; resolves with { count, expires }. */
    async bulkSet(prefix, count, bytesEach, expires = new Date(Date.now() + 3_600_000).toISOString()) {
      for (let i = 0; i < count; i++) await store.set(`${prefix}${i}`, bulkSession(prefix, i, bytesEach, expires));
      return { count, expires };
    },
    /** Gets many sids at once: { sid: session | null }. */
    async getMany(sids) {
      const out = {};
      for (const sid of sids) out[sid] = await store.get(sid);
      return out;
    },
    /**
     * Applies a list of writes in order, each awaited: ["set", sid, session] | ["touch", sid,
     * session] | ["destroy", sid]. Resolves with { count, startedAt, endedAt } (epoch ms).
     */
    async apply(ops) {
      const startedAt = Date.now();
      for (const [op, sid, sess] of ops) {
        if (op === "destroy") await store.destroy(sid);
        else if (op === "set" || op === "touch") await store[op](sid, sess);
        else throw new Error(`apply: unknown op "${op}"`);
      }
      return { count: ops.length, startedAt, endedAt: Date.now() };
    },
    /**
     * apply(ops), then at once a graceful leave: with `how` "close", `await store.close()`,
     * resolving with apply's result and closeMs, the time close() took; with a signal name
     * ("SIGTERM"), that signal to this process: the store closes on it (gracefullShutdown), and
     * the process dies of it without answering.
     */
    async applyThenLeave(ops, how = "close") {
      const result = await commands.apply(ops);
      if (how !== "close") {
        process.kill(process.pid, how);
        return new Promise(() => {});
      }
      const started = performance.now();
      await store.close();
      return { ...result, closeMs: Math.round(performance.now() - started) };
    },
    /** { count, digest } of all(): compare tables of nodes without moving them over IPC. */
    async digest() {
      return tableDigest(await store.all());
    },
    /** Blocks this process's JS event loop for `ms` (the engine's threads keep running). */
    block(ms) {
      const end = Date.now() + ms;
      while (Date.now() < end);
      return ms;
    },
  };

  if (extraCommands) Object.assign(commands, extraCommands(store, send));

  process.on("message", async ({ id, cmd, args = [] }) => {
    try {
      if (!Object.hasOwn(commands, cmd)) throw new Error(`unknown command "${cmd}"`);
      const result = await commands[cmd](...args);
      send({ id, result: result === undefined ? null : result });
    } catch (err) {
      send({ id, error: serializeError(err) });
    }
  });

  // The parent went away (finished, crashed or was killed): close the store and exit.
  process.on("disconnect", () => {
    setTimeout(() => process.exit(0), 2_000).unref();
    Promise.resolve(store.close()).finally(() => process.exit(0));
  });

  send({ type: "started", pid: process.pid, self: store.members().find((m) => m.self) || null, options: store.options });
}

if (require.main === module) main();

module.exports = { bulkSession, canonicalJSON, tableDigest, main };
