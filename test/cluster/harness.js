"use strict";
// Multi-process cluster harness: every node is a separate Node process (test/cluster/node.js)
// with its own store, driven over IPC. All traffic stays on loopback (ipv4 127.0.0.1,
// multicastTTL 0), and each cluster gets a name and a multicast port of its own, so parallel runs
// never mix. With the `netns` option of startNode(), the node runs instead inside a network
// namespace that a test made (test/netns/topology.js), with the address the test gives it.
// Every child is tracked and killed by stopAll() (call it in afterEach) and, as a last resort,
// when this process exits; a child also exits by itself when its parent goes away.
const path = require("node:path");
const crypto = require("node:crypto");
const { fork, spawn } = require("node:child_process");
const { isDeepStrictEqual } = require("node:util");
const { setTimeout: sleep } = require("node:timers/promises");
const { bulkSession } = require("./node");

const NODE_SCRIPT = path.join(__dirname, "node.js");
const SAFE_OPTIONS = Object.freeze({ ipv4: "127.0.0.1", multicastTTL: 0 });
const DEFAULT_CALL_TIMEOUT_MS = 30_000;
const START_TIMEOUT_MS = 10_000;

const liveNodes = new Set();
const startedNodes = []; // every node since the last stopAll(), for diagnostics()
let nameCounter = 0;

/** Options of a new cluster: loopback only, a unique name and a random port in 20000–60000. */
function clusterOptions(overrides = {}) {
  return {
    ...SAFE_OPTIONS,
    cluster: `cluster-${process.pid}-${crypto.randomBytes(4).toString("hex")}`,
    multicastPort: 20_000 + crypto.randomInt(40_000),
    ...overrides,
  };
}

function remoteError(error, node, cmd) {
  const err = new Error(`[${node.name}] ${cmd}: ${error.message}`);
  if (error.code) err.code = error.code;
  if (error.stack) err.remoteStack = error.stack;
  return err;
}

/**
 * Polls `fn` (sync or async) every `intervalMs` until it returns a truthy value, which it
 * resolves with. Rejects after `timeoutMs` with `what`, the last value and the last error.
 */
async function waitUntil(fn, timeoutMs = 5_000, { intervalMs = 20, what = fn.toString() } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  let lastError;
  for (;;) {
    try {
      last = await fn();
      lastError = undefined;
      if (last) return last;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      const shown = lastError ? `last error: ${lastError.message}` : `last value: ${short(last)}`;
      throw new Error(`waitUntil: not true after ${timeoutMs} ms: ${what} (${shown})`);
    }
    await sleep(intervalMs);
  }
}

/** Resolves like `promise`, keeping the event loop alive meanwhile (children are unref'd). */
function keepAliveUntil(promise) {
  const keepAlive = setInterval(() => {}, 1_000);
  return promise.finally(() => clearInterval(keepAlive));
}

function short(value) {
  let text;
  try {
    text = JSON.stringify(value);
  } catch {
    text = String(value);
  }
  return text === undefined ? String(value) : text.length > 300 ? `${text.slice(0, 300)}…` : text;
}

/**
 * Starts one node (a new process) and resolves once its store exists (not necessarily ready:
 * `await node.call("ready")`). `options` are the store's options, laid over loopback-only
 * defaults; pass the same `cluster` and `multicastPort` to nodes of one cluster.
 *
 * `netns`: run the node inside that network namespace (`ip netns exec`, which execs node in
 * place: same pid, and the IPC channel passes through). The loopback defaults are then NOT
 * applied: `options` must name the namespace's own address (`ipv4`, or `use: "v6"` + `ipv6`).
 * `script`: another node script speaking the same protocol (default test/cluster/node.js).
 * `env`: variables added to the process's environment (libfaketime's, to shift its clock).
 */
