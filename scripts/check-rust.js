#!/usr/bin/env node
// Before `npm test` (the "pretest" script): the engine's Rust code is formatted (rustfmt.toml)
// and clippy finds nothing, warnings included. CI runs `npm test`, so it runs these too.
"use strict";
const { spawnSync } = require("child_process");
const path = require("path");

const root = path.resolve(__dirname, "..");
const cargo = process.env.CARGO || "cargo";
const checks = [
  ["fmt", "--check"],
  ["fmt", "--check", "--manifest-path", "fuzz/Cargo.toml"],
  ["clippy", "--release", "--locked", "--no-default-features", "--all-targets", "--", "-D", "warnings"],
];
for (const args of checks) {
  const run = spawnSync(cargo, args, { cwd: root, stdio: "inherit" });
  if (run.error || run.status !== 0) {
    const why = run.error ? run.error.message : `exit status ${run.status}`;
    console.error(`check-rust: \`cargo ${args.join(" ")}\` failed (${why}). rustfmt and clippy come with rustup's default profile (\`rustup component add rustfmt clippy\`).`);
    process.exit(run.status || 1);
  }
}
