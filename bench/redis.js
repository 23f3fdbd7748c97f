"use strict";
// A redis-server of the bench's own, for connect-redis: 127.0.0.1 only, a random port, no
// persistence; started by startRedis() and stopped by stop() (and killed when this process exits).
// If redis-server is missing, bench/setup.sh installs Debian's package first.
const crypto = require("crypto");
const path = require("path");
const { spawn, spawnSync, execFileSync } = require("child_process");
const { createClient } = require("redis");
const { RedisStore } = require("connect-redis");
const u = require("./util");
const { rssOf, sleep } = u;

function ensureInstalled() {
  try {
    execFileSync("redis-server", ["--version"], { stdio: "ignore" });
    return;
  } catch {
    console.log("redis-server not found: running bench/setup.sh (apt-get install -y redis-server)");
  }
  const r = spawnSync("sh", [path.join(__dirname, "setup.sh")], { stdio: "inherit" });
  if (r.status !== 0) throw new Error("redis-server is needed for the connect-redis comparison: `apt-get install -y redis-server`, then rerun");
}

const live = new Set();
process.on("exit", () => {
  for (const p of live) p.kill("SIGKILL");
});

async function startRedis() {
  ensureInstalled();
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = 20000 + crypto.randomInt(40000);
    const proc = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "yes", "--loglevel", "warning"], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    live.add(proc);
    let output = "";
    proc.stdout.on("data", (d) => (output += d));
    proc.stderr.on("data", (d) => (output += d));
    const exited = new Promise((resolve) => proc.once("exit", resolve));
    proc.once("exit", () => live.delete(proc));
    const client = createClient({ socket: { host: "127.0.0.1", port, reconnectStrategy: false } });
    client.on("error", () => {});
    let up = false;
    for (let i = 0; i < 50 && proc.exitCode === null; i++) {
      try {
        await client.connect();
        await client.ping();
        up = true;
        break;
      } catch {
        await sleep(100);
      }
    }
    if (!up) {
      proc.kill("SIGKILL");
      await exited;
      if (/Address already in use/.test(output)) continue;
      throw new Error(`redis-server did not start on 127.0.0.1:${port}: ${output.trim()}`);
    }
    const info = async (section) => {
      const text = await client.info(section);
      return Object.fromEntries(text.split(/\r?\n/).filter((l) => l.includes(":")).map((l) => l.split(":", 2)));
    };
    return {
      port,
      pid: proc.pid,
      version: execFileSync("redis-server", ["--version"], { encoding: "utf8" }).trim(),
      client,
      rss: () => rssOf(proc.pid),
      info,
      flush: () => client.flushAll(),
      async stop() {
        if (proc.exitCode !== null || proc.signalCode !== null) return;
        await client.quit().catch(() => {});
        proc.kill("SIGTERM");
        const timer = setTimeout(() => proc.kill("SIGKILL"), 3000);
        await exited;
        clearTimeout(timer);
      },
    };
  }
  throw new Error("redis-server: no free port found");
}

// A connect-redis store (v9: `new RedisStore({ client })`, client from redis's createClient) on
// that server; `close()` disconnects its client.
async function redisStore(port, prefix = "sess:") {
  const client = createClient({ socket: { host: "127.0.0.1", port } });
  client.on("error", (err) => console.error(`redis client: ${err.message}`));
  await client.connect();
  const store = new RedisStore({ client, prefix });
  store.close = () => client.quit().catch(() => {});
  return store;
}


/**
 * Runs one part of the bench on its own (`node bench/<part>.js`): starts redis-server, runs
 * `run(redis)`, writes its result to bench/results/`file`, and always stops what it started.
 */
function runAlone(file, run) {
  (async () => {
    const redis = await startRedis();
    try {
      const m = u.machine();
      console.log(`Node ${m.node} | ${m.cpu} (${m.cpus} CPUs) | ${m.platform} | ${redis.version} | engine ${u.addonHash()}`);
      const result = await run(redis);
      const written = u.writeJSON(file, { date: new Date().toISOString(), machine: m, engine: { addonSha256: u.addonHash() }, ...result });
      console.log(`written ${written}`);
    } finally {
      await redis.stop();
      u.killAll();
    }
  })().catch((err) => {
    console.error(err);
    process.exitCode = 1;
  });
}

module.exports = {
  runAlone, startRedis, redisStore, ensureInstalled };
