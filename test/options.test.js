"use strict";
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const {
  MulticastStore,
  SAFE_OPTIONS,
  uniqueCluster,
  makeLogger,
  createStore,
  closeStores,
  sessionData,
  sleepUntil,
  assertBefore,
  assertTypeErrorNaming,
} = require("./helpers");
const { loadEngine } = require("../lib/native");
const { declarations, dtsInterface, docTable, codeNames } = require("./declarations");

// Options that are valid and send nothing anywhere: a bad option is added on top of these.
const QUIET = Object.freeze({ ...SAFE_OPTIONS, multicast: false, logger: makeLogger() });

/** Asserts that constructing with QUIET + `bad` throws a TypeError naming `option`. */
function rejects(option, bad) {
  const options = { ...QUIET, ...bad };
  const label = `${option} with ${describeValue(bad)}`;
  assertTypeErrorNaming(() => {
    const store = new MulticastStore(options);
    store.close(); // accepted by mistake: release it before failing
  }, option, label);
}

function describeValue(value) {
  return JSON.stringify(value, (_, v) => (v && v.type === "Buffer" ? `<Buffer ${v.data.length} bytes>` : v));
}

// For each option, values it must refuse (and an unknown option, multicastTtl).
const CASES = {
  use: [{ use: "v5" }, { use: 4 }],
  multicast: [{ multicast: "10.0.0.1", ipv4: "127.0.0.1" }, { multicast: 42 }, { multicast: "not-an-address" }],
  multicastPort: [{ multicastPort: 70000 }, { multicastPort: 0 }, { multicastPort: "4000" }, { multicastPort: 4000.5 }],
  ipv4: [{ ipv4: "not-an-ip" }, { ipv4: "::1" }],
  ipv6: [{ ipv6: "1.2.3.4" }, { use: "v6", ipv6: "1.2.3.4" }],
  multicastTTL: [{ multicastTTL: 256 }, { multicastTTL: -1 }],
  useSessionTTL: [{ useSessionTTL: "yes" }],
  sessionTTL: [{ sessionTTL: 0 }, { sessionTTL: -5 }, { sessionTTL: "10" }],
  ttl: [{ ttl: 0 }, { ttl: -1 }, { ttl: "1h" }, { ttl: Infinity }],
  disableTouch: [{ disableTouch: "yes" }, { disableTouch: 1 }],
  touchAfter: [{ touchAfter: -1 }, { touchAfter: "60" }],
  waitForAck: [{ waitForAck: "yes" }, { waitForAck: 1 }],
  ackTimeout: [{ ackTimeout: 0 }, { ackTimeout: 1.5 }, { ackTimeout: 60_001 }],
  serializer: [{ serializer: {} }, { serializer: { stringify: JSON.stringify } }, { serializer: "json" }],
  gracefullShutdown: [{ gracefullShutdown: "no" }],
  gracefulShutdown: [{ gracefullShutdown: true, gracefulShutdown: false }, { gracefulShutdown: "no" }],
  logger: [{ logger: {} }, { logger: "console" }, { logger: { info() {}, warn() {} } }],
  secret: [{ secret: "" }, { secret: Buffer.alloc(5, 1) }, { secret: [] }, { secret: 12345 }],
  cluster: [{ cluster: "" }, { cluster: 12 }],
  peers: [{ peers: "a:1" }, { peers: ["nohost"] }, { peers: ["h:99999"] }],
  maxSessionBytes: [{ maxSessionBytes: 0 }, { maxSessionBytes: 1.5 }],
  heartbeatInterval: [{ heartbeatInterval: 0 }],
  failureTimeout: [{ heartbeatInterval: 500, failureTimeout: 900 }],
  maxClockSkew: [{ maxClockSkew: -1 }, { maxClockSkew: 1.5 }, { maxClockSkew: "1s" }, { maxClockSkew: 86_400_001 }],
  missTimeout: [{ missTimeout: -1 }, { missTimeout: 10_001 }, { missTimeout: 2.5 }, { missTimeout: "20" }],
  persist: [
    { persist: "" },
    { persist: 1 },
    { persist: true },
    { persist: { interval: 60 } },
    { persist: { path: "s.snap", interval: 0.5 } },
    { persist: { path: "s.snap", interval: "60" } },
    { persist: { path: "s.snap", every: 60 } },
  ],
  multicastTtl: [{ multicastTtl: 1 }],
};

