"use strict";
// The connectivity doctor behind `npx express-session-multicast doctor`.
//
// It runs the engine as an observer (NativeEngine.observer): it listens to the cluster without
// joining it (heartbeats tell it who is there), sends Pings of several datagram sizes to the
// group and to the configured peers, and every node answers with a Pong. From the engine's probe
// report and its drop counters, diagnose() explains in plain words what is wrong and how to fix
// it. runDoctor() does the work and returns data; cli() is the command line around it.
const dgram = require("node:dgram");
const fs = require("node:fs");
const { setTimeout: sleep } = require("node:timers/promises");
const { loadEngine } = require("./native");
const { normalizeOptions } = require("./options");

/** Whole datagram sizes probed (bytes, trailer included). */
const PROBE_SIZES = Object.freeze([256, 1024, 1400, 1472, 4000, 8000]);
/** The store itself never sends a datagram larger than this. */
const STORE_MAX_DATAGRAM = 1400;
const DEFAULT_DURATION_MS = 3000;
const PROBE_ROUNDS = 3;

/** A mistake on the command line (exit status 2). */
class UsageError extends Error {}

// -------------------------------------------------------------------------------------------
// Running

/** A UDP port that is free right now on every address of the family. */
function freeUdpPort(family) {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket(family === "v6" ? "udp6" : "udp4");
    socket.once("error", reject);
    socket.bind(0, () => {
      const { port } = socket.address();
      socket.close(() => resolve(port));
    });
  });
}

const isPort = (p) => Number.isInteger(p) && p >= 1 && p <= 65535;

/**
 * Observes the cluster described by `options` (the store's options) for `durationMs`, probing
 * it, and resolves with { config, report, dropped, errors, diagnosis }. Invalid options reject
 * with the same TypeError the store's constructor throws.
 */
async function runDoctor(options, { durationMs = DEFAULT_DURATION_MS, sizes = PROBE_SIZES, rounds = PROBE_ROUNDS } = {}) {
  const { engineOptions } = normalizeOptions(options);
  const observed = { ...engineOptions };
  // Without multicast, the cluster port only receives peers' datagrams. The engine would bind
  // the observer there too (taking that port's unicast traffic from a node of this host for the
  // run) and would skip a peer at that address as itself: listen on a free port instead, so
  // every configured peer is probed, the local node included.
  const unicastOnly = engineOptions.multicast === false && Array.isArray(engineOptions.peers) && engineOptions.peers.length > 0;
  if (unicastOnly && (engineOptions.multicastPort === undefined || isPort(engineOptions.multicastPort))) {
    observed.multicastPort = await freeUdpPort(engineOptions.use);
  }

  const { NativeEngine } = loadEngine();
  const logs = [];
  const errors = [];
  const onEvent = (json) => {
    const event = JSON.parse(json);
    if (event.event === "log") logs.push({ level: event.level, message: event.message });
    else if (event.event === "error") errors.push({ code: event.code, message: event.message });
  };
  let engine;
  try {
    engine = NativeEngine.observer(JSON.stringify(observed), onEvent);
  } catch (err) {
    if (err && err.code === "InvalidArg") throw new TypeError(err.message);
    throw err;
  }
  const started = Date.now();
  try {
    const normalized = JSON.parse(engine.config());
    if (observed.multicastPort !== engineOptions.multicastPort) normalized.multicastPort = engineOptions.multicastPort ?? 4000;
    // The sockets could not open (the engine reports why in an event, delivered shortly).
    if (JSON.parse(engine.probeReport()) === null) {
      await sleep(100);
      const config = describeConfig(normalized, null, engineOptions);
      return { config, report: null, dropped: {}, errors, logs, durationMs: Date.now() - started, rounds, diagnosis: diagnose({ config, report: null, errors }) };
    }
    // Listen first: heartbeats come every heartbeatInterval (500 ms by default).
    const listenMs = Math.min(1000, durationMs * 0.4);
    const tailMs = Math.min(500, durationMs * 0.2);
    const step = rounds > 1 ? (durationMs - listenMs - tailMs) / (rounds - 1) : 0;
    for (let round = 0; round < rounds; round++) {
      await sleep(Math.max(0, started + listenMs + round * step - Date.now()));
      engine.probe([...sizes]);
    }
    await sleep(Math.max(0, started + durationMs - Date.now()));
    const report = JSON.parse(engine.probeReport());
    const stats = JSON.parse(engine.stats());
    const config = describeConfig(normalized, report, engineOptions);
    const dropped = stats.dropped || {};
    return {
      config,
      report,
      dropped,
      errors,
      logs,
      durationMs: Date.now() - started,
      rounds,
      diagnosis: diagnose({ config, report, dropped, errors, rounds }),
    };
  } finally {
    engine.close();
  }
}

