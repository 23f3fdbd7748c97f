"use strict";
// `npx express-session-multicast doctor`, and the unicast `peers` it diagnoses. Loopback only:
// every store and every doctor run uses ipv4 127.0.0.1 and multicastTTL 0, a cluster name of its
// own and a random port.
const assert = require("node:assert/strict");
const crypto = require("node:crypto");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { spawn } = require("node:child_process");
const { createStore, closeStores, uniqueCluster, sessionData } = require("./helpers");
const { startNode, stopAll, waitUntil, diagnostics } = require("./cluster/harness");
const doctor = require("../lib/doctor");

const BIN = path.join(__dirname, "..", "bin", "express-session-multicast.js");
const LOOPBACK_ARGS = ["--ipv4", "127.0.0.1", "--multicast-ttl", "0"];

const randomPort = () => 20_000 + crypto.randomInt(39_000);

/** Runs the bin (a child process that must exit by itself); resolves with { status, stdout, stderr }. */
function runBin(args, { timeoutMs = 15_000 } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`the doctor did not exit within ${timeoutMs} ms\nstdout: ${stdout}\nstderr: ${stderr}`));
    }, timeoutMs);
    child.on("error", reject);
    child.on("exit", (status, signal) => {
      clearTimeout(timer);
      resolve({ status, signal, stdout, stderr });
    });
  });
}

/** The doctor on loopback, for 2 s. */
const runDoctor = (args) => runBin(["doctor", ...LOOPBACK_ARGS, "--duration", "2", ...args]);

const show = (run) => `exit ${run.status}\n--- stdout\n${run.stdout}--- stderr\n${run.stderr}`;

/** In-process cli() with captured output. */
async function cliCapture(argv) {
  const io = { stdout: { text: "", write: (s) => (io.stdout.text += s) }, stderr: { text: "", write: (s) => (io.stderr.text += s) } };
  const status = await doctor.cli(argv, io);
  return { status, stdout: io.stdout.text, stderr: io.stderr.text };
}

