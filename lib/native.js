"use strict";
// Loads the addon built by scripts/build.js at `npm install` time.
const path = require("path");

let addon = null;

/** The addon: `NativeEngine`, and the per-request calls `get`, `set`, `touch`, `destroy` that take `engine.handle()`. */
function loadEngine() {
  if (addon) return addon;
  const file = path.join(__dirname, "..", "express_session_multicast.node");
  try {
    addon = require(file);
  } catch (err) {
    const hint = new Error(
      `express-session-multicast: the native engine could not be loaded from ${file} (${err.message}). ` +
        "It is built by `npm install`; run `npm rebuild express-session-multicast` with a Rust toolchain on PATH."
    );
    hint.code = "ERR_NATIVE_ENGINE_MISSING";
    hint.cause = err;
    throw hint;
  }
  return addon;
}

module.exports = { loadEngine };
