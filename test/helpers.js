"use strict";
// Shared test helpers. Every store made here talks only to loopback (ipv4 127.0.0.1,
// multicastTTL 0) and gets a cluster name of its own, so stores of different tests (or of
// another process on this host) never see each other unless a test asks for it.
const assert = require("node:assert/strict");
const path = require("node:path");
const { spawn } = require("node:child_process");
const { setTimeout: sleep } = require("node:timers/promises");
const session = require("express-session");
const MulticastStore = require("..")(session);

const SAFE_OPTIONS = Object.freeze({ ipv4: "127.0.0.1", multicastTTL: 0 });

let clusterCounter = 0;
/** A cluster name no other test or process uses. */
function uniqueCluster(prefix = "test") {
  clusterCounter += 1;
  return `${prefix}-${process.pid}-${clusterCounter}-${Math.random().toString(36).slice(2, 8)}`;
}

/** A logger that records instead of printing (keeps mocha's output readable). */
function makeLogger() {
  const records = [];
  const logger = { records };
  for (const level of ["trace", "debug", "info", "warn", "error"]) {
    logger[level] = (...args) => records.push({ level, args });
  }
  return logger;
}

const openStores = new Set();

/** A store on loopback with its own cluster; closed by closeStores(). */
function createStore(overrides = {}) {
  const store = new MulticastStore({
    ...SAFE_OPTIONS,
    cluster: uniqueCluster(),
    logger: makeLogger(),
    ...overrides,
  });
  openStores.add(store);
  return store;
}

/** Closes every store createStore() made (use in afterEach). */
async function closeStores() {
  const stores = [...openStores];
  openStores.clear();
  await Promise.all(stores.map((store) => store.close()));
}

/**
 * Calls `invoke(callback)` and resolves with what the callback got, plus `sync: true` when the
 * callback ran before `invoke` returned (a store must never do that).
 */
function viaCallback(invoke) {
  return new Promise((resolve) => {
    let returned = false;
    invoke((err, value) => resolve({ err, value, sync: !returned }));
    returned = true;
  });
}

/** Same as viaCallback, but asserts the callback was async and without error; returns the value. */
async function callbackValue(invoke) {
  const { err, value, sync } = await viaCallback(invoke);
  assert.equal(sync, false, "callback was called synchronously");
  assert.ifError(err);
  return value;
}

/** A session shaped like express-session's, expiring at `expiresAt` (epoch ms). */
function sessionData(data = {}, { expiresAt = Date.now() + 60_000, maxAge = 60_000 } = {}) {
  return {
    cookie: {
      originalMaxAge: maxAge,
      expires: new Date(expiresAt).toISOString(),
      httpOnly: true,
      path: "/",
    },
    ...data,
  };
}

/** Resolves at absolute time `t` (epoch ms). */
function sleepUntil(t) {
  return sleep(Math.max(0, t - Date.now()));
}

/** Asserts that the clock has not yet reached `t`, so a "still there" check is meaningful. */
function assertBefore(t, what) {
  const now = Date.now();
  assert.ok(now < t, `timer fired too late for the check "${what}" (now = t${now >= t ? "+" : ""}${now - t} ms)`);
}

/** Replaces `obj[name]` with a wrapper that records each call's arguments. */
function spy(obj, name) {
  const original = obj[name];
  const calls = [];
  obj[name] = function spied(...args) {
    calls.push(args);
    return original.apply(this, args);
  };
  return calls;
}

/** Asserts that fn() throws a TypeError whose message names `option` as a whole word. */
function assertTypeErrorNaming(fn, option, label = "") {
  const wordRe = new RegExp(`(^|[^A-Za-z0-9_])${option}([^A-Za-z0-9_]|$)`);
  assert.throws(fn, (err) => {
    assert.ok(err instanceof TypeError, `${label}: expected a TypeError, got ${err && err.name}: ${err && err.message}`);
    assert.match(err.message, wordRe, `${label}: the message should name "${option}"`);
    return true;
  });
}

function safeParse(line) {
  try {
    return JSON.parse(line);
  } catch {
    return undefined;
  }
}

/**
 * Runs test/fixtures/child.js <mode> [...args]. Resolves with { code, signal, lines, stderr,
 * result, exitedAt } (`result`: the last stdout line, parsed); if the child is still running
 * after `budgetMs`, it is killed and the promise rejects. `onLine(line, child)` sees each stdout
 * line as it arrives.
 */
function runChild(mode, { args = [], budgetMs = 5_000, onLine } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(__dirname, "fixtures", "child.js"), mode, ...args], {
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
    let exitedAt;
    child.on("exit", () => (exitedAt = Date.now()));
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, lines, stderr, exitedAt, result: lines.length ? safeParse(lines[lines.length - 1]) : undefined });
    });
  });
}

module.exports = {
  safeParse,
  runChild,
  session,
  MulticastStore,
  SAFE_OPTIONS,
  uniqueCluster,
  makeLogger,
  createStore,
  closeStores,
  viaCallback,
  callbackValue,
  sessionData,
  sleep,
  sleepUntil,
  assertBefore,
  spy,
  assertTypeErrorNaming,
};
