#!/usr/bin/env node
// Keeps every version field at package.json's version (napi-rs's `napi version`, without the CLI):
// npm/<platform>/package.json, package.json's optionalDependencies (exact versions), Cargo.toml's
// [package] version and this crate's entry in Cargo.lock. Run by `npm version <x>` (the
// "version" script) before its commit.
//   node scripts/sync-versions.js           rewrites what differs, says what it changed
//   node scripts/sync-versions.js --check   changes nothing; exits 1 naming what differs
"use strict";
const fs = require("fs");
const path = require("path");

const root = path.resolve(__dirname, "..");
const PACKAGE = "express-session-multicast";

/** [{ file, was, fix() }] for every field not at `version` (files read from `dir`). */
function differences(dir = root) {
  const read = (f) => fs.readFileSync(path.join(dir, f), "utf8");
  const mainText = read("package.json");
  const main = JSON.parse(mainText);
  const version = main.version;
  const out = [];
  const platforms = fs
    .readdirSync(path.join(dir, "npm"), { withFileTypes: true })
    .filter((e) => e.isDirectory() && fs.existsSync(path.join(dir, "npm", e.name, "package.json")))
    .map((e) => e.name)
    .sort();

  const writeJson = (file, obj) => fs.writeFileSync(path.join(dir, file), JSON.stringify(obj, null, 2) + "\n");
  for (const p of platforms) {
    const file = `npm/${p}/package.json`;
    const pkg = JSON.parse(read(file));
    if (pkg.name !== `${PACKAGE}-${p}`) out.push({ file, what: `name ${pkg.name}, not ${PACKAGE}-${p}`, fix: null });
    if (pkg.version !== version) out.push({ file, what: `version ${pkg.version}`, fix: () => writeJson(file, { ...pkg, version }) });
  }

  const optional = main.optionalDependencies || {};
  const wanted = Object.fromEntries(platforms.map((p) => [`${PACKAGE}-${p}`, version]));
  const same = JSON.stringify(Object.entries(optional).sort()) === JSON.stringify(Object.entries(wanted).sort());
  if (!same) {
    out.push({
      file: "package.json",
      what: `optionalDependencies ${JSON.stringify(optional)}`,
      fix: () => {
        const fresh = JSON.parse(read("package.json"));
        fresh.optionalDependencies = wanted;
        writeJson("package.json", fresh);
      },
    });
  }

  const cargoToml = read("Cargo.toml");
  const tomlRe = /^(\[package\][^[]*?^version\s*=\s*")([^"]*)(")/m;
  const tomlMatch = cargoToml.match(tomlRe);
  if (!tomlMatch) out.push({ file: "Cargo.toml", what: "no [package] version", fix: null });
  else if (tomlMatch[2] !== version) {
    out.push({ file: "Cargo.toml", what: `version ${tomlMatch[2]}`, fix: () => fs.writeFileSync(path.join(dir, "Cargo.toml"), read("Cargo.toml").replace(tomlRe, `$1${version}$3`)) });
  }

  const lock = read("Cargo.lock");
  const lockRe = new RegExp(`(\\[\\[package\\]\\]\\nname = "${PACKAGE}"\\nversion = ")([^"]*)(")`);
  const lockMatch = lock.match(lockRe);
  if (!lockMatch) out.push({ file: "Cargo.lock", what: `no entry for ${PACKAGE}`, fix: null });
  else if (lockMatch[2] !== version) {
    out.push({ file: "Cargo.lock", what: `version ${lockMatch[2]}`, fix: () => fs.writeFileSync(path.join(dir, "Cargo.lock"), read("Cargo.lock").replace(lockRe, `$1${version}$3`)) });
  }
  return { version, platforms, differences: out };
}

if (require.main === module) {
  const check = process.argv.includes("--check");
  const { version, differences: diffs } = differences();
  if (diffs.length === 0) {
    if (!check) console.log(`sync-versions: every version is ${version}`);
    process.exit(0);
  }
  for (const d of diffs) {
    if (check || !d.fix) console.error(`sync-versions: ${d.file}: ${d.what} (package.json has ${version})`);
    else {
      d.fix();
      console.log(`sync-versions: ${d.file}: ${d.what} -> ${version}`);
    }
  }
  if (check) console.error("sync-versions: run `node scripts/sync-versions.js` to bring them to package.json's version");
  process.exit(check || diffs.some((d) => !d.fix) ? 1 : 0);
}

module.exports = { differences };
