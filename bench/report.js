"use strict";
// Turns one run's results (bench/index.js) into the target verdicts, bench/results/summary.md
// and bench/results/chart.svg (a grouped bar chart written by hand: no dependency).
const u = require("./util");

const OPS = ["set", "get", "touch", "destroy"];
const STORES = ["MemoryStore", "memorystore", "redis", "multicast", "multicastCluster"];
const LABELS = { MemoryStore: "MemoryStore", memorystore: "memorystore", redis: "connect-redis", multicast: "multicast (1 node)", multicastCluster: "multicast (node of 3)" };
const COLORS = { MemoryStore: "#7f7f7f", memorystore: "#bcbd22", redis: "#d62728", multicast: "#1f77b4", multicastCluster: "#17becf" };
const MODE_LABELS = { sequential: "sequential", inflight64: "64 in flight" };
const VARIANTS = ["multicast", "multicastCluster"];

const TARGETS = { getSetToMemoryStore: 0.9, storeOpsToRedis: 5, httpToMemoryStore: 0.95, httpToRedis: 1.2, memoryToRaw: 1.5 };

// [{ id, target, measured, pass, detail }]
function evaluate(results) {
  const out = [];
  const { store, http, memory } = results;
  if (store) {
    for (const v of VARIANTS) {
      for (const op of ["get", "set"]) {
        const cells = [];
        let pass = true;
        for (const size of store.sizes) {
          for (const mode of Object.keys(size.modes)) {
            const r = size.modes[mode][op].ratios[v].toMemoryStore;
            cells.push(`${size.size} ${MODE_LABELS[mode]} ${u.fmtRatio(r)}`);
            if (!(r >= TARGETS.getSetToMemoryStore)) pass = false;
          }
        }
        out.push({ id: `${op}-vs-MemoryStore-${v}`, target: `${op} ≥ ${TARGETS.getSetToMemoryStore}× MemoryStore, ${LABELS[v]}`, measured: cells.join("; "), pass });
      }
      const cells = [];
      let pass = true;
      let min = Infinity;
      for (const size of store.sizes) {
        for (const mode of Object.keys(size.modes)) {
          for (const op of OPS) {
            const r = size.modes[mode][op].ratios[v].toRedis;
            min = Math.min(min, r);
            if (!(r >= TARGETS.storeOpsToRedis)) {
              pass = false;
              // what no in-process store reaches either: MemoryStore / connect-redis in the same cell
              const ops = size.modes[mode][op].opsPerSec;
              cells.push(`${op} ${size.size} ${MODE_LABELS[mode]} ${u.fmtRatio(r)} (MemoryStore ${u.fmtRatio(u.ratio(ops.MemoryStore, ops.redis))})`);
            }
          }
        }
      }
      out.push({
        id: `store-ops-vs-redis-${v}`,
        target: `every store op ≥ ${TARGETS.storeOpsToRedis}× connect-redis, ${LABELS[v]}`,
        measured: pass ? `all 16 ≥ ${TARGETS.storeOpsToRedis}× (lowest ${u.fmtRatio(min)})` : `lowest ${u.fmtRatio(min)}; below: ${cells.join("; ")}`,
        pass,
      });
    }
  }
  if (http) {
    for (const v of VARIANTS) {
      const r = http.ratios[v].reqPerSec;
      out.push({ id: `http-vs-MemoryStore-${v}`, target: `HTTP req/s ≥ ${TARGETS.httpToMemoryStore}× MemoryStore, ${LABELS[v]}`, measured: u.fmtRatio(r.toMemoryStore), pass: r.toMemoryStore >= TARGETS.httpToMemoryStore });
      const ceiling = u.ratio(http.results.MemoryStore.reqPerSec, http.results.redis.reqPerSec);
      out.push({ id: `http-vs-redis-${v}`, target: `HTTP req/s ≥ ${TARGETS.httpToRedis}× connect-redis, ${LABELS[v]}`, measured: `${u.fmtRatio(r.toRedis)} (MemoryStore ${u.fmtRatio(ceiling)})`, pass: r.toRedis >= TARGETS.httpToRedis });
    }
  }
  if (results.cluster && results.cluster.floorVerdict) {
    const c = results.cluster;
    const store = c.latencyIdleGap.runs.multicast.fromCall;
    const fl = c.floor.idleGap;
    for (const p of ["p50", "p99"]) {
      out.push({
        id: `latency-idle-gap-${p}-vs-floor`,
        target: `replication latency ${p} at a ${c.latencyIdleGap.gapMs} ms gap ≤ ${c.floorVerdict.targets[p]}× the UDP floor (same run)`,
        measured: `${store[p]} µs / ${fl[p]} µs = ${u.fmtRatio(c.ratios.idleGapToFloor[p])}`,
        pass: c.floorVerdict[p],
      });
    }
  }
  if (memory) {
    for (const count of memory.counts) {
      const m = memory.results[count].multicast;
      out.push({ id: `memory-${count}`, target: `memory ≤ ${TARGETS.memoryToRaw}× raw session bytes at ${u.fmt(count)} sessions`, measured: `${u.fmt(m.rssPerSession)} B / ${m.rawBytesPerSession} B = ${u.fmtRatio(m.ratioToRaw)}`, pass: m.ratioToRaw <= TARGETS.memoryToRaw });
    }
  }
  return out;
}

