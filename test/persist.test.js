"use strict";
// persist: snapshots of the sessions on disk (docs/persistence.md), tested as users run it: an
// Express app with express-session in a process of its own (test/fixtures/session-app.js), one
// node (multicast: false), stopped by SIGTERM or SIGKILL and started again on the same file;
// a crash between the write and the rename (a test hook) and a SIGKILL during a large snapshot;
// every kind of bad file, and a key rotated out; a full disk and a read-only directory (in a
// mount namespace of the test's own, with a tmpfs: skipped with the reason where that cannot be
// made); a node run as another user than root, every core busy (skipped where that cannot be
// done). Files live in a temporary directory per test. Loopback only.
const assert = require("node:assert/strict");
const crypto = require("node:crypto");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { spawnSync, spawn } = require("node:child_process");
const { setTimeout: sleep } = require("node:timers/promises");
const { createStore, closeStores, makeLogger, sessionData } = require("./helpers");
const { startApp, sidOfCookie } = require("./fixtures/session-app");
const { clusterOptions, startNode, stopAll, waitUntil } = require("./cluster/harness");

const HOUR = 3_600_000;

let dir = null;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "esm-persist-"));
});
afterEach(async () => {
  await closeStores();
  await stopAll();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** The options of a single node (no network) writing its snapshot to `file` every `interval` s. */
function single(file, interval = 60, extra = {}) {
  return { ipv4: "127.0.0.1", multicastTTL: 0, multicast: false, cluster: "persist-app", secret: "persist-app key", persist: { path: file, interval }, ...extra };
}

/** Logs `n` users in on `app`: [{ user, cookie, sid }]. */
async function login(app, prefix, n) {
  const users = [];
  for (let i = 0; i < n; i++) {
    const user = `${prefix}-${i}`;
    const r = await app.request("POST", `/login?user=${user}`);
    assert.equal(r.status, 200);
    users.push({ user, cookie: r.cookie, sid: sidOfCookie(r.cookie) });
  }
  return users;
}

const stored = async (app, sid) => (await app.request("GET", `/stored?sid=${encodeURIComponent(sid)}`)).body.session;
const status = async (app) => (await app.request("GET", "/status")).body.stats;

/** Runs a fixture process to its end (skipped with the printed reason `why`, when set): its last JSON line. */
async function fixtureResult(test, why, command, args, options = {}) {
  if (why) {
    console.log(`      skipped: ${why}`);
    test.skip();
  }
  const child = spawn(command, args, { ...options, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => (err += d));
  const code = await new Promise((resolve) => child.once("exit", resolve));
  assert.equal(code, 0, `child: ${err}`);
  return JSON.parse(out.trim().split("\n").pop());
}

async function stop(app, signal) {
  app.agent.destroy();
  app.child.kill(signal);
  return app.exited;
}

describe("persist", function () {
  this.timeout(120_000);

  describe("a single node behind Express, restarted", () => {
    it("SIGTERM: every session is back after the restart, with its data and its expiry", async () => {
      const file = path.join(dir, "app.snap");
      const app = await startApp("A", single(file));
      const users = await login(app, "term", 50);
      const before = {};
      for (const u of users) before[u.sid] = await stored(app, u.sid);
      assert.equal(Object.values(before).filter(Boolean).length, 50);
      const exit = await stop(app, "SIGTERM");
      assert.equal(exit.signal, "SIGTERM", "the store writes its snapshot, then the signal ends the process");
      assert.ok(fs.existsSync(file), "a snapshot was written at shutdown");

      const again = await startApp("A2", single(file));
      try {
        for (const u of users) {
          assert.deepEqual(await stored(again, u.sid), before[u.sid], `${u.user}: the stored session, cookie expiry included`);
          const me = await again.request("GET", "/me", u.cookie);
          assert.equal(me.body.user, u.user, `${u.user} is still logged in`);
          assert.ok(!me.cookie || sidOfCookie(me.cookie) === u.sid, `${u.user}: no new session`);
        }
        const stats = await status(again);
        assert.equal(stats.snapshotLoadedSessions, 50);
        assert.equal(stats.snapshotsRejected, 0);
      } finally {
        await stop(again, "SIGKILL");
      }
    });

    it("SIGKILL: what the last interval snapshot held is back, and nothing written after it", async () => {
      const file = path.join(dir, "app.snap");
      const app = await startApp("A", single(file, 1));
      const kept = await login(app, "kept", 30);
      const lastWrite = Date.now();
      // The first snapshot that began after those writes.
      const snap = await waitUntil(async () => {
        const s = await status(app);
        return s.lastSnapshotAt > lastWrite && s.snapshotsWritten > 0 && s;
      }, 10_000, { intervalMs: 10, what: "a snapshot after the writes" });
      const lost = await login(app, "after", 3);
      const killedAt = Date.now();
      assert.equal((await stop(app, "SIGKILL")).signal, "SIGKILL");
      assert.equal(snap.lastSnapshotSessions, 30);

      const again = await startApp("A2", single(file, 1));
      try {
        for (const u of kept) assert.equal((await again.request("GET", "/me", u.cookie)).body.user, u.user, `${u.user}, in the snapshot`);
        // The next snapshot was due a second after the last one began: if the kill came before, the
        // writes after it are gone (the RPO of interval).
        if (killedAt < snap.lastSnapshotAt + 900) {
          for (const u of lost) assert.equal(await stored(again, u.sid), null, `${u.user} was written after the last snapshot`);
        }
        assert.equal((await status(again)).snapshotLoadedSessions, 30);
      } finally {
        await stop(again, "SIGKILL");
      }
    });
  });

  describe("touchAfter", () => {
    it("an expiry a touch extended on this node only is in the snapshot: after a restart the session lives until then", async () => {
      const file = path.join(dir, "touch.snap");
      const options = single(file, 60, { touchAfter: 2 });
      const t0 = Date.now();
      const a = createStore(options);
      await a.set("sid", sessionData({ user: "alice" }, { expiresAt: t0 + 4_000, maxAge: 4_000 }));
      // Moves the expiry 1 s on: less than touchAfter, so it is kept on this node only.
      await a.touch("sid", sessionData({ user: "alice" }, { expiresAt: t0 + 5_000, maxAge: 4_000 }));
      assert.equal(a.stats().localTouches, 1);
      await a.close();
      const b = createStore(options);
      assert.equal(b.stats().snapshotLoadedSessions, 1);
      await sleep(Math.max(0, t0 + 4_400 - Date.now()));
      if (Date.now() < t0 + 4_900) assert.equal((await b.get("sid"))?.user, "alice", "the restarted node dropped the session at its replicated expiry");
      await sleep(Math.max(0, t0 + 5_100 - Date.now()));
      assert.equal(await b.get("sid"), null, "expired at the extended expiry");
    });
  });

  describe("several processes on one file (the workers of one host)", () => {
    it("the first to start writes it, the other does not; it takes over when the first is killed, and its snapshot loads", async () => {
      const file = path.join(dir, "app.snap");
      const options = clusterOptions({ secret: "one file key", persist: { path: file, interval: 1 } });
      const a = await startApp("A", options);
      const b = await startApp("B", options);
      try {
        await waitUntil(async () => (await status(a)).members === 2 && (await status(b)).members === 2, 10_000, { what: "A and B see each other" });
        const first = await login(a, "first", 20);
        await waitUntil(async () => (await status(a)).snapshotsWritten > 0 && (await status(b)).sessions === 20, 10_000, { what: "A's snapshot" });
        await sleep(2_500); // two more intervals: B's table changed too, and B writes nothing
        assert.equal((await status(b)).snapshotsWritten, 0, "B does not write the file A holds");
        assert.equal((await stop(a, "SIGKILL")).signal, "SIGKILL");
        const second = await login(b, "second", 10);
        await waitUntil(async () => (await status(b)).lastSnapshotSessions === 30, 10_000, { what: "B's snapshot after A died" });
        await stop(b, "SIGKILL");
        const again = await startApp("C", { ...options, multicast: false });
        try {
          for (const u of [...first, ...second]) assert.equal((await again.request("GET", "/me", u.cookie)).body.user, u.user, u.user);
        } finally {
          await stop(again, "SIGKILL");
        }
      } finally {
        for (const app of [a, b]) if (app.child.exitCode === null && app.child.signalCode === null) await stop(app, "SIGKILL");
      }
    });
  });

  describe("a crash during a snapshot leaves the previous one", () => {
    it("stopped between the write and the rename (test hook), then SIGKILL: the previous snapshot loads", async () => {
      const file = path.join(dir, "app.snap");
      const first = await startApp("A", single(file, 1));
      const before = await login(first, "before", 20);
      await stop(first, "SIGTERM");
      const previous = fs.readFileSync(file);

      const marker = path.join(dir, "paused");
      const crashing = await startApp("A2", single(file, 1), { env: { EXPRESS_SESSION_MULTICAST_TEST_PAUSE_BEFORE_RENAME: marker } });
      const during = await login(crashing, "during", 20);
      await waitUntil(() => fs.existsSync(marker), 10_000, { what: "the snapshot paused before its rename" });
      const spare = `${file}.prev`;
      assert.ok(fs.statSync(spare).size > previous.length, "the new snapshot is complete in the spare file (<path>.prev)");
      assert.deepEqual(fs.readFileSync(file), previous, "the previous snapshot is untouched until the rename");
      await stop(crashing, "SIGKILL");

      const again = await startApp("A3", single(file, 1));
      try {
        for (const u of before) assert.equal((await again.request("GET", "/me", u.cookie)).body.user, u.user);
        for (const u of during) assert.equal(await stored(again, u.sid), null, `${u.user} was only in the unfinished snapshot`);
        const stats = await status(again);
        assert.deepEqual([stats.snapshotLoadedSessions, stats.snapshotsRejected], [20, 0]);
      } finally {
        await stop(again, "SIGKILL");
      }
    });

    it("SIGKILL in the middle of a large snapshot: the previous snapshot loads, whole", async () => {
      const file = path.join(dir, "big.snap");
      const options = single(file, 2);
      let node = await startNode(options, { name: "big" });
      await node.call("bulkSet", "first-", 1_000, 500);
      await waitUntil(async () => (await node.call("stats")).lastSnapshotSessions === 1_000, 10_000, { what: "a snapshot of the first 1,000" });
      // 150,000 sessions of 1 KB more: the next snapshot takes a while to write.
      for (let i = 0; i < 3; i++) await node.call("bulkSet", `bulk${i}-`, 50_000, 1_000);
      const spare = `${file}.prev`;
      let last = null;
      await waitUntil(async () => {
        if (fs.existsSync(spare) && last) return true;
        last = await node.call("stats");
        return false;
      }, 15_000, { intervalMs: 1, what: "a snapshot in progress" });
      const spareSize = fs.statSync(spare).size;
      await node.kill("SIGKILL");
      assert.ok(fs.existsSync(spare), "killed while the spare file was being written");

      node = await startNode(options, { name: "big2" });
      const stats = await node.call("stats");
      assert.equal(stats.snapshotsRejected, 0);
      assert.equal(stats.snapshotLoadedSessions, last.lastSnapshotSessions, `the last complete snapshot (the unfinished one had ${spareSize} bytes)`);
      assert.equal(await node.call("length"), last.lastSnapshotSessions);
      assert.ok(await node.call("get", "first-999"));
    });
  });

  describe("bad files are set aside, and the node starts without them", () => {
    /** Writes a snapshot of `n` sessions to `file` with `options` (through close()). */
    async function snapshotOf(file, n, options = {}) {
      const store = createStore({ multicast: false, cluster: "bad-files", persist: file, ...options });
      for (let i = 0; i < n; i++) await store.set(`s${i}`, sessionData({ i }, { expiresAt: Date.now() + HOUR }));
      await store.close();
      return fs.readFileSync(file);
    }

    /** Starts a store on `file` holding `bytes`; resolves with its error event, stats and what is in the directory. */
    async function startOn(file, bytes, options = {}) {
      if (bytes !== null) fs.writeFileSync(file, bytes);
      const logger = makeLogger();
      const store = createStore({ multicast: false, cluster: "bad-files", persist: file, logger, ...options });
      const errors = [];
      store.on("error", (e) => errors.push(e));
      await waitUntil(() => errors.length > 0, 3_000, { what: "an error event" });
      await store.set("serves", sessionData({ ok: true }));
      return { store, error: errors[0], stats: store.stats(), served: await store.get("serves"), names: fs.readdirSync(path.dirname(file)), logger };
    }

    it("truncated, corrupted, of another cluster, of a later format, not a snapshot, unreadable, sealed with an unknown key, plaintext under a secret", async () => {
      const file = path.join(dir, "s.snap");
      const plain = await snapshotOf(path.join(dir, "plain.snap"), 200);
      const sealed = await snapshotOf(path.join(dir, "sealed.snap"), 200, { secret: "key-1" });
      const flip = (bytes, at) => {
        const copy = Buffer.from(bytes);
        copy[at] ^= 0x04;
        return copy;
      };
      const future = Buffer.from(plain);
      future.writeUInt16BE(9, 8);
      const cases = [
        ["truncated", plain.subarray(0, plain.length - 30), {}, /\(truncated\)/],
        ["cut in the header", plain.subarray(0, 12), {}, /\(truncated\)/],
        ["corrupted", flip(plain, plain.length >> 1), {}, /\(corrupted\): corrupted: frame checksum/],
        ["corrupted, sealed", flip(sealed, sealed.length >> 1), { secret: "key-1" }, /\(corrupted\).*authentication tag/],
        ["of another cluster", plain, { cluster: "another" }, /\(foreignCluster\): a snapshot of another cluster \("bad-files"\)/],
        ["of a later format", future, {}, /\(futureFormat\): written in snapshot format 9/],
        ["not a snapshot", Buffer.from('{"sessions":{}}'), {}, /\(notASnapshot\)/],
        ["sealed with a wrong key", sealed, { secret: "key-2" }, /\(unknownKey\): sealed with a key that is not in the key ring/],
        ["sealed, and no secret here", sealed, {}, /\(sealed\)/],
        ["plaintext, and a secret here", plain, { secret: "key-1" }, /\(unsealed\)/],
      ];
      for (const [what, bytes, options, reason] of cases) {
        const { store, error, stats, served, names } = await startOn(file, bytes, options);
        assert.equal(error.code, "ERR_SNAPSHOT_REJECTED", what);
        assert.match(error.message, reason, what);
        assert.equal(stats.snapshotsRejected, 1, what);
        assert.equal(stats.sessions, 1, `${what}: nothing of the bad file was loaded`);
        assert.ok(served, `${what}: the store serves`);
        const aside = names.filter((n) => n.startsWith("s.snap.rejected-"));
        assert.equal(aside.length, 1, `${what}: ${names}`);
        assert.ok(error.message.includes(path.join(dir, aside[0])), `${what}: the message says where the file went`);
        assert.deepEqual(fs.readFileSync(path.join(dir, aside[0])), Buffer.from(bytes), `${what}: moved aside, not changed`);
        fs.rmSync(path.join(dir, aside[0]));
        await store.close(); // writes a snapshot of its one session: the next case replaces it
      }
      // Unreadable: a directory where the file should be.
      fs.rmSync(file, { force: true });
      fs.mkdirSync(file);
      const { error } = await startOn(file, null);
      assert.match(error.message, /\(unreadable\)/);
    });

    it("a snapshot sealed with a key that was rotated out is rejected; with the old key still in the ring it loads, and the next one is sealed with the new key", async () => {
      const file = path.join(dir, "s.snap");
      const [oldKey, newKey] = [crypto.randomBytes(32), crypto.randomBytes(32)];
      const sealedWithOld = await snapshotOf(file, 100, { secret: oldKey });
      assert.ok(!sealedWithOld.includes(Buffer.from('"cookie"')), "sealed: no session JSON in the file");

      const rotating = createStore({ multicast: false, cluster: "bad-files", persist: file, secret: [newKey, oldKey] });
      assert.equal(await rotating.length(), 100, "the ring opens the old key's snapshot");
      await rotating.set("after-rotation", sessionData({}));
      await rotating.close();
      const sealedWithNew = fs.readFileSync(file);

      const newOnly = createStore({ multicast: false, cluster: "bad-files", persist: file, secret: newKey });
      assert.equal(await newOnly.length(), 101, "the new key alone opens the next snapshot");
      await newOnly.close();

      const { error, stats } = await startOn(file, sealedWithOld, { secret: newKey });
      assert.equal(error.code, "ERR_SNAPSHOT_REJECTED");
      assert.match(error.message, /\(unknownKey\)/);
      assert.equal(stats.sessions, 1);
      assert.notDeepEqual(sealedWithNew, sealedWithOld);
    });

    it("the file is mode 0600, and without secret the start log says it is plaintext", async () => {
      const file = path.join(dir, "s.snap");
      await snapshotOf(file, 3);
      assert.equal(fs.statSync(file).mode & 0o777, 0o600);
      const logger = makeLogger();
      const store = createStore({ multicast: false, cluster: "bad-files", persist: file, logger });
      assert.equal(await store.length(), 3);
      await waitUntil(() => logger.records.some((r) => r.level === "warn" && /plaintext/.test(r.args[0])), 2_000, { what: "the plaintext warning" });
      const sealedLogger = makeLogger();
      createStore({ multicast: false, cluster: "sealed", persist: path.join(dir, "sealed.snap"), logger: sealedLogger, secret: "k" });
      await sleep(200);
      assert.ok(!sealedLogger.records.some((r) => /plaintext/.test(r.args[0])), "no such warning with a secret");
    });
  });

  describe("a snapshot that cannot be written", () => {
    // A tmpfs of 1 MiB in a mount namespace of this test's own: full after a few hundred
    // sessions, then remounted read-only. Needs root and unshare(1).
    function canMount() {
      if (process.getuid && process.getuid() !== 0) return "not root";
      const probe = spawnSync("unshare", ["--mount", "--propagation", "private", "sh", "-c", `mount -t tmpfs -o size=64k tmpfs ${dir} && umount ${dir}`], { encoding: "utf8" });
      if (probe.error) return `unshare: ${probe.error.message}`;
      if (probe.status !== 0) return `cannot mount a tmpfs in a new mount namespace: ${probe.stderr.trim()}`;
      return null;
    }

    it("full disk, then a read-only directory: a logged, coded error, counted; the store serves on, the previous snapshot stays", async function () {
      const script = path.join(__dirname, "fixtures", "persist-disk.js");
      const mountThenRun = ["--mount", "--propagation", "private", "sh", "-c", `mount -t tmpfs -o size=1m tmpfs "$1" && exec "$2" "$3" "$1"`, "sh", dir, process.execPath, script];
      const r = await fixtureResult(this, canMount(), "unshare", mountThenRun);
      assert.equal(r.full.error.code, "ERR_SNAPSHOT_FAILED");
      assert.match(r.full.error.message, /No space left on device/);
      assert.ok(r.full.stats.snapshotFailures >= 1 && r.full.stats.snapshotsWritten === 1, JSON.stringify(r.full.stats));
      assert.ok(r.full.served, "the store serves while its snapshots fail");
      assert.equal(r.full.previous, 20, "the previous snapshot is whole: it loads with its 20 sessions");
      assert.equal(r.full.tmpLeft, false, "the unfinished spare file is removed");
      assert.equal(r.readOnly.error.code, "ERR_SNAPSHOT_FAILED");
      assert.match(r.readOnly.error.message, /Read-only file system/);
      assert.ok(r.readOnly.served);
      assert.equal(r.readOnly.previous, 20);
    });
  });

  describe("every core busy, in a process not run by root", () => {
    // A periodic snapshot runs as SCHED_IDLE (3/1027 of a busy core): starved, it is written
    // again at nice 10 (docs/persistence.md "Writing a snapshot"), as a process not run by root
    // cannot leave SCHED_IDLE. Here the node runs as the user nobody, next to one spinning
    // process per core. Needs root, to start a process as another user.
    const NOBODY = 65534;
    const SESSIONS = 200_000; // about 0.25 s of a snapshot's CPU: over a minute at SCHED_IDLE's share

    function canRunAsNobody() {
      if (process.getuid && process.getuid() !== 0) return "not root: cannot start a process as another user";
      const probe = spawnSync(process.execPath, ["-e", `require(${JSON.stringify(path.join(__dirname, ".."))})`], { uid: NOBODY, gid: NOBODY, encoding: "utf8" });
      if (probe.error) return `cannot start a process as uid ${NOBODY}: ${probe.error.message}`;
      if (probe.status !== 0) return `uid ${NOBODY} cannot load the package from here: ${probe.stderr.trim().split("\n")[0]}`;
      return null;
    }

    it("a periodic snapshot is still written: the starved attempt is written again at nice 10", async function () {
      const why = canRunAsNobody();
      if (!why) fs.chownSync(dir, NOBODY, NOBODY);
      const file = path.join(dir, "busy.snap");
      const spinners = why ? [] : Array.from({ length: os.availableParallelism() }, () => spawn(process.execPath, ["-e", "for (;;) {}"], { stdio: "ignore" }));
      try {
        const script = path.join(__dirname, "fixtures", "persist-busy.js");
        const r = await fixtureResult(this, why, process.execPath, [script, file, String(SESSIONS)], { uid: NOBODY, gid: NOBODY, env: { ...process.env, WAIT_MS: "60000" } });
        assert.equal(r.uid, NOBODY);
        const starved = r.logs.filter((l) => /got too little CPU time .* written again at nice 10/.test(l));
        assert.equal(r.lastSnapshotSessions, SESSIONS, `a snapshot of every session within 60 s of the writes (${r.ms} ms): ${JSON.stringify(r.logs)}`);
        assert.ok(starved.length > 0, `the cores were busy enough to starve a snapshot: ${JSON.stringify(r.logs)}`);
      } finally {
        for (const spinner of spinners) spinner.kill("SIGKILL");
      }
    });
  });
});
