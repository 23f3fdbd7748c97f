// Type definitions for express-session-multicast.
// TypeScript users also need `@types/express-session` (and usually `@types/express`).

import { SessionData, Store } from "express-session";

/** What the factory accepts: express-session itself, or connect's shapes. */
type StoreConstructorLike = abstract new (...args: any[]) => Store;

/**
 * The store class returned by the factory. Its instances are described by
 * `expressSessionMulticast.MulticastStore`.
 */
declare class MulticastStoreBase extends Store {
    /**
     * Creates the store and starts its native engine.
     * @throws {TypeError} when an option is invalid or unknown; the message names the option.
     */
    constructor(options?: expressSessionMulticast.MulticastStoreOptions);

    /** The options after validation, with every default filled in (`logger` excluded; `secret` shown only as a key count). */
    readonly options: Readonly<expressSessionMulticast.MulticastStoreNormalizedOptions>;

    /** The logger in use (`options.logger`, or `console`). */
    readonly logger: expressSessionMulticast.Logger;

    /**
     * Reads a session. Every call returns a fresh object. `session` is `null` when the sid is
     * unknown, destroyed or expired. Local, unless this node holds nothing for the sid, not even
     * a tombstone: then it asks the live members first, for at most `missTimeout` ms (the
     * session may have been written on another node and not have arrived yet).
     */
    get(sid: string, callback: (err: Error | null, session?: SessionData | null) => void): void;
    get(sid: string): Promise<SessionData | null>;

    /**
     * Stores a session (last writer wins). `session` is not mutated. Its expiry is taken
     * from `session.cookie.expires`, else from `ttl` (see the README, "Session expiry").
     * Fails with `ERR_SESSION_TOO_LARGE` when it exceeds `maxSessionBytes`, with
     * `ERR_SESSION_NOT_SERIALIZABLE` when it cannot be stored as it is (a BigInt, a cycle, a Map
     * or Set without a `serializer`), and with `ERR_INVALID_TTL` when a `ttl` function returns no
     * positive number. Nothing is stored then.
     */
    set(sid: string, session: SessionData, callback: (err: Error | null) => void): void;
    set(sid: string, session: SessionData): Promise<void>;

    /**
     * Updates only the stored cookie and expiry of an existing session; never its data.
     * Does nothing with `disableTouch`; with `touchAfter`, a small step is kept on this node.
     */
    touch(sid: string, session: SessionData, callback: (err: Error | null) => void): void;
    touch(sid: string, session: SessionData): Promise<void>;

    /** Destroys a session; a tombstone keeps it from being brought back by a late write. */
    destroy(sid: string, callback: (err: Error | null) => void): void;
    destroy(sid: string): Promise<void>;

    /** Every live (unexpired) session, keyed by sid. */
    all(callback: (err: Error | null, sessions?: { [sid: string]: SessionData }) => void): void;
    all(): Promise<{ [sid: string]: SessionData }>;

    /** The number of live (unexpired) sessions. */
    length(callback: (err: Error | null, length?: number) => void): void;
    length(): Promise<number>;

    /** Removes every session. */
    clear(callback: (err: Error | null) => void): void;
    clear(): Promise<void>;

    /**
     * Resolves once the node has joined the cluster and finished its initial state transfer,
     * or has found itself alone. Await it before accepting requests.
     */
    ready(): Promise<void>;

    /**
     * Leaves the cluster gracefully and releases every socket and thread. Idempotent. It first
     * sends the writes still queued and waits, at most 1 s, until every live member has
     * acknowledged them (a warning is logged if some did not). Emits `disconnect` (express-session then serves requests without a session), and every
     * store method called afterwards fails with `ERR_STORE_CLOSED`.
     */
    close(): Promise<void>;

    /** A snapshot of counters and gauges. */
    stats(): expressSessionMulticast.MulticastStoreStats;

    /** The cluster members known to this node, this node included (`self: true`). */
    members(): expressSessionMulticast.Member[];

    /**
     * `stats()` and `members()` in the Prometheus text exposition format (version 0.0.4), for
     * an application to serve on its own route, with `Content-Type: text/plain; version=0.0.4`.
     * Every metric name starts with `session_multicast_`.
     */
    metrics(): string;

