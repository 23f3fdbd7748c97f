"use strict";
// `npm run bench`: every benchmark in one run on one machine, the figures of each part measured
// next to those of the stores a user would pick instead (express-session's MemoryStore,
// memorystore, connect-redis on a redis-server this script starts and stops on 127.0.0.1).
//   1. store  (bench/store.js)    set/get/touch/destroy ops/s, 1 KB and 16 KB, sequential and 64 in flight
//   2. http   (bench/http.js)     Express + express-session under autocannon: req/s and p99
//   3. cluster (bench/cluster.js) replication latency (back to back, and with an idle gap against
//                                 a C UDP floor, bench/floor/udp_floor.c), replicated writes/s, state transfer
//   4. memory (bench/memory.js)   resident memory per session at 100,000 and 1,000,000 sessions
//   5. touch  (bench/touch.js)    read-only requests on a node of 3: datagrams, bytes and peer CPU
//                                 per request with touchAfter 0 and 60
//   6. readyourwrites (bench/readyourwrites.js) login on one app of 3, next request on another:
//                                 stale reads, logouts for good and login time, waitForAck off and on
//   7. persist (bench/persist.js) snapshots on disk at 100,000 and 1,000,000 sessions: write and
//                                 load time, file size, next to redis-server BGSAVE and restart load;
//                                 set/get p99 during a snapshot next to outside it
// Writes bench/results/<part>.json, and for a full run bench/results/bench.json (everything),
// summary.md (tables and target verdicts) and chart.svg.
//   node bench/index.js [store] [http] [cluster] [memory] [touch] [readyourwrites] [persist]   (default: all seven)
// Benchmarks on a small machine are noise-sensitive: run on an otherwise idle machine (the load
// average is printed first, and recorded).
const fs = require("fs");
const os = require("os");
const path = require("path");
const { execSync } = require("child_process");
const u = require("./util");
const { startRedis } = require("./redis");
const report = require("./report");

const PARTS = ["store", "http", "cluster", "memory", "touch", "readyourwrites", "persist"];

function otherBusyProcesses() {
  try {
    const out = execSync("ps -eo pid,ppid,pcpu,comm --no-headers", { encoding: "utf8" });
    return out
      .split("\n")
      .map((l) => l.trim().split(/\s+/))
      .filter(([pid, ppid, cpu, comm]) => comm && Number(pid) !== process.pid && Number(ppid) !== process.pid && Number(cpu) > 20 && /^(node|cargo|rustc|cc|ld|redis-server)/.test(comm))
      .map(([pid, , cpu, comm]) => `${comm}(${pid}, ${cpu}%)`);
  } catch {
    return [];
  }
}

