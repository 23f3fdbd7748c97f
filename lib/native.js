"use strict";
// Finds and loads the native engine (the napi-rs addon), in this order:
//   1. a local build in the package folder, ./express_session_multicast.node (scripts/build.js
//      makes it from source: a git checkout, or a platform without a prebuilt engine);
//   2. the prebuilt engine of this platform: the package express-session-multicast-<platform>
//      that npm / pnpm / yarn / bun picked from optionalDependencies by os, cpu and libc.
// Else one error, code ERR_NATIVE_ENGINE_MISSING, that names the platform, what was tried and the
// ways out. Dependency-free: scripts/build.js (the install script) requires it too.
const fs = require("fs");
const path = require("path");

const PACKAGE = "express-session-multicast";
const BINARY = "express_session_multicast";
const ROOT = path.join(__dirname, "..");

/** The platforms a prebuilt engine is published for (npm/<platform>/package.json each). */
const PLATFORMS = Object.freeze(["linux-x64-gnu", "linux-x64-musl", "linux-arm64-gnu", "linux-arm64-musl", "darwin-x64", "darwin-arm64"]);

const isMuslFile = (f) => typeof f === "string" && (f.includes("libc.musl-") || f.includes("ld-musl-"));

/**
 * "glibc" or "musl" (Linux only; null elsewhere), as the napi-rs template finds it: the process
 * report's header has glibcVersionRuntime under glibc, and a musl Node has libc.musl / ld-musl among
 * its shared objects; without a report, /usr/bin/ldd's text, then `ldd --version`'s output.
 * Unknown counts as glibc. Every source can be injected (tests).
 */
function detectLibc({ platform = process.platform, report = getReport, readFile = readLdd, lddVersion = runLddVersion } = {}) {
  if (platform !== "linux") return null;
  const rep = typeof report === "function" ? report() : report;
  if (rep && typeof rep === "object") {
    if (rep.header && rep.header.glibcVersionRuntime) return "glibc";
    if (Array.isArray(rep.sharedObjects) && rep.sharedObjects.some(isMuslFile)) return "musl";
  }
  const ldd = typeof readFile === "function" ? readFile() : readFile;
  if (typeof ldd === "string" && ldd) {
    if (ldd.includes("musl")) return "musl";
    if (ldd.includes("GNU C Library") || ldd.includes("GLIBC") || ldd.includes("glibc")) return "glibc";
  }
  const version = typeof lddVersion === "function" ? lddVersion() : lddVersion;
  if (typeof version === "string" && version.includes("musl")) return "musl";
  return "glibc";
}

function getReport() {
  if (!process.report || typeof process.report.getReport !== "function") return null;
  const excludeNetwork = process.report.excludeNetwork;
  try {
    process.report.excludeNetwork = true; // no reverse DNS lookups of the process's sockets
    return process.report.getReport();
  } catch {
    return null;
  } finally {
    process.report.excludeNetwork = excludeNetwork;
  }
}

function readLdd() {
  try {
    return fs.readFileSync("/usr/bin/ldd", "utf8");
  } catch {
    return null;
  }
}

function runLddVersion() {
  // musl's ldd prints its version to stderr and exits 1
  const r = require("child_process").spawnSync("ldd", ["--version"], { encoding: "utf8", timeout: 5_000 });
  return r.error ? null : `${r.stdout || ""}${r.stderr || ""}`;
}

/** "linux-x64-gnu", "linux-arm64-musl", "darwin-arm64", … (napi-rs's names) for this platform. */
function platformId({ platform = process.platform, arch = process.arch, libc } = {}) {
  if (platform === "linux") return `linux-${arch}-${(libc === undefined ? detectLibc() : libc) === "musl" ? "musl" : "gnu"}`;
  if (platform === "win32") return `win32-${arch}-msvc`;
  return `${platform}-${arch}`;
}

function moduleNotFound(err, id) {
  return err && err.code === "MODULE_NOT_FOUND" && String(err.message).includes(`'${id}'`);
}

