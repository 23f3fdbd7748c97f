"use strict";
// express-session adapter: JSON and callbacks live here, everything else in the Rust engine.
const { loadEngine } = require("./lib/native");
const { normalizeOptions } = require("./lib/options");

// Status codes returned by the engine's write calls (0 = ok).
const SESSION_TOO_LARGE = 1;

function storeError(code, message) {
  const err = new Error(`express-session-multicast: ${message}`);
  err.code = code;
  return err;
}

const closedError = () => storeError("ERR_STORE_CLOSED", "the store is closed");

// Callbacks are never called synchronously; without a callback, a Promise is returned.
function settle(callback, err, value) {
  if (typeof callback === "function") {
    process.nextTick(callback, err, value);
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
      const NativeEngine = loadEngine();
      try {
        this._engine = new NativeEngine(JSON.stringify(engineOptions));
      } catch (err) {
        // The engine rejects invalid options with status InvalidArg: surface them as TypeError.
        if (err && err.code === "InvalidArg") throw new TypeError(err.message);
        throw err;
      }
      this.options = JSON.parse(this._engine.config());
      this._closed = null;
      this._ready = Promise.resolve();
      process.nextTick(() => this.emit("connect"));
    }

    get(sid, callback) {
      if (this._closed) return settle(callback, closedError());
      let session = null;
      let err = null;
      try {
        const json = this._engine.get(sid);
        if (json !== null) session = JSON.parse(json);
      } catch (e) {
        err = e;
      }
      return settle(callback, err, session);
    }

    set(sid, session, callback) {
      if (this._closed) return settle(callback, closedError());
      let json;
      try {
        json = JSON.stringify(session);
      } catch (e) {
        return settle(callback, e);
      }
      const status = this._engine.set(sid, json, cookieExpiry(session.cookie));
      return settle(callback, status === SESSION_TOO_LARGE ? this._tooLarge(sid) : null);
    }

    touch(sid, session, callback) {
      if (this._closed) return settle(callback, closedError());
      const cookie = session && session.cookie;
      const status = this._engine.touch(sid, cookie ? JSON.stringify(cookie) : null, cookieExpiry(cookie));
      return settle(callback, status === SESSION_TOO_LARGE ? this._tooLarge(sid) : null);
    }

    destroy(sid, callback) {
      if (this._closed) return settle(callback, closedError());
      this._engine.destroy(sid);
      return settle(callback, null);
    }

    clear(callback) {
      if (this._closed) return settle(callback, closedError());
      this._engine.clear();
      return settle(callback, null);
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

    ready() {
      return this._ready;
    }

    /** Leaves the cluster and releases every socket and thread. Idempotent. */
    close() {
      if (!this._closed) {
        this._engine.close();
        this._closed = Promise.resolve();
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
  }

  return MulticastStore;
};
