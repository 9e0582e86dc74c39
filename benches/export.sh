#!/usr/bin/env bash
# Export benchmark: one ~500 MiB image (debian:bookworm + a 500 MiB layer of real shared
# libraries and random bytes) leaves envkit and buildah as an OCI archive (gzip, zstd), a
# docker archive, and a registry push (gzip, zstd). Both rootless as the test user, medians of
# $RUNS runs, as a markdown table.
#
#   sudo bash benches/export.sh [RUNS]    (default 3; writes $OUT, default
#                                          /var/tmp/envkit-bench-export/results.md)
#
# Every run starts cold for both: envkit forgets the compressed variants it remembers per
# layer (content/layers) and where blobs came from (content/origin, so nothing is mounted
# instead of uploaded); buildah's blob-info cache is emptied likewise. Each push goes to a
# new repository of the local registry. Not measured: building the image.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
RUNS=${1:-${RUNS:-3}}
W=${ENVKIT_BENCH_DIR:-/var/tmp/envkit-bench-export}
OUT=${OUT:-$W/results.md}

# shellcheck source=benches/lib.sh
source benches/lib.sh
bench_setup

mkdir -p "$W/ctx/export"
cat >"$W/ctx/export/build.envd" <<'ENVD'
# syntax=v1
def build():
    base(image="debian:bookworm", dev=False)
    io.copy(source="data", target="/data")
ENVD
printf 'FROM debian:bookworm\nCOPY data /data\n' >"$W/ctx/export/Dockerfile"
python3 - "$W/ctx/export/data" <<'PY'
import os, shutil, sys
root = sys.argv[1]
os.makedirs(root, exist_ok=True)
budget = 400 << 20
src = "/usr/lib/x86_64-linux-gnu"
for dp, _, fs in sorted(os.walk(src)):
    for f in sorted(fs):
        p = os.path.join(dp, f)
        if budget <= 0 or os.path.islink(p) or not os.path.isfile(p):
            continue
        dst = os.path.join(root, "lib", os.path.relpath(p, src))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(p, dst)
        budget -= os.path.getsize(p)
with open(os.path.join(root, "random.bin"), "wb") as fh:
    for _ in range(100):
        fh.write(os.urandom(1 << 20))
PY
chown -R "$TUSER:$TUSER" "$W"
DATA_MIB=$(du -sm "$W/ctx/export/data" | cut -f1)

echo "building the image with both (not measured)" >&2
timed "$ENVKIT" build --progress plain -p "$W/ctx/export" -t export:bench >/dev/null
timed "${BAH[@]}" "${BAH_BUD[@]}" -t export-bench "$W/ctx/export" >/dev/null

envkit_cold() { rm -rf "$W/envkit-root/content/layers" "$W/envkit-root/content/origin"; }
buildah_cold() { rm -rf "$W/.local/share/containers/cache"; }

declare -A RESULT
SIZES=()
run_case() { # CASE ENVKIT-ARGS... -- BUILDAH-ARGS...  ({N} is the run number)
  local case=$1 i t
  shift
  local ek=() bh=() side=ek
  for a in "$@"; do
    if [ "$a" = -- ]; then side=bh; continue; fi
    if [ $side = ek ]; then ek+=("$a"); else bh+=("$a"); fi
  done
  local e=() b=()
  for i in $(seq 1 "$RUNS"); do
    rm -f "$W"/out-*
    envkit_cold
    t=$(timed "${ek[@]//\{N\}/$i}")
    e+=("$t")
    buildah_cold
    t=$(timed "${BAH[@]}" "${bh[@]//\{N\}/$i}")
    b+=("$t")
  done
  RESULT["$case|envkit"]=$(median "${e[@]}")
  RESULT["$case|buildah"]=$(median "${b[@]}")
  echo "  $case: envkit ${e[*]} buildah ${b[*]}" >&2
}

run_case "OCI archive, gzip" \
  "$ENVKIT" build --progress plain -p "$W/ctx/export" -t export:bench -o "type=oci,dest=$W/out-envkit.tar" -- \
  push --compression-format gzip export-bench "oci-archive:$W/out-buildah.tar"
run_case "OCI archive, zstd" \
  "$ENVKIT" build --progress plain -p "$W/ctx/export" -t export:bench -o "type=oci,dest=$W/out-envkit.tar,compression=zstd" -- \
  push --compression-format zstd export-bench "oci-archive:$W/out-buildah.tar"
run_case "docker archive (plain layers)" \
  "$ENVKIT" build --progress plain -p "$W/ctx/export" -t export:bench -o "type=docker,dest=$W/out-envkit.tar" -- \
  push export-bench "docker-archive:$W/out-buildah.tar:export-bench:latest"
run_case "registry push, gzip" \
  "$ENVKIT" push export:bench --to "$REG/bench/envkit-gzip-{N}:1" -- \
  push --tls-verify=false --compression-format gzip export-bench "docker://$REG/bench/buildah-gzip-{N}:1"
run_case "registry push, zstd" \
  "$ENVKIT" push export:bench --compression zstd --to "$REG/bench/envkit-zstd-{N}:1" -- \
  push --tls-verify=false --compression-format zstd export-bench "docker://$REG/bench/buildah-zstd-{N}:1"

{
  echo "| export of the ~$((DATA_MIB + 120)) MiB image | envkit | buildah | envkit / buildah |"
  echo "|---|---:|---:|---:|"
  for c in "OCI archive, gzip" "OCI archive, zstd" "docker archive (plain layers)" \
           "registry push, gzip" "registry push, zstd"; do
    e=${RESULT["$c|envkit"]} b=${RESULT["$c|buildah"]}
    echo "| $c | $e s | $b s | $(python3 -c "print(f'{$e / $b:.2f}x')") |"
  done
  echo
  echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr);" \
       "envkit $(git -C "$REPO" rev-parse --short HEAD) (release, scripts/release.sh);" \
       "$(buildah --version 2>/dev/null | head -1); medians of $RUNS runs;" \
       "data layer $DATA_MIB MiB uncompressed."
} | tee "$OUT"