// ---- Markdown
const table = (header, rows, align) => {
  const a = align || header.map((_, i) => (i === 0 ? "---" : "---:"));
  return [`| ${header.join(" | ")} |`, `|${a.join("|")}|`, ...rows.map((r) => `| ${r.join(" | ")} |`)].join("\n");
};

function markdown(results, verdicts) {
  const { meta, store, http, cluster, memory } = results;
  const m = meta.machine;
  const parts = [];
  parts.push(`# Benchmark results\n`);
  parts.push(
    `One run of \`npm run bench\`, ${meta.date}, ${Math.round(meta.seconds)} s. Machine: ${m.cpus} × ${m.cpu}, ${m.memoryGB} GB, ${m.platform}; Node ${m.node}; ${meta.redisVersion}; engine ${meta.engine}. All traffic on 127.0.0.1. Load average before the run: ${meta.loadBefore.join(", ")}.\n`
  );
  if (meta.engineChanged) parts.push(`**The engine binary changed during the run: these figures mix two builds.**\n`);
  parts.push(`![chart](chart.svg)\n`);
  parts.push(`## Targets\n`);
  parts.push(table(["target", "measured", ""], verdicts.map((v) => [v.target, v.measured, v.pass ? "pass" : "**MISS**"]), ["---", "---", "---"]) + "\n");

  if (store) {
    parts.push(`## Store operations\n`);
    parts.push(
      `ops/s, median of ${store.rounds} rounds, all stores in the bench process (connect-redis talks to the bench's redis-server; "node of 3" replicates every write to two other processes). Ratios: multicast / MemoryStore and multicast / connect-redis.\n`
    );
    for (const size of store.sizes) {
      for (const mode of Object.keys(size.modes)) {
        const header = ["op", ...STORES.map((s) => LABELS[s]), "1 node / Mem", "1 node / redis", "node of 3 / Mem", "node of 3 / redis"];
        const rows = OPS.map((op) => {
          const { opsPerSec, ratios } = size.modes[mode][op];
          return [op, ...STORES.map((s) => u.fmt(opsPerSec[s])), u.fmtRatio(ratios.multicast.toMemoryStore), u.fmtRatio(ratios.multicast.toRedis), u.fmtRatio(ratios.multicastCluster.toMemoryStore), u.fmtRatio(ratios.multicastCluster.toRedis)];
        });
        const cpu = size.modes[mode].set.clusterCpuUsPerSet;
        const cpuLine = cpu ? `\nCPU per set on the node of 3 (all three processes share this machine's CPUs): its JS thread ${cpu.js} µs, its network thread ${cpu.net} µs, the two peers together ${cpu.peers} µs.\n` : "";
        parts.push(`**≈${size.size} session (${size.bytes} B of JSON), ${MODE_LABELS[mode]}, ${u.fmt(size.sids)} sids**\n\n${table(header, rows)}\n${cpuLine}`);
      }
    }
  }
  if (http) {
    parts.push(`## HTTP\n`);
    parts.push(`${http.method}.\n`);
    const rows = STORES.map((s) => {
      const r = http.results[s];
      const ra = http.ratios[s];
      return [LABELS[s], u.fmt(r.reqPerSec), `${r.latencyMs.p50} ms`, `${r.latencyMs.p99} ms`, ra ? u.fmtRatio(ra.reqPerSec.toMemoryStore) : "", ra ? u.fmtRatio(ra.reqPerSec.toRedis) : "", `${r.non2xx + r.errors}`];
    });
    parts.push(table(["store", "req/s", "p50", "p99", "req/s / MemoryStore", "req/s / connect-redis", "errors + non-2xx"], rows) + "\n");
  }
  if (cluster) {
    parts.push(`## Cluster\n`);
    const c = cluster;
    const mc = c.multicast;
    const rows = [
      ["replication latency p50 (set() called on A → get() returns it on B)", `${mc.latency.fromCall.p50} µs`, `${c.redis.latency.fromCall.p50} µs`, u.fmtRatio(c.ratios.latencyP50)],
      ["replication latency p99", `${mc.latency.fromCall.p99} µs`, `${c.redis.latency.fromCall.p99} µs`, u.fmtRatio(c.ratios.latencyP99)],
      ["  multicast, from set() returned on A: p50 / p99", `${mc.latency.p50} / ${mc.latency.p99} µs`, "", ""],
      [`replicated writes/s (${u.fmt(mc.throughput.sessions)} sessions, A → all visible on B)`, `${u.fmt(mc.throughput.writesPerSec)}${c.lossless ? "" : " (LOSSY)"}`, u.fmt(c.redis.throughput.writesPerSec), u.fmtRatio(c.ratios.writesPerSec)],
      [`state transfer of ${u.fmt(mc.transfer.runs[0].length)} sessions to a new node, until ready() (connect-redis: all() of them)`, `${u.fmt(mc.transfer.medianMs)} ms`, `${u.fmt(c.redis.readAll.ms)} ms`, u.fmtRatio(c.ratios.transferVsRedisAll)],
    ];
    parts.push(`${c.method.latency}. Throughput: ${c.method.throughput}. Transfer: ${c.method.transfer}. Ratios are multicast / connect-redis (below 1 is better for times).\n`);
    parts.push(table(["measure", "multicast", "connect-redis", "ratio"], rows) + "\n");
    if (c.latencyIdleGap) parts.push(latencySection(c));
  }
  if (memory) {
    parts.push(`## Memory\n`);
    parts.push(`${memory.method}.\n`);
    const rows = memory.counts.map((count) => {
      const r = memory.results[count];
      return [
        u.fmt(count),
        `${r.multicast.rawBytesPerSession} B`,
        `${u.fmt(r.multicast.rssPerSession)} B (${u.fmtRatio(r.multicast.ratioToRaw)})`,
        `${u.fmt(r.MemoryStore.rssPerSession)} B (${u.fmtRatio(r.MemoryStore.ratioToRaw)})`,
        `${u.fmt(r.redis.rssPerSession)} B (${u.fmtRatio(r.redis.ratioToRaw)})`,
        u.fmtRatio(r.ratios.toMemoryStore),
        u.fmtRatio(r.ratios.toRedis),
      ];
    });
    parts.push(table(["sessions", "raw JSON / session", "multicast RSS / session (× raw)", "MemoryStore (× raw)", "redis-server (× raw)", "multicast / MemoryStore", "multicast / redis-server"], rows) + "\n");
  }
  if (results.touch) parts.push(touchSection(results.touch));
  if (results.readyourwrites) parts.push(readYourWritesSection(results.readyourwrites));
  return parts.join("\n");
}

