// A typed usage example of express-session-multicast, compiled by test/types.test.js with
// `tsc --noEmit --strict`. It is never run. Lines marked @ts-expect-error must be rejected by
// the typings: if index.d.ts stopped catching those mistakes, the compilation would fail.
import express = require("express");
import session = require("express-session");
import expressSessionMulticast = require("../..");

type Stats = expressSessionMulticast.MulticastStoreStats;
type Member = expressSessionMulticast.Member;
type MemberEvent = expressSessionMulticast.MemberEvent;

const MulticastStore: expressSessionMulticast.MulticastStoreConstructor = expressSessionMulticast(session);

// ----- options -----------------------------------------------------------------------------
const options: expressSessionMulticast.MulticastStoreOptions = {
    use: "v4",
    multicast: "228.0.0.5",
    multicastPort: 4000,
    ipv4: "127.0.0.1",
    multicastTTL: 0,
    useSessionTTL: true,
    sessionTTL: 3600,
    gracefullShutdown: true,
    logger: console,
    secret: [Buffer.alloc(32), "an older passphrase", new Uint8Array(32)],
    cluster: "shop",
    peers: ["10.0.0.2:4000", "app-2.internal:4000"],
    maxSessionBytes: 1 << 20,
    heartbeatInterval: 500,
    failureTimeout: 3000,
    maxClockSkew: 1000,
    missTimeout: 20,
    ttl: 86400,
    disableTouch: false,
    touchAfter: 60,
    waitForAck: true,
    ackTimeout: 300,
    serializer: { stringify: (sess) => JSON.stringify(sess), parse: (text) => JSON.parse(text) },
};
const store: expressSessionMulticast.MulticastStore = new MulticastStore(options);
new MulticastStore();
new MulticastStore({ use: "v6", ipv6: "::1", multicast: false, gracefulShutdown: false });
// A logger with only the three required levels is enough.
new MulticastStore({ logger: { info() {}, warn() {}, error() {} } });

// A ttl function gets the session and returns seconds.
new MulticastStore({ ttl: (sess: session.SessionData) => (sess.cookie.originalMaxAge ?? 3_600_000) / 1000 });
// @ts-expect-error a ttl function returns seconds, not a string
new MulticastStore({ ttl: () => "1h" });
// @ts-expect-error a serializer needs parse too
new MulticastStore({ serializer: { stringify: JSON.stringify } });
const ttlOption: number | ((sess: session.SessionData) => number) = store.options.ttl;
const touchAfter: number = store.options.touchAfter;
const waitForAck: boolean = store.options.waitForAck;
// @ts-expect-error ackTimeout is a number of ms
new MulticastStore({ ackTimeout: "300ms" });
// @ts-expect-error maxClockSkew is a number of milliseconds
new MulticastStore({ maxClockSkew: "1s" });
const missTimeout: number = store.options.missTimeout;

// @ts-expect-error multicastPort is a number
new MulticastStore({ multicastPort: "4000" });
// @ts-expect-error use is "v4" or "v6"
new MulticastStore({ use: "ipv4" });
// @ts-expect-error a logger needs info, warn and error
new MulticastStore({ logger: { info() {} } });

// The factory also takes connect's shape.
expressSessionMulticast({ Store: session.Store });

// ----- with Express ------------------------------------------------------------------------
const app = express();
app.use(session({ secret: "…", resave: false, saveUninitialized: false, store }));
app.get("/metrics", (_req, res) => {
    res.type("text/plain; version=0.0.4").send(store.metrics());
});

// ----- session methods, callback style -----------------------------------------------------
const data: session.SessionData = {
    cookie: new session.Cookie(),
};
store.get("sid", (err: Error | null, sess?: session.SessionData | null) => {
    if (err) throw err;
    if (sess) console.log(sess.cookie.maxAge);
});
store.set("sid", data, (err) => console.log(err?.message));
store.touch("sid", data, (err) => console.log(err));
store.destroy("sid", (err) => console.log(err));
store.all((err, sessions) => console.log(err, sessions && Object.keys(sessions)));
store.length((err, length) => console.log(err, (length ?? 0) + 1));
store.clear((err) => console.log(err));

