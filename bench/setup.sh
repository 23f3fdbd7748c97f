#!/bin/sh
# Installs what `npm run bench` needs beyond npm's devDependencies: a Redis server for the
# connect-redis comparison (Debian's redis-server package). The bench starts its own redis-server
# on 127.0.0.1 with a random port and stops it at the end; the package's own service is not used.
set -e
if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
echo "bench/setup.sh: redis-server is missing; installing Debian's redis-server package" >&2
if [ "$(id -u)" -ne 0 ]; then
  echo "bench/setup.sh: run as root, or install it yourself: apt-get install -y redis-server" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y --no-install-recommends redis-server >/dev/null 2>&1 || {
  apt-get update >/dev/null
  apt-get install -y --no-install-recommends redis-server >/dev/null
}
# The package may start its own service (where an init system runs): stop it, the bench starts its own.
if command -v service >/dev/null 2>&1; then service redis-server stop >/dev/null 2>&1 || true; fi
command -v redis-server >/dev/null
