"use strict";
// express-session adapter: JSON and callbacks live here, everything else in the Rust engine.
const { loadEngine } = require("./lib/native");
const { normalizeOptions } = require("./lib/options");

// Status codes returned by the engine's write calls (0 = ok).
const SESSION_TOO_LARGE = 1;
// Writes closer together than this are flushed to the network together (see _wrote).
const FLUSH_GAP_MS = 0.05;

function storeError(code, message) {
  const err = new Error(`express-session-multicast: ${message}`);
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
      const { engineOptions, logger } = normalizeOptions(options);
      this.logger = logger;
      this._closed = null;
      this._disconnected = false;
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
      this._native = native;
      this._handle = this._engine.handle();
      // Writes queue in the engine; a flush hands them to the network thread (src/outbox.rs).
      this._flushScheduled = false;
      this._lastFlush = -Infinity;
      this._flush = () => {
        this._flushScheduled = false;
        this._lastFlush = performance.now();
        if (!this._closed) this._native.flush(this._handle);
      };
      this._onSignal = null;
      this._networked = this.options.multicast !== false || this.options.peers.length > 0;
      if (this.options.gracefullShutdown && this._networked) this._handleSignals();
      process.nextTick(() => this.emit("connect"));
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
        case "disconnect":
          this._disconnected = true;
          this.emit("disconnect");
          break;
      }
    }

    _markReady() {
      this._isReady = true;
      clearInterval(this._readyKeepAlive);
      this._resolveReady();
    }

    // On SIGINT/SIGTERM: announce the leave, then let the signal do what it would have done
    // without us: end the process if no other handler is left, or leave it to the app's handlers.
    _handleSignals() {
      this._onSignal = (signal) => {
        this.close();
        if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
      };
      process.once("SIGINT", this._onSignal);
      process.once("SIGTERM", this._onSignal);
    }

    get(sid, callback) {
      if (this._closed) return settle(callback, closedError());
      let session = null;
      let err = null;
      try {
        const json = this._native.get(this._handle, sid);
        if (json !== null) session = JSON.parse(json);
      } catch (e) {
        err = e;
      }
      return settle(callback, err, session);
    }

    set(sid, session, callback) {
      if (this._closed) return settle(callback, closedError());
      let status;
      try {
        status = this._native.set(this._handle, sid, JSON.stringify(session), cookieExpiry(session.cookie));
      } catch (e) {
        return settle(callback, e); // not serializable, or a sid that is not a string
      }
      this._wrote();
      return settle(callback, status === SESSION_TOO_LARGE ? this._tooLarge(sid) : null);
    }

    touch(sid, session, callback) {
      if (this._closed) return settle(callback, closedError());
      const cookie = session && session.cookie;
      let status;
      try {
        status = this._native.touch(this._handle, sid, cookie ? JSON.stringify(cookie) : null, cookieExpiry(cookie));
      } catch (e) {
        return settle(callback, e);
      }
      this._wrote();
      return settle(callback, status === SESSION_TOO_LARGE ? this._tooLarge(sid) : null);
    }

    destroy(sid, callback) {
      if (this._closed) return settle(callback, closedError());
      try {
        this._native.destroy(this._handle, sid);
      } catch (e) {
        return settle(callback, e);
      }
      this._wrote();
      return settle(callback, null);
    }

    clear(callback) {
      if (this._closed) return settle(callback, closedError());
      this._engine.clear();
      this._wrote();
      return settle(callback, null);
    }

    // A flush ends each event-loop turn that wrote, so a lone write leaves at once and a burst
    // in one turn costs one wake-up of the network thread. Writes that keep coming less than
    // FLUSH_GAP_MS apart are flushed by a 1 ms timer instead: a stream of writes then costs a
    // wake-up per millisecond, not one per write (the engine also hands over every 256 writes).
    _wrote() {
      if (this._flushScheduled || !this._networked) return;
      this._flushScheduled = true;
      if (performance.now() - this._lastFlush >= FLUSH_GAP_MS) setImmediate(this._flush);
      else setTimeout(this._flush, 1).unref();
    }

    all(callback) {
      if (this._closed) return settle(callback, closedError());
      let sessions = null;
      let err = null;
      try {
        sessions = JSON.parse(this._engine.all());
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

    /** Leaves the cluster and releases every socket and thread. Idempotent. */
    close() {
      if (!this._closed) {
        if (this._onSignal) {
          process.removeListener("SIGINT", this._onSignal);
          process.removeListener("SIGTERM", this._onSignal);
        }
        this._engine.close();
        this._closed = Promise.resolve();
        this._markReady();
        // Once per stop: a network that failed at start has already reported its disconnect.
        if (!this._disconnected) process.nextTick(() => this.emit("disconnect"));
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