// The touch-traffic part (bench/touch.js), between markers so that a run of that part alone can
// replace its section in an existing summary.md (withTouchSection). `touch.date` is set by a run
// alone; a full run's date is the file's.
const TOUCH_BEGIN = "<!-- touch: bench/touch.js -->";
const TOUCH_END = "<!-- /touch -->";
function touchSection(touch) {
  const f = (x, digits) => (x === null || x === undefined || Number.isNaN(x) ? "n/a" : x.toFixed(digits));
  const rows = touch.results.map((m) => [
    `${m.touchAfter} s`,
    u.fmt(m.reqPerSec),
    `${f(m.perRequest.datagramsSent, 3)} (${f(m.perRequestGross.datagramsSent, 3)})`,
    `${f(m.perRequest.bytesSent, 1)} (${f(m.perRequestGross.bytesSent, 1)})`,
    `${f(m.perRequest.datagramsReceivedPerPeer, 3)} (${f(m.perRequestGross.datagramsReceivedPerPeer, 3)})`,
    `${f(m.perRequest.peersCpuUs, 2)} (${f(m.perRequestGross.peersCpuUs, 2)})`,
    f(m.perRequest.peersNetThreadCpuUs, 2),
    f(m.perRequest.appNetThreadCpuUs, 2),
    `${u.fmt(m.localTouches)} (${f(m.localTouchesPerRequest, 2)}/req)`,
    `${f(m.idlePerSecond.datagramsSent, 1)} dgrams, ${u.fmt(m.idlePerSecond.bytesSent)} B`,
  ]);
  const login = touch.results[0].perLogin;
  const lines = [
    TOUCH_BEGIN,
    `## Touch traffic\n`,
    `${touch.date ? `A run of \`node bench/touch.js\` alone, ${touch.date}. ` : ""}${touch.method}.\n`,
    table(["touchAfter", "req/s", "datagrams sent / req", "bytes sent / req", "datagrams received / peer / req", "both peers' CPU / req (µs)", "… their network threads (µs)", "app node's network thread / req (µs)", "local touches", "idle baseline / s (app node sent)"], rows) + "\n",
    `For scale: a login (a set of a ${login.sessionJsonBytes} B session) sent ${f(login.datagramsSent, 2)} datagrams and ${u.fmt(login.bytesSent)} bytes; a touch carries the sid and the cookie (${touch.touchCookieJsonBytes} B of JSON) instead of the session. Figures per request are net of the idle baseline (its rate times the load's duration); in parentheses, gross (heartbeats included). Small negatives are noise, and the peers' CPU leans negative where they receive nothing: their network threads then wake about as often under load as idle (wake-ups/s: ${touch.results.map((m) => `touchAfter ${m.touchAfter}: idle ${m.idlePerSecond.peersNetThreadWakeups ?? "n/a"}, load ${m.loadPerSecond ? m.loadPerSecond.peersNetThreadWakeups : "n/a"}`).join("; ")}), but each wake-up can cost less CPU on a busy machine than on an idle one, so the idle rate over-corrects by a few µs per request. Replicated touches share datagrams (the writes of about a millisecond go out together, up to 1,400 B a datagram), so under load datagrams per request are well below 1: bytes per request are the figure to compare.\n`,
    ...touch.comparisons.map((c) => `- ${c.text}`),
    "",
    TOUCH_END,
  ];
  return lines.join("\n") + "\n";
}

// ---- Cluster latency against the floor (bench/cluster.js 1b and the floor): tables for the
// console and for summary.md, from the part of cluster.json they need ({ latencyIdleGap, floor,
// floorVerdict, multicast: { latency }, ratios }).
function latencyTables(c) {
  const gap = c.latencyIdleGap.gapMs;
  const runs = Object.values(c.latencyIdleGap.runs);
  const fl = c.floor.skipped ? null : c.floor;
  const us = (x) => (x === null || x === undefined ? "n/a" : `${x} µs`);
  const cells = (p, r) => [us(p && p.p50), us(p && p.p99), us(p && p.mean), r ? u.fmtRatio(r.p50) : "", r ? u.fmtRatio(r.p99) : ""];
  const toFloor = (p, f) => (f ? { p50: u.ratio(p.p50, f.p50), p99: u.ratio(p.p99, f.p99) } : null);
  const detection = (r) => (r.detect === "busy" ? "B polling get() all the time" : r.detect === "scheduled" ? `B asleep until ${r.reader.marginUs / 1000} ms before each write` : r.detect);
  const replication = {
    header: ["measure", "p50", "p99", "mean", "× floor p50", "× floor p99"],
    rows: [
      [fl ? `floor: C → C, ${fl.idleGap.transport}, ${gap} ms gap` : `floor, ${gap} ms gap (skipped)`, ...cells(fl && fl.idleGap)],
      ...(fl && fl.node ? [[`Node floor: node:dgram, JSON.stringify → JSON.parse, ${gap} ms gap`, ...cells(fl.node, toFloor(fl.node, fl.idleGap))]] : []),
      ...runs.filter((r) => r.fromCall).map((r) => [`${r.label.split(",")[0]}, ${gap} ms gap, ${detection(r)}${r.options && Object.keys(r.options).length ? ` (${JSON.stringify(r.options)})` : ""}`, ...cells(r.fromCall, toFloor(r.fromCall, fl && fl.idleGap))]),
      [fl ? `floor: C → C, ${fl.backToBack.transport}, back to back` : "floor, back to back (skipped)", ...cells(fl && fl.backToBack)],
      ["this store, back to back, B polling all the time", ...cells(c.multicast.latency.fromCall, toFloor(c.multicast.latency.fromCall, fl && fl.backToBack))],
    ],
  };
  const redis = c.latencyIdleGap.runs.redis;
  const set = {
    header: [`set() called on A → its callback, ${gap} ms gap`, "p50", "p99", "mean", "/ connect-redis p50", "/ connect-redis p99"],
    rows: runs.filter((r) => r.setRow).map((r) => [`${r.label}${r.options && Object.keys(r.options).length ? ` (${JSON.stringify(r.options)})` : ""}`, ...cells(r.setCall, r === redis ? null : toFloor(r.setCall, redis && redis.setCall))]),
  };
  const notes = [];
  if (!fl) notes.push(`floor skipped: ${c.floor.skipped}`);
  else {
    if (fl.idleGap.transport !== "multicast") notes.push(`the floor fell back to unicast: ${fl.idleGap.reason}`);
    const v = c.floorVerdict;
    const r = c.ratios.idleGapToFloor;
    notes.push(`idle-gap p50 = ${u.fmtRatio(r.p50)} floor, p99 = ${u.fmtRatio(r.p99)} floor (targets ≤ ${v.targets.p50}× and ≤ ${v.targets.p99}×): p50 ${v.p50 ? "pass" : "MISS"}, p99 ${v.p99 ? "pass" : "MISS"}`);
    const n = c.ratios.idleGapToNodeFloor;
    if (n) notes.push(`idle-gap p50 = ${u.fmtRatio(n.p50)}, p99 = ${u.fmtRatio(n.p99)} the Node floor (the least a Node process does to send a session to another: stringify, node:dgram, parse), which is itself ${u.fmtRatio(c.ratios.nodeFloorToFloor.p50)} (p50) and ${u.fmtRatio(c.ratios.nodeFloorToFloor.p99)} (p99) the C floor; ${fl.node.lost} of its datagrams lost`);
    const b = c.ratios.backToBackToFloor;
    notes.push(`back to back p50 = ${u.fmtRatio(b.p50)} floor, p99 = ${u.fmtRatio(b.p99)} floor (no target); floor datagrams of ${fl.idleGap.bytes} B (the store's mean in the idle-gap run), ${fl.idleGap.lost + fl.backToBack.lost} lost`);
  }
  const head = c.latencyIdleGap.runs.multicast;
  const sched = runs.find((r) => r.reader);
  const gcOf = (r) => (r.gc ? `, ${r.gc.B.count} GCs (${r.gc.B.totalMs} ms)` : "");
  if (head && head.fromCall) {
    notes.push(
      `B polling all the time: its JS thread ${head.cpuUsPerWrite.B.js} µs CPU per write${gcOf(head)}; network threads A ${head.cpuUsPerWrite.A.net} µs + B ${head.cpuUsPerWrite.B.net} µs per write; A called set() ${head.writerLate.p50} µs after it was due (p99 ${head.writerLate.p99} µs)`
    );
  }
  if (sched) {
    const rd = sched.reader;
    notes.push(
      `B asleep until ${rd.marginUs} µs before each write (ticks handled ${rd.tickLate.p50} / ${rd.tickLate.p99} µs late, p50 / p99): ${rd.pollsPerWrite} probes and ${rd.spinUsPerWrite} µs spinning per write, ${rd.presentAtFirstProbe} of ${sched.samples} samples already there at the first probe (overstated); its JS thread ${sched.cpuUsPerWrite.B.js} µs CPU per write${gcOf(sched)}`
    );
  }
  const load = c.latencyIdleGap.loadAverage;
  if (load) notes.push(`load average before / after the idle-gap runs and the floor: ${load.before.join(", ")} / ${load.after.join(", ")}`);
  return { replication, set, notes };
}

const LATENCY_BEGIN = "<!-- cluster-latency: bench/cluster.js -->";
const LATENCY_END = "<!-- /cluster-latency -->";
function latencySection(c) {
  const t = latencyTables(c);
  return [
    LATENCY_BEGIN,
    `### Replication latency against the floor\n`,
    `${c.date ? `A run of the cluster part alone (\`node bench/cluster.js\`), ${c.date}. ` : ""}${c.method.latencyIdleGap}. Floor: ${c.method.floor}. Back to back: ${c.method.latency}. Ratios to the floor and to connect-redis are of the same run.\n`,
    table(t.replication.header, t.replication.rows) + "\n",
    table(t.set.header, t.set.rows) + "\n",
    ...t.notes.map((n) => `- ${n}`),
    "",
    LATENCY_END,
  ].join("\n") + "\n";
}

// `summary` with its cluster-latency section replaced by `cluster`'s; without one, added before
// the Memory section (or the touch section, or at the end).
function withLatencySection(summary, cluster) {
  const section = latencySection(cluster);
  const begin = summary.indexOf(LATENCY_BEGIN);
  const end = summary.indexOf(LATENCY_END);
  if (begin >= 0 && end > begin) return summary.slice(0, begin) + section + summary.slice(end + LATENCY_END.length).replace(/^\n/, "");
  for (const marker of ["\n## Memory", `\n${TOUCH_BEGIN}`]) {
    const at = summary.indexOf(marker);
    if (at >= 0) return summary.slice(0, at + 1) + section + "\n" + summary.slice(at + 1);
  }
  return summary.replace(/\n*$/, "\n\n") + section;
}

// `summary` with the section between `begin` and `end` replaced by `section`, or `section` appended.
function replaceSection(summary, begin, end, section) {
  const b = summary.indexOf(begin);
  const e = summary.indexOf(end);
  if (b >= 0 && e > b) return summary.slice(0, b) + section + summary.slice(e + end.length).replace(/^\n/, "");
  return summary.replace(/\n*$/, "\n\n") + section;
}

// `summary` with its touch section replaced by `touch`'s, or `touch`'s appended.
const withTouchSection = (summary, touch) => replaceSection(summary, TOUCH_BEGIN, TOUCH_END, touchSection(touch));

// ---- Read your writes across nodes (bench/readyourwrites.js): one table for the console and
// summary.md, one row per variant and mode; the other rows carry the login's time / the "off" row's.
const RYW_MODES = { noMiss: "off, missTimeout 0", off: "off", on: "on" };
function readYourWritesTable(ryw) {
  const us = (p, k) => (p ? `${u.fmt(p[k])} µs` : "n/a");
  const rows = [];
  for (const variant of [...new Set(Object.values(ryw.results).map((r) => r.variant))]) {
    const off = ryw.results[`off:${variant}`];
    for (const r of Object.keys(RYW_MODES).map((mode) => ryw.results[`${mode}:${variant}`]).filter(Boolean)) {
      const pct = (n) => `${u.fmt(n)} (${((100 * n) / r.iterations).toFixed(1)} %)`;
      rows.push([
        variant,
        RYW_MODES[r.mode],
        pct(r.stale),
        pct(r.logouts),
        r.staleDelayUs ? `${us(r.staleDelayUs, "p50")} / ${us(r.staleDelayUs, "max")}` : "",
        `${us(r.loginUs, "p50")} / ${us(r.loginUs, "p99")}`,
        r === off ? "" : `${u.fmtRatio(u.ratio(r.loginUs.p50, off.loginUs.p50))} / ${u.fmtRatio(u.ratio(r.loginUs.p99, off.loginUs.p99))}`,
        `${us(r.nextUs, "p50")} / ${us(r.nextUs, "p99")}`,
      ]);
    }
  }
  const header = ["variant", "waitForAck", "stale reads", "logouts for good", "stale read → B had it, p50 / max", "login on A, p50 / p99", "login / off row", "next request on B, p50 / p99"];
  return { header, rows };
}

const RYW_BEGIN = "<!-- readyourwrites: bench/readyourwrites.js -->";
const RYW_END = "<!-- /readyourwrites -->";
function readYourWritesSection(ryw) {
  const t = readYourWritesTable(ryw);
  return [
    RYW_BEGIN,
    `## Read your writes across nodes\n`,
    `${ryw.date ? `A run of \`node bench/readyourwrites.js\` alone, ${ryw.date}. ` : ""}${ryw.method}. A's ackTimeouts with waitForAck: ${ryw.ackTimeouts.on}.\n`,
    table(t.header, t.rows) + "\n",
    RYW_END,
  ].join("\n") + "\n";
}

