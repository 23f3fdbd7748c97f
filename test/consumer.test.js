"use strict";
// A consumer's install of the published shape, on a machine without Rust: the main package and this
// platform's engine package, packed by `npm run prebuilt` (dist/), served by a registry on
// 127.0.0.1 (test/fixtures/registry.js) next to the other platforms' manifests, installed by name
// with express and express-session into a fresh folder, with `cargo` and `rustc` absent from PATH,
// three ways: npm, npm --ignore-scripts, pnpm 10 (which skips dependencies' build scripts). Each
// time: no compilation (no target/, no local build, the install script silent and quick), the
// engine comes from the platform package, and two Node processes of a small Express app
// (test/fixtures/consumer-app.js) share a session over loopback: login on one, read on the other.
//
// The tarballs: EXPRESS_SESSION_MULTICAST_DIST=<folder> uses the ones there (the release workflow's
// test jobs, scripts/test-prebuilt.sh, which also set EXPRESS_SESSION_MULTICAST_EXPECT_PLATFORM);
// otherwise this runs `npm run prebuilt` (incremental: seconds when the engine is
// built) when cargo-zigbuild and zig are there (scripts/install-prebuilt-tools.sh, run by .ci/run),
// and skips with the reason printed when they are not.
const assert = require("node:assert/strict");
const crypto = require("node:crypto");
const { execFileSync, spawn, spawnSync, fork } = require("node:child_process");
const fs = require("node:fs");
const http = require("node:http");
const os = require("node:os");
const path = require("node:path");
const { setTimeout: sleep } = require("node:timers/promises");
const { platformId, PLATFORMS, PACKAGE } = require("../lib/native");
const { findZigTools, toolEnv } = require("../scripts/prebuilt");
const { startRegistry, manifestOfTarball } = require("./fixtures/registry");

const root = path.resolve(__dirname, "..");
const PNPM = "pnpm@10.34.9";
const { version, devDependencies } = require("../package.json");

/** A PATH without cargo and rustc: node, npm and npx linked into a folder of their own, then PATH's folders that hold neither. */
function pathWithoutRust(binDir) {
  const which = (cmd) => execFileSync("sh", ["-c", `command -v ${cmd}`], { encoding: "utf8" }).trim();
  fs.symlinkSync(process.execPath, path.join(binDir, "node"));
  for (const cmd of ["npm", "npx"]) fs.symlinkSync(fs.realpathSync(which(cmd)), path.join(binDir, cmd));
  const rusty = (dir) => ["cargo", "rustc"].some((cmd) => fs.existsSync(path.join(dir, cmd)));
  return [binDir, ...(process.env.PATH || "").split(path.delimiter).filter((dir) => dir && !rusty(dir))].join(path.delimiter);
}

/** A user's shell environment: no npm_* variables of the `npm test` around this, no Rust on PATH. */
function consumerEnv(PATH) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (/^npm_/i.test(k) || /^(CARGO|RUSTC|RUSTUP_TOOLCHAIN|RUSTFLAGS|CARGO_.*)$/.test(k)) continue;
    env[k] = v;
  }
  env.PATH = PATH;
  return env;
}

/** spawn, resolved with { status, signal, stdout, stderr, error }: the registry answers from this process, so no spawnSync. */
function run(cmd, args, options) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { ...options, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), options.timeout || 240_000);
    child.on("error", (error) => resolve({ status: null, error, stdout, stderr }));
    child.on("close", (status, signal) => {
      clearTimeout(timer);
      resolve({ status, signal, stdout, stderr });
    });
  });
}

function get(port, p, cookie, method = "GET") {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port, method, path: p, headers: cookie ? { cookie } : {} }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d) => (body += d));
      res.on("end", () => {
        const set = (res.headers["set-cookie"] || []).find((c) => c.startsWith("connect.sid="));
        resolve({ status: res.statusCode, body: JSON.parse(body), cookie: set ? set.split(";")[0] : null });
      });
    });
    req.on("error", reject);
    req.end();
  });
}

function startApp(dir, env, options) {
  const child = fork(path.join(dir, "app.js"), [JSON.stringify(options)], { cwd: dir, env, stdio: ["ignore", "pipe", "pipe", "ipc"] });
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  return new Promise((resolve, reject) => {
    const fail = (err) => {
      child.kill("SIGKILL");
      reject(new Error(`${err.message}\n${stderr}`));
    };
    const timer = setTimeout(() => fail(new Error("the app did not start within 15 s")), 15_000);
    child.once("exit", (code, signal) => fail(new Error(`the app exited before listening (${signal || code})`)));
    let out = "";
    child.stdout.on("data", (d) => {
      out += d;
      const line = out.split("\n").find((l) => l.startsWith('{"port":'));
      if (!line) return;
      clearTimeout(timer);
      resolve({ child, ...JSON.parse(line) });
    });
  });
}

async function stopApp(app) {
  if (!app || app.child.exitCode !== null || app.child.signalCode !== null) return;
  const exited = new Promise((resolve) => app.child.once("exit", resolve));
  const timer = setTimeout(() => app.child.kill("SIGKILL"), 3_000);
  app.child.disconnect();
  await exited;
  clearTimeout(timer);
}