    /**
     * The store can serve no more: emitted once, after `close()`. Never for a network failure
     * (that is an `error` event) nor when peers are lost (`member` events). The store never
     * emits `connect`: it serves from construction on.
     */
    on(event: "disconnect", listener: () => void): this;
    /** A member joined, left, became suspect, was declared dead, or came back. */
    on(event: "member", listener: (event: expressSessionMulticast.MemberEvent) => void): this;
    /** A failure the application must know about (never a bad datagram from the network). */
    on(event: "error", listener: (error: Error) => void): this;
    on(event: string | symbol, listener: (...args: any[]) => void): this;

    once(event: "disconnect", listener: () => void): this;
    once(event: "member", listener: (event: expressSessionMulticast.MemberEvent) => void): this;
    once(event: "error", listener: (error: Error) => void): this;
    once(event: string | symbol, listener: (...args: any[]) => void): this;

    off(event: "disconnect", listener: () => void): this;
    off(event: "member", listener: (event: expressSessionMulticast.MemberEvent) => void): this;
    off(event: "error", listener: (error: Error) => void): this;
    off(event: string | symbol, listener: (...args: any[]) => void): this;
}

/**
 * Returns the `MulticastStore` class for the given express-session (or connect) module.
 *
 * @example
 * import session from "express-session";
 * import expressSessionMulticast from "express-session-multicast";
 * const MulticastStore = expressSessionMulticast(session);
 * const store = new MulticastStore({ cluster: "shop" });
 * app.use(session({ secret: "…", resave: false, saveUninitialized: false, store }));
 *
 * @throws {TypeError} when the argument has no `Store` class.
 */
declare function expressSessionMulticast(
    session:
        | typeof import("express-session")
        | { Store: StoreConstructorLike }
        | { session: { Store: StoreConstructorLike } },
): expressSessionMulticast.MulticastStoreConstructor;

declare namespace expressSessionMulticast {
    /**
     * The factory itself, under a name (the same function as the default export):
     * `import { createStore } from "express-session-multicast"`.
     */
    const createStore: typeof expressSessionMulticast;

    /** A store instance (the class itself is returned by the factory). */
    interface MulticastStore extends MulticastStoreBase {}

    interface MulticastStoreConstructor {
        /**
         * @throws {TypeError} when an option is invalid or unknown; the message names the option.
         */
        new (options?: MulticastStoreOptions): MulticastStore;
        readonly prototype: MulticastStore;
    }

    /** A cluster key: a passphrase string, or 32 raw key bytes (e.g. `crypto.randomBytes(32)`). */
    type SecretKey = string | Buffer | Uint8Array;

    /**
     * Any logger with `info`, `warn` and `error` (and optionally `debug`, `trace`):
     * console, pino, winston, bunyan…
     */
    interface Logger {
        info(...args: any[]): unknown;
        warn(...args: any[]): unknown;
        error(...args: any[]): unknown;
        debug?(...args: any[]): unknown;
        trace?(...args: any[]): unknown;
    }

    /**
     * Options of `new MulticastStore(options)`. All are optional.
     * An invalid value, or an unknown option, throws a `TypeError` naming the option.
     */
    interface MulticastStoreOptions {
        /**
         * IP family of the cluster.
         * @default "v4"
         */
        use?: "v4" | "v6";

        /**
         * Multicast group address, or `false` for no multicast (unicast `peers` only).
         * @default "228.0.0.5" with `use: "v4"`, "ff15::5" (transient, site-local scope) with `use: "v6"`
         */
        multicast?: string | false;

        /**
         * UDP port of the multicast group.
         * @default 4000
         */
        multicastPort?: number;

        /**
         * IPv4 address of the interface used to send and join, and the address announced to
         * the other nodes. `"127.0.0.1"` means a single-host cluster (tests, demos).
         * @default the first non-internal IPv4 address of the host
         */
        ipv4?: string;

        /**
         * IPv6 address of the interface used to send and join, and the address announced to
         * the other nodes (with `use: "v6"`).
         * @default the first non-internal IPv6 address of the host
         */
        ipv6?: string;

        /**
         * IP TTL (IPv4) / hop limit (IPv6) of multicast datagrams; `0` keeps them on this host.
         * @default 1
         */
        multicastTTL?: number;

        /**
         * When true, a session expires `sessionTTL` seconds after its last set/touch, or at
         * `cookie.expires` if that is earlier.
         * @default false
         */
        useSessionTTL?: boolean;

