"use strict";
// The documentation's links: every relative link of the markdown files leads to a file of this
// repository, and every `#anchor` to a heading of its target; the README, which npm shows on the
// package's page and which ships in the package, links relatively only to files the package
// holds (`npm pack --dry-run`), and absolutely to this repository only to files that exist.
// The user documentation names no issue numbers (CONTRIBUTING.md, "Documentation").
const assert = require("node:assert/strict");
const { execFileSync } = require("node:child_process");
const fs = require("node:fs");
const path = require("node:path");

const ROOT = path.join(__dirname, "..");
const manifest = JSON.parse(fs.readFileSync(path.join(ROOT, "package.json"), "utf8"));

const mdIn = (dir) => fs.readdirSync(path.join(ROOT, dir)).filter((f) => f.endsWith(".md")).map((f) => path.posix.join(dir, f));
/** The documentation for users: what the README and docs/ hold. */
const USER_DOCS = ["README.md", ...mdIn("docs")];
const ALL_DOCS = [...USER_DOCS, "CHANGELOG.md", "CONTRIBUTING.md", "fuzz/README.md", ...fs.readdirSync(path.join(ROOT, "npm")).map((p) => `npm/${p}/README.md`)];

/** https://github.com/<owner>/<repo>, from package.json's repository (the npm page's links resolve against it). */
function repositoryUrl() {
  const repo = manifest.repository;
  const url = typeof repo === "string" ? repo : repo && repo.url;
  const m = /github\.com[/:]([^/]+)\/([^/]+?)(\.git)?$/.exec(url || "") || /^github:([^/]+)\/(.+)$/.exec(url || "");
  assert.ok(m, `package.json has a GitHub repository (got ${JSON.stringify(repo)})`);
  return `https://github.com/${m[1]}/${m[2]}`;
}

/** Markdown without fenced code blocks and inline code spans, where nothing is a link. */
function prose(text) {
  return text.replace(/^(```|~~~)[^\n]*\n[\s\S]*?^\1[^\n]*$/gm, "").replace(/(`+)[\s\S]*?\1/g, "");
}

/** GitHub's id for a heading: lower case, punctuation dropped, spaces to hyphens. */
function slug(heading) {
  return heading
    .replace(/\[([^\]]*)\]\([^)]*\)/g, "$1")
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{M}\p{N}\p{Pc} -]/gu, "")
    .replace(/ /g, "-");
}

