#!/usr/bin/env bash
# The whole pghalo test suite: formatting, lints, unit tests and integration
# tests against real PostgreSQL clusters built by `pghalo lab`.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/prereqs.sh
source scripts/prereqs.sh
pghalo_ensure_prereqs
# The client tests drive psycopg 3; the demo does not need it.
pghalo_ensure_python_prereqs

started=$(date +%s)
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log"

# Every lab a test built must be gone: its reaper destroys it when the test
# process exits, so give them a moment, then look for survivors.
for _ in $(seq 1 60); do
    pgrep -f 'postgres -D [^ ]*/pghalo-test-' >/dev/null || break
    sleep 1
done
if pgrep -af 'postgres -D [^ ]*/pghalo-test-'; then
    echo "pghalo: PostgreSQL servers of test labs were left running (listed above)" >&2
    exit 1
fi
echo "pghalo: test suite finished in $(( $(date +%s) - started )) s"
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