describe("a consumer's install from the packed tarballs, without cargo or rustc", function () {
  this.timeout(300_000);
  const platform = platformId();
  let dist, mainTgz, platformTgz, work, env, registry;

  before(async function () {
    this.timeout(1_200_000); // a cold `npm run prebuilt` takes a few minutes on 2 cores
    const skip = (why) => {
      console.log(`    skipping the consumer installs: ${why}`);
      this.skip();
    };
    // The release workflow's test jobs say which platform they test: no skip there.
    const expected = process.env.EXPRESS_SESSION_MULTICAST_EXPECT_PLATFORM;
    if (expected) assert.equal(platform, expected, `this machine is ${platform}, the job tests ${expected}`);
    if (!PLATFORMS.includes(platform)) return skip(`no prebuilt engine is made for ${platform}`);
    if (process.env.EXPRESS_SESSION_MULTICAST_DIST) {
      dist = path.resolve(process.env.EXPRESS_SESSION_MULTICAST_DIST);
    } else {
      const tools = findZigTools();
      if (!tools.ok && platform.startsWith("linux-")) {
        return skip(`\`npm run prebuilt\` cannot make the tarballs: missing ${tools.missing.join(", ")} (bash scripts/install-prebuilt-tools.sh installs them)`);
      }
      const started = Date.now();
      const r = spawnSync(process.execPath, [path.join(root, "scripts", "prebuilt.js"), "--target", platform], { cwd: root, env: toolEnv(), encoding: "utf8" });
      if (r.status !== 0) throw new Error(`npm run prebuilt failed:\n${r.stdout}\n${r.stderr}`);
      console.log(`    npm run prebuilt: ${((Date.now() - started) / 1000).toFixed(1)} s; ${r.stdout.split("\n").find((l) => l.includes("highest glibc")) || ""}`);
      dist = path.join(root, "dist");
    }
    mainTgz = path.join(dist, `${PACKAGE}-${version}.tgz`);
    platformTgz = path.join(dist, `${PACKAGE}-${platform}-${version}.tgz`);
    for (const f of [mainTgz, platformTgz]) assert.ok(fs.existsSync(f), `${f} is missing`);

    work = fs.mkdtempSync(path.join(os.tmpdir(), "esm-consumer-"));
    fs.mkdirSync(path.join(work, "bin"));
    env = consumerEnv(pathWithoutRust(path.join(work, "bin")));
    for (const cmd of ["cargo", "rustc"]) {
      const r = spawnSync(cmd, ["--version"], { env });
      assert.equal(r.error && r.error.code, "ENOENT", `${cmd} is still on the consumer's PATH`);
    }

    const upstream = execFileSync("npm", ["config", "get", "registry"], { encoding: "utf8" }).trim();
    const packages = [{ manifest: manifestOfTarball(mainTgz), tarball: mainTgz }, { manifest: manifestOfTarball(platformTgz), tarball: platformTgz }];
    for (const p of PLATFORMS.filter((p) => p !== platform)) packages.push({ manifest: JSON.parse(fs.readFileSync(path.join(root, "npm", p, "package.json"), "utf8")) });
    registry = await startRegistry({ packages, upstream });
  });

  after(async function () {
    if (registry) await registry.close();
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  /** Installs into a fresh folder with `command`; checks the install and the two-node session. */
  async function installAndRun(name, command, { scriptRuns }) {
    const dir = path.join(work, name);
    fs.mkdirSync(dir);
    fs.writeFileSync(
      path.join(dir, "package.json"),
      JSON.stringify({ name: `consumer-${name}`, private: true, dependencies: { [PACKAGE]: version, express: devDependencies.express, "express-session": devDependencies["express-session"] } })
    );
    fs.copyFileSync(path.join(__dirname, "fixtures", "consumer-app.js"), path.join(dir, "app.js"));

    const before = registry.requests.length;
    const started = process.hrtime.bigint();
    const r = await run(command[0], command.slice(1), { cwd: dir, env, timeout: 240_000 });
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    assert.equal(r.status, 0, `${command.join(" ")} failed (${r.error || r.signal || r.status}):\n${r.stdout}\n${r.stderr}`);
    console.log(`      ${name}: installed in ${seconds.toFixed(1)} s`);

    // Of the platform packages, this platform's alone was installed, and no other's tarball was asked for.
    const nm = path.join(dir, "node_modules");
    const installed = new Set(fs.readdirSync(nm).filter((n) => n.startsWith(`${PACKAGE}-`)));
    if (fs.existsSync(path.join(nm, ".pnpm"))) {
      for (const n of fs.readdirSync(path.join(nm, ".pnpm"))) if (n.startsWith(`${PACKAGE}-`)) installed.add(n.replace(/@[^@]*$/, ""));
    }
    assert.deepEqual([...installed], [`${PACKAGE}-${platform}`], "platform packages installed");
    const others = registry.requests.slice(before).filter((q) => q.url.includes("/-/") && PLATFORMS.some((p) => p !== platform && q.url.includes(`/${PACKAGE}-${p}-`)));
    assert.deepEqual(others, [], "another platform's tarball was asked for");

    // No compilation: no target/, no local build, and the install script (had it run) does nothing, quickly.
    const pkgDir = fs.realpathSync(path.join(dir, "node_modules", PACKAGE));
    assert.ok(!fs.existsSync(path.join(pkgDir, "target")), "a target/ folder appeared: the install compiled the engine");
    assert.ok(!fs.existsSync(path.join(pkgDir, "express_session_multicast.node")), "a local build of the engine appeared");
    assert.doesNotMatch(r.stdout + r.stderr, /building the native engine from source/);
    // Whether the package manager ran the install script (npm --foreground-scripts prints its banner).
    const banner = new RegExp(`> ${PACKAGE}@${version.replace(/\./g, "\\.")} install\\n> node scripts/build\\.js\\n`);
    if (scriptRuns) assert.match(r.stdout, banner, "npm did not run the install script");
    else assert.doesNotMatch(r.stdout, /node scripts\/build\.js/, "the install script ran");
    for (const line of (r.stdout + r.stderr).split("\n")) if (/build scripts/i.test(line)) console.log(`      ${name} says: ${line.trim()}`);
    const t0 = process.hrtime.bigint();
    const script = spawnSync(process.execPath, [path.join(pkgDir, "scripts", "build.js")], { cwd: pkgDir, env, encoding: "utf8" });
    const scriptMs = Number(process.hrtime.bigint() - t0) / 1e6;
    assert.equal(script.status, 0, script.stderr);
    assert.equal(script.stdout + script.stderr, "", "the install script said something with a prebuilt engine there");
    assert.ok(scriptMs < 1_000, `the install script took ${scriptMs.toFixed(0)} ms with a prebuilt engine`);
    console.log(`      the install script with the prebuilt engine: ${scriptMs.toFixed(0)} ms, silent`);

    // Two nodes of an Express app share a session over loopback.
    const options = {
      ipv4: "127.0.0.1",
      multicastTTL: 0,
      cluster: `consumer-${name}-${process.pid}-${crypto.randomBytes(4).toString("hex")}`,
      multicastPort: 20_000 + crypto.randomInt(40_000),
      secret: crypto.randomBytes(16).toString("hex"),
      waitForAck: true,
    };
    let a, b;
    try {
      a = await startApp(dir, env, options);
      b = await startApp(dir, env, options);
      for (const app of [a, b]) {
        assert.equal(app.engines.length, 1, `engines loaded: ${app.engines}`);
        assert.ok(
          app.engines[0].includes(`${path.sep}${PACKAGE}-${platform}${path.sep}`) && app.engines[0].endsWith(`express_session_multicast.${platform}.node`),
          `the engine came from ${app.engines[0]}, not the platform package`
        );
      }
      const deadline = Date.now() + 10_000;
      for (const app of [a, b]) {
        while ((await get(app.port, "/status")).body.alive < 2) {
          assert.ok(Date.now() < deadline, "the two apps do not see each other");
          await sleep(50);
        }
      }
      const login = await get(a.port, "/login?user=ann", null, "POST");
      assert.equal(login.status, 200);
      assert.ok(login.cookie, "no session cookie from the login");
      let me;
      for (const until = Date.now() + 5_000; ; await sleep(20)) {
        me = await get(b.port, "/me", login.cookie);
        if (me.body.user === "ann" || Date.now() > until) break;
      }
      assert.deepEqual(me.body, { user: "ann" }, "B does not see the session A made");
      assert.deepEqual((await get(b.port, "/me", null)).body, { user: null });
    } finally {
      await Promise.all([stopApp(a), stopApp(b)]);
    }
  }

  it("npm install: the install script finds the prebuilt engine and does nothing", async function () {
    await installAndRun("npm", ["npm", "install", "--registry", registry.url, "--no-audit", "--no-fund", "--foreground-scripts"], { scriptRuns: true });
  });

  it("npm install --ignore-scripts", async function () {
    await installAndRun("npm-ignore-scripts", ["npm", "install", "--registry", registry.url, "--no-audit", "--no-fund", "--foreground-scripts", "--ignore-scripts"], { scriptRuns: false });
  });

  it(`pnpm install (${PNPM}: dependencies' build scripts are skipped by default)`, async function () {
    // pnpm itself comes from the npm registry, outside the timed install.
    const probe = spawnSync("npm", ["exec", "--yes", `--package=${PNPM}`, "--", "pnpm", "--version"], { cwd: work, env, encoding: "utf8", timeout: 120_000 });
    assert.equal(probe.status, 0, `${PNPM} could not be had from the npm registry:\n${probe.stderr}`);
    await installAndRun("pnpm", ["npm", "exec", "--yes", `--package=${PNPM}`, "--", "pnpm", "install", "--registry", registry.url, "--no-frozen-lockfile", "--reporter=append-only"], { scriptRuns: false });
  });
});