/** The anchors of a markdown text: its headings' ids (with GitHub's -1, -2 for repeats) and `<a id>`s. */
function anchors(text) {
  const seen = new Map();
  const ids = [];
  for (const [, heading] of text.replace(/^(```|~~~)[^\n]*\n[\s\S]*?^\1[^\n]*$/gm, "").matchAll(/^#{1,6} (.+)$/gm)) {
    const base = slug(heading);
    const n = seen.get(base) || 0;
    seen.set(base, n + 1);
    ids.push(n ? `${base}-${n}` : base);
  }
  for (const [, id] of text.matchAll(/<a id="([^"]+)"/g)) ids.push(id);
  return ids;
}

/** The targets of the links and images of a markdown text. */
function links(text) {
  return [...prose(text).matchAll(/!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(<?([^)\s>]+)>?(?:\s+"[^"]*")?\)/g)].map((m) => m[1]);
}

/**
 * Throws unless every link of `file` (its text: `text`) resolves: a relative path to an existing
 * file or folder of the repository, an anchor to a heading of its markdown target, and a link to
 * a file of this repository on GitHub to a file that exists. `readFile` reads a repository file.
 */
function checkLinks(file, text, readFile = (f) => fs.readFileSync(path.join(ROOT, f), "utf8")) {
  const repoBlob = new RegExp(`^${repositoryUrl().replace(/[.]/g, "\\.")}/(?:blob|tree)/[^/]+/([^#]*)(?:#(.*))?$`);
  for (const target of links(text)) {
    let resolved;
    let anchor;
    const own = repoBlob.exec(target);
    if (own) {
      [, resolved, anchor] = own;
    } else if (/^[a-z][a-z0-9+.-]*:/i.test(target)) {
      continue; // another site
    } else {
      const [p, a] = target.split("#");
      resolved = p ? path.posix.normalize(path.posix.join(path.posix.dirname(file), decodeURIComponent(p))) : file;
      anchor = a;
      assert.ok(!resolved.startsWith("../"), `${file}: ${target} leaves the repository`);
    }
    assert.ok(fs.existsSync(path.join(ROOT, resolved)), `${file}: ${target}: no file ${resolved}`);
    if (anchor && resolved.endsWith(".md")) {
      const source = resolved === file ? text : readFile(resolved);
      assert.ok(anchors(source).includes(anchor), `${file}: ${target}: ${resolved} has no heading #${anchor}`);
    }
  }
}

/** The files `npm pack` puts in the main package. */
function packedFiles() {
  const out = execFileSync("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], { cwd: ROOT, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  return JSON.parse(out)[0].files.map((f) => f.path);
}

/** Throws unless every relative link of the README (its text: `text`) leads to a file of `packed`. */
function checkPackedLinks(text, packed) {
  for (const target of links(text)) {
    if (/^[a-z][a-z0-9+.-]*:/i.test(target) || target.startsWith("#")) continue;
    const file = path.posix.normalize(decodeURIComponent(target.split("#")[0]));
    assert.ok(packed.includes(file), `README.md links to ${file}, which the npm package does not hold: link it absolutely, or add it to "files"`);
  }
}

/** Throws if a user document (its text: `text`) names an issue or pull request by number. */
function checkNoIssueNumbers(file, text) {
  const hit = /\b(issues?|pull requests?|PRs?)\s*#?\d+\b|(^|[\s(])#\d+\b/im.exec(prose(text));
  assert.ok(!hit, `${file} names an issue: "${hit && hit[0].trim()}"`);
}

/** The source files whose comments cite the documentation (this one's examples are made up). */
function sourceFiles(dir = "", out = []) {
  for (const entry of fs.readdirSync(path.join(ROOT, dir), { withFileTypes: true })) {
    const rel = path.posix.join(dir, entry.name);
    if (entry.isDirectory()) {
      if (!["node_modules", "target", "dist", ".tools", ".git", "fuzz", "bench/results"].includes(rel) && !entry.name.startsWith(".")) sourceFiles(rel, out);
    } else if ((/\.(rs|js|ts|mts|cts|sh)$/.test(entry.name) || rel === ".ci/run") && rel !== "test/docs.test.js") {
      out.push(rel);
    }
  }
  return out;
}

/**
 * Throws unless every citation in a source file's comments (its text: `text`) resolves: a
 * section `§n` or `§n.m` (of docs/design.md) to a heading of docs/design.md, and a page and a
 * quoted heading (`docs/how-it-works.md "Clocks"`, `README "Guarantees"`) to a heading or
 * anchor of that page. `design` is the text of docs/design.md.
 */
function checkCitations(file, text, design, readFile = (f) => fs.readFileSync(path.join(ROOT, f), "utf8")) {
  assert.ok(!/DESIGN §/.test(text), `${file} cites "DESIGN §", which is no file: cite docs/design.md §n`);
  const sections = [...design.matchAll(/^#{2,3} §(\d+(?:\.\d+)?) /gm)].map((m) => m[1]);
  for (const [, n] of text.matchAll(/§(\d+(?:\.\d+)?)/g)) assert.ok(sections.includes(n), `${file} cites §${n}, which docs/design.md does not have`);
  const joined = text.replace(/\n\s*(?:\/\/[/!]?|\*|#)\s*/g, " ");
  for (const [, page, heading] of joined.matchAll(/\b(README|docs\/[\w.-]+\.md)(?:'s)?[ ,(]+"([^"\n;=]+)"/g)) {
    const target = page === "README" ? "README.md" : page;
    assert.ok(fs.existsSync(path.join(ROOT, target)), `${file} cites ${target}, which does not exist`);
    assert.ok(anchors(readFile(target)).includes(slug(heading)), `${file} cites ${page} "${heading}", which has no such heading`);
  }
}

describe("the documentation's links", function () {
  this.timeout(60_000);

  for (const file of ALL_DOCS) {
    it(`${file}: every relative link and anchor resolves`, () => {
      checkLinks(file, fs.readFileSync(path.join(ROOT, file), "utf8"));
    });
  }

  it("README.md links relatively only to files in the npm package", () => {
    const readme = fs.readFileSync(path.join(ROOT, "README.md"), "utf8");
    const packed = packedFiles();
    const relative = links(readme).filter((t) => !/^[a-z][a-z0-9+.-]*:/i.test(t) && !t.startsWith("#"));
    assert.ok(relative.length > 0, "the README links to docs/ relatively");
    checkPackedLinks(readme, packed);
  });

  it("package.json and every platform package name the repository, which the npm page resolves links against", () => {
    const url = repositoryUrl();
    for (const dir of fs.readdirSync(path.join(ROOT, "npm"))) {
      const platform = JSON.parse(fs.readFileSync(path.join(ROOT, "npm", dir, "package.json"), "utf8"));
      assert.deepEqual(platform.repository, manifest.repository, `npm/${dir}/package.json: repository`);
    }
    assert.match(url, /^https:\/\/github\.com\/[^/]+\/[^/]+$/);
  });

  for (const file of USER_DOCS) {
    it(`${file}: no issue numbers`, () => {
      checkNoIssueNumbers(file, fs.readFileSync(path.join(ROOT, file), "utf8"));
    });
  }

  it("every citation of the docs in the sources' comments resolves (docs/design.md §n, page \"heading\")", () => {
    const design = fs.readFileSync(path.join(ROOT, "docs", "design.md"), "utf8");
    const files = sourceFiles();
    assert.ok(files.includes("src/clock.rs") && files.includes("test/netns/topology.js"), "the sources are searched");
    let cited = 0;
    for (const file of files) {
      const text = fs.readFileSync(path.join(ROOT, file), "utf8");
      cited += (text.match(/§\d/g) || []).length;
      checkCitations(file, text, design);
    }
    assert.ok(cited >= 10, `${cited} citations of docs/design.md found`);
  });

  it("fails on a citation that does not resolve", () => {
    const design = fs.readFileSync(path.join(ROOT, "docs", "design.md"), "utf8");
    checkCitations("x.rs", '//! (docs/design.md §3.7; docs/how-it-works.md "Reading a session\n//! that has not arrived yet")', design);
    assert.throws(() => checkCitations("x.rs", "//! (DESIGN §3)", design), /DESIGN §/);
    assert.throws(() => checkCitations("x.rs", "//! (docs/design.md §9.1)", design), /§9\.1/);
    assert.throws(() => checkCitations("x.rs", '//! (docs/how-it-works.md "No such heading")', design), /no such heading/);
    assert.throws(() => checkCitations("x.js", '// (README "Wire format")', design), /no such heading/);
    assert.throws(() => checkCitations("x.js", '// (docs/nowhere.md "Clocks")', design), /does not exist/);
  });

  it("fails on a broken link, a missing anchor, a README link outside the package, or an issue number", () => {
    const readme = fs.readFileSync(path.join(ROOT, "README.md"), "utf8");
    checkLinks("README.md", readme);
    assert.throws(() => checkLinks("README.md", `${readme}\n[x](docs/nowhere.md)\n`), /no file docs\/nowhere\.md/);
    assert.throws(() => checkLinks("README.md", `${readme}\n[x](docs/security.md#no-such-heading)\n`), /has no heading #no-such-heading/);
    assert.throws(() => checkLinks("README.md", `${readme}\n[x](#no-such-heading)\n`), /README\.md has no heading #no-such-heading/);
    assert.throws(() => checkLinks("docs/design.md", "[x](../../outside.md)"), /leaves the repository/);
    assert.throws(() => checkLinks("README.md", `[x](${repositoryUrl()}/blob/main/NOWHERE.md)`), /no file NOWHERE\.md/);
    checkLinks("README.md", "`[not a link](nowhere.md)`\n```\n[nor this](nowhere.md)\n```\n");
    assert.equal(anchors("# A `b()` → c: d\n## A `b()` → c: d\n<a id=\"e\"></a>").join(" "), "a-b--c-d a-b--c-d-1 e");
    const packed = ["README.md", "docs/security.md"];
    checkPackedLinks("[s](docs/security.md#threat-model) [t](https://example.com/x.md) [u](#install)", packed);
    assert.throws(() => checkPackedLinks("[c](CONTRIBUTING.md)", packed), /does not hold/);
    assert.throws(() => checkNoIssueNumbers("README.md", "as decided in issue 13"), /names an issue/);
    assert.throws(() => checkNoIssueNumbers("README.md", "fixed (#14)"), /names an issue/);
    checkNoIssueNumbers("README.md", "kind 13 `#14` and ten issues");
  });
});
