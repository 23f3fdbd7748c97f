"use strict";
// .github/workflows/release.yml cannot run here: actionlint checks it (with shellcheck on its run:
// scripts when shellcheck is on PATH), and its linux-x64-gnu build runs the scripts .ci/run runs.
// actionlint comes from scripts/install-prebuilt-tools.sh (.tools/bin); without it the lint
// skips with the reason printed.
const assert = require("node:assert/strict");
const { spawnSync } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { PLATFORMS } = require("../lib/native");
const { toolEnv } = require("../scripts/prebuilt");

const root = path.resolve(__dirname, "..");
const WORKFLOW = path.join(root, ".github", "workflows", "release.yml");
const text = fs.readFileSync(WORKFLOW, "utf8");

describe("the release workflow (.github/workflows/release.yml)", function () {
  this.timeout(60_000);

  describe("actionlint", () => {
    const env = toolEnv();
    const lint = (file) => spawnSync("actionlint", ["-color=false", "-oneline", file], { cwd: root, env, encoding: "utf8" });

    before(function () {
      const probe = spawnSync("actionlint", ["-version"], { env, encoding: "utf8" });
      if (probe.error || probe.status !== 0) {
        console.log("    actionlint not found (bash scripts/install-prebuilt-tools.sh installs it into .tools/): skipping the lint");
        this.skip();
      }
      const shellcheck = spawnSync("shellcheck", ["--version"], { env });
      console.log(`    ${probe.stdout.split("\n")[0]}; run: scripts ${shellcheck.error ? "not checked (no shellcheck on PATH)" : "checked by shellcheck"}`);
    });

    it("finds nothing in the workflow", () => {
      const r = lint(WORKFLOW);
      assert.equal(r.status, 0, `actionlint:\n${r.stdout}${r.stderr}`);
    });

    it("finds a mistake planted in a copy (an unknown runner, an undefined matrix key)", () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "esm-workflow-"));
      try {
        const copy = path.join(dir, "release.yml");
        fs.writeFileSync(copy, text.replace("runner: macos-15-intel", "runner: macos-15-intell").replace("${{ matrix.platform }}-*.tgz", "${{ matrix.platfrom }}-*.tgz"));
        const r = lint(copy);
        assert.notEqual(r.status, 0);
        assert.match(r.stdout, /macos-15-intell/);
        assert.match(r.stdout, /platfrom/);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  });

  it("builds and tests every platform of lib/native.js", () => {
    const job = (name) => text.split(`\n  ${name}:\n`)[1].split(/\n  [a-z-]+:\n/)[0];
    const platforms = (name) => [...job(name).matchAll(/\{ platform: ([a-z0-9-]+),/g)].map((m) => m[1]).sort();
    assert.deepEqual(platforms("build"), [...PLATFORMS].sort());
    assert.deepEqual(platforms("test"), [...PLATFORMS].sort());
  });

  it("linux-x64-gnu is built by the commands .ci/run runs: the tools script and npm run prebuilt", () => {
    const ci = fs.readFileSync(path.join(root, ".ci", "run"), "utf8");
    for (const command of ["bash scripts/install-prebuilt-tools.sh", "npm run prebuilt"]) {
      assert.ok(ci.includes(command), `.ci/run does not run ${command}`);
      assert.ok(text.includes(command), `the workflow does not run ${command}`);
    }
    // The tools step is skipped only off Linux; the build step is the same for every platform.
    assert.match(text, /if: runner\.os == 'Linux'\n\s+run: bash scripts\/install-prebuilt-tools\.sh/);
    assert.match(text, /run: npm run prebuilt -- --target \$\{\{ matrix\.platform \}\}/);
  });
});
