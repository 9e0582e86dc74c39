#!/usr/bin/env bash
# The travelling cache, side by side (issue 17): the python example (examples/python-basic:
# python:3.11-slim, an apt package, a PyPI package, a copied file, a run step) with BuildKit's
# registry cache in the local registry, on envkit and on buildkitd (when one is on PATH; its
# column then says "not run"), medians of $RUNS runs:
#
#   warm      a rebuild on the builder's own warm store, for reference
#   export    that warm rebuild plus --export-cache type=registry (mode=min, mode=max), each run
#             to a repository of its own, so that every blob the registry lacks is uploaded
#             (blobs pulled from the same registry are mounted, by both builders)
#   bytes     what one export's manifest names (config and layers)
#   import    a fresh store (buildkitd: a new daemon on a new root) building with --import-cache
#             of that builder's own mode=max cache: the base image is not pulled, every layer
#             comes from the cache
#
#   sudo bash benches/cache.sh [RUNS]          (default 3; writes $OUT, default
#                                               /var/tmp/envkit-bench-cache/results.md)
#
# Both builders are driven by envkit's CLI (buildkitd through a buildkitd context, which lowers
# for it and passes the cache flags on), as in side-by-side.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
RUNS=${1:-${RUNS:-3}}
W=${ENVKIT_BENCH_DIR:-/var/tmp/envkit-bench-cache}
OUT=${OUT:-$W/results.md}

# shellcheck source=benches/lib.sh
source benches/lib.sh
bench_setup
mkdir -p "$W/ctx/python"
cp examples/python-basic/build.envd examples/python-basic/hello.py "$W/ctx/python/"
chown -R "$TUSER:$TUSER" "$W"
declare -A RESULT RSS BYTES
trap stop_buildkitd EXIT
RUN_ID=$(date +%s)

cache_bytes() { # REPOSITORY: the bytes the manifest of REPOSITORY:latest names
  python3 - "$REG" "$1" <<'PY'
import json, sys, urllib.request
reg, repo = sys.argv[1], sys.argv[2]
accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"
req = urllib.request.Request(f"http://{reg}/v2/{repo}/manifests/latest", headers={"Accept": accept})
m = json.load(urllib.request.urlopen(req))
descs = ([m["config"]] if "config" in m else []) + m.get("layers", []) + m.get("manifests", [])
print(sum(d["size"] for d in descs))
PY
}

ran_steps() { # the exec and file steps the last build ran rather than took from a cache
  awk '/^#[0-9]+ (exec|file):/ { step[$1] = 1 } /^#[0-9]+ DONE/ && step[$1] { n++ } END { print n + 0 }' \
    "$W/last.log"
}

bench_cache() { # BUILDER
  local b=$1 mode i t repo times
  echo "== $b" >&2
  "${b}_fresh"
  "${b}_build" python >/dev/null
  times=()
  for i in $(seq 1 "$RUNS"); do times+=("$("${b}_build" python)"); done
  record "$b" python warm "${times[@]}"
  for mode in min max; do
    times=()
    for i in $(seq 1 "$RUNS"); do
      repo=bench/cache-$b-$mode-$RUN_ID-$i
      t=$("${b}_build" python --export-cache "type=registry,ref=$REG/$repo:latest,mode=$mode")
      note_rss "$b"
      times+=("$t")
    done
    record "$b" python "export $mode" "${times[@]}"
    BYTES["$b|$mode"]=$(cache_bytes "bench/cache-$b-$mode-$RUN_ID-1")
  done
  times=()
  for i in $(seq 1 "$RUNS"); do
    "${b}_fresh"
    t=$("${b}_build" python --import-cache "type=registry,ref=$REG/bench/cache-$b-max-$RUN_ID-1:latest")
    note_rss "$b"
    [ "$b" = envkit ] && echo "  envkit import run $i: $(ran_steps) exec/file step(s) ran" >&2
    times+=("$t")
  done
  record "$b" python import "${times[@]}"
}

BUILDERS=(envkit)
bench_cache envkit
if command -v buildkitd >/dev/null && command -v buildctl >/dev/null; then
  start_buildkitd
  BUILDERS+=(buildkitd)
  bench_cache buildkitd
  stop_buildkitd
  RSS[buildkitd]=$BKD_HWM
else
  echo "buildkitd: not run (no buildkitd and buildctl on PATH)" >&2
fi

ratio() { # A B: A / B as "0.42x", or "–"
  if [ -n "$1" ] && [ -n "$2" ]; then python3 -c "print(f'{$1 / $2:.2f}x')"; else echo "–"; fi
}
{
  echo "| python example | envkit | buildkitd | envkit / buildkitd |"
  echo "|---|---:|---:|---:|"
  for mode in warm import "export min" "export max"; do
    e=${RESULT["envkit|python|$mode"]:-}
    k=${RESULT["buildkitd|python|$mode"]:-}
    echo "| $mode | ${e:-–} s | ${k:-not run} ${k:+s} | $(ratio "$e" "$k") |"
  done
  for mode in min max; do
    e=${BYTES["envkit|$mode"]:-}
    k=${BYTES["buildkitd|$mode"]:-}
    echo "| bytes, mode=$mode | ${e:-–} | ${k:-not run} | $(ratio "$e" "$k") |"
  done
  row="| peak RSS | "
  for b in envkit buildkitd; do row+="$(( ${RSS[$b]:-0} / 1024 )) MiB | "; done
  echo "$row |"
  echo
  command -v buildkitd >/dev/null || echo "buildkitd: not run (none on PATH)."
  echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr);" \
       "envkit $(git -C "$REPO" rev-parse --short HEAD) (release, scripts/release.sh);" \
       "$(buildkitd --version 2>/dev/null | head -1); medians of $RUNS runs."
} | tee "$OUT"
