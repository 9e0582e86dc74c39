#!/usr/bin/env bash
# The release binary as envkit is installed and measured: one static file with no dynamic
# loader at each start (libc, libm and libgcc_s loaded and bound: ~0.4-0.7 ms of every command
# and of every build step's helper).
#
# On Linux it is linked against musl when the toolchain has musl's standard library
# (`rustup target add x86_64-unknown-linux-musl`) and `musl-gcc` is installed (Debian's
# musl-tools, for the C in aws-lc): glibc's static start-up probes the CPU's features and
# caches with dozens of `cpuid` instructions, each a trap to the hypervisor on a VM (~3.6 µs
# here), ~0.3 ms of each start that musl does not spend (BENCHMARKS.md). Otherwise it is
# linked statically against glibc. Either way at a fixed address (no relocation at start).
# ENVKIT_RELEASE_TARGET=<triple> picks the target instead. Other hosts get cargo's usual
# binary.
#
#   scripts/release.sh build [CARGO ARGS]    build; prints the binary's path on stdout
#   scripts/release.sh install [CARGO ARGS]  cargo install it (into ~/.cargo/bin)
#
# The flags go to cargo with `--target` set: without it they would also reach build scripts
# and proc-macros, which cannot be linked statically.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-}
shift || true
host=$(rustc -vV | sed -n 's/^host: //p')
target=${ENVKIT_RELEASE_TARGET:-}
if [ -z "$target" ]; then
  target=$host
  case $host in
    *-linux-gnu)
      musl=${host%-gnu}-musl
      if [ -d "$(rustc --print sysroot)/lib/rustlib/$musl/lib" ] && command -v musl-gcc >/dev/null; then
        target=$musl
      fi
      ;;
  esac
fi
case $target in
  *-linux-gnu) export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static" ;;
  *-linux-musl) export RUSTFLAGS="${RUSTFLAGS:-} -C relocation-model=static" ;;
esac
case $what in
  build)
    cargo build --release --bin envkit --target "$target" "$@" >&2
    echo "${CARGO_TARGET_DIR:-$PWD/target}/$target/release/envkit"
    ;;
  install)
    exec cargo install --path . --bin envkit --target "$target" "$@"
    ;;
  *)
    echo "usage: scripts/release.sh build|install [CARGO ARGS]" >&2
    exit 2
    ;;
esac