function describeConfig(normalized, report, engineOptions) {
  const me = report && report.me;
  let iface = normalized.use === "v6" ? normalized.ipv6 : normalized.ipv4;
  if (me) iface = me.startsWith("[") ? me.slice(1, me.lastIndexOf("]")) : me.slice(0, me.lastIndexOf(":"));
  const secret = engineOptions.secret;
  const keys = secret === undefined || secret === null ? 0 : Array.isArray(secret) ? secret.length : 1;
  return {
    use: normalized.use,
    interface: iface || null,
    multicast: normalized.multicast,
    multicastPort: normalized.multicastPort,
    multicastTTL: normalized.multicastTTL,
    cluster: normalized.cluster,
    sealed: keys > 0,
    keys,
    // As given: store.options.peers loses the brackets of IPv6 literals.
    peers: Array.isArray(engineOptions.peers) ? engineOptions.peers : normalized.peers,
  };
}

// -------------------------------------------------------------------------------------------
// Diagnosis

/** A secret or cluster-name mismatch on the nodes' side shows nothing here: say so. */
const SILENT_MISMATCH =
  "the doctor has the nodes' cluster name and secret: a mismatch looks like silence, as nodes drop the probes they cannot " +
  "open without answering (their stats().dropped counts them: unknownKey, authFailed, unsealed, unexpectedSeal, foreignCluster)";

const FIREWALL_STEPS = [
  "let UDP and TCP through between the cluster's hosts, both ways: the cluster port, and the ephemeral ports each node " +
    "announces (Linux: net.ipv4.ip_local_port_range, 32768-60999 by default), or simply all UDP and TCP between them",
];

const family = (config) => (config.use === "v6" ? "ipv6" : "ipv4");
const groupOf = (config) =>
  config.multicast === false ? null : `${String(config.multicast).includes(":") ? `[${config.multicast}]` : config.multicast}:${config.multicastPort}`;

/**
 * Plain-words findings from what the observer saw. Pure: `report` is the engine's probe report
 * (null when its sockets could not open), `dropped` the observer's drop counters.
 * Returns { reachable, nodes, findings: [{ level: "ok"|"problem"|"note", code, message, fix: [steps] }] }.
 */
