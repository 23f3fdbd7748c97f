"use strict";
// mocha's spec reporter, closed by the plain "N passed, N failed, N skipped" line CI reads.
const { reporters: { Spec } } = require("mocha");

class SpecWithSummary extends Spec {
  constructor(runner, options) {
    super(runner, options);
    runner.once("end", () => {
      const { passes, failures, pending } = runner.stats;
      console.log(`mocha: ${passes} passed, ${failures} failed, ${pending} skipped`);
    });
  }
}

module.exports = SpecWithSummary;
