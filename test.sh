#!/usr/bin/env bash
# Runs every test: unit, root integration (plugin, flanneld) and the
# multi-node end-to-end tests. As root on Debian; installs what is missing.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/deps.sh
install_deps

cargo build --release --bins --locked
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --release --locked --no-fail-fast "$@"
else
  cargo test --workspace --release --locked --no-fail-fast "$@"
fi
