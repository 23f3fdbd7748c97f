#!/usr/bin/env node
// Builds the native engine at `npm install` time. Dependency-free on purpose:
// a consumer's install has no devDependencies, so no @napi-rs/cli here.
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

const cargo = process.env.CARGO || "cargo";
const probe = spawnSync(cargo, ["--version"], { encoding: "utf8" });
if (probe.error || probe.status !== 0) {
  console.error(
    "express-session-multicast: cannot build the native engine: `cargo` was not found.\n" +
      "Install a Rust toolchain (https://rustup.rs), make sure `cargo` is on PATH, then run `npm install` again."
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
