#!/usr/bin/env bash
# The release binary as envkit is installed and measured. On Linux with glibc it is linked
# statically, at a fixed address: no dynamic loader runs at start (libc, libm and libgcc_s
# loaded and bound), which here is ~0.4-0.7 ms of every command and of every build step's
# helper. Other hosts get cargo's usual binary.
#
#   scripts/release.sh build [CARGO ARGS]    build; prints the binary's path on stdout
#   scripts/release.sh install [CARGO ARGS]  cargo install it (into ~/.cargo/bin)
#
# The flags go to cargo with `--target` set to the host: without it they would also reach
# build scripts and proc-macros, which cannot be linked statically.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-}
shift || true
host=$(rustc -vV | sed -n 's/^host: //p')
case $host in
  *-linux-gnu) export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static" ;;
esac
case $what in
  build)
    cargo build --release --bin envkit --target "$host" "$@" >&2
    echo "${CARGO_TARGET_DIR:-$PWD/target}/$host/release/envkit"
    ;;
  install)
    exec cargo install --path . --bin envkit --target "$host" "$@"
    ;;
  *)
    echo "usage: scripts/release.sh build|install [CARGO ARGS]" >&2
    exit 2
    ;;
esac