describe("doctor", function () {
  this.timeout(30_000);

  describe("command line", () => {
    it("parses the store's options from flags", () => {
      const parsed = doctor.parseArgs([
        "doctor",
        "--multicast",
        "false",
        "--multicast-port=4100",
        "--multicast-ttl",
        "2",
        "--peers",
        "a.example:4100, b.example:4100,",
        "--cluster",
        "shop",
        "--duration",
        "1.5",
        "--json",
      ]);
      assert.equal(parsed.command, "doctor");
      assert.equal(parsed.json, true);
      assert.equal(parsed.durationMs, 1500);
      assert.deepEqual(parsed.flags, {
        multicast: false,
        multicastPort: 4100,
        multicastTTL: 2,
        peers: ["a.example:4100", "b.example:4100"],
        cluster: "shop",
      });
    });

    it("lays flags over the --config file", () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "esm-doctor-"));
      try {
        const file = path.join(dir, "store.json");
        fs.writeFileSync(file, JSON.stringify({ cluster: "from-file", multicastPort: 4100 }));
        assert.deepEqual(doctor.loadOptions({ configFile: file, flags: { multicastPort: 4200 } }), { cluster: "from-file", multicastPort: 4200 });
        fs.writeFileSync(file, "{ not json");
        assert.throws(() => doctor.loadOptions({ configFile: file, flags: {} }), doctor.UsageError);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });

    it("rejects invalid options with exit status 2, naming the option", async () => {
      const cases = [
        [["--multicast-port", "70000"], /option "multicastPort"/],
        [["--multicast-port", "abc"], /option "multicastPort"/],
        [["--use", "v5"], /option "use"/],
        [["--multicast", "10.0.0.1"], /option "multicast"/],
        [["--peers", "no-port-here"], /option "peers"/],
        [["--multicast-ttl", "300"], /option "multicastTTL"/],
        [["--duration", "0"], /--duration/],
        [["--frobnicate", "1"], /unknown option --frobnicate/],
        [["--cluster"], /--cluster needs a value/],
      ];
      for (const [args, expected] of cases) {
        const run = await cliCapture(["doctor", ...LOOPBACK_ARGS, ...args]);
        assert.equal(run.status, 2, `${args.join(" ")}: ${show(run)}`);
        assert.match(run.stderr, expected, args.join(" "));
        assert.equal(run.stdout, "");
      }
      assert.equal((await cliCapture([])).status, 2, "no command");
      assert.equal((await cliCapture(["diagnose"])).status, 2, "unknown command");
      const help = await cliCapture(["doctor", "--help"]);
      assert.equal(help.status, 0);
      assert.match(help.stdout, /--multicast-port/);
    });

    it("exits with status 2 from the bin, on a bad option in the --config file too", async () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "esm-doctor-"));
      try {
        const file = path.join(dir, "store.json");
        fs.writeFileSync(file, JSON.stringify({ ipv4: "127.0.0.1", multicastTTL: 0, failureTimeout: 5 }));
        const run = await runBin(["doctor", "--config", file]);
        assert.equal(run.status, 2, show(run));
        assert.match(run.stderr, /option "failureTimeout"/);
        assert.doesNotMatch(run.stderr, /\n\s+at /, "a usage error, not a stack trace");
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });

    it("says so when its sockets cannot open (an address this host does not have), exit 1", async () => {
      // Fails at the interface lookup: nothing is sent anywhere.
      const run = await runBin(["doctor", "--ipv4", "203.0.113.77", "--multicast-ttl", "0", "--cluster", uniqueCluster("doctor-noif")]);
      assert.equal(run.status, 1, show(run));
      assert.match(run.stdout, /could not open its sockets:[^]*203\.0\.113\.77/);
    });
  });

  describe("diagnosis", () => {
    const config = {
      use: "v4",
      interface: "10.0.0.5",
      multicast: "228.0.0.5",
      multicastPort: 4000,
      multicastTTL: 1,
      cluster: "shop",
      sealed: false,
      keys: 0,
      peers: [],
    };
    const report = (more) => ({ sizesSent: doctor.PROBE_SIZES, answers: [], ownLoopback: 18, heardViaGroup: 0, members: [], peers: [], me: "10.0.0.5:41000", ...more });
    const member = (id, address) => ({ id, address, port: 40000, state: "alive" });
    const answer = (id, address, sizes = doctor.PROBE_SIZES) => ({ id, address: `${address}:40000`, sizes, rttMicros: { min: 100, median: 200, max: 300 } });
    const codes = (d) => d.findings.map((f) => f.code);

    it("own multicast not looping back points at this host", () => {
      const d = doctor.diagnose({ config, report: report({ ownLoopback: 0 }) });
      assert.equal(d.reachable, false);
      assert.deepEqual(codes(d), ["no-loopback"]);
      assert.match(d.findings[0].fix.join("\n"), /INPUT/);
      assert.match(d.findings[0].fix.join("\n"), /udp --dport 4000/);
    });

    it("silence with working loopback lists the network causes and the peers option", () => {
      const d = doctor.diagnose({ config, report: report() });
      assert.deepEqual(codes(d), ["nobody-heard"]);
      for (const cause of [/firewall/, /multicastTTL/, /IGMP snooping/, /VLAN/, /Kubernetes/, /"peers"/]) assert.match(d.findings[0].fix.join("\n"), cause);
    });

    it("heartbeats heard without probe answers blame unicast replies", () => {
      const d = doctor.diagnose({ config, report: report({ heardViaGroup: 1, members: [member("aa", "10.0.0.6")] }) });
      assert.deepEqual(codes(d), ["no-unicast-replies"]);
      assert.match(d.findings[0].fix.join("\n"), /ephemeral/);
      assert.match(d.findings[0].fix.join("\n"), /TCP/);
    });

    it("a node heard but silent is named", () => {
      const d = doctor.diagnose({
        config,
        report: report({ heardViaGroup: 2, members: [member("aa", "10.0.0.6"), member("bb", "10.0.0.7")], answers: [answer("aa", "10.0.0.6")] }),
      });
      assert.equal(d.reachable, true);
      assert.deepEqual(codes(d), ["reachable", "some-silent"]);
      assert.match(d.findings[1].message, /bb \(10\.0\.0\.7:40000/);
    });

    it("datagram sizes above 1400 bytes are informative, smaller ones are a problem", () => {
      const large = doctor.diagnose({ config, report: report({ heardViaGroup: 1, members: [member("aa", "10.0.0.6")], answers: [answer("aa", "10.0.0.6", [256, 1024, 1400, 1472])] }) });
      assert.deepEqual(codes(large), ["reachable", "large-datagrams-lost"]);
      assert.equal(large.findings[1].level, "note");
      assert.match(large.findings[1].message, /4000, 8000 bytes/);
      const small = doctor.diagnose({ config, report: report({ heardViaGroup: 1, members: [member("aa", "10.0.0.6")], answers: [answer("aa", "10.0.0.6", [256, 1024])] }) });
      assert.ok(codes(small).includes("small-datagrams-lost"));
      assert.match(small.findings.find((f) => f.code === "small-datagrams-lost").fix.join("\n"), /MTU/);
    });

    it("peers: unresolved names, silent peers, partial answers, silent multicast", () => {
      const unicast = { ...config, multicast: false, peers: ["app.example:4000"] };
      assert.deepEqual(codes(doctor.diagnose({ config: unicast, report: report({ ownLoopback: 0 }) })), ["peers-unresolved"]);
      const silent = doctor.diagnose({ config: unicast, report: report({ ownLoopback: 0, peers: ["10.0.0.6:4000", "10.0.0.7:4000"] }) });
      assert.deepEqual(codes(silent), ["peers-silent"]);
      assert.match(silent.findings[0].fix.join("\n"), /multicastPort/);
      assert.match(silent.findings[0].fix.join("\n"), /looks like silence/, "a secret mismatch shows nothing on this side");
      const partial = doctor.diagnose({ config: unicast, report: report({ ownLoopback: 0, peers: ["10.0.0.6:4000", "10.0.0.7:4000"], answers: [answer("aa", "10.0.0.6")] }) });
      assert.deepEqual(codes(partial), ["reachable", "peers-partial"]);
      const mixed = { ...config, peers: ["app.example:4000"] };
      const viaPeers = doctor.diagnose({ config: mixed, report: report({ peers: ["10.0.0.6:4000"], answers: [answer("aa", "10.0.0.6")] }) });
      assert.deepEqual(codes(viaPeers), ["reachable", "multicast-silent-peers-work"]);
    });

    it("secret and cluster mismatches are named instead of plain silence", () => {
      const mismatch = doctor.diagnose({ config: { ...config, sealed: true, keys: 1 }, report: report(), dropped: { unknownKey: 5 } });
      assert.deepEqual(codes(mismatch), ["secret-mismatch"]);
      assert.match(mismatch.findings[0].message, /looks like silence/);
      assert.deepEqual(codes(doctor.diagnose({ config, report: report(), dropped: { unexpectedSeal: 3 } })), ["cluster-is-sealed"]);
      assert.deepEqual(codes(doctor.diagnose({ config: { ...config, sealed: true, keys: 1 }, report: report(), dropped: { unsealed: 3 } })), ["cluster-is-unsealed"]);
      assert.deepEqual(codes(doctor.diagnose({ config, report: report(), dropped: { foreignCluster: 3 } })), ["foreign-cluster"]);
    });

    it("sockets that cannot open are reported", () => {
      const d = doctor.diagnose({ config, report: null, errors: [{ code: "ERR_NETWORK", message: "express-session-multicast: cannot join the cluster: no network interface has the address 10.9.9.9" }] });
      assert.deepEqual(codes(d), ["no-network"]);
      assert.match(d.findings[0].message, /10\.9\.9\.9/);
    });
  });

  describe("on loopback multicast", () => {
    afterEach(closeStores);

    it("reports a working cluster: both nodes, round trips, every size through (exit 0)", async () => {
      const options = { cluster: uniqueCluster("doctor"), multicastPort: randomPort() };
      const stores = [createStore(options), createStore(options)];
      await Promise.all(stores.map((s) => s.ready()));
      const ids = stores.map((s) => s.members().find((m) => m.self).id);
      const run = await runDoctor(["--cluster", options.cluster, "--multicast-port", String(options.multicastPort)]);
      assert.equal(run.status, 0, show(run));
      assert.match(run.stdout, /cluster reachable: 2 nodes/);
      assert.match(run.stdout, /Own multicast loops back: yes/);
      assert.match(run.stdout, new RegExp(`multicast\\s+228\\.0\\.0\\.5:${options.multicastPort}, TTL 0`));
      assert.match(run.stdout, /not sealed/);
      for (const id of ids) {
        assert.match(run.stdout, new RegExp(`^  ${id}  127\\.0\\.0\\.1:\\d+  alive$`, "m"), `${id} heard via heartbeats`);
        assert.match(run.stdout, new RegExp(`^  ${id} .* ms +256 1024 1400 1472 4000 8000$`, "m"), `${id} answered every size`);
      }
      assert.doesNotMatch(run.stdout, /PROBLEM/);
    });

    it("with nobody running, exits 1 with the 'nobody heard' diagnosis", async () => {
      const run = await runDoctor(["--cluster", uniqueCluster("doctor-empty"), "--multicast-port", String(randomPort())]);
      assert.equal(run.status, 1, show(run));
      assert.match(run.stdout, /Own multicast loops back: yes/);
      assert.match(run.stdout, /nobody heard on\s+228\.0\.0\.5:\d+/);
      assert.match(run.stdout, /"peers"/);
      assert.match(run.stdout, /Answered probes: 0 nodes/);
    });

    it("sealed cluster: the right secret gets answers, a wrong one is named a secret mismatch", async () => {
      const options = { cluster: uniqueCluster("doctor-sealed"), multicastPort: randomPort(), secret: "doctor test passphrase" };
      const stores = [createStore(options), createStore(options)];
      await Promise.all(stores.map((s) => s.ready()));
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "esm-doctor-"));
      try {
        // The right secret, from a --config file (where a secret belongs: not in the process list).
        const file = path.join(dir, "store.json");
        fs.writeFileSync(file, JSON.stringify({ ...options, ipv4: "127.0.0.1", multicastTTL: 0 }));
        const right = await runBin(["doctor", "--config", file, "--duration", "2", "--json"]);
        assert.equal(right.status, 0, show(right));
        const result = JSON.parse(right.stdout);
        assert.equal(result.config.sealed, true);
        assert.equal(result.diagnosis.reachable, true);
        assert.equal(result.report.answers.length, 2);
        assert.deepEqual(result.dropped, {});

        const wrong = await runDoctor(["--cluster", options.cluster, "--multicast-port", String(options.multicastPort), "--secret", "not the secret", "--json"]);
        assert.equal(wrong.status, 1, show(wrong));
        const bad = JSON.parse(wrong.stdout);
        assert.equal(bad.report.answers.length, 0);
        assert.ok(bad.dropped.unknownKey > 0, `the observer counts what it cannot open: ${JSON.stringify(bad.dropped)}`);
        const finding = bad.diagnosis.findings.find((f) => f.code === "secret-mismatch");
        assert.ok(finding, JSON.stringify(bad.diagnosis));
        assert.match(finding.message, /looks like silence/);
        assert.ok(!bad.diagnosis.findings.some((f) => f.code === "nobody-heard"), "the mismatch explains the silence");

        const none = await runDoctor(["--cluster", options.cluster, "--multicast-port", String(options.multicastPort)]);
        assert.equal(none.status, 1, show(none));
        assert.match(none.stdout, /sealed datagram\(s\) arrived, but the doctor has no secret/);
        // The nodes dropped the wrong and the missing key's probes, and answered nothing.
        const dropped = stores[0].stats().dropped;
        assert.ok(dropped.unknownKey > 0 && dropped.unsealed > 0, JSON.stringify(dropped));
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  });

  describe("unicast peers without multicast (child processes)", () => {
    afterEach(async function () {
      if (this.currentTest.state === "failed") console.log(diagnostics());
      await stopAll();
    });

    it("replicate, transfer state to a late node, detect a death; the doctor reaches them", async function () {
      this.timeout(60_000);
      const base = randomPort();
      const ports = [base, base + 1, base + 2];
      const peers = ports.map((p) => `127.0.0.1:${p}`);
      const cluster = uniqueCluster("peers");
      const common = { cluster, multicast: false, peers, heartbeatInterval: 100, failureTimeout: 600 };
      const start = (i, name) => startNode({ ...common, multicastPort: ports[i] }, { name });

      const [a, b] = await Promise.all([start(0, "A"), start(1, "B")]);
      await Promise.all([a.call("ready"), b.call("ready")]);
      const alive = async (node, other) =>
        (await node.call("members")).some((m) => m.id === other.self.id && m.state === "alive");
      await waitUntil(async () => (await alive(a, b)) && (await alive(b, a)), 5_000, { what: "A and B know each other" });

      await a.call("set", "from-a", sessionData({ by: "A" }));
      await waitUntil(async () => (await b.call("get", "from-a")) !== null, 3_000, { what: "B got A's write" });
      for (let i = 0; i < 20; i++) await b.call("set", `b-${i}`, sessionData({ i }));

      // The late node: everything it missed arrives by state transfer, before ready().
      const c = await start(2, "C");
      await c.call("ready");
      assert.deepEqual(await c.call("get", "from-a"), await a.call("get", "from-a"));
      assert.equal(await c.call("length"), 21);
      assert.ok((await c.call("stats")).stateTransfers >= 1);
      await waitUntil(async () => (await alive(a, c)) && (await alive(b, c)) && (await alive(c, a)) && (await alive(c, b)), 5_000, {
        what: "everyone knows C",
      });
      await c.call("set", "from-c", sessionData({ by: "C" }));
      await waitUntil(async () => (await a.call("get", "from-c")) && (await b.call("get", "from-c")), 3_000, { what: "C's write everywhere" });

      // Run as on A's host with A's options: the doctor must not take A's cluster port, nor skip A.
      const run = await runDoctor(["--cluster", cluster, "--multicast", "false", "--multicast-port", String(ports[0]), "--peers", peers.join(",")]);
      assert.equal(run.status, 0, show(run));
      assert.match(run.stdout, /multicast\s+off \(peers only\)/);
      assert.match(run.stdout, /cluster reachable: 3 nodes/);
      for (const node of [a, b, c]) assert.match(run.stdout, new RegExp(`^  ${node.self.id} `, "m"), `${node.name} answered`);
      assert.doesNotMatch(run.stdout, /PROBLEM/);

      // A killed node is reported dead by the others, and no longer answers the doctor.
      await b.kill();
      for (const node of [a, c]) {
        await node.waitForEvent((e) => e.type === "dead" && e.node.id === b.self.id, 5_000, "B dead");
      }
      // By name this time (localhost resolves through /etc/hosts).
      const byName = ports.map((p) => `localhost:${p}`).join(",");
      const after = await runDoctor(["--cluster", cluster, "--multicast", "false", "--peers", byName, "--json"]);
      assert.equal(after.status, 0, show(after));
      const result = JSON.parse(after.stdout);
      assert.deepEqual(result.report.answers.map((x) => x.id).sort(), [a.self.id, c.self.id].sort());
      assert.ok(result.diagnosis.findings.some((f) => f.code === "peers-partial"), JSON.stringify(result.diagnosis));
    });
  });
});
