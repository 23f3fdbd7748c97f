"use strict";
// index.d.ts, checked by the TypeScript compiler: test/types/usage.ts (a typed usage example of
// every option, method, event, stats(), members() and metrics()) must compile with
// `tsc --noEmit --strict`. Its `@ts-expect-error` lines are mistakes the typings must reject:
// typings that stopped rejecting them (for instance everything typed `any`) fail the compile.
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const { execFileSync } = require("node:child_process");
const { MulticastStore } = require("./helpers");

const ROOT = path.join(__dirname, "..");
const TSC = path.join(ROOT, "node_modules", ".bin", "tsc");
const TYPES_DIR = path.join(__dirname, "types");
// `import x = require()` needs CommonJS output: nodenext treats .ts files of this package
// ("type" is not "module") as CommonJS. `types`: the Node.js globals (console, Buffer).
const TSC_FLAGS = ["--noEmit", "--strict", "--module", "nodenext", "--types", "node", "--pretty", "false"];

// For the imports by package name (a self-reference, through package.json "exports") from .mts
// (ES module) and .cts (CommonJS) files, as an application compiled for Node.js resolves them.
const NODENEXT_FLAGS = ["--module", "nodenext", "--moduleResolution", "nodenext"];

/** Runs tsc on `files` (a path or an array of paths), with `extraFlags`; resolves with { ok, output }. */
function tsc(files, extraFlags = []) {
  try {
    const output = execFileSync(TSC, [...TSC_FLAGS, ...extraFlags, ...[].concat(files)], { cwd: ROOT, encoding: "utf8", stdio: "pipe", timeout: 60_000 });
    return { ok: true, output };
  } catch (err) {
    if (err.status === null || err.status === undefined) throw err; // tsc did not run
    return { ok: false, output: `${err.stdout}${err.stderr}` };
  }
}

describe("TypeScript typings (index.d.ts)", function () {
  this.timeout(60_000);

  before(function () {
    if (!fs.existsSync(TSC)) throw new Error(`${TSC} is missing: run npm install (typescript is a devDependency)`);
  });

  it("test/types/usage.ts compiles with tsc --noEmit --strict (its @ts-expect-error lines are rejected)", () => {
    const file = path.join(TYPES_DIR, "usage.ts");
    const source = fs.readFileSync(file, "utf8");
    assert.ok((source.match(/@ts-expect-error/g) || []).length >= 5, "usage.ts keeps its @ts-expect-error checks");
    const { ok, output } = tsc(file);
    assert.ok(ok, `tsc reported errors:\n${output}`);
  });

  it("tsc rejects a misuse (the check is not vacuous)", () => {
    const file = path.join(TYPES_DIR, `misuse-${process.pid}.ts`);
    fs.writeFileSync(
      file,
      [
        'import session = require("express-session");',
        'import expressSessionMulticast = require("../..");',
        "const MulticastStore = expressSessionMulticast(session);",
        'const store = new MulticastStore({ multicastPort: "4000" });',
        "const lag: string = store.stats().replicationLagMs;",
        "store.metrics(42);",
        "",
      ].join("\n")
    );
    try {
      const { ok, output } = tsc(file);
      assert.equal(ok, false, "tsc accepted a misuse");
      for (const line of [4, 5, 6]) {
        assert.match(output, new RegExp(`misuse-${process.pid}\\.ts\\(${line},\\d+\\): error TS\\d+`), `line ${line} is an error:\n${output}`);
      }
    } finally {
      fs.rmSync(file, { force: true });
    }
  });

  it("imports by package name type-check from an ES module (.mts) and from CommonJS (.cts): default and { createStore }", () => {
    const files = ["esm.mts", "cjs.cts"].map((name) => path.join(TYPES_DIR, name));
    for (const file of files) {
      assert.match(fs.readFileSync(file, "utf8"), /import createStore, \{ createStore as named \} from "express-session-multicast";/);
    }
    const { ok, output } = tsc(files, NODENEXT_FLAGS);
    assert.ok(ok, `tsc reported errors:\n${output}`);
  });

  it("tsc rejects a wrong named import and a misuse of the named factory, from .mts and .cts (the check is not vacuous)", () => {
    const lines = [
      'import session from "express-session";',
      'import { createStor } from "express-session-multicast";',
      'import { createStore } from "express-session-multicast";',
      "const MulticastStore = createStore(session);",
      'new MulticastStore({ multicastPort: "4000" });',
      'createStore("express-session");',
      "console.log(createStor);",
      "",
    ].join("\n");
    const files = ["mts", "cts"].map((ext) => path.join(TYPES_DIR, `misuse-named-${process.pid}.${ext}`));
    for (const file of files) fs.writeFileSync(file, lines);
    try {
      const { ok, output } = tsc(files, NODENEXT_FLAGS);
      assert.equal(ok, false, "tsc accepted a misuse");
      for (const file of files) {
        const name = path.basename(file).replace(/\./g, "\\.");
        assert.match(output, new RegExp(`${name}\\(2,\\d+\\): error TS\\d+: .*has no exported member`), `line 2 of ${file} is an error:\n${output}`);
        for (const line of [5, 6]) {
          assert.match(output, new RegExp(`${name}\\(${line},\\d+\\): error TS\\d+`), `line ${line} of ${file} is an error:\n${output}`);
        }
        assert.doesNotMatch(output, new RegExp(`${name}\\([1347],`), `only the misuses are errors:\n${output}`);
      }
    } finally {
      for (const file of files) fs.rmSync(file, { force: true });
    }
  });

  it("every public method of the store class is declared", () => {
    const dts = fs.readFileSync(path.join(ROOT, "index.d.ts"), "utf8");
    const start = dts.indexOf("declare class MulticastStoreBase");
    const body = dts.slice(start, dts.indexOf("\n}\n", start));
    const declared = new Set([...body.matchAll(/^ {4}(\w+)\(/gm)].map((m) => m[1]));
    const methods = Object.getOwnPropertyNames(MulticastStore.prototype).filter(
      (name) => name !== "constructor" && !name.startsWith("_") && typeof MulticastStore.prototype[name] === "function"
    );
    assert.ok(methods.includes("metrics"));
    assert.deepEqual(methods.filter((m) => !declared.has(m)), [], "methods without a declaration in index.d.ts");
  });
});