        /**
         * Session time to live, in **seconds**; used only when `useSessionTTL` is true.
         * @default 5000
         */
        sessionTTL?: number;

        /**
         * Seconds a session lives when its cookie has no expiry (express-session's default
         * cookie has none), or a function of the session returning them (called on each set
         * and touch; a result that is not a positive finite number fails that call with
         * `ERR_INVALID_TTL`). A cookie's own expiry always wins; `useSessionTTL` caps both.
         * @default 86400 (one day)
         */
        ttl?: number | ((session: SessionData) => number);

        /**
         * When true, `touch` does nothing: a session's expiry moves only when it is saved.
         * @default false
         */
        disableTouch?: boolean;

        /**
         * Seconds: a touch that moves a session's expiry forward by less than this is kept on
         * this node and not sent to the others, which may then expire the session up to this
         * much earlier. `0` sends every touch.
         * @default 0
         */
        touchAfter?: number;

        /**
         * When true, the callback (or Promise) of `set`, `touch`, `destroy` and `clear` waits
         * until every other node alive when the write left has applied it, or `ackTimeout`:
         * the next request of the user sees the write on any node. Suspect and dead nodes are
         * not waited for. Reads stay local.
         * @default false
         */
        waitForAck?: boolean;

        /**
         * With `waitForAck`, the longest a write waits for the other nodes, in ms. The write is
         * then called back anyway, without an error (it is stored here and replicates), counted
         * in `stats().ackTimeouts` and logged at most every 10 s.
         * @default 300
         */
        ackTimeout?: number;

        /**
         * How sessions are turned into text and back, for sessions that hold what JSON cannot
         * (Dates that must stay Dates, Maps, Sets, BigInts). The shape of connect-redis's
         * option. Every node of the cluster needs the same serializer.
         * @default JSON (refusing Maps, Sets, BigInts and cycles)
         */
        serializer?: Serializer;

        /**
         * On SIGINT/SIGTERM that the app does not handle itself: leave the cluster, then let the
         * signal end the process. When the app handles the signal, the store serves on while
         * the app drains, and leaves when the process exits. (The historical spelling, kept for
         * compatibility.)
         * @default true
         */
        gracefullShutdown?: boolean;

        /**
         * Alias of `gracefullShutdown`.
         * @default true
         */
        gracefulShutdown?: boolean;

        /**
         * Where the store logs.
         * @default console
         */
        logger?: Logger;

        /**
         * Cluster key: a passphrase string, a Buffer of key bytes, or an array of them (a key
         * ring: the first one seals, all of them open, for key rotation).
         * @default none (the cluster is unauthenticated)
         */
        secret?: SecretKey | SecretKey[];

        /**
         * Cluster name. Nodes with different names ignore each other, even on the same group
         * and port.
         * @default "default"
         */
        cluster?: string;

        /**
         * Unicast peers as `"host:port"` entries (host names are re-resolved periodically),
         * for networks without multicast.
         * @default []
         */
        peers?: string[];

        /**
         * Largest accepted session, in **bytes** of its JSON. Larger sessions are refused with
         * an `ERR_SESSION_TOO_LARGE` error.
         * @default 1048576 (1 MiB)
         */
        maxSessionBytes?: number;

        /**
         * Interval between heartbeats, in **milliseconds**.
         * @default 500
         */
        heartbeatInterval?: number;

        /**
         * Silence, in **milliseconds**, after which a suspect member is declared dead.
         * @default 3000
         */
        failureTimeout?: number;

        /**
         * A member whose clock is further than this from this node's, in **milliseconds**, is
         * warned about (`warn`, at most once per member per 10 minutes unless the offset doubles):
         * expiries and write order depend on the nodes' clocks. `0`: never warn. The offsets are
         * in `members()` (`clockOffsetMs`) whatever this is.
         * @default 1000
         */
        maxClockSkew?: number;

        /**
         * How long, in **milliseconds**, a `get` that finds nothing here (not even a tombstone)
         * waits for the live members it asks about the sid; it answers as soon as they all
         * have. `0`: a `get` never asks. At most 10000.
         * @default 20
         */
        missTimeout?: number;