async function main() {
  const wanted = process.argv.slice(2).length ? process.argv.slice(2) : PARTS;
  for (const p of wanted) if (!PARTS.includes(p)) throw new Error(`unknown part "${p}" (parts: ${PARTS.join(", ")})`);
  const full = PARTS.every((p) => wanted.includes(p));
  const started = Date.now();
  const machine = u.machine();
  const engine = u.addonHash();
  const loadBefore = os.loadavg().map((x) => Math.round(x * 100) / 100);
  console.log(`Node ${machine.node} | ${machine.cpus} × ${machine.cpu} | ${machine.memoryGB} GB | ${machine.platform} | engine ${engine}`);
  console.log(`load average ${loadBefore.join(", ")}`);
  if (loadBefore[0] > 1) console.log(`WARNING: the machine is busy (load ${loadBefore[0]}): figures will be noisy`);
  const busy = otherBusyProcesses();
  if (busy.length) console.log(`WARNING: other busy processes: ${busy.join(", ")}`);

  const redis = await startRedis();
  console.log(`${redis.version.split(" ").slice(0, 3).join(" ")} on 127.0.0.1:${redis.port} (pid ${redis.pid})`);
  const results = {};
  const partTimes = {};
  try {
    for (const part of PARTS.filter((p) => wanted.includes(p))) {
      const t = Date.now();
      console.log(`\n=== ${part}`);
      if (part === "store") results.store = await require("./store").run({ redisPort: redis.port });
      if (part === "http") results.http = await require("./http").run({ redisPort: redis.port });
      if (part === "cluster") results.cluster = await require("./cluster").run({ redisPort: redis.port });
      if (part === "memory") results.memory = await require("./memory").run({ redis });
      if (part === "touch") results.touch = await require("./touch").run();
      if (part === "readyourwrites") results.readyourwrites = await require("./readyourwrites").run();
      if (part === "persist") results.persist = await require("./persist").run();
      await redis.flush();
      partTimes[part] = { seconds: Math.round((Date.now() - t) / 1000), loadAfter: os.loadavg().map((x) => Math.round(x * 100) / 100), otherBusyProcesses: otherBusyProcesses() };
      console.log(`(${part}: ${partTimes[part].seconds} s, load average ${partTimes[part].loadAfter.join(", ")}${partTimes[part].otherBusyProcesses.length ? `; WARNING: other busy processes: ${partTimes[part].otherBusyProcesses.join(", ")}` : ""})`);
    }
  } finally {
    await redis.stop();
  }

  const meta = {
    date: new Date().toISOString(),
    seconds: (Date.now() - started) / 1000,
    machine,
    engine,
    engineChanged: u.addonHash() !== engine,
    redisVersion: redis.version,
    loadBefore,
    loadAfter: os.loadavg().map((x) => Math.round(x * 100) / 100),
    otherBusyProcesses: busy,
    parts: partTimes,
  };
  if (meta.engineChanged) console.log("WARNING: the engine binary changed during the run: rerun");
  for (const part of Object.keys(results)) u.writeJSON(`${part}.json`, { meta, ...results[part] });
  const verdicts = report.evaluate(results);
  console.log("\ntargets:");
  for (const v of verdicts) console.log(`  ${v.pass ? "pass" : "MISS"}  ${v.target}: ${v.measured}`);
  if (full) {
    const all = { meta, targets: report.TARGETS, verdicts, ...results };
    u.writeJSON("bench.json", all);
    const markdown = report.markdown(all, verdicts);
    fs.writeFileSync(path.join(u.RESULTS_DIR, "summary.md"), results.persist ? require("./persist").withPersistSection(markdown, { ...results.persist, date: meta.date }) : markdown);
    fs.writeFileSync(path.join(u.RESULTS_DIR, "chart.svg"), report.svg(all));
    console.log(`\nwritten bench/results/{bench,${PARTS.join(",")}}.json, summary.md, chart.svg (${Math.round(meta.seconds)} s)`);
  } else {
    // the touch and read-your-writes parts and the cluster latency have sections of their own in
    // summary.md, replaced by a partial run too
    if (results.touch || results.cluster || results.readyourwrites || results.persist) {
      const summary = path.join(u.RESULTS_DIR, "summary.md");
      let text = fs.existsSync(summary) ? fs.readFileSync(summary, "utf8") : "# Benchmark results\n";
      if (results.touch) text = report.withTouchSection(text, { ...results.touch, date: meta.date });
      if (results.cluster) text = report.withLatencySection(text, { ...results.cluster, date: meta.date });
      if (results.readyourwrites) text = report.withReadYourWritesSection(text, { ...results.readyourwrites, date: meta.date });
      if (results.persist) text = require("./persist").withPersistSection(text, { ...results.persist, date: meta.date });
      fs.writeFileSync(summary, text);
    }
    const sections = [results.touch && "touch", results.cluster && "cluster latency", results.readyourwrites && "read-your-writes", results.persist && "persist"].filter(Boolean);
    console.log(`\nwritten bench/results/{${Object.keys(results).join(",")}}.json (a partial run: summary.md and chart.svg are only written by a full run${sections.length ? `, but for the ${sections.join(" and ")} section${sections.length > 1 ? "s" : ""} of summary.md` : ""})`);
  }
}

u.limitRun("bench", 30);

main()
  .catch((err) => {
    console.error(err);
    process.exitCode = 1;
  })
  .finally(u.killAll);
