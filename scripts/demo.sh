#!/usr/bin/env bash
# The pghalo demo: builds pghalo, brings up a replicated PostgreSQL cluster on
# this machine, prints how to connect, and serves until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/prereqs.sh
source scripts/prereqs.sh
pghalo_ensure_prereqs
cargo build --locked -q -p pghalo
exec target/debug/pghalo demo "$@"