        /**
         * Snapshots of this node's sessions on disk, so they survive a restart of every node (see
         * docs/persistence.md): a file path, or `{ path, interval }`. The node writes the file
         * every `interval` **seconds** (default 60, at least 1) while something changed, and at
         * `close()`; at start it loads it before it joins. Sealed with the cluster key when
         * `secret` is set; mode 0600. Off by default.
         */
        persist?: string | PersistOptions;
    }

    /** The `persist` option as an object. */
    interface PersistOptions {
        /** The snapshot file: one per node (a relative path is resolved against the working directory). */
        path: string;
        /**
         * Seconds between snapshots while something changed; at least 1. Default 60. A periodic
         * snapshot spreads its work over up to half of it: a crash loses at most the last
         * 1.5 × `interval` of this node's writes (a graceful stop loses none).
         */
        interval?: number;
    }

    /** Turns a session (without its cookie, which the store keeps as JSON) into text and back. */
    interface Serializer {
        stringify(session: any): string;
        parse(text: string): any;
    }

    /** `store.options`: the validated options with their defaults filled in. */
    interface MulticastStoreNormalizedOptions {
        use: "v4" | "v6";
        multicast: string | false;
        multicastPort: number;
        ipv4: string | null;
        ipv6: string | null;
        multicastTTL: number;
        useSessionTTL: boolean;
        /** Seconds. */
        sessionTTL: number;
        /** Seconds, or the function given. */
        ttl: number | ((session: SessionData) => number);
        disableTouch: boolean;
        /** Seconds. */
        touchAfter: number;
        waitForAck: boolean;
        ackTimeout: number;
        gracefullShutdown: boolean;
        /** `"<n key(s)>"` when `secret` is set (the keys themselves are never shown), else `null`. */
        secret: string | null;
        cluster: string;
        peers: string[];
        /** Bytes. */
        maxSessionBytes: number;
        /** Milliseconds. */
        heartbeatInterval: number;
        /** Milliseconds. */
        failureTimeout: number;
        /** Milliseconds; 0 = never warn. */
        maxClockSkew: number;
        /** Milliseconds. */
        missTimeout: number;
        /** The absolute path and the interval in seconds; `null` without `persist`. */
        persist: { path: string; interval: number } | null;
        [option: string]: unknown;
    }