// ----- session methods, Promise style ------------------------------------------------------
async function promises(): Promise<void> {
    const sess: session.SessionData | null = await store.get("sid");
    await store.set("sid", data);
    await store.touch("sid", data);
    await store.destroy("sid");
    const all: { [sid: string]: session.SessionData } = await store.all();
    const length: number = await store.length();
    await store.clear();
    await store.ready();
    await store.close();
    console.log(sess, all, length);
    // @ts-expect-error get() resolves with a session, not a string
    const wrong: string = await store.get("sid");
    console.log(wrong);
}

// ----- stats(), members(), metrics() -------------------------------------------------------
const stats: Stats = store.stats();
const counters: number[] = [
    stats.sessions,
    stats.tombstones,
    stats.sessionBytes,
    stats.entries,
    stats.purged,
    stats.rejectedTooLarge,
    stats.localTouches,
    stats.members,
];
const ready: boolean = stats.ready;
const networkState: "up" | "off" | "failed" | "closed" = stats.network;
const networkError: string | undefined = stats.networkError;
const network: (number | undefined)[] = [
    stats.datagramsSent,
    stats.writeBatches,
    stats.directBatches,
    stats.bytesSent,
    stats.datagramsReceived,
    stats.bytesReceived,
    stats.retransmissions,
    stats.naksSent,
    stats.naksReceived,
    stats.duplicates,
    stats.ownLoopback,
    stats.stateTransfers,
    stats.antiEntropySyncs,
    stats.syncEntriesReceived,
    stats.missQueries,
    stats.missesRecovered,
    stats.missesNotFound,
    stats.missTimeouts,
    stats.missesRateLimited,
    stats.replicationLagMs,
    stats.missingDatagrams,
    stats.retransmitBufferBytes,
    stats.reassemblyBytes,
];
const authFailed: number = stats.dropped?.authFailed ?? 0;
// @ts-expect-error not a field of stats()
stats.latency;
// @ts-expect-error network counters are absent when the node is not networked
const sent: number = stats.datagramsSent;

const members: Member[] = store.members();
for (const m of members) {
    const address: string | null = m.address;
    const ports: (number | null)[] = [m.port, m.tcpPort];
    const incarnation: number = m.incarnation;
    const lastHeard: number | null = m.lastHeard;
    const clockOffsetMs: number | null = m.clockOffsetMs;
    if (clockOffsetMs !== null && Math.abs(clockOffsetMs) > store.options.maxClockSkew) console.log(m.id, "clock skew");
    if (m.state === "alive" || m.state === "suspect" || m.state === "dead" || m.state === "left" || m.state === "isolated") {
        console.log(m.id, address, ports, incarnation, lastHeard, m.self);
    }
    // @ts-expect-error "gone" is not a member state
    if (m.state === "gone") console.log(m);
}
const text: string = store.metrics();

// ----- events ------------------------------------------------------------------------------
store.on("disconnect", () => console.log("the store was closed"));
store.on("member", (event: MemberEvent) => {
    const type: "join" | "leave" | "suspect" | "dead" | "alive" = event.type;
    console.log(type, event.node.id, event.node.state);
});
store.once("error", (err: Error) => {
    const code = (err as expressSessionMulticast.StoreError).code;
    if (code === "ERR_NETWORK" || code === "ERR_SESSION_TOO_LARGE" || code === "ERR_STORE_CLOSED") console.log(code);
    if (code === "ERR_SESSION_NOT_SERIALIZABLE" || code === "ERR_INVALID_TTL") console.log(code);
});
store.off("member", () => {});
const logger: expressSessionMulticast.Logger = store.logger;
const port: number = store.options.multicastPort;

console.log(ttlOption, touchAfter, waitForAck, missTimeout, networkState, networkError, counters, ready, network, authFailed, sent, text, logger, port, promises);
