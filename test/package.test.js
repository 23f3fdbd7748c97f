"use strict";
// The published shape, from source: `npm pack`, then a consumer's `npm install` of the main tarball
// alone (no devDependencies; --omit=optional, so no prebuilt engine, as on a platform without
// one) must build the engine with cargo, say so, and work with express-session.
// test/consumer.test.js installs it with its prebuilt engine instead, without cargo.
const assert = require("node:assert/strict");
const { execFileSync, spawnSync } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");

const root = path.resolve(__dirname, "..");

describe("the packed package", function () {
  // A cold build of the engine in its own target directory takes a few minutes on 2 cores.
  this.timeout(600_000);
  let consumer;

  before(function () {
    consumer = fs.mkdtempSync(path.join(os.tmpdir(), "esm-consumer-"));
  });

  after(function () {
    fs.rmSync(consumer, { recursive: true, force: true });
  });

  it("explains how to get a Rust toolchain when cargo is missing", function () {
    const env = { ...process.env, CARGO: path.join(consumer, "no-such-cargo") };
    const build = spawnSync(process.execPath, [path.join(root, "scripts", "build.js")], { env, encoding: "utf8" });
    assert.equal(build.status, 1);
    assert.match(build.stderr, /`cargo` was not found/);
    assert.match(build.stderr, /rustup/);
  });

  it("installs from its tarball and serves sessions to express-session", function () {
    const packed = JSON.parse(
      execFileSync("npm", ["pack", "--json", "--pack-destination", consumer], { cwd: root, encoding: "utf8" })
    )[0];
    const files = packed.files.map((f) => f.path);
    for (const needed of ["index.js", "index.d.ts", "lib/native.js", "scripts/build.js", "Cargo.lock", "src/lib.rs"]) {
      assert.ok(files.includes(needed), `${needed} is missing from the tarball`);
    }
    assert.ok(!files.some((f) => f.startsWith("test/") || f.startsWith("target/")), "tests or build output packed");
    assert.deepEqual(files.filter((f) => f.endsWith(".node") || f.startsWith("npm/") || f.startsWith("dist/") || f.startsWith(".tools/")), [], "an engine, platform packages or tools packed");
    const manifest = JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8"));
    for (const [name, range] of Object.entries(manifest.optionalDependencies)) {
      assert.match(name, /^express-session-multicast-(linux|darwin)-/);
      assert.equal(range, manifest.version, `${name} is not at the exact version ${manifest.version}`);
    }

    fs.writeFileSync(path.join(consumer, "package.json"), JSON.stringify({ name: "consumer", private: true }));
    // express-session comes from this checkout, so the install needs no registry for it; the
    // engine builds in a target directory of its own, kept between runs.
    const env = { ...process.env, CARGO_TARGET_DIR: path.join(root, "target", "packed") };
    const installed = execFileSync(
      "npm",
      ["install", "--no-audit", "--no-fund", "--omit=optional", "--foreground-scripts", path.join(consumer, packed.filename), path.join(root, "node_modules", "express-session")],
      { cwd: consumer, env, encoding: "utf8", stdio: "pipe" }
    );
    // The one line the install script says before it builds, with why.
    assert.match(installed, /express-session-multicast: building the native engine from source with cargo: no prebuilt engine for [a-z0-9]+-[a-z0-9]+(-gnu|-musl)? loads \(express-session-multicast-[^:]+: not installed\)\./);
    assert.ok(fs.existsSync(path.join(consumer, "node_modules", "express-session-multicast", "express_session_multicast.node")), "no local build");

    const script = `
      const session = require("express-session");
      const Store = require("express-session-multicast")(session);
      const store = new Store({ multicast: false });
      store.set("sid", { cookie: new session.Cookie({ maxAge: 60000 }), user: "ann" }, (err) => {
        if (err) throw err;
        store.get("sid", (err, sess) => {
          if (err) throw err;
          process.stdout.write(JSON.stringify({ user: sess.user, isStore: store instanceof session.Store }));
          store.close();
        });
      });`;
    const out = execFileSync(process.execPath, ["-e", script], { cwd: consumer, encoding: "utf8", timeout: 20_000 });
    assert.deepEqual(JSON.parse(out), { user: "ann", isStore: true });
  });
});
