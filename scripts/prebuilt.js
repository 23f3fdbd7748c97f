#!/usr/bin/env node
// `npm run prebuilt [-- --target <platform>]`: builds one platform's prebuilt engine and packs the
// main package and that platform package into dist/:
//   dist/express-session-multicast-<version>.tgz             (no .node, no Rust target)
//   dist/express-session-multicast-<platform>-<version>.tgz  (the engine alone)
// <platform> is one of lib/native.js's PLATFORMS; the default is linux-x64-gnu.
// Linux engines are built with cargo-zigbuild (zig as the C toolchain and linker) against old
// glibc symbols (GLIBC_2.17 at most, checked with objdump), so they load on every glibc since
// 2.17; musl engines link musl dynamically (-crt-static). macOS engines are built with plain cargo
// on macOS. Nothing here needs node_modules: CI (.ci/run) and the release workflow
// (.github/workflows/release.yml) run exactly this.
"use strict";
const { spawnSync } = require("child_process");
const fs = require("fs");
const path = require("path");
const { PLATFORMS, BINARY, PACKAGE, platformId } = require("../lib/native");
const { differences } = require("./sync-versions");

const root = path.resolve(__dirname, "..");
const GLIBC_FLOOR = "2.17"; // Rust's own minimum for *-linux-gnu

const TARGETS = {
  "linux-x64-gnu": { triple: "x86_64-unknown-linux-gnu", zig: `x86_64-unknown-linux-gnu.${GLIBC_FLOOR}`, glibc: true },
  "linux-x64-musl": { triple: "x86_64-unknown-linux-musl", zig: "x86_64-unknown-linux-musl", musl: true },
  "linux-arm64-gnu": { triple: "aarch64-unknown-linux-gnu", zig: `aarch64-unknown-linux-gnu.${GLIBC_FLOOR}`, glibc: true },
  "linux-arm64-musl": { triple: "aarch64-unknown-linux-musl", zig: "aarch64-unknown-linux-musl", musl: true },
  "darwin-x64": { triple: "x86_64-apple-darwin", lib: `lib${BINARY}.dylib`, macos: "10.13" },
  "darwin-arm64": { triple: "aarch64-apple-darwin", lib: `lib${BINARY}.dylib`, macos: "11.0" },
};

const TOOLS_HINT =
  "Get them with `bash scripts/install-prebuilt-tools.sh` (pip installs PyPI's ziglang and cargo-zigbuild into .tools/, which this script puts on PATH),\n" +
  "or `pip install ziglang cargo-zigbuild`, or `cargo install cargo-zigbuild --locked` plus a zig on PATH.";

function fail(message) {
  console.error(`prebuilt: ${message}`);
  process.exit(1);
}

function parseArgs(argv) {
  const args = { target: "linux-x64-gnu", pack: true };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--target") args.target = argv[++i];
    else if (argv[i].startsWith("--target=")) args.target = argv[i].slice(9);
    else if (argv[i] === "--no-pack") args.pack = false;
    else fail(`unknown argument ${argv[i]} (usage: npm run prebuilt -- [--target <${PLATFORMS.join("|")}>] [--no-pack])`);
  }
  if (!TARGETS[args.target]) fail(`unknown target ${args.target}: one of ${PLATFORMS.join(", ")}`);
  return args;
}

/** The environment the tools run in: .tools/bin (scripts/install-prebuilt-tools.sh) first on PATH. */
function toolEnv(base = process.env) {
  const env = { ...base };
  const bin = path.join(root, ".tools", "bin");
  if (fs.existsSync(bin)) env.PATH = `${bin}${path.delimiter}${env.PATH || ""}`;
  return env;
}

const run = (cmd, args, opts = {}) => spawnSync(cmd, args, { encoding: "utf8", ...opts });
const ok = (r) => !r.error && r.status === 0;