describe("options", () => {
  afterEach(closeStores);

  describe("invalid options throw a TypeError naming the option", () => {
    for (const [option, cases] of Object.entries(CASES)) {
      it(option, () => {
        for (const bad of cases) rejects(option, bad);
      });
    }

    it("options that are not an object", () => {
      for (const bad of ["x", 42, [], null, true]) {
        assert.throws(() => new MulticastStore(bad).close(), TypeError, `options = ${JSON.stringify(bad)}`);
      }
    });
  });

  describe("the declaration of every option (src/options.rs) is what index.d.ts, the README and these tests name", () => {
    const { options } = declarations();
    const names = options.map((o) => o.name);
    const shown = options.filter((o) => o.shown);
    const README_OPTIONS = "## Options";

    /** Throws unless index.d.ts (its text: `dts`) declares exactly the declared options. */
    function checkDts(dts) {
      const fields = dtsInterface("MulticastStoreOptions", dts);
      assert.deepEqual(fields.map((f) => f.name).sort(), [...names].sort(), "MulticastStoreOptions names every option, and only those");
      for (const o of options) {
        const field = fields.find((f) => f.name === o.name);
        assert.ok(field.optional, `${o.name}?: every option is optional`);
        if (o.type === "boolean") assert.equal(field.type, "boolean", `${o.name}: its type`);
        if (o.type === "integer") assert.equal(field.type, "number", `${o.name}: its type`);
        if (o.default !== undefined && o.default !== null) {
          const line = `* @default ${JSON.stringify(o.default)}`;
          assert.ok(field.doc.split("\n").some((l) => l.startsWith(line)), `${o.name}: index.d.ts says ${line}`);
        }
      }
      const normalized = dtsInterface("MulticastStoreNormalizedOptions", dts);
      assert.deepEqual(normalized.map((f) => f.name).sort(), shown.map((o) => o.name).sort(), "MulticastStoreNormalizedOptions names every option store.options shows");
    }

    /** Throws unless the README's options table (its text: `readme`) names every option, with its default. */
    function checkReadme(readme) {
      const rows = docTable("README.md", README_OPTIONS, readme);
      for (const o of options) {
        const row = rows.find((cells) => codeNames(cells[0]).includes(o.name));
        assert.ok(row, `the README's options table names ${o.name}`);
        if (o.default !== undefined && o.default !== null && !o.aliasOf) {
          assert.ok(row[1].includes(`\`${JSON.stringify(o.default)}\``), `${o.name}: the README gives its default \`${JSON.stringify(o.default)}\` (got ${row[1]})`);
        }
      }
      for (const row of rows) {
        for (const name of codeNames(row[0])) assert.ok(names.includes(name), `the README's options table names ${name}, which is not an option`);
      }
    }

    it("every option once, each with a doc line; the engine takes all but the JS-only ones", () => {
      assert.equal(new Set(names).size, names.length);
      assert.ok(options.length >= 25, `${options.length} options`);
      for (const o of options) assert.ok(o.doc.length > 0, `${o.name}: doc`);
      assert.deepEqual(options.filter((o) => !o.engine).map((o) => o.name).sort(), ["logger", "serializer"]);
      // The engine does not know the JS-only options: lib/options.js takes them out.
      const native = loadEngine();
      for (const o of options.filter((x) => !x.engine)) {
        assert.throws(() => new native.NativeEngine(JSON.stringify({ [o.name]: 1 }), () => {}), /is not an option of this store/);
      }
    });

    it("store.options shows every declared option it shows, with the declared defaults", () => {
      const o = createStore({ multicast: false }).options;
      assert.deepEqual(Object.keys(o).sort(), shown.map((x) => x.name).sort());
      for (const x of shown) {
        if (!["ipv4", "multicast", "cluster", "multicastTTL"].includes(x.name)) assert.deepEqual(o[x.name], x.default, x.name);
      }
    });

    it("index.d.ts: MulticastStoreOptions and MulticastStoreNormalizedOptions", () => {
      checkDts(undefined);
    });

    it("README.md: the options table", () => {
      checkReadme(undefined);
    });

    it("these tests: an invalid value of each option", () => {
      for (const name of names) assert.ok(CASES[name]?.length > 0, `CASES has invalid values of ${name}`);
    });

    it("fails when index.d.ts or the README leaves an option out", () => {
      const dts = fs.readFileSync(path.join(__dirname, "..", "index.d.ts"), "utf8");
      const readme = fs.readFileSync(path.join(__dirname, "..", "README.md"), "utf8");
      const dtsWithout = dts.replace(/\n {8}\/\*\*\n(?: {9}\*.*\n)*? {9}\*\/\n {8}missTimeout\?: number;/, "");
      assert.notEqual(dtsWithout, dts);
      assert.throws(() => checkDts(dtsWithout), /MulticastStoreOptions names every option/);
      const readmeWithout = readme.replace(/\n\| `missTimeout` \|.*/, "");
      assert.notEqual(readmeWithout, readme);
      assert.throws(() => checkReadme(readmeWithout), /options table names missTimeout/);
      assert.throws(() => checkReadme(readme.replace("| `multicastPort` | `4000` |", "| `multicastPort` | `4001` |")), /multicastPort: the README gives its default/);
    });
  });

  describe("valid options", () => {
    it("accepts every option with a valid value", () => {
      const cluster = uniqueCluster();
      const store = createStore({
        use: "v4",
        multicast: "239.255.77.77",
        multicastPort: 45_677,
        ipv4: "127.0.0.1",
        multicastTTL: 0,
        useSessionTTL: true,
        sessionTTL: 60,
        gracefullShutdown: false,
        logger: makeLogger(),
        secret: "correct horse battery staple",
        cluster,
        peers: ["127.0.0.1:45678", "localhost:45679"],
        maxSessionBytes: 4096,
        heartbeatInterval: 200,
        failureTimeout: 1000,
        maxClockSkew: 250,
        missTimeout: 50,
      });
      const o = store.options;
      assert.equal(o.use, "v4");
      assert.equal(o.multicast, "239.255.77.77");
      assert.equal(o.multicastPort, 45_677);
      assert.equal(o.ipv4, "127.0.0.1");
      assert.equal(o.multicastTTL, 0);
      assert.equal(o.useSessionTTL, true);
      assert.equal(o.sessionTTL, 60);
      assert.equal(o.cluster, cluster);
      assert.deepEqual(o.peers, ["127.0.0.1:45678", "localhost:45679"]);
      assert.equal(o.maxSessionBytes, 4096);
      assert.equal(o.heartbeatInterval, 200);
      assert.equal(o.failureTimeout, 1000);
      assert.equal(o.missTimeout, 50);
      assert.equal(o.maxClockSkew, 250);
    });

    it("persist: a path (resolved against the working directory), or { path, interval }", async () => {
      const dir = fs.mkdtempSync(path.join(require("node:os").tmpdir(), "esm-options-"));
      const relative = `esm-options-${process.pid}.snap`;
      try {
        // Nothing is written to it: a store that loaded nothing and stored nothing writes no snapshot.
        assert.deepEqual(createStore({ multicast: false, persist: relative }).options.persist, { path: path.join(process.cwd(), relative), interval: 60 });
        const o = createStore({ multicast: false, persist: { path: path.join(dir, "b.snap"), interval: 1.5 } }).options;
        assert.deepEqual(o.persist, { path: path.join(dir, "b.snap"), interval: 1.5 });
        assert.equal(createStore({ multicast: false }).options.persist, null);
        assert.equal(createStore({ multicast: false, persist: false }).options.persist, null);
      } finally {
        await closeStores();
        fs.rmSync(dir, { recursive: true, force: true });
        fs.rmSync(`${relative}.lock`, { force: true }); // the writers' lock file stays (docs/persistence.md "Operations")
      }
      assert.ok(!fs.existsSync(relative));
    });

    it("maxClockSkew: 0 (never warn) is accepted", () => {
      assert.equal(createStore({ maxClockSkew: 0 }).options.maxClockSkew, 0);
    });

    it("accepts gracefulShutdown (the alias) and equal values of both spellings", () => {
      createStore({ gracefulShutdown: false });
      createStore({ gracefullShutdown: false, gracefulShutdown: false });
    });

    it("accepts a 32-byte Buffer secret and a key ring", () => {
      createStore({ secret: Buffer.alloc(32, 7) });
      createStore({ secret: [Buffer.alloc(32, 8), "an older passphrase", new Uint8Array(32).fill(9)] });
    });

    it("does not echo the secret in store.options", () => {
      const passphrase = "do-not-leak-this-passphrase";
      const store = createStore({ secret: passphrase });
      assert.ok(!JSON.stringify(store.options).includes(passphrase), "store.options contains the secret");
    });

    it("accepts IPv6 on loopback", () => {
      const store = createStore({ use: "v6", ipv6: "::1", multicast: false });
      assert.equal(store.options.use, "v6");
      assert.equal(store.options.ipv6, "::1");
    });

    it("store.options shows the defaults", () => {
      // multicast: false so that the default TTL (1) is never used to send anything.
      const store = createStore({ ipv4: "127.0.0.1", multicast: false, multicastTTL: undefined, cluster: undefined });
      const o = store.options;
      assert.equal(o.use, "v4");
      assert.equal(o.multicast, false);
      assert.equal(o.multicastPort, 4000);
      assert.equal(o.multicastTTL, 1);
      assert.equal(o.useSessionTTL, false);
      assert.equal(o.sessionTTL, 5000);
      assert.equal(o.cluster, "default");
      assert.equal(o.maxSessionBytes, 1_048_576);
      assert.equal(o.heartbeatInterval, 500);
      assert.equal(o.failureTimeout, 3000);
      assert.equal(o.maxClockSkew, 1000);
      assert.equal(o.ttl, 86400);
      assert.equal(o.disableTouch, false);
      assert.equal(o.touchAfter, 0);
      assert.equal(o.waitForAck, false);
      assert.equal(o.ackTimeout, 300);
      assert.equal(o.missTimeout, 20);
      assert.equal(o.persist, null);
    });

    it("the default group is 228.0.0.5 (v4) and a transient site-scope group (v6)", () => {
      assert.equal(createStore().options.multicast, "228.0.0.5");
      const v6 = createStore({ use: "v6", ipv6: "::1" }).options.multicast;
      assert.match(String(v6), /^ff15:/i);
    });
  });

  describe("useSessionTTL", () => {
    it("expires a session without a cookie sessionTTL seconds after set", async () => {
      const store = createStore({ useSessionTTL: true, sessionTTL: 0.05 });
      const t0 = Date.now();
      await store.set("sid", { user: "alice" });
      await sleepUntil(t0 + 10);
      assertBefore(t0 + 50, "still readable");
      assert.deepEqual(await store.get("sid"), { user: "alice" });
      await sleepUntil(t0 + 120);
      assert.ok((await store.get("sid")) == null, "session outlived sessionTTL");
      assert.equal(await store.length(), 0);
    });

    it("uses cookie.expires when it is earlier than sessionTTL", async () => {
      const store = createStore({ useSessionTTL: true, sessionTTL: 0.3 });
      const t0 = Date.now();
      await store.set("cookie-first", sessionData({}, { expiresAt: t0 + 30 }));
      await store.set("ttl-first", sessionData({}, { expiresAt: t0 + 60_000 }));
      await sleepUntil(t0 + 80);
      assertBefore(t0 + 300, "ttl-first still readable");
      assert.ok((await store.get("cookie-first")) == null, "cookie.expires (earlier) was ignored");
      assert.ok((await store.get("ttl-first")) != null);
      await sleepUntil(t0 + 400);
      assert.ok((await store.get("ttl-first")) == null, "sessionTTL (earlier) was ignored");
    });

    it("restarts the sessionTTL on touch", async () => {
      const store = createStore({ useSessionTTL: true, sessionTTL: 0.1 });
      const t0 = Date.now();
      await store.set("sid", { n: 1 });
      await sleepUntil(t0 + 60);
      assertBefore(t0 + 100, "touch before expiry");
      await store.touch("sid", { n: 1 });
      await sleepUntil(t0 + 130);
      assert.deepEqual(await store.get("sid"), { n: 1 }, "touch did not restart sessionTTL");
    });
  });
});
