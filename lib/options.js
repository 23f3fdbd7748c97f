"use strict";
// The JS-only options (logger, serializer, a ttl function, Buffers in `secret`) are checked
// here; every other option is validated by the engine (src/options.rs), which throws a TypeError
// naming the option. All of them are declared in OPTIONS of src/options.rs (logger and serializer
// as `Kind::Js`), which test/options.test.js checks index.d.ts and the README against.

function optionError(name, expected, value) {
  let shown;
  try {
    shown = typeof value === "string" ? JSON.stringify(value) : String(value);
  } catch {
    shown = typeof value;
  }
  return new TypeError(`express-session-multicast: option "${name}" must be ${expected} (got ${shown})`);
}

function checkLogger(logger) {
  if (logger === undefined) return console;
  const ok =
    logger !== null &&
    typeof logger === "object" &&
    ["info", "warn", "error"].every((level) => typeof logger[level] === "function");
  if (!ok) throw optionError("logger", "an object with info, warn and error methods (console, pino, winston, bunyan)", logger);
  return logger;
}

// A Buffer travels to the engine as {"base64": …}; a passphrase as a plain string.
function secretToJson(secret) {
  if (Buffer.isBuffer(secret) || secret instanceof Uint8Array) return { base64: Buffer.from(secret).toString("base64") };
  if (Array.isArray(secret)) return secret.map(secretToJson);
  return secret;
}

function checkSerializer(serializer) {
  if (serializer === undefined) return undefined;
  // Any value with the two methods: a plain object, JSON itself, a class with static ones (superjson).
  const ok = serializer != null && typeof serializer.stringify === "function" && typeof serializer.parse === "function";
  if (!ok) throw optionError("serializer", "an object with stringify and parse functions", serializer);
  return serializer;
}

function normalizeOptions(options) {
  if (options === null || typeof options !== "object" || Array.isArray(options)) {
    throw new TypeError("express-session-multicast: options must be an object");
  }
  const { logger, serializer, ...rest } = options;
  // A ttl function is called per write here; a number of seconds is the engine's.
  const ttl = typeof rest.ttl === "function" ? rest.ttl : undefined;
  if (ttl) delete rest.ttl;
  const engineOptions = {};
  for (const [key, value] of Object.entries(rest)) {
    if (value === undefined) continue;
    if (typeof value === "function" || typeof value === "symbol" || typeof value === "bigint") {
      throw optionError(key, "a plain value", typeof value);
    }
    // JSON would turn these into null, which reads as "not set".
    if (typeof value === "number" && !Number.isFinite(value)) throw optionError(key, "a finite number", value);
    engineOptions[key] = key === "secret" ? secretToJson(value) : value;
  }
  return { engineOptions, logger: checkLogger(logger), serializer: checkSerializer(serializer), ttl };
}

module.exports = { normalizeOptions };