/** { ok, missing: [why…], zig, zigbuild }: cargo-zigbuild and a zig it can use, as cargo-zigbuild looks for them. */
function findZigTools(env = toolEnv()) {
  const missing = [];
  const zigbuild = run("cargo-zigbuild", ["--version"], { env });
  if (!ok(zigbuild)) missing.push("cargo-zigbuild (not on PATH)");
  let zig = null;
  if (env.CARGO_ZIGBUILD_ZIG_PATH) {
    const r = run(env.CARGO_ZIGBUILD_ZIG_PATH, ["version"], { env });
    if (ok(r)) zig = `${r.stdout.trim()} (${env.CARGO_ZIGBUILD_ZIG_PATH})`;
  }
  if (!zig) {
    const r = run("zig", ["version"], { env });
    if (ok(r)) zig = `${r.stdout.trim()} (zig on PATH)`;
  }
  if (!zig) {
    const r = run("python3", ["-m", "ziglang", "version"], { env });
    if (ok(r)) zig = `${r.stdout.trim()} (python3 -m ziglang)`;
  }
  if (!zig) missing.push("zig (neither `zig` on PATH nor the ziglang Python package of `python3`)");
  return { ok: missing.length === 0, missing, zig, zigbuild: ok(zigbuild) ? zigbuild.stdout.trim() : null };
}

/** The highest GLIBC_x.y symbol version that `file` needs (objdump -T), with its objdump line; null without objdump. */
function maxGlibc(file) {
  const r = run("objdump", ["-T", file], { maxBuffer: 64 << 20 });
  if (r.error) return null;
  if (r.status !== 0) fail(`objdump -T ${file} failed: ${r.stderr}`);
  let best = { version: "0", line: "(no GLIBC_ symbol)" };
  for (const line of r.stdout.split("\n")) {
    const m = line.match(/\(?GLIBC_(\d+(?:\.\d+)*)\)?/);
    if (m && compareVersions(m[1], best.version) > 0) best = { version: m[1], line: line.trim() };
  }
  return best;
}

function compareVersions(a, b) {
  const x = a.split(".").map(Number);
  const y = b.split(".").map(Number);
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    if ((x[i] || 0) !== (y[i] || 0)) return (x[i] || 0) - (y[i] || 0);
  }
  return 0;
}

function pack(dir, dest) {
  const r = run("npm", ["pack", "--json", "--ignore-scripts", "--pack-destination", dest], { cwd: dir, maxBuffer: 64 << 20 });
  if (!ok(r)) fail(`npm pack in ${dir} failed:\n${r.stderr || r.error}`);
  const info = JSON.parse(r.stdout)[0];
  return { file: path.join(dest, info.filename), files: info.files.map((f) => f.path), size: info.size };
}