    /** `store.stats()`: counters and gauges. The network counters are present while the node is networked. */
    interface MulticastStoreStats {
        /** Live (unexpired) sessions held by this node. */
        sessions: number;
        /** Tombstones of destroyed sessions still kept. */
        tombstones: number;
        /** Total size, in bytes, of the stored sessions. */
        sessionBytes: number;
        /** Entries in memory: sessions, tombstones and expired sessions not yet purged. */
        entries: number;
        /** Expired sessions and old tombstones purged from memory so far. */
        purged: number;
        /** Writes refused with ERR_SESSION_TOO_LARGE. */
        rejectedTooLarge: number;
        /** Touches kept on this node and not replicated (`touchAfter`). */
        localTouches: number;
        /**
         * `"up"`: networked; `"off"`: not networked by configuration (`multicast: false`, no
         * `peers`); `"failed"`: the network could not start and the node serves its sessions
         * alone (see `networkError`); `"closed"`: after `close()`.
         */
        network: "up" | "off" | "failed" | "closed";
        /** Why the network could not start, when `network` is `"failed"`. */
        networkError?: string;
        /** Reachable members, this node included. */
        members: number;
        /** Joined and finished the initial state transfer (or found itself alone). */
        ready: boolean;
        /** With `persist`: snapshots written to disk. */
        snapshotsWritten?: number;
        /** With `persist`: snapshots that could not be written (full disk, read-only directory…); the previous one stayed. */
        snapshotFailures?: number;
        /** With `persist`: when the last snapshot written began, epoch **milliseconds**; 0 before the first. */
        lastSnapshotAt?: number;
        /** With `persist`: how long the last snapshot took to write, fsyncs included, in **milliseconds**. */
        lastSnapshotMs?: number;
        /** With `persist`: size of the last snapshot file written, in bytes. */
        lastSnapshotBytes?: number;
        /** With `persist`: live sessions in the last snapshot written. */
        lastSnapshotSessions?: number;
        /** With `persist`: snapshot files not loaded at start (bad, foreign, sealed with an unknown key, unreadable), moved aside. */
        snapshotsRejected?: number;
        /** With `persist`: live sessions loaded from the snapshot at start. */
        snapshotLoadedSessions?: number;
        datagramsSent?: number;
        /** Batches of local writes sent: writes close together share one. */
        writeBatches?: number;
        /** Of `writeBatches`, those sent from the JS thread itself, without waking the network thread. */
        directBatches?: number;
        bytesSent?: number;
        datagramsReceived?: number;
        bytesReceived?: number;
        /** Datagrams sent again in answer to NAKs. */
        retransmissions?: number;
        naksSent?: number;
        naksReceived?: number;
        /** Cumulative acknowledgements sent to other nodes ("I have your datagrams up to n"): at most one per sender a tick, and at once when a sender asks (`waitForAck`, a leave). */
        acksSent?: number;
        /** Cumulative acknowledgements received from members. */
        acksReceived?: number;
        /** `waitForAck` writes whose callback came at `ackTimeout`, before every member's ack (each one counted; logged at most every 10 s). */
        ackTimeouts?: number;
        /** Datagrams received twice (retransmissions that were not needed). */
        duplicates?: number;
        /** This node's own multicast datagrams looped back to it (multicast works locally). */
        ownLoopback?: number;
        /** Full state transfers received (1 after joining a cluster that had members). */
        stateTransfers?: number;
        antiEntropySyncs?: number;
        syncEntriesReceived?: number;
        /** Gets that found nothing here, not even a tombstone, and asked the live members. */
        missQueries?: number;
        /** Of those, the ones that found the session on another member (and merged it here). */
        missesRecovered?: number;
        /** Of those, the ones that every member asked answered without a session (a tombstone answer included). */
        missesNotFound?: number;
        /** Of those, the ones that reached `missTimeout` before every answer came, without a session. */
        missTimeouts?: number;
        /** Gets that found nothing here and did not ask: over the rate limit (100 queries a second, bursts of 100). */
        missesRateLimited?: number;
        /**
         * Estimated replication lag, in **milliseconds**: the average age of remote writes when
         * they arrive (exponentially weighted; relies on the nodes' clocks being in step).
         */
        replicationLagMs?: number;
        /** Datagrams known to be missing from other nodes' streams and being asked for (NAKs). */
        missingDatagrams?: number;
        /** Bytes held in this node's retransmit buffer. */
        retransmitBufferBytes?: number;
        /** Bytes held in partially received fragmented messages. */
        reassemblyBytes?: number;
        /** Input dropped, by reason (truncated, badChecksum, foreignCluster, …). */
        dropped?: Record<string, number>;
    }

    /** A node of the cluster, as seen by this node. */
    interface Member {
        /** Node id. */
        id: string;
        /** Announced address (`null` for this node when it is not networked). */
        address: string | null;
        /** Unicast UDP port (`null` when not networked). */
        port: number | null;
        /** TCP port for state transfer and anti-entropy (`null` when not networked). */
        tcpPort: number | null;
        /** Incarnation number: a restarted node is a new incarnation. */
        incarnation: number;
        /** `"isolated"`: this node, when its network failed at start and it serves alone. */
        state: "alive" | "suspect" | "dead" | "left" | "isolated";
        /** True for this node. */
        self: boolean;
        /** When this node last heard from the member (epoch ms); `null` for itself or if never heard. */
        lastHeard: number | null;
        /**
         * The member's wall clock minus this node's, in **milliseconds** (positive: the member's
         * clock is ahead), estimated from its heartbeats: the largest offset of its last 8, below
         * the true offset by the one-way delay of the quickest (microseconds on a LAN). `null` for
         * this node itself, and until a heartbeat or greeting of the member has arrived.
         */
        clockOffsetMs: number | null;
    }

    /** Payload of the `member` event. */
    interface MemberEvent {
        type: "join" | "leave" | "suspect" | "dead" | "alive";
        node: Member;
    }

    /** `code` of the errors returned by store operations. */
    type StoreErrorCode =
        | "ERR_SESSION_TOO_LARGE"
        | "ERR_SESSION_NOT_SERIALIZABLE"
        | "ERR_INVALID_TTL"
        | "ERR_STORE_CLOSED"
        | "ERR_NETWORK"
        | "ERR_SNAPSHOT_REJECTED"
        | "ERR_SNAPSHOT_FAILED";

    /** An error returned by a store operation. */
    interface StoreError extends Error {
        code: StoreErrorCode;
    }
}

export = expressSessionMulticast;
