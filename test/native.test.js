"use strict";
// lib/native.js: which engine it loads (a local build, else this platform's package), the one
// error it throws when there is none (ERR_NATIVE_ENGINE_MISSING, naming the platform, what it
// tried and the ways out), and glibc / musl detection. Platform, arch, libc, the package folder
// and `require` are injected, so every case runs here whatever this machine is.
const assert = require("node:assert/strict");
const { spawnSync } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { findEngine, detectLibc, platformId, PLATFORMS, PACKAGE } = require("../lib/native");

const VERSION = require("../package.json").version;

function notFound(id) {
  const err = new Error(`Cannot find module '${id}'\nRequire stack:\n- ${__filename}`);
  err.code = "MODULE_NOT_FOUND";
  return err;
}

/** A `require` that knows only `modules` (id or file -> value, or an Error to throw). */
function fakeRequire(modules) {
  const load = (id) => {
    if (!(id in modules)) throw notFound(id);
    if (modules[id] instanceof Error) throw modules[id];
    return modules[id];
  };
  load.resolve = (id) => `/fake/node_modules/${id}/${id}.node`;
  return load;
}

function missing(options) {
  try {
    findEngine(options);
  } catch (err) {
    return err;
  }
  assert.fail("findEngine found an engine");
}

describe("the native engine loader (lib/native.js)", () => {
  let emptyRoot, builtRoot;
  before(() => {
    emptyRoot = fs.mkdtempSync(path.join(os.tmpdir(), "esm-loader-"));
    builtRoot = fs.mkdtempSync(path.join(os.tmpdir(), "esm-loader-"));
    fs.writeFileSync(path.join(builtRoot, "express_session_multicast.node"), "not really an addon");
  });
  after(() => {
    fs.rmSync(emptyRoot, { recursive: true, force: true });
    fs.rmSync(builtRoot, { recursive: true, force: true });
  });

  describe("platform names", () => {
    it("are napi-rs's: linux-<arch>-gnu|musl, darwin-<arch>, win32-<arch>-msvc", () => {
      assert.equal(platformId({ platform: "linux", arch: "x64", libc: "glibc" }), "linux-x64-gnu");
      assert.equal(platformId({ platform: "linux", arch: "arm64", libc: "musl" }), "linux-arm64-musl");
      assert.equal(platformId({ platform: "linux", arch: "x64", libc: null }), "linux-x64-gnu");
      assert.equal(platformId({ platform: "darwin", arch: "arm64" }), "darwin-arm64");
      assert.equal(platformId({ platform: "win32", arch: "x64" }), "win32-x64-msvc");
      assert.equal(platformId({ platform: "freebsd", arch: "x64" }), "freebsd-x64");
    });

    it("every platform has its package in npm/ and in package.json's optionalDependencies", () => {
      const pkg = require("../package.json");
      assert.deepEqual(Object.keys(pkg.optionalDependencies).sort(), PLATFORMS.map((p) => `${PACKAGE}-${p}`).sort());
      assert.deepEqual(fs.readdirSync(path.join(__dirname, "..", "npm")).sort(), [...PLATFORMS].sort());
      for (const p of PLATFORMS) {
        const sub = require(`../npm/${p}/package.json`);
        const [os_, cpu, libc] = p.split("-");
        assert.equal(sub.name, `${PACKAGE}-${p}`);
        assert.equal(sub.version, pkg.version);
        assert.equal(pkg.optionalDependencies[sub.name], pkg.version, "an exact version");
        assert.deepEqual(sub.os, [os_]);
        assert.deepEqual(sub.cpu, [cpu]);
        assert.deepEqual(sub.libc, libc ? [libc === "gnu" ? "glibc" : "musl"] : undefined);
        assert.equal(sub.main, `express_session_multicast.${p}.node`);
        assert.deepEqual(sub.files, [sub.main]);
        assert.ok(pkg.os.includes(os_) && pkg.cpu.includes(cpu), `package.json's os / cpu leave out ${p}`);
      }
    });
  });

  describe("glibc or musl", () => {
    const none = { report: null, readFile: null, lddVersion: null };

    it("glibc when the process report's header has glibcVersionRuntime", () => {
      assert.equal(detectLibc({ ...none, platform: "linux", report: { header: { glibcVersionRuntime: "2.36" }, sharedObjects: ["/lib/x86_64-linux-gnu/libc.so.6"] } }), "glibc");
    });

    it("musl when the report has no glibc version and a musl loader among its shared objects", () => {
      assert.equal(detectLibc({ ...none, platform: "linux", report: { header: {}, sharedObjects: ["/lib/ld-musl-x86_64.so.1", "/usr/lib/libstdc++.so.6"] } }), "musl");
      assert.equal(detectLibc({ ...none, platform: "linux", report: { header: {}, sharedObjects: ["/lib/libc.musl-aarch64.so.1"] } }), "musl");
    });

    it("without a report: /usr/bin/ldd's text, then `ldd --version`", () => {
      assert.equal(detectLibc({ ...none, platform: "linux", readFile: "#!/bin/sh\nexec /lib/ld-musl-x86_64.so.1 --list \"$@\"\n" }), "musl");
      assert.equal(detectLibc({ ...none, platform: "linux", readFile: "#! /bin/bash\n# This file is part of the GNU C Library.\n" }), "glibc");
      assert.equal(detectLibc({ ...none, platform: "linux", lddVersion: "musl libc (x86_64)\nVersion 1.2.5\n" }), "musl");
      assert.equal(detectLibc({ ...none, platform: "linux", lddVersion: "ldd (Debian GLIBC 2.36-9+deb12u13) 2.36\n" }), "glibc");
    });

    it("a report that says nothing falls through to ldd; nothing at all counts as glibc", () => {
      assert.equal(detectLibc({ ...none, platform: "linux", report: { header: {}, sharedObjects: [] }, lddVersion: "musl libc" }), "musl");
      assert.equal(detectLibc({ ...none, platform: "linux" }), "glibc");
    });

    it("null off Linux", () => {
      assert.equal(detectLibc({ platform: "darwin" }), null);
    });

    it("this machine: what `ldd --version` says, and process.report left as it was", function () {
      if (process.platform !== "linux") return this.skip();
      const excludeNetwork = process.report.excludeNetwork;
      const libc = detectLibc();
      assert.equal(process.report.excludeNetwork, excludeNetwork);
      const ldd = spawnSync("ldd", ["--version"], { encoding: "utf8" });
      if (ldd.error) return this.skip();
      assert.equal(libc, /musl/.test(ldd.stdout + ldd.stderr) ? "musl" : "glibc", `ldd --version: ${ldd.stdout}${ldd.stderr}`);
    });
  });

  describe("which engine", () => {
    const engine = { NativeEngine: function NativeEngine() {} };

    it("a local build in the package folder first", () => {
      const local = path.join(builtRoot, "express_session_multicast.node");
      const found = findEngine({ platform: "linux", arch: "x64", libc: "glibc", root: builtRoot, require: fakeRequire({ [local]: engine, [`${PACKAGE}-linux-x64-gnu/package.json`]: { version: VERSION } }) });
      assert.equal(found.source, "local");
      assert.equal(found.file, local);
      assert.equal(found.addon, engine);
    });

    it("then this platform's package (the musl one under musl)", () => {
      const id = `${PACKAGE}-linux-arm64-musl`;
      const found = findEngine({ platform: "linux", arch: "arm64", libc: "musl", root: emptyRoot, require: fakeRequire({ [id]: engine, [`${id}/package.json`]: { version: VERSION } }) });
      assert.equal(found.source, "package");
      assert.equal(found.platform, "linux-arm64-musl");
      assert.equal(found.addon, engine);
    });

    it("a local build that does not load is passed over for the platform package", () => {
      const local = path.join(builtRoot, "express_session_multicast.node");
      const id = `${PACKAGE}-darwin-arm64`;
      const found = findEngine({ platform: "darwin", arch: "arm64", root: builtRoot, require: fakeRequire({ [local]: new Error("dlopen: wrong ELF class"), [id]: engine, [`${id}/package.json`]: { version: VERSION } }) });
      assert.equal(found.source, "package");
    });

    it("local: false (the install script) looks at the platform package only", () => {
      const local = path.join(builtRoot, "express_session_multicast.node");
      const err = missing({ platform: "linux", arch: "x64", libc: "glibc", root: builtRoot, local: false, require: fakeRequire({ [local]: engine }) });
      assert.equal(err.code, "ERR_NATIVE_ENGINE_MISSING");
      assert.doesNotMatch(err.message, /express_session_multicast\.node/);
    });
  });

  describe("ERR_NATIVE_ENGINE_MISSING", () => {
    it("an unsupported platform: names it, what was tried, the supported platforms and building from source", () => {
      const err = missing({ platform: "freebsd", arch: "x64", root: emptyRoot, require: fakeRequire({}) });
      assert.equal(err.code, "ERR_NATIVE_ENGINE_MISSING");
      assert.equal(err.platform, "freebsd-x64");
      const m = err.message;
      assert.match(m, /no native engine could be loaded for freebsd-x64 \(platform freebsd, arch x64; Node v/);
      assert.match(m, /There is no prebuilt engine for freebsd-x64: prebuilt engines exist for linux-x64-gnu, linux-x64-musl, linux-arm64-gnu, linux-arm64-musl, darwin-x64, darwin-arm64\./);
      assert.ok(m.includes(`${path.join(emptyRoot, "express_session_multicast.node")}: absent`), m);
      assert.match(m, /run on a supported platform: linux-x64-gnu/);
      assert.match(m, /install a Rust toolchain \(cargo, https:\/\/rustup\.rs\), then run `npm rebuild express-session-multicast`/);
      assert.doesNotMatch(m, /express-session-multicast-freebsd/, "no package is tried for a platform without one");
    });

    it("Linux on an unsupported arch: linux-<arch>-gnu|musl, from the detected libc", () => {
      const err = missing({ platform: "linux", arch: "riscv64", libc: "musl", root: emptyRoot, require: fakeRequire({}) });
      assert.equal(err.platform, "linux-riscv64-musl");
      assert.match(err.message, /for linux-riscv64-musl \(platform linux, arch riscv64, libc musl;/);
      assert.match(err.message, /There is no prebuilt engine for linux-riscv64-musl/);
    });

    it("a supported platform whose package is not installed: names the package and --omit=optional", () => {
      const err = missing({ platform: "linux", arch: "arm64", libc: "glibc", root: emptyRoot, require: fakeRequire({}) });
      assert.equal(err.platform, "linux-arm64-gnu");
      assert.match(err.message, new RegExp(`in the package ${PACKAGE}-linux-arm64-gnu@${VERSION.replace(/\./g, "\\.")}, an optional dependency`));
      assert.match(err.message, /- express-session-multicast-linux-arm64-gnu: not installed/);
      assert.match(err.message, /--omit=optional/);
      assert.match(err.message, /npm rebuild express-session-multicast/);
    });

    it("a platform package of another version is not loaded", () => {
      const id = `${PACKAGE}-darwin-x64`;
      const err = missing({ platform: "darwin", arch: "x64", root: emptyRoot, require: fakeRequire({ [id]: {}, [`${id}/package.json`]: { version: "9.9.9" } }) });
      assert.match(err.message, new RegExp(`${id}: version 9\\.9\\.9 is installed, ${PACKAGE} ${VERSION.replace(/\./g, "\\.")} needs exactly`));
    });

    it("a platform package whose engine does not load: its error is in the list", () => {
      const id = `${PACKAGE}-linux-x64-gnu`;
      const dlopen = new Error(`/x/${id}/express_session_multicast.linux-x64-gnu.node: /lib/libc.so.6: version \`GLIBC_2.99' not found`);
      const err = missing({ platform: "linux", arch: "x64", libc: "glibc", root: emptyRoot, require: fakeRequire({ [id]: dlopen, [`${id}/package.json`]: { version: VERSION } }) });
      assert.match(err.message, /- express-session-multicast-linux-x64-gnu: .*GLIBC_2\.99' not found/);
    });

    it("the store's constructor throws it (a child process whose package folder has no engine)", function () {
      // A copy of index.js and lib/ with nothing to load, and module resolution that finds no platform package.
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "esm-noengine-"));
      try {
        fs.cpSync(path.join(__dirname, "..", "lib"), path.join(dir, "lib"), { recursive: true });
        for (const f of ["index.js", "package.json"]) fs.copyFileSync(path.join(__dirname, "..", f), path.join(dir, f));
        const script = `
          const Store = require(${JSON.stringify(dir)})({ Store: class {} });
          try { new Store({ multicast: false }); console.log("constructed"); }
          catch (err) { console.log(JSON.stringify({ code: err.code, message: err.message })); }`;
        const r = spawnSync(process.execPath, ["-e", script], { cwd: dir, encoding: "utf8", env: { ...process.env, NODE_PATH: "" } });
        assert.equal(r.status, 0, r.stderr);
        const out = JSON.parse(r.stdout);
        assert.equal(out.code, "ERR_NATIVE_ENGINE_MISSING");
        assert.match(out.message, new RegExp(`for ${platformId()} `));
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  });
});
