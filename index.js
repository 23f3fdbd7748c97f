"use strict";
// express-session adapter: serialization and callbacks live here, everything else in the Rust
// engine.
const { loadEngine } = require("./lib/native");
const { normalizeOptions } = require("./lib/options");

// What the engine's write calls return for a session over maxSessionBytes; otherwise the write's
// ticket: with waitForAck, the number to wait for (see _whenAcked), else 0.
const SESSION_TOO_LARGE = -1;
// Writes closer together than this are flushed to the network together (see _wrote).
const FLUSH_GAP_MS = 0.05;
// A flush after this thread's event loop slept this long since the previous one may send from
// this thread (see _wrote).
const DIRECT_IDLE_MS = 0.1;
const idleMs = () => performance.eventLoopUtilization().idle;

function storeError(code, message, cause) {
  const err = new Error(`express-session-multicast: ${message}`, cause === undefined ? undefined : { cause });
  err.code = code;
  return err;
}

const closedError = () => storeError("ERR_STORE_CLOSED", "the store is closed");

// Callbacks are never called synchronously; without a callback, a Promise is returned.
function settle(callback, err, value) {
  if (typeof callback === "function") {
    setImmediate(callback, err, value);
    return undefined;
  }
  return err ? Promise.reject(err) : Promise.resolve(value);
}

// Absolute expiry in epoch ms from an express-session cookie, NaN when it has none.
function cookieExpiry(cookie) {
  const expires = cookie && cookie.expires;
  if (expires == null || expires === false) return NaN;
  if (expires instanceof Date) return expires.getTime();
  return typeof expires === "number" ? expires : Date.parse(expires);
}

// JSON.stringify writes these as {} and loses what they hold, without a word.
const isLossy = (value) => value instanceof Map || value instanceof Set || value instanceof WeakMap || value instanceof WeakSet;

/**
 * The first value inside `value` that JSON would store as {}: its key path and type; or null.
 * Visits what JSON.stringify visits (own enumerable keys, not past a toJSON). A walk costs up to
 * a fifth of a set (bench/store.js sessions), so it runs only when the JSON has a "{}".
 */
function findLossy(value) {
  if (isLossy(value)) return { path: "", type: value.constructor.name };
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const found = findLossyIn(value[i]);
      if (found) return prefixed(found, `[${i}]`);
    }
    return null;
  }
  if (typeof value.toJSON === "function") return null; // stored as its toJSON says (Date, Buffer, Cookie)
  const keys = Object.keys(value);
  for (let i = 0; i < keys.length; i++) {
    const found = findLossyIn(value[keys[i]]);
    if (found) return prefixed(found, `.${keys[i]}`);
  }
  return null;
}

const findLossyIn = (item) => (typeof item === "object" && item !== null ? findLossy(item) : null);

function prefixed(found, key) {
  found.path = key + found.path;
  return found;
}

/** The default codec: JSON, refusing what JSON cannot hold instead of storing it damaged. */
const jsonCodec = {
  encode(session) {
    const json = JSON.stringify(session); // throws on a BigInt or a circular reference
    if (typeof json !== "string") throw new TypeError(`a session must be an object (got ${typeof session})`);
    // A Map or Set is written as {}: without "{}" in the text there is none, and no walk. (One
    // given enumerable properties of its own is written as those, and not caught.)
    const lossy = json.includes("{}") ? findLossy(session) : null;
    if (lossy) throw new TypeError(`session${lossy.path} is a ${lossy.type}, which JSON stores as {}; use the "serializer" option`);
    return json;
  },
  decode: (stored) => stored,
};

// With a serializer the engine stores {"cookie":…,"data":"<serialized>"}: the cookie stays plain
// JSON, first, so a touch replaces it (src/table.rs, splice_cookie) whatever the format.
function serializerCodec(serializer) {
  return {
    encode(session) {
      const { cookie, ...data } = session;
      const text = serializer.stringify(data);
      if (typeof text !== "string") throw new TypeError(`serializer.stringify returned ${typeof text}, not a string`);
      return `{"cookie":${JSON.stringify(cookie ?? null)},"data":${JSON.stringify(text)}}`;
    },
    decode(stored) {
      const session = serializer.parse(stored.data);
      if (stored.cookie !== null) session.cookie = stored.cookie;
      return session;
    },
  };
}