function diagnose({ config, report, dropped = {}, errors = [], rounds = PROBE_ROUNDS }) {
  const findings = [];
  const add = (level, code, message, fix = []) => findings.push({ level, code, message, fix });

  if (!report) {
    const why = errors.map((e) => e.message.replace(/^express-session-multicast: /, "")).join("; ") || "unknown error";
    add("problem", "no-network", `the doctor could not open its sockets: ${why}`, [
      `check that ${family(config)} is an address of this host (\`ip addr\`), and that the multicast group can be joined on it`,
    ]);
    return { reachable: false, nodes: 0, findings };
  }

  const multicastOn = config.multicast !== false;
  const answers = report.answers || [];
  const members = (report.members || []).filter((m) => m.state !== "left");
  const answered = new Set(answers.map((a) => a.id));
  const group = groupOf(config);
  const count = (reason) => dropped[reason] || 0;

  // What arrived but could not be opened: the mismatch is visible from this side.
  const mismatch = count("unknownKey") + count("authFailed");
  if (mismatch > 0) {
    add(
      "problem",
      "secret-mismatch",
      `${mismatch} datagram(s) arrived sealed with a key this secret cannot open (${dropList(dropped, ["unknownKey", "authFailed"])}): ` +
        "the cluster uses another secret. A secret mismatch looks like silence: each side drops what it cannot open and answers nothing",
      ["give the doctor (and every node) the same secret, or a key ring holding the cluster's key"]
    );
  }
  if (count("unexpectedSeal") > 0) {
    add("problem", "cluster-is-sealed", `${count("unexpectedSeal")} sealed datagram(s) arrived, but the doctor has no secret: the cluster uses one`, [
      'pass the cluster\'s secret (--secret, or "secret" in the --config file)',
    ]);
  }
  if (count("unsealed") > 0) {
    add("problem", "cluster-is-unsealed", `${count("unsealed")} unsealed datagram(s) arrived, but the doctor has a secret: those nodes run without one`, [
      "run the doctor without --secret, or give the nodes the secret",
    ]);
  }
  if (count("foreignCluster") > 0) {
    add(
      answers.length ? "note" : "problem",
      "foreign-cluster",
      `${count("foreignCluster")} datagram(s) of another cluster name arrived${group ? ` on ${group}` : ""} (the doctor looks for "${config.cluster}")`,
      answers.length ? [] : ['check the cluster name (--cluster) against the nodes\' "cluster" option']
    );
  }
  const explained = mismatch > 0 || count("unexpectedSeal") > 0 || count("unsealed") > 0 || (count("foreignCluster") > 0 && !answers.length);

  if (multicastOn) {
    const probesSent = rounds * (report.sizesSent || []).length;
    if (!report.ownLoopback) {
      add("problem", "no-loopback", `this host does not receive its own multicast on ${group}: the problem is on this host`, [
        `check that ${family(config)} (${config.interface}) is the interface that reaches the other nodes`,
        `check that a route covers the group: \`ip route get ${config.multicast}\``,
        `check that the firewall's INPUT chain accepts UDP port ${config.multicastPort}: ` +
          `\`iptables -I INPUT -p udp --dport ${config.multicastPort} -j ACCEPT\` (firewalld: \`firewall-cmd --add-port=${config.multicastPort}/udp\`)`,
      ]);
    } else if (members.length === 0 && answers.length === 0 && !explained) {
      add(
        "problem",
        "nobody-heard",
        `own multicast loops back (${report.ownLoopback} datagrams for ${probesSent} probes), but nobody heard on ${group}: ` +
          "no heartbeat arrived and no probe was answered",
        [
          "check that nodes of this cluster run, on the same group and port (a different cluster name or secret would show above as dropped datagrams)",
          `check the other hosts' firewalls: UDP port ${config.multicastPort} in, and the ephemeral UDP ports both ways`,
          `check multicastTTL (${config.multicastTTL}) against the routers between the hosts: 1 = this subnet only, 0 = this host only`,
          "check the switches: IGMP snooping without an IGMP querier stops forwarding the group",
          "check that the hosts share a subnet and VLAN (or that multicast routing joins them)",
          'the network may carry no multicast at all (AWS, GCP, Azure, most Kubernetes and Docker overlay networks): list the nodes in the "peers" option, with multicast: false',
        ]
      );
    } else if (report.heardViaGroup === 0 && answers.length > 0 && config.peers.length > 0) {
      add(
        "note",
        "multicast-silent-peers-work",
        `no other node was heard through ${group}, but peers answer: the cluster runs over unicast (members not heard via multicast get unicast copies)`,
        ["nothing to fix; on a network without multicast, multicast: false saves the group traffic"]
      );
    }
  }

  // Heard, but the answers (unicast, to the doctor's ephemeral port) do not come back.
  const silent = members.filter((m) => !answered.has(m.id));
  if (members.length > 0 && answers.length === 0 && !explained) {
    add(
      "problem",
      "no-unicast-replies",
      `${members.length} node(s) heard via heartbeats, but none answered a probe: a firewall lets multicast in, but not unicast replies`,
      [...FIREWALL_STEPS, "(nodes of a version without doctor support do not answer probes either)"]
    );
  } else if (silent.length > 0 && answers.length > 0) {
    add(
      "problem",
      "some-silent",
      `heard via heartbeats, but did not answer probes: ${silent.map((m) => `${m.id} (${m.address}:${m.port}, ${m.state})`).join(", ")}`,
      FIREWALL_STEPS
    );
  }

  if (config.peers.length > 0) {
    const resolved = report.peers || [];
    if (resolved.length === 0) {
      add("problem", "peers-unresolved", `no peer resolves to an ${config.use === "v6" ? "IPv6" : "IPv4"} address: ${config.peers.join(", ")}`, [
        "check the names (DNS, /etc/hosts; on Kubernetes, the headless Service's name and namespace) and the address family (use)",
      ]);
    } else if (!multicastOn && answers.length === 0 && !explained) {
      add("problem", "peers-silent", `peers resolve to ${resolved.join(", ")}, but none answered`, [
        'check each "host:port": the port is that node\'s multicastPort, and a node listens there only when its own "peers" option is set',
        "check that the nodes run",
        `check that ${SILENT_MISMATCH}`,
        ...FIREWALL_STEPS,
      ]);
    } else if (!multicastOn && answers.length < resolved.length) {
      add("note", "peers-partial", `${answers.length} of ${resolved.length} peer addresses answered (${resolved.join(", ")})`, [
        'a peer that does not answer is down, runs without "peers" set, has another secret, or is behind a firewall',
      ]);
    }
  }

  // Datagram sizes: the store never sends more than 1400 bytes, so larger ones are informative.
  const sent = report.sizesSent || [];
  for (const a of answers) {
    const through = new Set(a.sizes);
    const lost = sent.filter((s) => !through.has(s));
    const small = lost.filter((s) => s <= STORE_MAX_DATAGRAM);
    if (small.length > 0) {
      add(
        "problem",
        "small-datagrams-lost",
        `datagrams of ${small.join(", ")} bytes did not reach ${a.id} (${a.address}), and the store sends datagrams of up to ${STORE_MAX_DATAGRAM} bytes`,
        ["look for a path MTU below 1400 bytes (VPN, tunnel, overlay network: `ip link`, `tracepath`) or heavy loss on the path"]
      );
    } else if (lost.length > 0) {
      add(
        "note",
        "large-datagrams-lost",
        `datagrams of ${lost.join(", ")} bytes did not reach ${a.id} (${a.address}): IP fragments are dropped, or the MTU is small, on that path. ` +
          `Informative only: the store never sends datagrams above ${STORE_MAX_DATAGRAM} bytes`
      );
    }
  }

  const reachable = answers.length > 0;
  if (reachable) {
    findings.unshift({ level: "ok", code: "reachable", message: `cluster reachable: ${answers.length} node${answers.length === 1 ? "" : "s"}`, fix: [] });
  } else if (!findings.some((f) => f.level === "problem")) {
    add("problem", "unreachable", "no node answered", ["check that nodes of this cluster run", `check that ${SILENT_MISMATCH}`]);
  }
  return { reachable, nodes: answers.length, findings };
}

