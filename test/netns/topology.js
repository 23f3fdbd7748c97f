"use strict";
// Hosts of our own for the fault-tolerance tests: network namespaces joined by a bridge.
//
//   <id>-sw        the "switch": a Linux bridge br0 (multicast snooping off, so it floods every
//                  group to every port) and one veth end per host, named after the host
//   <id>-h1 …      one namespace per host: lo, and eth0 (the other veth end) with 198.18.0.<n>/24
//                  and (if the kernel has IPv6) 2001:db8:5e55::<n>/64 (nodad), no default route
//
// Every packet stays inside these namespaces (docs/design.md §4): nothing is configured in the root
// namespace, both ends of each veth pair are created directly inside their namespaces, and no
// namespace has a route out. Namespace names start with a per-run id (`esm<pid>-…`), so parallel
// runs never collide. destroy() deletes every namespace this run created (which removes the
// veths); so do process exit, SIGINT and SIGTERM, whatever happened before.
const { execFileSync } = require("node:child_process");
const crypto = require("node:crypto");
const fs = require("node:fs");
const path = require("node:path");

const V4_PREFIX = "198.18.0."; // RFC 2544 benchmarking range
const V6_PREFIX = "2001:db8:5e55::"; // RFC 3849 documentation range
const ETC_NETNS = "/etc/netns"; // per-namespace /etc files of `ip netns exec`

const created = new Set(); // namespaces of this process that still exist
let runCounter = 0;

function ip(args, { ns, input } = {}) {
  const full = ns ? ["-n", ns, ...args] : args;
  return execFileSync("ip", full, { encoding: "utf8", stdio: ["pipe", "pipe", "pipe"], input });
}

