#!/bin/sh
# The release workflow's test job for one platform, on a machine of that platform (a runner, or a
# node:20-alpine container for musl): the loader's tests and the consumer test
# (test/consumer.test.js) against the tarballs the build job packed into dist/, without building
# anything. Usage: sh scripts/test-prebuilt.sh <platform>. Needs node and npm only (mocha comes
# from the npm registry); POSIX sh, for Alpine.
set -eu
cd "$(dirname "$0")/.."
platform="$1"
export EXPRESS_SESSION_MULTICAST_DIST="${EXPRESS_SESSION_MULTICAST_DIST:-dist}"
export EXPRESS_SESSION_MULTICAST_EXPECT_PLATFORM="$platform"
mocha="mocha@$(node -p 'require("./package.json").devDependencies.mocha.replace(/^[\^~]/, "")')"
npm exec --yes --package="$mocha" -- mocha --no-config --reporter spec --timeout 20000 test/native.test.js test/consumer.test.js
