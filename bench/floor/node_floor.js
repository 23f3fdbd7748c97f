"use strict";
// node_floor: the least a Node.js process can do to replicate a session to another over loopback,
// the second floor bench/cluster.js compares this store's idle-gap latency with (next to
// udp_floor.c, which has no JavaScript on either side).
//
// The sender (this process) is paced as the store's writer in the idle-gap run (bench/util.js
// metronome: write k due at start + k × gap, a worker ticks the event loop); at each tick it
// stamps hrtime, JSON.stringifies the same ≈1 KB session (what set() must do), and sends it with
// node:dgram to the group on 127.0.0.1 as the store sends (IP_MULTICAST_IF 127.0.0.1, TTL 0,
// loopback on). The receiver (a forked child, idle in its event loop as a store's network thread
// is in epoll) JSON.parses each datagram (what get() must do) and stamps hrtime: latency = the
// difference (one host, one clock). No reliability, no table, no engine: only Node's own path.
//   node bench/floor/node_floor.js [samples] [warmup] [gapUs] [bytes] [group]  (prints one JSON line)
const dgram = require("dgram");
const { fork } = require("child_process");
const u = require("../util");

const now = process.hrtime.bigint;

function receive(group, samples, warmup) {
  const socket = dgram.createSocket({ type: "udp4", reuseAddr: true });
  const latencies = [];
  let received = 0;
  const report = () => {
    if (!socket.listenerCount("message")) return;
    socket.removeAllListeners("message");
    process.send({ latencies, lost: warmup + samples - received });
    socket.close();
  };
  socket.on("message", (buf) => {
    const message = JSON.parse(buf.toString());
    const t = now();
    received++;
    if (message.i >= warmup) latencies.push(Number(t - BigInt(message.stamp)) / 1000);
    if (message.i + 1 >= warmup + samples) report();
  });
  process.once("message", report); // the sender is done and the last datagram was lost
  socket.bind(0, "0.0.0.0", () => {
    socket.addMembership(group, "127.0.0.1");
    process.send({ port: socket.address().port });
  });
}

/** Runs the pair; resolves with percentiles in µs (as bench/util.js percentiles), bytes and loss. */
function run({ samples, warmup, gapUs, bytes, group }) {
  return new Promise((resolve, reject) => {
    const child = fork(__filename, ["receive", group, String(samples), String(warmup)], { stdio: ["ignore", "inherit", "inherit", "ipc"] });
    const socket = dgram.createSocket({ type: "udp4" });
    let ticks = null;
    let datagramBytes = 0;
    const fail = (err) => {
      if (ticks) ticks.terminate();
      child.kill();
      socket.close();
      reject(err);
    };
    child.on("error", fail);
    child.on("exit", (code) => code && fail(new Error(`node_floor receiver exited with ${code}`)));
    child.once("message", ({ port }) => {
      socket.bind(0, "127.0.0.1", () => {
        socket.setMulticastInterface("127.0.0.1");
        socket.setMulticastTTL(0);
        socket.setMulticastLoopback(true);
        const session = u.makeSession(bytes);
        const start = now() + 100000000n;
        const count = warmup + samples;
        ticks = u.metronome(start, BigInt(gapUs) * 1000n, count, (i) => {
          const stamp = now();
          session.user.id = i;
          const datagram = `{"i":${i},"stamp":"${stamp}","session":${JSON.stringify(session)}}`;
          datagramBytes = datagram.length;
          socket.send(datagram, port, group);
          if (i + 1 < count) return;
          ticks.terminate();
          setTimeout(() => child.connected && child.send("report"), 1000).unref();
        });
      });
      child.once("message", ({ latencies, lost }) => {
        socket.close();
        child.kill();
        resolve({ transport: "multicast", group, gapUs, bytes: datagramBytes, samples, warmup, lost, unit: "µs", ...u.percentiles(latencies), mean: u.round1(latencies.reduce((sum, x) => sum + x, 0) / latencies.length) });
      });
    });
  });
}

if (require.main === module) {
  const [mode, ...args] = process.argv.slice(2);
  if (mode === "receive") receive(args[0], Number(args[1]), Number(args[2]));
  else {
    const [samples = 3000, warmup = 200, gapUs = 3000, bytes = 1024, group = "228.0.0.5"] = [mode, ...args].filter((a) => a !== undefined);
    run({ samples: Number(samples), warmup: Number(warmup), gapUs: Number(gapUs), bytes: Number(bytes), group })
      .then((r) => console.log(JSON.stringify(r)))
      .catch((err) => {
        console.error(err);
        process.exitCode = 1;
      });
  }
}

module.exports = { run };