function dropList(dropped, reasons) {
  return reasons.filter((r) => dropped[r]).map((r) => `${r} ${dropped[r]}`).join(", ");
}

// -------------------------------------------------------------------------------------------
// Output

/** Splits `text` into lines of at most `width` columns: the first after `prefix`, the others indented by `rest`. */
function wrap(text, prefix, rest, width = 100) {
  const lines = [];
  let line = prefix;
  let empty = true;
  for (const word of text.split(/\s+/)) {
    if (!empty && line.length + 1 + word.length > width) {
      lines.push(line);
      line = " ".repeat(rest);
      empty = true;
    }
    line += empty ? word : ` ${word}`;
    empty = false;
  }
  lines.push(line);
  return lines;
}

const ms = (micros) => (micros / 1000).toFixed(micros < 10_000 ? 2 : 1);

/** The human-readable report. */
function formatText(result) {
  const { config, report, diagnosis, dropped } = result;
  const lines = [];
  const out = (line = "") => lines.push(line);
  out(`express-session-multicast doctor (${(result.durationMs / 1000).toFixed(1)} s)`);
  out();
  out("Configuration");
  out(`  interface   ${config.interface ?? "(none)"}`);
  out(
    `  multicast   ${config.multicast === false ? "off (peers only)" : `${String(config.multicast).includes(":") ? `[${config.multicast}]` : config.multicast}:${config.multicastPort}, TTL ${config.multicastTTL}`}`
  );
  out(`  peers       ${config.peers.length ? config.peers.join(", ") : "none"}`);
  if (report && config.peers.length) out(`  resolved    ${report.peers.length ? report.peers.join(", ") : "nothing"}`);
  out(`  cluster     "${config.cluster}", ${config.sealed ? `sealed (${config.keys} key${config.keys > 1 ? "s" : ""})` : "not sealed (no secret)"}`);
  out();
  if (!report) {
    out("The doctor could not open its sockets.");
  } else {
    if (config.multicast !== false) {
      out(`Own multicast loops back: ${report.ownLoopback ? `yes (${report.ownLoopback} datagrams)` : "NO"}`);
      out();
    }
    const members = [...(report.members || [])].sort((x, y) => `${x.address}:${x.port}`.localeCompare(`${y.address}:${y.port}`));
    const answeredIds = new Set(report.answers.map((a) => a.id));
    const expected = config.multicast === false && members.length === 0 ? " (expected without multicast: nodes send heartbeats to members and their peers only)" : "";
    out(`Heard via heartbeats: ${members.length} node${members.length === 1 ? "" : "s"}${expected}`);
    for (const m of members) {
      out(`  ${m.id}  ${m.address}:${m.port}  ${m.state}${answeredIds.has(m.id) ? "" : "  (no probe answer)"}`);
    }
    out();
    out(`Answered probes: ${report.answers.length} node${report.answers.length === 1 ? "" : "s"}`);
    if (report.answers.length) {
      const rows = report.answers.map((a) => [
        a.id,
        a.address,
        `${ms(a.rttMicros.min)} / ${ms(a.rttMicros.median)} / ${ms(a.rttMicros.max)} ms`,
        report.sizesSent.map((s) => (a.sizes.includes(s) ? String(s) : `-${s}`)).join(" "),
      ]);
      const head = ["node", "answered from", "rtt min / median / max", "sizes through (-lost)"];
      const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
      const row = (r) => `  ${r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join("  ")}`;
      out(row(head));
      rows.forEach((r) => out(row(r)));
    }
    out();
    out(`Datagram sizes probed: ${report.sizesSent.join(", ")} bytes`);
    out(`  (the store itself never sends datagrams above ${STORE_MAX_DATAGRAM} bytes; larger ones are informative)`);
    const drops = Object.entries(dropped || {});
    if (drops.length) out(`Datagrams the doctor dropped: ${drops.map(([k, v]) => `${k} ${v}`).join(", ")} (see "Drop counters" in docs/security.md)`);
  }
  out();
  out("Diagnosis");
  for (const f of diagnosis.findings) {
    const tag = { ok: "OK     ", problem: "PROBLEM", note: "NOTE   " }[f.level];
    wrap(f.message, `  ${tag} `, 10).forEach((l) => out(l));
    if (f.fix.length === 1) wrap(f.fix[0], "          fix: ", 15).forEach((l) => out(l));
    else if (f.fix.length > 1) {
      out("          fix:");
      for (const step of f.fix) wrap(step, "          - ", 12).forEach((l) => out(l));
    }
  }
  return `${lines.join("\n")}\n`;
}