function startNode(options = {}, { name, netns, script = NODE_SCRIPT, env } = {}) {
  nameCounter += 1;
  const storeOptions = netns ? { ...options } : { ...SAFE_OPTIONS, ...options };
  const spawnOptions = { stdio: ["ignore", "inherit", "inherit", "ipc"], serialization: "json", env: { ...process.env, ...env } };
  const child = netns
    ? spawn("ip", ["netns", "exec", netns, process.execPath, script, JSON.stringify(storeOptions)], spawnOptions)
    : fork(script, [JSON.stringify(storeOptions)], spawnOptions);
  // Children never keep this process alive by themselves (a forgotten node cannot hang mocha);
  // whatever is left is killed on exit.
  child.unref();
  if (child.channel) child.channel.unref();
  const pending = new Map();
  let nextId = 0;
  let exitInfo = null;

  const node = {
    name: name || `node-${nameCounter}`,
    options: storeOptions,
    netns: netns || null,
    child,
    pid: child.pid,
    /** This node's own member entry (id, incarnation…), known once started. */
    self: null,
    /** Every `member` event: { at, type, node } (`at` = epoch ms in the child when it fired). */
    events: [],
    /** `error` events of the store. */
    errors: [],
    /** warn/error lines the store logged. */
    logs: [],
    /** How the process ended ({ code, signal }), null while it runs. */
    get exitInfo() {
      return exitInfo;
    },

    /** When kill() sent its signal (epoch ms). */
    killedAt: null,
    /** Resolves with { code, signal } once the process has exited. */
    exited: null,

    get alive() {
      return exitInfo === null;
    },

    /** Runs a command in the node; resolves with its result. */
    call(cmd, ...args) {
      return node.callWithTimeout(DEFAULT_CALL_TIMEOUT_MS, cmd, ...args);
    },

    callWithTimeout(timeoutMs, cmd, ...args) {
      if (exitInfo) return Promise.reject(new Error(`[${node.name}] ${cmd}: the process has exited (${short(exitInfo)})`));
      const id = ++nextId;
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          pending.delete(id);
          reject(new Error(`[${node.name}] ${cmd}: no answer within ${timeoutMs} ms`));
        }, timeoutMs);
        pending.set(id, { cmd, resolve, reject, timer });
        child.send({ id, cmd, args }, (err) => {
          if (err && pending.delete(id)) {
            clearTimeout(timer);
            reject(new Error(`[${node.name}] ${cmd}: could not send (${err.message})`));
          }
        });
      });
    },

    /** Resolves with the first recorded event (past or future) matching `pred`. */
    waitForEvent(pred, timeoutMs = 5_000, what = pred.toString()) {
      return waitUntil(() => node.events.find(pred), timeoutMs, { intervalMs: 5, what: `${node.name} event ${what}` });
    },

    /** Events about the member with id `id`, of `type` if given. */
    eventsAbout(id, type) {
      return node.events.filter((e) => e.node && e.node.id === id && (!type || e.type === type));
    },

    /** Sends `signal` (default SIGKILL) and resolves once the process has exited. */
    kill(signal = "SIGKILL") {
      if (exitInfo) return node.exited;
      node.killedAt = Date.now();
      child.kill(signal);
      return keepAliveUntil(node.exited);
    },

    /** Closes the store (graceful leave), then lets the process exit. */
    async close() {
      if (exitInfo) return node.exited;
      try {
        await node.callWithTimeout(5_000, "close");
      } finally {
        if (child.connected) child.disconnect();
      }
      const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
      try {
        return await node.exited; // the timer keeps this process alive meanwhile
      } finally {
        clearTimeout(timer);
      }
    },
  };

  // A process that could not be spawned at all (no `ip`): fail like one that exited at once.
  child.once("error", (err) => {
    if (child.pid === undefined && !exitInfo) {
      node.fatal = { message: err.message };
      child.emit("exit", null, null);
    }
  });
  node.exited = new Promise((resolve) => {
    child.once("exit", (code, signal) => {
      exitInfo = { code, signal };
      liveNodes.delete(node);
      for (const [id, { cmd, reject, timer }] of pending) {
        clearTimeout(timer);
        pending.delete(id);
        reject(new Error(`[${node.name}] ${cmd}: the process exited (code ${code}, signal ${signal}) before answering`));
      }
      resolve(exitInfo);
    });
  });
  liveNodes.add(node);
  startedNodes.push(node);

  const started = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`[${node.name}] did not start within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
    node.exited.then((info) => {
      clearTimeout(timer);
      reject(new Error(`[${node.name}] exited before starting (${short(info)})${node.fatal ? `: ${node.fatal.message}` : ""}`));
    });
    child.on("message", (msg) => {
      if (msg && msg.id !== undefined && pending.has(msg.id)) {
        const { cmd, resolve: ok, reject: fail, timer: t } = pending.get(msg.id);
        pending.delete(msg.id);
        clearTimeout(t);
        if (msg.error) fail(remoteError(msg.error, node, cmd));
        else ok(msg.result);
        return;
      }
      switch (msg && msg.type) {
        case "started":
          node.self = msg.self;
          node.storeOptions = msg.options;
          clearTimeout(timer);
          resolve(node);
          break;
        case "member":
          node.events.push({ at: msg.at, type: msg.event.type, node: msg.event.node });
          break;
        case "error":
          node.errors.push({ at: msg.at, ...msg.error });
          break;
        case "log":
          node.logs.push(msg);
          break;
        case "fatal":
          node.fatal = msg.error;
          break;
        default:
      }
    });
  });
  // Keep a failed start from surfacing as an unhandled rejection when nobody awaits it.
  started.catch(() => {});
  return started;
}

/**
 * Starts `n` nodes of one new cluster, one after the other, each awaited until ready (so each
 * one joins the nodes before it). Pass `{ concurrent: true }` to start them all at once instead.
 * Resolves with the array of nodes (named A, B, C…); `nodes.options` holds the cluster options.
 */
async function startCluster(n, options = {}, { concurrent = false } = {}) {
  const opts = clusterOptions(options);
  const names = Array.from({ length: n }, (_, i) => String.fromCharCode(65 + i));
  let nodes;
  if (concurrent) {
    nodes = await Promise.all(names.map((name) => startNode(opts, { name })));
    await Promise.all(nodes.map((node) => node.call("ready")));
  } else {
    nodes = [];
    for (const name of names) {
      const node = await startNode(opts, { name });
      await node.call("ready");
      nodes.push(node);
    }
  }
  nodes.options = opts;
  return nodes;
}

/** Kills (SIGKILL) every node still running and waits for them to exit. */
async function stopAll() {
  const nodes = [...liveNodes];
  startedNodes.length = 0;
  await Promise.all(nodes.map((node) => node.kill("SIGKILL")));
}

/** What the nodes started since the last stopAll() went through: print it when a test fails. */
function diagnostics() {
  return startedNodes
    .map((node) => {
      const lines = [`  ${node.name}${node.netns ? ` (netns ${node.netns})` : ""} pid ${node.pid} id ${node.self && node.self.id} ${node.alive ? "running" : `exited ${short(node.exitInfo)}`}`];
      for (const e of node.events) lines.push(`    member ${e.type} ${e.node && e.node.id} at ${e.at}`);
      for (const e of node.errors) lines.push(`    error ${e.code || ""} ${e.message}`);
      for (const l of node.logs.slice(-10)) lines.push(`    log ${l.level} ${l.message}`);
      return lines.join("\n");
    })
    .join("\n");
}

/** Same, synchronously, for process exit. */
function killAllNow() {
  for (const node of liveNodes) {
    try {
      node.child.kill("SIGKILL");
    } catch {
      // already gone
    }
  }
}
process.on("exit", killAllNow);


// Waiters shared by the cluster, security and namespace suites.

const REPLICATION_MS = 5_000;

function short(value) {
  const text = JSON.stringify(value, (_, v) => (typeof v === "bigint" ? `${v}n` : v));
  return text === undefined ? String(value) : text.length > 300 ? `${text.slice(0, 300)}…` : text;
}

/** Waits until get(sid) on every node deep-equals `expected` (null: the sid is absent). */
function replicated(nodes, sid, expected, timeoutMs = REPLICATION_MS) {
  return Promise.all(
    nodes.map((node) =>
      waitUntil(async () => isDeepStrictEqual(await node.call("get", sid), expected), timeoutMs, {
        intervalMs: 25,
        what: `${node.name}.get(${JSON.stringify(sid)}) equals ${short(expected)}`,
      })
    )
  );
}

/** Waits until length() is `n` on every node. */
function lengthEverywhere(nodes, n, timeoutMs = REPLICATION_MS) {
  return Promise.all(
    nodes.map((node) =>
      waitUntil(async () => (await node.call("length")) === n, timeoutMs, { intervalMs: 25, what: `${node.name}.length() === ${n}` })
    )
  );
}

/** Waits until every node's all() deep-equals `expected`. */
function holdExactly(nodes, expected, timeoutMs = REPLICATION_MS) {
  return Promise.all(
    nodes.map((node) =>
      waitUntil(async () => isDeepStrictEqual(await node.call("all"), expected), timeoutMs, {
        intervalMs: 25,
        what: `${node.name}.all() holds exactly ${Object.keys(expected).length} expected sessions`,
      })
    )
  );
}

/** Waits until every node lists every node of `nodes` as alive. */
function allAlive(nodes, timeoutMs = 5_000) {
  const ids = nodes.map((n) => n.self.id);
  return Promise.all(
    nodes.map((node) =>
      waitUntil(
        async () => {
          const members = await node.call("members");
          return ids.every((id) => members.some((m) => m.id === id && m.state === "alive"));
        },
        timeoutMs,
        { what: `${node.name}.members() lists ${ids.join(", ")} as alive` }
      )
    )
  );
}

module.exports = {
  REPLICATION_MS,
  short,
  replicated,
  lengthEverywhere,
  holdExactly,
  allAlive,
  SAFE_OPTIONS,
  clusterOptions,
  startNode,
  startCluster,
  stopAll,
  diagnostics,
  waitUntil,
  bulkSession,
  liveNodes,
};
