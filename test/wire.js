"use strict";
// Builds and parses packets of wire format version 3 (src/wire/ is authoritative), the way an
// outsider on the network could: enough to capture, tamper with, replay and forge datagrams in
// test/security.test.js. Integers are big-endian; ids, incarnations and packet numbers are
// BigInts.
//
//  offset size
//   0     2    magic "SM"
//   2     1    wire version (3)
//   3     1    kind
//   4     4    cluster id: 32-bit FNV-1a of the cluster name
//   8     8    sender node id
//  16     8    sender incarnation
//  24     8    packet number
//  32     4    key id (0 = unsealed)
//  36     …    body
//  end    …    unsealed: CRC-32 of (cluster name ‖ header ‖ body), 4 bytes; sealed: Poly1305 tag, 16
const zlib = require("node:zlib");

const VERSION = 3;
const HEADER_BYTES = 36;
const AT = Object.freeze({ magic: 0, version: 2, kind: 3, cluster: 4, node: 8, incarnation: 16, packetNumber: 24, keyId: 32 });
const CRC_BYTES = 4;
const TAG_BYTES = 16;
const MAX_DATAGRAM = 1400;
/** Bytes of op in every fragment but the last: what a datagram leaves after the fragment's own
 * fields and the trailer budget (16 bytes, sealed or not). */
const PIECE_LEN = MAX_DATAGRAM - (HEADER_BYTES + 8 + 1 + 8 + 2 + 2 + 4 + TAG_BYTES);
const KIND = Object.freeze({
  join: 1,
  greeting: 2,
  heartbeat: 3,
  leave: 4,
  data: 5,
  nak: 6,
  gone: 7,
  syncRequest: 8,
  syncChunk: 9,
  syncEnd: 10,
  leaving: 13,
  ack: 14,
  query: 15,
  answer: 16,
});
const KIND_NAME = Object.fromEntries(Object.entries(KIND).map(([name, n]) => [n, name]));

/** 32-bit FNV-1a of a string's UTF-8 bytes: the cluster id of a cluster name. */
function fnv1a(name) {
  let h = 0x811c9dc5;
  for (const b of Buffer.from(name, "utf8")) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  return h;
}

// CRC-32 (IEEE); zlib.crc32 exists from Node 20.15 / 22.2, a table otherwise.
let table;
function crc32(buf, crc = 0) {
  if (typeof zlib.crc32 === "function") return zlib.crc32(buf, crc);
  if (!table) {
    table = new Uint32Array(256).map((_, n) => {
      for (let k = 0; k < 8; k++) n = n & 1 ? 0xedb88320 ^ (n >>> 1) : n >>> 1;
      return n;
    });
  }
  crc = ~crc >>> 0;
  for (const b of buf) crc = table[(crc ^ b) & 0xff] ^ (crc >>> 8);
  return ~crc >>> 0;
}

/** The unsealed trailer: CRC-32 keyed by the cluster name (it authenticates nothing). */
function keyedCrc(clusterName, packet) {
  return crc32(packet, crc32(Buffer.from(clusterName, "utf8")));
}

/** The 36 header bytes. `cluster` is a name (hashed) or an id; numbers may be BigInts. */
function encodeHeader({ kind, cluster, node, incarnation, packetNumber = 1n, keyId = 0, version = VERSION }) {
  const h = Buffer.alloc(HEADER_BYTES);
  h.write("SM", AT.magic, "latin1");
  h.writeUInt8(version, AT.version);
  h.writeUInt8(kind, AT.kind);
  h.writeUInt32BE(typeof cluster === "string" ? fnv1a(cluster) : cluster, AT.cluster);
  h.writeBigUInt64BE(BigInt(node), AT.node);
  h.writeBigUInt64BE(BigInt(incarnation), AT.incarnation);
  h.writeBigUInt64BE(BigInt(packetNumber), AT.packetNumber);
  h.writeUInt32BE(keyId, AT.keyId);
  return h;
}

/** The header fields of a packet, or null when it is shorter than a header. */
function decodeHeader(packet) {
  if (packet.length < HEADER_BYTES) return null;
  const kind = packet.readUInt8(AT.kind);
  return {
    magic: packet.toString("latin1", 0, 2),
    version: packet.readUInt8(AT.version),
    kind,
    kindName: KIND_NAME[kind] || null,
    cluster: packet.readUInt32BE(AT.cluster),
    node: packet.readBigUInt64BE(AT.node),
    incarnation: packet.readBigUInt64BE(AT.incarnation),
    packetNumber: packet.readBigUInt64BE(AT.packetNumber),
    keyId: packet.readUInt32BE(AT.keyId),
    sealed: packet.readUInt32BE(AT.keyId) !== 0,
  };
}