/** Runs `cmd args…` inside namespace `ns` (ip netns exec) and returns its stdout. */
function nsExec(ns, cmd, args = []) {
  return execFileSync("ip", ["netns", "exec", ns, cmd, ...args], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

function errorText(err) {
  const stderr = err && err.stderr ? String(err.stderr).trim() : "";
  return stderr || (err && err.message) || String(err);
}

function deleteNamespace(ns) {
  try {
    execFileSync("ip", ["netns", "del", ns], { stdio: "ignore" });
  } catch {
    // already gone
  }
  fs.rmSync(path.join(ETC_NETNS, ns), { recursive: true, force: true });
  created.delete(ns);
}

/** Writes a sysctl of namespace `ns` (through /proc/sys: procps may not be installed). */
function nsSysctl(ns, key, value) {
  nsExec(ns, "sh", ["-c", `echo ${value} > /proc/sys/${key.replace(/\./g, "/")}`]);
}

/** Whether the kernel has IPv6 (it can be disabled at boot). */
function hasIPv6() {
  return require("node:fs").existsSync("/proc/sys/net/ipv6");
}

function addNamespace(ns) {
  ip(["netns", "add", ns]);
  created.add(ns);
  ip(["link", "set", "lo", "up"], { ns });
}

/** Deletes every namespace this process created and has not deleted yet. Synchronous. */
function destroyAll() {
  for (const ns of [...created]) deleteNamespace(ns);
}

// Last resort: whatever the tests did, no namespace of ours outlives this process.
process.on("exit", destroyAll);
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.once(signal, function onSignal() {
    destroyAll();
    // Then do what the signal would have done without us.
    if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
  });
}

/**
 * Whether this process can build topologies: { ok: true } or { ok: false, reason }.
 * Tries for real (creates and deletes a namespace with a veth pair and a bridge).
 */
function probe() {
  if (process.platform !== "linux") return { ok: false, reason: `network namespaces need Linux (this is ${process.platform})` };
  if (typeof process.getuid === "function" && process.getuid() !== 0) return { ok: false, reason: "network namespaces need root" };
  try {
    execFileSync("ip", ["-V"], { stdio: "ignore" });
  } catch (err) {
    return { ok: false, reason: `the ip command (iproute2) is missing: ${errorText(err)}` };
  }
  try {
    execFileSync("iptables", ["--version"], { stdio: "ignore" });
  } catch (err) {
    return { ok: false, reason: `the iptables command is missing: ${errorText(err)}` };
  }
  const ns = `esm${process.pid}-probe${crypto.randomBytes(2).toString("hex")}`;
  try {
    addNamespace(ns);
    ip(["link", "add", "name", "br0", "type", "bridge"], { ns });
    ip(["link", "add", "name", "pa", "type", "veth", "peer", "name", "pb"], { ns });
    for (const cmd of hasIPv6() ? ["iptables", "ip6tables"] : ["iptables"]) {
      nsExec(ns, cmd, ["-w", "-A", "INPUT", "-p", "udp", "-m", "statistic", "--mode", "random", "--probability", "0.5", "-j", "DROP"]);
    }
    return { ok: true, ipv6: hasIPv6() };
  } catch (err) {
    return { ok: false, reason: `cannot create network namespaces, veths, bridges or iptables rules here: ${errorText(err)}` };
  } finally {
    deleteNamespace(ns);
  }
}

/**
 * Creates a switch and `hosts` hosts (h1…hN, addresses .1….N), plus one host per name in
 * `extra` (e.g. ["client"], addresses .101, .102…). Returns the topology.
 */
function create({ hosts = 3, extra = [] } = {}) {
  runCounter += 1;
  const id = `esm${process.pid}-${runCounter}`;
  const topo = {
    id,
    switchNs: `${id}-sw`,
    hosts: [],
    byName: {},
    /** false when the kernel has no IPv6: hosts then have IPv4 addresses only. */
    ipv6: hasIPv6(),
    destroyed: false,
  };
  try {
    addNamespace(topo.switchNs);
    ip(["link", "add", "name", "br0", "type", "bridge"], { ns: topo.switchNs });
    // Flood every multicast group to every port (no IGMP/MLD snooping, so no querier needed).
    ip(["link", "set", "br0", "type", "bridge", "mcast_snooping", "0"], { ns: topo.switchNs });
    ip(["link", "set", "br0", "up"], { ns: topo.switchNs });
    const names = [...Array.from({ length: hosts }, (_, i) => `h${i + 1}`), ...extra];
    names.forEach((name, i) => {
      const n = i < hosts ? i + 1 : 101 + (i - hosts);
      const host = { name, ns: `${id}-${name}`, dev: "eth0", port: `p-${name}`.slice(0, 15), ipv4: `${V4_PREFIX}${n}`, ipv6: `${V6_PREFIX}${n}` };
      addNamespace(host.ns);
      // In this namespace only: no duplicate address detection (addresses usable at once), and
      // IPv6 addresses kept while the link is down (linkDown() then linkUp() restores the host).
      if (topo.ipv6) {
        for (const key of ["default", "all"]) {
          nsSysctl(host.ns, `net.ipv6.conf.${key}.accept_dad`, 0);
          nsSysctl(host.ns, `net.ipv6.conf.${key}.keep_addr_on_down`, 1);
        }
      }
      // Both ends are created inside their namespaces: the root namespace never sees them.
      ip(["link", "add", "name", host.port, "type", "veth", "peer", "name", host.dev, "netns", host.ns], { ns: topo.switchNs });
      ip(["link", "set", host.port, "master", "br0"], { ns: topo.switchNs });
      ip(["link", "set", host.port, "up"], { ns: topo.switchNs });
      ip(["addr", "add", `${host.ipv4}/24`, "dev", host.dev], { ns: host.ns });
      if (topo.ipv6) ip(["-6", "addr", "add", `${host.ipv6}/64`, "dev", host.dev, "nodad"], { ns: host.ns });
      ip(["link", "set", host.dev, "up"], { ns: host.ns });
      topo.hosts.push(host);
      topo.byName[name] = host;
    });
  } catch (err) {
    destroy(topo);
    throw new Error(`could not create the topology ${id}: ${errorText(err)}`);
  }
  return topo;
}

/**
 * Lets the hosts reach each other by name (h1, h2, …, IPv4): writes /etc/netns/<ns>/hosts, which
 * `ip netns exec` mounts over /etc/hosts for what runs in that namespace. Removed with the host.
 */
function nameHosts(topo) {
  const lines = ["127.0.0.1 localhost", ...topo.hosts.map((h) => `${h.ipv4} ${h.name}`)].join("\n") + "\n";
  for (const host of topo.hosts) {
    fs.mkdirSync(path.join(ETC_NETNS, host.ns), { recursive: true });
    fs.writeFileSync(path.join(ETC_NETNS, host.ns, "hosts"), lines);
  }
}

/** Deletes the topology's namespaces (and so its veths and bridge). Idempotent. */
function destroy(topo) {
  if (!topo) return;
  topo.destroyed = true;
  for (const host of topo.hosts) deleteNamespace(host.ns);
  // Hosts whose creation failed half way may not be listed yet.
  for (const ns of [...created]) if (ns.startsWith(`${topo.id}-`)) deleteNamespace(ns);
}

/** Runs `cmd args…` in `host` (a host object) and returns its stdout. */
function run(host, cmd, args = []) {
  return nsExec(host.ns, cmd, args);
}

/** Takes the host off the switch: its eth0 goes down (addresses and sockets stay). */
function linkDown(host) {
  ip(["link", "set", host.dev, "down"], { ns: host.ns });
}

/** Puts the host back on the switch. */
function linkUp(host) {
  ip(["link", "set", host.dev, "up"], { ns: host.ns });
}

/** Appends one rule to iptables (and, with `v6`, the same to ip6tables) in `host`. */
function iptables(host, rule, { v4 = true, v6 = hasIPv6() } = {}) {
  if (v4) run(host, "iptables", ["-w", "-A", ...rule]);
  if (v6) run(host, "ip6tables", ["-w", "-A", ...rule]);
}

/** Drops `probability` (0–1) of the UDP datagrams `host` receives, at random (IPv4 and IPv6). TCP is untouched. */
function udpLoss(host, probability) {
  iptables(host, ["INPUT", "-p", "udp", "-m", "statistic", "--mode", "random", "--probability", String(probability), "-j", "DROP"]);
}

/** Drops every multicast UDP datagram `host` receives (unicast UDP, TCP and ND keep working). */
function dropMulticast(host) {
  iptables(host, ["INPUT", "-p", "udp", "-d", "224.0.0.0/4", "-j", "DROP"], { v6: false });
  if (hasIPv6()) iptables(host, ["INPUT", "-p", "udp", "-d", "ff00::/8", "-j", "DROP"], { v4: false });
}

/** Removes every iptables rule of `host` (IPv4 and IPv6). */
function flushFirewall(host) {
  for (const cmd of hasIPv6() ? ["iptables", "ip6tables"] : ["iptables"]) run(host, cmd, ["-w", "-F"]);
}

/** Packet counters of the host's DROP rules: { v4, v6 } packets dropped so far. */
function droppedPackets(host) {
  const count = (cmd) =>
    run(host, cmd, ["-w", "-L", "INPUT", "-n", "-v", "-x"])
      .split("\n")
      .filter((line) => /\bDROP\b/.test(line))
      .reduce((sum, line) => sum + Number(line.trim().split(/\s+/)[0] || 0), 0);
  return { v4: count("iptables"), v6: hasIPv6() ? count("ip6tables") : 0 };
}

/** Undoes every fault: links up, firewalls flushed. */
function heal(topo) {
  for (const host of topo.hosts) {
    linkUp(host);
    flushFirewall(host);
  }
}

module.exports = {
  probe,
  create,
  destroy,
  destroyAll,
  run,
  linkDown,
  linkUp,
  iptables,
  udpLoss,
  dropMulticast,
  nameHosts,
  flushFirewall,
  droppedPackets,
  heal,
  V4_PREFIX,
  V6_PREFIX,
};
