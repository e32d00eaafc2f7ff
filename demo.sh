#!/usr/bin/env bash
# The demo: installs what is missing, builds, brings up 3 nodes (network
# namespaces) with etcd, flanneld and 2 pods each, prints who got which
# subnet and address and the full ping matrix, then tears everything down.
#
#   ./demo.sh          run and tear down
#   ./demo.sh --keep   leave the cluster up (prints how to use it)
#   ./demo.sh --down   remove a cluster left up by --keep
#
# Runs as root: it creates network namespaces.
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" -ne 0 ]; then
  echo "demo.sh: run as root (it creates network namespaces)" >&2
  exit 1
fi

case "${1:-}" in
  "" | --keep | --down) ;;
  *) echo "usage: $0 [--keep | --down]" >&2; exit 2 ;;
esac

if [ "${1:-}" = "--down" ] && [ -x target/release/demo ]; then
  exec target/release/demo --down
fi

. scripts/deps.sh
install_deps

echo "building (release) ..."
cargo build --release --bins --locked -q

if [ "${1:-}" = "--keep" ]; then
  # Its own session, so the daemons it leaves running do not get the
  # terminal's hangup when this shell goes away.
  exec setsid --wait target/release/demo --keep
fi
exec target/release/demo "$@"
