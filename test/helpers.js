"use strict";
// Shared test helpers. Every store made here talks only to loopback (ipv4 127.0.0.1,
// multicastTTL 0) and gets a cluster name of its own, so stores of different tests (or of
// another process on this host) never see each other unless a test asks for it.
const assert = require("node:assert/strict");
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

module.exports = {
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