// -------------------------------------------------------------------------------------------
// Command line

const USAGE = `Usage: express-session-multicast doctor [options]

Observes the cluster for a few seconds without joining it, probes it, and explains what
does not get through. Takes the store's options, from a JSON file and/or flags (flags win).

  --config <file.json>     the store's options as JSON (a 32-byte key: "secret": {"base64": "…"})
  --multicast <group|false> multicast group (default 228.0.0.5; ff15::5 with --use v6), or false
  --multicast-port <port>  the cluster port (default 4000)
  --ipv4 <address>         interface address (default: first non-internal IPv4 address)
  --ipv6 <address>         interface address with --use v6
  --use <v4|v6>            IP family (default v4)
  --multicast-ttl <hops>   TTL of multicast datagrams (default 1)
  --cluster <name>         cluster name (default "default")
  --secret <passphrase>    cluster secret (visible in the process list: prefer --config)
  --peers <h:p,h:p>        unicast peers, each "host:port" = that node's multicastPort
  --duration <seconds>     how long to observe (default 3)
  --json                   print the raw report and the diagnosis as JSON
  -h, --help               this help

Exit status: 0 when at least one node answered, 1 when none did, 2 on invalid usage.
`;

/** Flag → [store option, parser]. */
const FLAGS = {
  "--multicast": ["multicast", (v) => (v === "false" ? false : v)],
  "--multicast-port": ["multicastPort", numeric],
  "--ipv4": ["ipv4", String],
  "--ipv6": ["ipv6", String],
  "--use": ["use", String],
  "--multicast-ttl": ["multicastTTL", numeric],
  "--cluster": ["cluster", String],
  "--secret": ["secret", String],
  "--peers": ["peers", (v) => v.split(",").map((p) => p.trim()).filter(Boolean)],
};

