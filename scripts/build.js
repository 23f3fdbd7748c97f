#!/usr/bin/env node
// The install script. With a prebuilt engine (the optional dependency
// express-session-multicast-<platform> that the package manager picked for this platform) it
// does nothing. It builds the engine from source with cargo only when no prebuilt engine loads
// (an unsupported platform, optional dependencies omitted), in a git checkout (development), or
// when asked to (`npm rebuild express-session-multicast --build-from-source`, or
// EXPRESS_SESSION_MULTICAST_BUILD_FROM_SOURCE=1).
// Dependency-free on purpose: a consumer's install has no devDependencies, so no @napi-rs/cli here.
"use strict";
const { spawnSync } = require("child_process");
const fs = require("fs");
const path = require("path");

const root = path.resolve(__dirname, "..");
const target = path.join(root, "express_session_multicast.node");
const libName = {
  darwin: "libexpress_session_multicast.dylib",
  win32: "express_session_multicast.dll",
}[process.platform] || "libexpress_session_multicast.so";

const truthy = (v) => v !== undefined && v !== "" && v !== "0" && v !== "false";

function reason() {
  if (truthy(process.env.npm_config_build_from_source)) return "--build-from-source was given";
  if (truthy(process.env.EXPRESS_SESSION_MULTICAST_BUILD_FROM_SOURCE)) return "EXPRESS_SESSION_MULTICAST_BUILD_FROM_SOURCE is set";
  if (fs.existsSync(path.join(root, ".git"))) return "this is a git checkout";
  try {
    require("../lib/native").findEngine({ local: false });
    return null; // the prebuilt engine loads: nothing to do
  } catch (err) {
    if (err.code !== "ERR_NATIVE_ENGINE_MISSING") throw err;
    return `no prebuilt engine for ${err.platform} loads (${err.tried.join("; ")})`;
  }
}

const why = reason();
if (why === null) process.exit(0);
console.log(`express-session-multicast: building the native engine from source with cargo: ${why}.`);

const cargo = process.env.CARGO || "cargo";
const probe = spawnSync(cargo, ["--version"], { encoding: "utf8" });
if (probe.error || probe.status !== 0) {
  console.error(
    "express-session-multicast: cannot build the native engine: `cargo` was not found.\n" +
      "Install a Rust toolchain (https://rustup.rs), make sure `cargo` is on PATH, then run `npm rebuild express-session-multicast` " +
      "(or use a platform with a prebuilt engine: " +
      require("../lib/native").PLATFORMS.join(", ") +
      ")."
  );
  process.exit(1);
}

const build = spawnSync(cargo, ["build", "--release", "--locked"], { cwd: root, stdio: "inherit" });
if (build.status !== 0) {
  console.error("express-session-multicast: `cargo build --release --locked` failed (see above).");
  process.exit(build.status || 1);
}

const targetDir = process.env.CARGO_TARGET_DIR || path.join(root, "target");
const built = path.join(targetDir, "release", libName);
// Copy to a temporary name then rename, so a process holding the old addon is not disturbed.
fs.copyFileSync(built, target + ".tmp");
fs.renameSync(target + ".tmp", target);
console.log(`express-session-multicast: native engine built (${path.relative(root, target)})`);
