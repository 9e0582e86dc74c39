#!/usr/bin/env bash
# Sets up the test environment (scripts/test-env.sh), builds envkit, then — as the unprivileged
# user — builds examples/python-basic into an OCI tarball and runs it with podman.
set -euo pipefail
cd "$(dirname "$0")/.."

env_out=$(bash scripts/test-env.sh)
eval "$(grep -E '^ENVKIT_TEST_(REGISTRY|USER)=' <<<"$env_out")"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/envkit-target}
mkdir -p "$CARGO_TARGET_DIR" && chmod 0755 "$CARGO_TARGET_DIR"
cargo build --bin envkit
bin=$CARGO_TARGET_DIR/debug/envkit

user=$ENVKIT_TEST_USER
uid=$(id -u "$user")
work=/tmp/envkit-example-$uid
rm -rf "$work"; mkdir -p "$work"
cp -r examples/python-basic "$work/"
cat >"$work/config.toml" <<CFG
[registry."docker.io"]
mirrors = ["$ENVKIT_TEST_REGISTRY"]
[registry."$ENVKIT_TEST_REGISTRY"]
http = true
[worker]
ca-bundle = "/etc/ssl/certs/ca-certificates.crt"
CFG
chown -R "$user:$user" "$work"
run_dir=/tmp/envkit-run-$uid; install -d -o "$user" -g "$user" -m 0700 "$run_dir"

as_user() {
  runuser -u "$user" -- env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$work" USER="$user" \
    XDG_RUNTIME_DIR="$run_dir" ENVKIT_CONFIG="$work/config.toml" ENVKIT_ROOT="$work/store" "$@"
}
podman_user() {
  as_user podman --root "$work/podman" --runroot "$work/podman-run" --runtime runc \
    --cgroup-manager=cgroupfs --events-backend=file "$@"
}

set -x
as_user "$bin" build -p "$work/python-basic" -o "type=oci,dest=$work/py.tar"
as_user "$bin" images
podman_user load -i "$work/py.tar"
podman_user run --rm --network none python-basic:dev python3 -c \
  'import six, os; print(open("/opt/hello.out").read().strip(), "| GREETING =", os.environ["GREETING"])'