const withReadYourWritesSection = (summary, ryw) => replaceSection(summary, RYW_BEGIN, RYW_END, readYourWritesSection(ryw));

// ---- SVG: one panel per store-op configuration (log scale) and one for HTTP req/s (linear)
const esc = (s) => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
const short = (n) => (n >= 1e6 ? `${(n / 1e6).toFixed(n >= 1e7 ? 0 : 1)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(n >= 1e4 ? 0 : 1)}k` : String(Math.round(n))).replace(".0", "");

function svg(results) {
  const panels = [];
  if (results.store) {
    for (const size of results.store.sizes) {
      for (const mode of Object.keys(size.modes)) {
        panels.push({
          title: `Store ops/s, ≈${size.size} sessions, ${MODE_LABELS[mode]} (log scale)`,
          log: true,
          groups: OPS.map((op) => ({ label: op, values: STORES.map((s) => size.modes[mode][op].opsPerSec[s]) })),
        });
      }
    }
  }
  if (results.http) {
    panels.push({
      title: `HTTP req/s, Express + express-session, ${results.http.connections} connections (linear scale)`,
      log: false,
      groups: [{ label: "GET / (read + increment a counter)", values: STORES.map((s) => results.http.results[s].reqPerSec) }],
    });
  }
  const W = 980;
  const PH = 250; // panel height
  const top = 64;
  const left = 70;
  const right = 20;
  const plotH = PH - 80;
  const H = top + panels.length * PH + 10;
  const out = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif" font-size="12">`);
  out.push(`<rect width="${W}" height="${H}" fill="#ffffff"/>`);
  const m = results.meta.machine;
  out.push(`<text x="${left}" y="22" font-size="15" font-weight="bold">express-session stores, one run: ${esc(results.meta.date.slice(0, 10))}</text>`);
  out.push(`<text x="${left}" y="40" fill="#555">${esc(`${m.cpus} × ${m.cpu}, ${m.memoryGB} GB, Node ${m.node}, ${results.meta.redisVersion.split(" ").slice(0, 3).join(" ")}`)}</text>`);
  // legend
  let lx = left;
  for (const s of STORES) {
    out.push(`<rect x="${lx}" y="48" width="12" height="12" fill="${COLORS[s]}"/><text x="${lx + 16}" y="58">${esc(LABELS[s])}</text>`);
    lx += 24 + LABELS[s].length * 7;
  }
  panels.forEach((p, k) => {
    const y0 = top + k * PH + 30; // top of plot area
    const plotW = W - left - right;
    const all = p.groups.flatMap((g) => g.values).filter((v) => v > 0);
    const max = Math.max(...all);
    let scale;
    let ticks;
    if (p.log) {
      const lo = Math.pow(10, Math.floor(Math.log10(Math.min(...all))));
      const hi = Math.pow(10, Math.ceil(Math.log10(max)));
      scale = (v) => (v > 0 ? (Math.log10(v / lo) / Math.log10(hi / lo)) * plotH : 0);
      ticks = [];
      for (let t = lo; t <= hi * 1.0001; t *= 10) ticks.push(t);
    } else {
      const step = niceStep(max / 5);
      const hi = Math.ceil(max / step) * step;
      scale = (v) => (v / hi) * plotH;
      ticks = [];
      for (let t = 0; t <= hi + step / 2; t += step) ticks.push(t);
    }
    out.push(`<text x="${left}" y="${y0 - 10}" font-size="13" font-weight="bold">${esc(p.title)}</text>`);
    for (const t of ticks) {
      const y = y0 + plotH - scale(t);
      out.push(`<line x1="${left}" x2="${W - right}" y1="${y.toFixed(1)}" y2="${y.toFixed(1)}" stroke="#e3e3e3"/>`);
      out.push(`<text x="${left - 6}" y="${(y + 4).toFixed(1)}" text-anchor="end" fill="#555">${short(t)}</text>`);
    }
    out.push(`<line x1="${left}" x2="${W - right}" y1="${y0 + plotH}" y2="${y0 + plotH}" stroke="#333"/>`);
    const groupW = plotW / p.groups.length;
    const barW = Math.min(36, (groupW * 0.8) / STORES.length);
    p.groups.forEach((g, gi) => {
      const gx = left + gi * groupW + (groupW - barW * STORES.length) / 2;
      g.values.forEach((v, si) => {
        const h = scale(v);
        const x = gx + si * barW;
        const y = y0 + plotH - h;
        out.push(`<rect x="${x.toFixed(1)}" y="${y.toFixed(1)}" width="${(barW - 2).toFixed(1)}" height="${Math.max(0, h).toFixed(1)}" fill="${COLORS[STORES[si]]}"><title>${esc(`${LABELS[STORES[si]]} ${g.label}: ${u.fmt(v)}`)}</title></rect>`);
        out.push(`<text x="${(x + (barW - 2) / 2).toFixed(1)}" y="${(y - 3).toFixed(1)}" text-anchor="middle" font-size="10" fill="#333">${short(v)}</text>`);
      });
      out.push(`<text x="${(left + gi * groupW + groupW / 2).toFixed(1)}" y="${y0 + plotH + 16}" text-anchor="middle" font-size="12">${esc(g.label)}</text>`);
    });
  });
  out.push(`</svg>`);
  return out.join("\n") + "\n";
}

function niceStep(raw) {
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const f of [1, 2, 2.5, 5, 10]) if (raw <= f * p) return f * p;
  return 10 * p;
}

module.exports = { evaluate, markdown, svg, withTouchSection, latencyTables, withLatencySection, readYourWritesTable, withReadYourWritesSection, TARGETS };
