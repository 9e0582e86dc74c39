#!/usr/bin/env bash
# The test command: prepares the test environment (packages, unprivileged user, local registry,
# offline base images — see scripts/test-env.sh), then runs every test of the workspace.
# Run as root on Debian 12; the end-to-end tests run envkit itself as the unprivileged user.
set -euo pipefail
cd "$(dirname "$0")/.."

env_out=$(bash scripts/test-env.sh)
eval "$(grep -E '^ENVKIT_TEST_(REGISTRY|USER|AUTH_REGISTRY|AUTH|CONTAINERD|DOCKERD)=' <<<"$env_out")"
export ENVKIT_TEST_REGISTRY ENVKIT_TEST_USER ENVKIT_TEST_AUTH_REGISTRY ENVKIT_TEST_AUTH \
  ENVKIT_TEST_CONTAINERD ENVKIT_TEST_DOCKERD
# A target dir outside the clone is reused between runs; the unprivileged user must be able to
# run the binaries in it.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/envkit-target}
mkdir -p "$CARGO_TARGET_DIR"
chmod 0755 "$CARGO_TARGET_DIR"

cargo build --workspace --all-targets
cargo test --workspace --no-fail-fast "$@"
