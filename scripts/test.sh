#!/usr/bin/env bash
# The test command: prepares the test environment (packages, unprivileged user, local registry,
# offline base images — see scripts/test-env.sh), then runs every test of the workspace.
# Run as root on Debian 12; the end-to-end tests run envkit itself as the unprivileged user.
set -euo pipefail
cd "$(dirname "$0")/.."

env_out=$(bash scripts/test-env.sh)
eval "$(grep -E '^ENVKIT_TEST_(REGISTRY|USER|AUTH_REGISTRY|AUTH|CONTAINERD|DOCKERD|BUILDKITD|BUILDKITD_TCP|ARM64)=' <<<"$env_out")"
export ENVKIT_TEST_REGISTRY ENVKIT_TEST_USER ENVKIT_TEST_AUTH_REGISTRY ENVKIT_TEST_AUTH \
  ENVKIT_TEST_CONTAINERD ENVKIT_TEST_DOCKERD ENVKIT_TEST_BUILDKITD ENVKIT_TEST_BUILDKITD_TCP ENVKIT_TEST_ARM64
# A target dir outside the clone is reused between runs; the unprivileged user must be able to
# run the binaries in it.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/envkit-target}
mkdir -p "$CARGO_TARGET_DIR"
chmod 0755 "$CARGO_TARGET_DIR"

cargo build --workspace --all-targets
status=0
cargo test --workspace --no-fail-fast "$@" || status=$?
# The buildkitd suite needs a buildkitd (Debian has none): it runs when test-env.sh found one
# on PATH; otherwise it is reported as not run (cargo also lists it as ignored, with why).
if [ "$#" != 0 ]; then
  : # a filtered run: only what was asked for
elif [ -n "${ENVKIT_TEST_BUILDKITD:-}" ]; then
  cargo test --test buildkit -- --ignored || status=$?
else
  echo "NOT RUN: the buildkitd suite (tests/buildkit.rs: buildkitd_suite, buildkitd_cache_interop): no buildkitd on PATH" \
    "(scripts/test-env.sh starts one when there is); the buildkitd protocol ran against dockerd's BuildKit"
fi
# The release binary as it is installed (scripts/release.sh: linked statically, against musl
# where the toolchain has it) runs the e2e suite again.
if [ "$#" = 0 ]; then
  bin=$(bash scripts/release.sh build)
  chmod 0755 "$(dirname "$(dirname "$bin")")" "$(dirname "$bin")"
  echo "the e2e suite on the release binary $bin"
  ENVKIT_TEST_BIN=$bin cargo test --test e2e || status=$?
fi
exit "$status"