/** A complete unsealed packet, as any host on the network can build it: header, body, keyed CRC. */
function unsealedPacket(clusterName, header, body = Buffer.alloc(0)) {
  const packet = Buffer.concat([encodeHeader({ ...header, cluster: header.cluster ?? clusterName, keyId: 0 }), body]);
  const crc = Buffer.alloc(CRC_BYTES);
  crc.writeUInt32BE(keyedCrc(clusterName, packet));
  return Buffer.concat([packet, crc]);
}

// Body building blocks (docs/how-it-works.md "Wire format").
const u8 = (v) => Buffer.from([v]);
const u16 = (v) => {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(v);
  return b;
};
const u32 = (v) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v);
  return b;
};
const u64 = (v) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(v));
  return b;
};
const str = (s) => {
  const bytes = Buffer.from(s, "utf8");
  return Buffer.concat([u32(bytes.length), bytes]);
};

/** *node*: an IPv4 address with its unicast UDP port, TCP port and cluster port for peers (0: none). */
function nodeInfo(ip, port, tcpPort, listenPort = 0) {
  return Buffer.concat([u8(4), Buffer.from(ip.split(".").map(Number)), u16(port), u16(tcpPort), u16(listenPort)]);
}

/** *version*: hybrid-logical-clock time (ms << 16 | counter), then node id. */
function version(ms, node, counter = 0) {
  return Buffer.concat([u64((BigInt(ms) << 16n) | BigInt(counter)), u64(node)]);
}

/** A set *op*. */
function setOp({ sid, doc, expiresAt, ms = Date.now(), node }) {
  return Buffer.concat([u8(1), version(ms, node), str(sid), u64(expiresAt), str(typeof doc === "string" ? doc : JSON.stringify(doc))]);
}

/** `Data` body carrying whole ops. */
function dataOps(seq, ops) {
  return Buffer.concat([u64(seq), u8(0), u16(ops.length), ...ops]);
}

/** `Data` body carrying one fragment (seq = first_seq + index for a consistent one). */
function dataFragment({ seq, firstSeq, index, count, bytes }) {
  return Buffer.concat([u64(seq), u8(1), u64(firstSeq), u16(index), u16(count), u32(bytes.length), bytes]);
}

/** `Join` body, `Heartbeat`/`Greeting` body (`sentMs`: the sender's wall clock, epoch ms). */
const joinBody = (ip, port, tcpPort) => nodeInfo(ip, port, tcpPort);
const heartbeatBody = (ip, port, tcpPort, highSeq, sentMs = Date.now()) =>
  Buffer.concat([nodeInfo(ip, port, tcpPort), u64(highSeq), u64(sentMs)]);

/** `Query` body: token u64, sid. */
const queryBody = (token, sid) => Buffer.concat([u64(token), str(sid)]);
/** `Answer` body: token u64, then the reply: `00` (nothing here) unless `reply` gives other bytes. */
const answerBody = (token, reply = u8(0)) => Buffer.concat([u64(token), reply]);

/** Token, and sid or reply tag, of an unsealed `Query` or `Answer` packet. */
function parseQueryOrAnswer(packet) {
  const { kindName } = decodeHeader(packet);
  const token = packet.readBigUInt64BE(HEADER_BYTES);
  if (kindName === "query") {
    const length = packet.readUInt32BE(HEADER_BYTES + 8);
    return { kindName, token, sid: packet.toString("utf8", HEADER_BYTES + 12, HEADER_BYTES + 12 + length) };
  }
  return { kindName, token, reply: packet.readUInt8(HEADER_BYTES + 8) };
}

module.exports = {
  VERSION,
  HEADER_BYTES,
  AT,
  CRC_BYTES,
  TAG_BYTES,
  MAX_DATAGRAM,
  PIECE_LEN,
  KIND,
  fnv1a,
  crc32,
  keyedCrc,
  encodeHeader,
  decodeHeader,
  unsealedPacket,
  nodeInfo,
  version,
  setOp,
  dataOps,
  dataFragment,
  joinBody,
  heartbeatBody,
  u8,
  queryBody,
  answerBody,
  parseQueryOrAnswer,
};