module.exports = function expressSessionMulticast(session) {
  const Store = session && (session.Store || (session.session && session.session.Store));
  if (typeof Store !== "function") {
    throw new TypeError(
      "express-session-multicast: pass express-session (or connect) to the factory: " +
        'require("express-session-multicast")(session)'
    );
  }

  class MulticastStore extends Store {
    constructor(options = {}) {
      super();
      const { engineOptions, logger, serializer, ttl } = normalizeOptions(options);
      this.logger = logger;
      this._codec = serializer ? serializerCodec(serializer) : jsonCodec;
      this._ttl = ttl; // a function, or undefined (a number of seconds goes to the engine)
      this._closed = null;
      this._isReady = false;
      this._readyKeepAlive = null;
      this._ready = new Promise((resolve) => (this._resolveReady = resolve));
      const native = loadEngine();
      try {
        this._engine = new native.NativeEngine(JSON.stringify(engineOptions), (json) => this._onEngineEvent(json));
      } catch (err) {
        // The engine rejects invalid options with status InvalidArg: surface them as TypeError.
        if (err && err.code === "InvalidArg") throw new TypeError(err.message);
        throw err;
      }
      this.options = JSON.parse(this._engine.config());
      if (ttl) this.options.ttl = ttl;
      this._native = native;
      this._handle = this._engine.handle();
      // Writes queue in the engine; a flush sends a few from this thread, or hands them to the
      // network thread (src/driver/outbox.rs).
      this._flushScheduled = false;
      this._flushDirect = false;
      this._lastFlush = -Infinity;
      this._idleAtFlush = -Infinity;
      this._flush = () => {
        this._flushScheduled = false;
        if (!this._closed) this._native.flush(this._handle, this._flushDirect);
        // Measured from the end: a flush that sent from this thread took some time itself.
        this._lastFlush = performance.now();
        this._idleAtFlush = idleMs();
      };
      // waitForAck: [ticket, callback] pairs waiting for the engine's "acked" event, in ticket order.
      this._waitForAck = this.options.waitForAck;
      this._waiting = [];
      this._waitingHead = 0;
      this._acked = 0;
      this._waitKeepAlive = null;
      this._onSignal = null;
      this._onExit = null;
      this._networked = this.options.multicast !== false || this.options.peers.length > 0;
      // A networked node leaves the cluster when the process ends; with persist, every node
      // writes its last snapshot then (see close()).
      if (this.options.gracefullShutdown && (this._networked || this.options.persist)) this._handleShutdown();
      // No "connect" event: the store serves from here on. express-session starts out attached
      // to it, and a "connect" only matters after a "disconnect", which a closed store never
      // follows with one.
    }

    // Engine events arrive as JSON from the engine's threads, on this thread's event loop.
    _onEngineEvent(json) {
      if (this._closed) return;
      const event = JSON.parse(json);
      switch (event.event) {
        case "member":
          this.emit("member", { type: event.type, node: event.node });
          break;
        case "ready":
          this._markReady();
          break;
        case "acked":
          this._settleWrites(event.through);
          break;
        case "log": {
          const log = this.logger[event.level];
          if (typeof log === "function") log.call(this.logger, `express-session-multicast: ${event.message}`);
          break;
        }
        case "error": {
          const err = storeError(event.code, event.message.replace(/^express-session-multicast: /, ""));
          // An unhandled 'error' event would crash the app: log it instead when nobody listens.
          if (this.listenerCount("error") > 0) this.emit("error", err);
          else this.logger.error(err.message);
          break;
        }
      }
    }

    _markReady() {
      this._isReady = true;
      clearInterval(this._readyKeepAlive);
      this._resolveReady();
    }

    // The node leaves the cluster (and writes its last snapshot, with persist) when the process
    // ends, whatever ends it but SIGKILL: a signal that nothing else handles is re-raised after
    // the leave; when the app handles it, the app drains its server first, and the store serves
    // until the process exits.
    _handleShutdown() {
      this._onSignal = (signal) => {
        if (process.listenerCount(signal) > 0) return;
        this.close();
        process.kill(process.pid, signal);
      };
      this._onExit = () => this.close(); // synchronous: sends what is queued, waits for the acks (≤ 1 s), leaves
      process.once("SIGINT", this._onSignal);
      process.once("SIGTERM", this._onSignal);
      process.once("exit", this._onExit);
    }

    get(sid, callback) {
      if (this._closed) return settle(callback, closedError());
      let json;
      try {
        json = this._native.get(this._handle, sid);
        // undefined: nothing here, not even a tombstone. The session may have been written on
        // another node and not have arrived yet: the engine asks the live members (a Promise),
        // or answers null at once (over its rate limit).
        if (json === undefined) json = this._engine.ask(sid);
      } catch (e) {
        return settle(callback, e);
      }
      if (json === null || typeof json === "string") return this._decoded(json, callback);
      const answered = json.then((doc) => (this._closed ? settle(callback, closedError()) : this._decoded(doc, callback)));
      return typeof callback === "function" ? undefined : answered;
    }

    _decoded(json, callback) {
      let session = null;
      let err = null;
      try {
        if (json !== null) session = this._codec.decode(JSON.parse(json));
      } catch (e) {
        err = e;
      }
      return settle(callback, err, session);
    }

    set(sid, session, callback) {
      if (this._closed) return settle(callback, closedError());
      let doc;
      try {
        doc = this._codec.encode(session);
      } catch (e) {
        const reason = `session "${sid}" cannot be stored: ${e.message}; nothing was stored`;
        return settle(callback, storeError("ERR_SESSION_NOT_SERIALIZABLE", reason, e));
      }
      let status;
      try {
        status = this._native.set(this._handle, sid, doc, this._expiry(sid, session));
      } catch (e) {
        return settle(callback, e); // a bad ttl() result, or a sid that is not a string
      }
      if (status === SESSION_TOO_LARGE) return settle(callback, this._tooLarge(sid));
      return this._afterWrite(status, callback);
    }

    touch(sid, session, callback) {
      if (this._closed) return settle(callback, closedError());
      if (this.options.disableTouch) return settle(callback, null);
      const cookie = session && session.cookie;
      let status;
      try {
        status = this._native.touch(this._handle, sid, cookie ? JSON.stringify(cookie) : null, this._expiry(sid, session));
      } catch (e) {
        return settle(callback, e);
      }
      if (status === SESSION_TOO_LARGE) return settle(callback, this._tooLarge(sid));
      return this._afterWrite(status, callback);
    }

    /** The session's expiry for the engine, epoch ms: its cookie's, else a `ttl` function's, else NaN (the engine's default). */
    _expiry(sid, session) {
      const expires = cookieExpiry(session && session.cookie);
      if (!Number.isNaN(expires) || !this._ttl) return expires;
      let seconds;
      try {
        seconds = this._ttl(session);
      } catch (e) {
        throw storeError("ERR_INVALID_TTL", `ttl() threw for session "${sid}": ${e && e.message}; nothing was stored`, e);
      }
      if (typeof seconds !== "number" || !Number.isFinite(seconds) || seconds <= 0) {
        const got = typeof seconds === "number" ? seconds : typeof seconds;
        throw storeError("ERR_INVALID_TTL", `ttl() returned ${got} for session "${sid}", not a positive number of seconds; nothing was stored`);
      }
      return Date.now() + seconds * 1000;
    }

    destroy(sid, callback) {
      if (this._closed) return settle(callback, closedError());
      let ticket;
      try {
        ticket = this._native.destroy(this._handle, sid);
      } catch (e) {
        return settle(callback, e);
      }
      return this._afterWrite(ticket, callback);
    }

    clear(callback) {
      if (this._closed) return settle(callback, closedError());
      const ticket = this._engine.clear();
      return this._afterWrite(ticket, callback);
    }

    // A write was queued: its callback, then the flush (see _wrote). Both are immediates, run
    // in that order: the callback (and the response it may send) does not wait for a send from
    // this thread.
    _afterWrite(ticket, callback) {
      const result = this._whenAcked(ticket, callback);
      this._wrote();
      return result;
    }

    // With waitForAck, a write calls back once every member alive when it left has applied it,
    // or at ackTimeout (src/core/ack_wait.rs); ticket 0 has nothing to wait for.
    _whenAcked(ticket, callback) {
      if (ticket <= this._acked) return settle(callback, null);
      // A write that waits keeps the process alive, as a socket in flight would; only then.
      if (this._waitingHead === this._waiting.length) {
        if (!this._waitKeepAlive) this._waitKeepAlive = setInterval(() => {}, 1 << 30);
        this._waitKeepAlive.ref();
      }
      if (typeof callback === "function") {
        this._waiting.push([ticket, callback]);
        return undefined;
      }
      return new Promise((resolve) => this._waiting.push([ticket, () => resolve()]));
    }

    _settleWrites(through) {
      this._acked = through;
      const waiting = this._waiting;
      let head = this._waitingHead;
      for (; head < waiting.length && waiting[head][0] <= through; head++) {
        settle(waiting[head][1], null);
        waiting[head] = undefined;
      }
      if (head === waiting.length) {
        waiting.length = 0;
        head = 0;
        if (this._waitKeepAlive) this._waitKeepAlive.unref();
      }
      this._waitingHead = head;
    }

    // A flush ends each event-loop turn that wrote, so a lone write leaves at once and a burst
    // in one turn costs one wake-up of the network thread. If this thread's event loop slept
    // DIRECT_IDLE_MS or more since the last flush, a few writes are sent from this thread
    // instead of waking the network thread: faster, but the send costs this thread 10–50 µs,
    // which only a thread with time to spare should pay (a busy one hands over, as always).
    // Writes that keep coming less than FLUSH_GAP_MS after the last flush are flushed by a 1 ms
    // timer instead: a stream of writes then costs a flush per millisecond, not one per write
    // (the engine also hands over every 256 writes).
    _wrote() {
      if (this._flushScheduled || !this._networked) return;
      this._flushScheduled = true;
      if (performance.now() - this._lastFlush >= FLUSH_GAP_MS) {
        this._flushDirect = idleMs() - this._idleAtFlush >= DIRECT_IDLE_MS;
        setImmediate(this._flush);
      } else {
        this._flushDirect = false;
        setTimeout(this._flush, 1).unref();
      }
    }

    all(callback) {
      if (this._closed) return settle(callback, closedError());
      let sessions = null;
      let err = null;
      try {
        sessions = JSON.parse(this._engine.all());
        if (this._codec !== jsonCodec) for (const sid in sessions) sessions[sid] = this._codec.decode(sessions[sid]);
      } catch (e) {
        err = e;
      }
      return settle(callback, err, sessions);
    }

    length(callback) {
      if (this._closed) return settle(callback, closedError());
      return settle(callback, null, this._engine.length());
    }

    _tooLarge(sid) {
      return storeError(
        "ERR_SESSION_TOO_LARGE",
        `session "${sid}" is larger than maxSessionBytes (${this.options.maxSessionBytes} bytes); it was not stored`
      );
    }

    /** Resolves once the node has joined and received the cluster's sessions, or found itself alone. */
    ready() {
      // The store never keeps the process alive by itself, but whoever awaits ready() expects
      // the process to wait for it (a short, bounded join).
      if (!this._isReady && !this._readyKeepAlive) this._readyKeepAlive = setInterval(() => {}, 1 << 30);
      return this._ready;
    }

    /**
     * Leaves the cluster and releases every socket and thread. Idempotent. The leave sends the
     * writes still queued and waits until every live member has acknowledged them, at most 1 s
     * (synchronously: it also runs from the process's "exit" event). The store can serve no
     * more: it emits "disconnect" (express-session then runs requests without a session), and
     * calls made afterwards fail with ERR_STORE_CLOSED.
     */
    close() {
      if (!this._closed) {
        if (this._onSignal) {
          process.removeListener("SIGINT", this._onSignal);
          process.removeListener("SIGTERM", this._onSignal);
          process.removeListener("exit", this._onExit);
        }
        // Returned, not emitted: engine events are not delivered after this (nor at exit).
        const warning = this._engine.close();
        if (warning) this.logger.warn(`express-session-multicast: ${warning}`);
        this._closed = Promise.resolve();
        // The leave sent the waiting writes and waited for their acks.
        this._settleWrites(Infinity);
        clearInterval(this._waitKeepAlive);
        this._markReady();
        process.nextTick(() => this.emit("disconnect"));
      }
      return this._closed;
    }

    stats() {
      return JSON.parse(this._engine.stats());
    }

    members() {
      return JSON.parse(this._engine.members());
    }

    /** `stats()` and `members()` in the Prometheus text exposition format, for a /metrics route. */
    metrics() {
      return this._engine.metrics();
    }
  }

  return MulticastStore;
};

// The factory again under a name, for `import { createStore } from "express-session-multicast"`:
// Node finds ESM named exports of a CommonJS module by reading `module.exports.<name> =`.
module.exports.createStore = module.exports;