/**
 * Tries the local build, then the platform package; resolves to { addon, source, file } or throws
 * the ERR_NATIVE_ENGINE_MISSING error. Options (tests, scripts/build.js), each defaulting to this
 * process's: platform, arch, libc ("glibc" | "musl"; detected), root (the package folder), local
 * (false: skip the local build), require (loads a module id or file), version (the platform
 * package's expected version: this package's).
 */
function findEngine(options = {}) {
  const platform = options.platform || process.platform;
  const arch = options.arch || process.arch;
  const libc = platform === "linux" ? (options.libc !== undefined ? options.libc : detectLibc({ platform })) : null;
  const id = platformId({ platform, arch, libc });
  const root = options.root || ROOT;
  const load = options.require || require;
  const version = options.version || require("../package.json").version;
  const tried = [];

  if (options.local !== false) {
    const file = path.join(root, `${BINARY}.node`);
    if (!fs.existsSync(file)) {
      tried.push(`${file}: absent (a build from source puts it there)`);
    } else {
      try {
        return { addon: load(file), source: "local", file, platform: id };
      } catch (err) {
        tried.push(`${file}: ${firstLine(err)}`);
      }
    }
  }

  const pkg = `${PACKAGE}-${id}`;
  if (PLATFORMS.includes(id)) {
    let manifest = null;
    try {
      manifest = load(`${pkg}/package.json`);
    } catch (err) {
      tried.push(moduleNotFound(err, `${pkg}/package.json`) ? `${pkg}: not installed` : `${pkg}: ${firstLine(err)}`);
    }
    if (manifest && manifest.version !== version) {
      tried.push(`${pkg}: version ${manifest.version} is installed, ${PACKAGE} ${version} needs exactly ${version}`);
    } else if (manifest) {
      try {
        const file = load.resolve ? load.resolve(pkg) : pkg;
        return { addon: load(pkg), source: "package", file, platform: id };
      } catch (err) {
        tried.push(`${pkg}: ${firstLine(err)}`);
      }
    }
  }

  const err = new Error(missingMessage({ id, platform, arch, libc, pkg, tried, version }));
  err.code = "ERR_NATIVE_ENGINE_MISSING";
  err.platform = id;
  err.tried = tried;
  throw err;
}

function firstLine(err) {
  return String((err && err.message) || err).split("\n")[0];
}

function missingMessage({ id, platform, arch, libc, pkg, tried, version }) {
  const supported = PLATFORMS.includes(id);
  const where = `${id} (platform ${platform}, arch ${arch}${libc ? `, libc ${libc}` : ""}; Node ${process.version})`;
  const lines = [
    `${PACKAGE}: no native engine could be loaded for ${where}.`,
    supported
      ? `A prebuilt engine exists for this platform in the package ${pkg}@${version}, an optional dependency of ${PACKAGE}.`
      : `There is no prebuilt engine for ${id}: prebuilt engines exist for ${PLATFORMS.join(", ")}.`,
    "Tried:",
    ...tried.map((t) => `  - ${t}`),
    "Ways out:",
  ];
  if (supported) {
    lines.push(
      `  - install ${PACKAGE} again so that its optional dependency ${pkg} is installed: not with --omit=optional / --no-optional, and with a lockfile made on this platform (or remove the lockfile and node_modules and install again)`
    );
  } else {
    lines.push(`  - run on a supported platform: ${PLATFORMS.join(", ")}`);
  }
  lines.push(
    `  - or build the engine from source: install a Rust toolchain (cargo, https://rustup.rs), then run \`npm rebuild ${PACKAGE}\``
  );
  return lines.join("\n");
}

let engine = null;

/** The addon: `NativeEngine`, and the per-request calls `get`, `set`, `touch`, `destroy` that take `engine.handle()`. */
function loadEngine() {
  if (!engine) engine = findEngine();
  return engine.addon;
}

/** Where the loaded engine came from: { source: "local" | "package", file, platform }. */
function engineInfo() {
  loadEngine();
  return { source: engine.source, file: engine.file, platform: engine.platform };
}

module.exports = { loadEngine, engineInfo, findEngine, detectLibc, platformId, PLATFORMS, PACKAGE, BINARY };
