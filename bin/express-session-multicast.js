#!/usr/bin/env node
"use strict";
// `npx express-session-multicast doctor [options]`: see lib/doctor.js, or run it with --help.
const { cli } = require("../lib/doctor");

cli(process.argv.slice(2)).then(
  (status) => {
    process.exitCode = status;
  },
  (err) => {
    process.stderr.write(`express-session-multicast: ${err && err.stack ? err.stack : err}\n`);
    process.exitCode = 1;
  }
);
