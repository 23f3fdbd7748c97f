"use strict";
// HTTP client of the rolling-restart scenario, run in its own namespace ("client" host) with
// startNode({}, { netns, script: this file }): it speaks the protocol of test/cluster/node.js
// (sends "started", answers { id, cmd, args }), without a store.
//
// It keeps `sessions` browser sessions (one cookie each) and sends GET /visit for them round-robin
// to the Express nodes, each session's requests one after another. A request that cannot reach a
// node (refused, reset, timed out, 503 while the node shuts down) is retried on the next node and
// counted as a retry, not as a failure. Failures:
//   lost       a 200 that shows a fresh session (or another sid) for a cookie whose session exists
//   error      any other status
//   unavailable no node answered after every retry
// Also counted (not failures): stale (views not above the last one this client saw: a node that
// had not yet received the previous write) and jumps (views above last + 1: a request processed
// whose answer was lost, then retried).
const http = require("node:http");
const { setTimeout: sleep } = require("node:timers/promises");

const REQUEST_TIMEOUT_MS = 3_000;

function request(target, path, cookie) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: target.host,
        port: target.port,
        path,
        method: "GET",
        agent: false,
        headers: { Connection: "close", ...(cookie ? { Cookie: cookie } : {}) },
        timeout: REQUEST_TIMEOUT_MS,
      },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (chunk) => (body += chunk));
        res.on("end", () => {
          let json = null;
          try {
            json = JSON.parse(body);
          } catch {
            // not JSON (error page)
          }
          const setCookie = (res.headers["set-cookie"] || []).find((c) => c.startsWith("connect.sid="));
          resolve({ status: res.statusCode, body: json, text: body, cookie: setCookie ? setCookie.split(";")[0] : null });
        });
        res.on("error", reject);
      }
    );
    req.on("timeout", () => req.destroy(new Error("request timed out")));
    req.on("error", reject);
    req.end();
  });
}

function main() {
  const send = (message) => {
    if (process.connected) process.send(message);
  };
  let targets = [];
  let next = 0; // round-robin over targets, shared by every worker
  const sessions = [];
  const stats = { requests: 0, ok: 0, retries: 0, stale: 0, jumps: 0, failures: [], retryReasons: {} };
  let running = null;

  /** One request for `s`, retried on the next node while nodes cannot answer. */
  async function visit(s, path = "/visit") {
    for (let attempt = 0; attempt < 4 * targets.length; attempt++) {
      const target = targets[next++ % targets.length];
      stats.requests += 1;
      let res;
      try {
        res = await request(target, path, s && s.cookie);
      } catch (err) {
        stats.retries += 1;
        const reason = err.code || err.message;
        stats.retryReasons[reason] = (stats.retryReasons[reason] || 0) + 1;
        await sleep(20);
        continue;
      }
      if (res.status === 503) {
        stats.retries += 1;
        stats.retryReasons["503"] = (stats.retryReasons["503"] || 0) + 1;
        await sleep(20);
        continue;
      }
      return { target, res };
    }
    return { target: null, res: null };
  }

  function fail(kind, s, target, detail) {
    stats.failures.push({ kind, sid: s && s.sid, target: target && target.host, at: Date.now(), detail });
  }

  /** One /visit of an existing session, checked. */
  async function step(s) {
    const { target, res } = await visit(s);
    if (!res) return fail("unavailable", s, null, "no node answered");
    if (res.status !== 200 || !res.body) return fail("error", s, target, `HTTP ${res.status}: ${res.text.slice(0, 200)}`);
    const { sid, views, fresh } = res.body;
    if (fresh || sid !== s.sid) {
      return fail("lost", s, target, `got a fresh session (sid ${sid}, views ${views}) for a session at views ${s.views}`);
    }
    stats.ok += 1;
    if (views <= s.views) stats.stale += 1;
    else if (views > s.views + 1) stats.jumps += 1;
    s.views = views;
    s.lastTarget = target.host;
    return undefined;
  }

  async function loop(mine, stop) {
    while (!stop.requested) {
      for (const s of mine) {
        if (stop.requested) break;
        await step(s);
      }
    }
  }

  const commands = {
    ping: () => process.pid,
    close: () => null,
    /** Creates `count` sessions (one /visit each, spread over the targets); resolves with their sids. */
    async create(newTargets, count) {
      targets = newTargets;
      for (let i = 0; i < count; i++) {
        const { target, res } = await visit(null);
        if (!res || res.status !== 200 || !res.cookie) throw new Error(`could not create session ${i}: ${res ? `HTTP ${res.status} ${res.text}` : "no node answered"}`);
        sessions.push({ sid: res.body.sid, cookie: res.cookie, views: res.body.views, createdOn: target.host });
      }
      return sessions.map((s) => s.sid);
    },
    /** Starts `workers` loops, each owning a share of the sessions, until stop(). */
    start(workers = 5) {
      const stop = { requested: false };
      const shares = Array.from({ length: workers }, (_, w) => sessions.filter((_, i) => i % workers === w));
      running = { stop, done: Promise.all(shares.map((mine) => loop(mine, stop))), startedAt: Date.now() };
      return null;
    },
    /** Stops the loops; resolves with the figures and the last views of every session. */
    async stop() {
      running.stop.requested = true;
      await running.done;
      const elapsedMs = Date.now() - running.startedAt;
      running = null;
      return { ...stats, elapsedMs, sessions: sessions.map(({ sid, views }) => ({ sid, views })) };
    },
    /** GET /peek of every session on every target: [{ sid, target, status, views, fresh, sidSeen }]. */
    async peekAll() {
      const out = [];
      for (const s of sessions) {
        for (const target of targets) {
          try {
            const res = await request(target, "/peek", s.cookie);
            out.push({ sid: s.sid, target: target.host, status: res.status, views: res.body && res.body.views, fresh: res.body && res.body.fresh, sidSeen: res.body && res.body.sid });
          } catch (err) {
            out.push({ sid: s.sid, target: target.host, status: null, error: err.message });
          }
        }
      }
      return out;
    },
  };

  process.on("message", async ({ id, cmd, args = [] }) => {
    try {
      if (!Object.hasOwn(commands, cmd)) throw new Error(`unknown command "${cmd}"`);
      const result = await commands[cmd](...args);
      send({ id, result: result === undefined ? null : result });
    } catch (err) {
      send({ id, error: { message: err.message, stack: err.stack } });
    }
  });
  process.on("disconnect", () => process.exit(0));
  send({ type: "started", pid: process.pid, self: null, options: {} });
}

main();