// Numbers when they look like numbers; anything else goes to the engine, whose error names the option.
function numeric(v) {
  return /^-?\d+(\.\d+)?$/.test(v) ? Number(v) : v;
}

/** Parses the arguments after the program name: { command, help, json, durationMs, configFile, flags }. */
function parseArgs(argv) {
  const parsed = { command: null, help: false, json: false, durationMs: DEFAULT_DURATION_MS, configFile: null, flags: {} };
  const args = [...argv];
  while (args.length) {
    let arg = args.shift();
    if (arg === "-h" || arg === "--help") {
      parsed.help = true;
      continue;
    }
    if (!arg.startsWith("-")) {
      if (parsed.command) throw new UsageError(`unexpected argument "${arg}"`);
      parsed.command = arg;
      continue;
    }
    let value;
    const eq = arg.indexOf("=");
    if (eq > 0) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    if (arg === "--json") {
      if (value !== undefined) throw new UsageError("--json takes no value");
      parsed.json = true;
      continue;
    }
    const takesValue = arg === "--config" || arg === "--duration" || Object.hasOwn(FLAGS, arg);
    if (!takesValue) throw new UsageError(`unknown option ${arg}`);
    if (value === undefined) {
      if (!args.length) throw new UsageError(`${arg} needs a value`);
      value = args.shift();
    }
    if (arg === "--config") parsed.configFile = value;
    else if (arg === "--duration") {
      const seconds = Number(value);
      if (!(value.trim() !== "" && Number.isFinite(seconds) && seconds >= 1 && seconds <= 60)) {
        throw new UsageError(`--duration must be a number of seconds from 1 to 60 (got "${value}")`);
      }
      parsed.durationMs = Math.round(seconds * 1000);
    } else {
      const [option, parse] = FLAGS[arg];
      parsed.flags[option] = parse(value);
    }
  }
  return parsed;
}

/** The store options: the --config file's, then the flags over them. */
function loadOptions({ configFile, flags }) {
  let fromFile = {};
  if (configFile) {
    let text;
    try {
      text = fs.readFileSync(configFile, "utf8");
    } catch (err) {
      throw new UsageError(`cannot read --config ${configFile}: ${err.message}`);
    }
    try {
      fromFile = JSON.parse(text);
    } catch (err) {
      throw new UsageError(`--config ${configFile} is not valid JSON: ${err.message}`);
    }
    if (fromFile === null || typeof fromFile !== "object" || Array.isArray(fromFile)) {
      throw new UsageError(`--config ${configFile} must hold a JSON object of the store's options`);
    }
  }
  return { ...fromFile, ...flags };
}

/**
 * Runs the command line; resolves with the exit status. `io` = { stdout, stderr } with write().
 */
async function cli(argv, io = { stdout: process.stdout, stderr: process.stderr }) {
  const fail = (message) => {
    io.stderr.write(`express-session-multicast: ${message}\nRun \`express-session-multicast doctor --help\` for the options.\n`);
    return 2;
  };
  let parsed;
  try {
    parsed = parseArgs(argv);
  } catch (err) {
    if (err instanceof UsageError) return fail(err.message);
    throw err;
  }
  if (parsed.help) {
    io.stdout.write(USAGE);
    return 0;
  }
  if (parsed.command !== "doctor") {
    return fail(parsed.command ? `unknown command "${parsed.command}" (the only one is "doctor")` : "missing command: doctor");
  }
  let result;
  try {
    result = await runDoctor(loadOptions(parsed), { durationMs: parsed.durationMs });
  } catch (err) {
    if (err instanceof UsageError) return fail(err.message);
    if (err instanceof TypeError) return fail(err.message.replace(/^express-session-multicast: /, ""));
    io.stderr.write(`${err && err.message ? err.message : err}\n`);
    return 1;
  }
  if (parsed.json) {
    const { config, report, dropped, errors, durationMs, diagnosis } = result;
    io.stdout.write(`${JSON.stringify({ config, report, dropped, errors, durationMs, diagnosis }, null, 2)}\n`);
  } else {
    io.stdout.write(formatText(result));
  }
  return result.diagnosis.reachable ? 0 : 1;
}

module.exports = { PROBE_SIZES, STORE_MAX_DATAGRAM, UsageError, runDoctor, diagnose, formatText, parseArgs, loadOptions, cli, USAGE };
