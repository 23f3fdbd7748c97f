"use strict";
// The engine's declarations of every option, stats() figure and metric (src/options.rs,
// src/stats.rs, src/metrics.rs), and readers of the places that must name each one: the
// interfaces of index.d.ts, the options table of README.md and the stats() and metrics() tables
// of docs/operations.md.
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const { loadEngine } = require("../lib/native");

const ROOT = path.join(__dirname, "..");

/** { options: [...], stats: [...], memberMetrics: [...] } (see `declarations()` in src/lib.rs). */
function declarations() {
  return JSON.parse(loadEngine().__declarations());
}

/**
 * The fields of an interface of index.d.ts, in order: { name, optional, type, doc }. `source`
 * replaces the file's text (to check that a test fails without a field).
 */
function dtsInterface(interfaceName, source = fs.readFileSync(path.join(ROOT, "index.d.ts"), "utf8")) {
  const start = source.indexOf(`interface ${interfaceName} {`);
  assert.ok(start >= 0, `index.d.ts declares ${interfaceName}`);
  const body = source.slice(start, source.indexOf("\n    }", start)).split("\n").slice(1);
  const fields = [];
  let doc = [];
  for (const line of body) {
    const field = /^ {8}(\w+)(\??): (.*);$/.exec(line);
    if (field) {
      fields.push({ name: field[1], optional: field[2] === "?", type: field[3], doc: doc.join("\n") });
      doc = [];
    } else if (/^ {8}(\/\*\*| \*)/.test(line)) {
      doc.push(line.trim());
    } else if (line.trim() === "") {
      doc = [];
    }
  }
  return fields;
}

/**
 * The rows of the first table after the heading `heading` (a whole line of the markdown file
 * `file`, relative to the repository, `#`s included), as arrays of cells; the header row and the
 * separator row are left out. `source` replaces the file's text.
 */
function docTable(file, heading, source = fs.readFileSync(path.join(ROOT, file), "utf8")) {
  const lines = source.split("\n");
  const at = lines.indexOf(heading);
  assert.ok(at >= 0, `${file} has the heading ${heading}`);
  const first = lines.findIndex((line, i) => i > at && line.startsWith("|"));
  assert.ok(first > at && !lines.slice(at + 1, first).some((l) => l.startsWith("#")), `a table under ${heading}`);
  const rows = [];
  for (let i = first + 2; i < lines.length && lines[i].startsWith("|"); i++) {
    rows.push(lines[i].slice(1, -1).split(/(?<!\\)\|/).map((cell) => cell.trim()));
  }
  return rows;
}

/** The names in backticks in a table cell: "`ipv4` / `ipv6`" → ["ipv4", "ipv6"]. */
function codeNames(cell) {
  return [...cell.matchAll(/`([^`]+)`/g)].map((m) => m[1]);
}

module.exports = { declarations, dtsInterface, docTable, codeNames };
