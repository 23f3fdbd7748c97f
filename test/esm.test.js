"use strict";
// The factory as a named export (`createStore`) next to the default export, for CommonJS and for
// ES modules. The ES module runs in a child process (test/fixtures/esm.mjs) and imports the
// package by name, so the check goes through package.json "exports" and Node's detection of the
// named exports of a CommonJS module, as in an application.
const assert = require("node:assert/strict");
const path = require("node:path");
const { spawnSync } = require("node:child_process");

const FIXTURE = path.join(__dirname, "fixtures", "esm.mjs");

describe("ES module and named imports", function () {
  it('require("express-session-multicast").createStore is the factory itself', () => {
    // By name: a self-reference, resolved through package.json "exports".
    const factory = require("express-session-multicast");
    assert.equal(typeof factory, "function");
    assert.equal(factory.createStore, factory);
    assert.equal(factory, require(".."));
  });

  it("import createStore, { createStore } from an .mjs file: the same factory, and its store works", () => {
    const child = spawnSync(process.execPath, [FIXTURE], {
      cwd: path.dirname(FIXTURE),
      encoding: "utf8",
      timeout: 20_000,
    });
    assert.equal(child.status, 0, `node ${FIXTURE} failed:\n${child.stderr}${child.error || ""}`);
    const line = child.stdout.split("\n").find((l) => l.startsWith("RESULT "));
    assert.ok(line, `no RESULT line in the output:\n${child.stdout}${child.stderr}`);
    assert.deepEqual(JSON.parse(line.slice("RESULT ".length)), {
      same: true,
      defaultMakesStores: true,
      isStore: true,
      user: "ann",
      packageJson: "express-session-multicast",
    });
  });
});