function main() {
  const { target, pack: doPack } = parseArgs(process.argv.slice(2));
  const spec = TARGETS[target];
  const started = Date.now();

  const { version, differences: diffs } = differences(root);
  if (diffs.length) fail(`version fields differ from package.json's ${version}:\n${diffs.map((d) => `  ${d.file}: ${d.what}`).join("\n")}\nRun \`node scripts/sync-versions.js\`.`);

  const env = toolEnv();
  const isDarwin = target.startsWith("darwin-");
  let cargoArgs;
  if (isDarwin) {
    if (process.platform !== "darwin") fail(`${target} is built on macOS (plain cargo, Apple's linker); this is ${process.platform}`);
    cargoArgs = ["build", "--release", "--locked", "--target", spec.triple];
    env.MACOSX_DEPLOYMENT_TARGET = env.MACOSX_DEPLOYMENT_TARGET || spec.macos; // the oldest macOS it loads on
  } else {
    const tools = findZigTools(env);
    if (!tools.ok) fail(`cannot build the ${target} engine: cargo-zigbuild and zig are needed (they link it against glibc ${GLIBC_FLOOR} symbols); missing: ${tools.missing.join(", ")}.\n${TOOLS_HINT}`);
    console.log(`prebuilt: ${tools.zigbuild}, zig ${tools.zig}`);
    cargoArgs = ["zigbuild", "--release", "--locked", "--target", spec.zig];
    if (spec.musl) env.RUSTFLAGS = `${env.RUSTFLAGS ? env.RUSTFLAGS + " " : ""}-C target-feature=-crt-static`; // a cdylib needs a dynamic musl
  }
  const rustup = run("rustup", ["target", "list", "--installed"], { env });
  if (ok(rustup) && !rustup.stdout.split("\n").includes(spec.triple)) fail(`the Rust target ${spec.triple} is not installed: \`rustup target add ${spec.triple}\``);

  console.log(`prebuilt: cargo ${cargoArgs.join(" ")}`);
  const build = spawnSync("cargo", cargoArgs, { cwd: root, env, stdio: "inherit" });
  if (build.error) fail(`cargo could not start (${build.error.message}): a Rust toolchain is needed (https://rustup.rs)`);
  if (build.status !== 0) fail(`cargo ${cargoArgs.join(" ")} failed (see above)`);

  const targetDir = env.CARGO_TARGET_DIR || path.join(root, "target");
  const built = path.join(targetDir, spec.triple, "release", spec.lib || `lib${BINARY}.so`);
  const pkgDir = path.join(root, "npm", target);
  const node = path.join(pkgDir, `${BINARY}.${target}.node`);
  fs.copyFileSync(built, node + ".tmp");
  fs.renameSync(node + ".tmp", node);
  console.log(`prebuilt: ${path.relative(root, node)} (${fs.statSync(node).size} bytes)`);

  if (spec.glibc) {
    const glibc = maxGlibc(node);
    if (glibc === null) console.log("prebuilt: objdump not found (Debian package binutils): the glibc floor is not checked");
    else {
      console.log(`prebuilt: highest glibc symbol version needed: GLIBC_${glibc.version}: ${glibc.line}`);
      if (compareVersions(glibc.version, GLIBC_FLOOR) > 0) fail(`the engine needs GLIBC_${glibc.version}, above the floor GLIBC_${GLIBC_FLOOR}`);
    }
  }
  if (spec.musl) {
    const glibc = maxGlibc(node);
    if (glibc && glibc.version !== "0") fail(`the musl engine needs glibc symbols: ${glibc.line}`);
  }

  // Loads here when this machine is of that platform (a CI runner of it).
  if (platformId() === target) {
    const r = run(process.execPath, ["-e", `const a = require(${JSON.stringify(node)}); if (typeof a.NativeEngine !== "function") throw new Error("no NativeEngine")`]);
    if (!ok(r)) fail(`the built engine does not load in Node ${process.version}:\n${r.stderr}`);
    console.log(`prebuilt: the engine loads in Node ${process.version}`);
  }

  if (doPack) {
    const dist = path.join(root, "dist");
    fs.mkdirSync(dist, { recursive: true });
    const main = pack(root, dist);
    const bad = main.files.filter((f) => f.endsWith(".node") || f.startsWith("target/") || f.startsWith("npm/") || f.startsWith(".tools/"));
    if (bad.length) fail(`the main tarball holds files it must not: ${bad.join(", ")} (package.json "files")`);
    const platform = pack(pkgDir, dist);
    const want = [`${BINARY}.${target}.node`, "package.json", "README.md"].sort();
    if (JSON.stringify([...platform.files].sort()) !== JSON.stringify(want)) fail(`${path.basename(platform.file)} holds ${platform.files.join(", ")}, not ${want.join(", ")}`);
    for (const t of [main, platform]) console.log(`prebuilt: ${path.relative(root, t.file)} (${t.size} bytes, ${t.files.length} files)`);
  }
  console.log(`prebuilt: ${PACKAGE} ${version} ${target} done in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

if (require.main === module) main();

module.exports = { TARGETS, GLIBC_FLOOR, findZigTools, toolEnv, maxGlibc, compareVersions };
