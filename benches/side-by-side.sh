#!/usr/bin/env bash
# Side-by-side benchmark: the same workloads built by envkit and by buildah (Debian's, rootless
# as the test user, like envkit), cold and warm, medians of $RUNS runs, as a markdown table.
# dockerd's BuildKit and buildkitd are not part of it yet (neither is installed on these
# machines; BENCHMARKS.md quotes their measured figures from the issue instead).
#
#   sudo bash benches/side-by-side.sh [RUNS]      (default 3; writes $OUT, default
#                                                  /var/tmp/envkit-bench/results.md)
#
# Needs the test environment (scripts/test-env.sh: local registry, base images, test user).
# Definitions used here:
#   cold   the workload's own steps run (envkit/buildah: --no-cache; docker: --no-cache);
#          the base image is already in each builder's store.
#   warm   nothing changed: a fully cached rebuild.
# Workloads:
#   chain20    20 sequential RUN steps on debian:bookworm (envd: 20 `run()` calls).
#   parallel4  4 independent `sleep 1` branches on busybox, joined (envkit: the golden vector
#              parallel4.pb; Dockerfile: 4 stages copied into one, `--jobs 4`).
#   context    COPY of a context of 2,000 x 4 KiB files + one 100 MiB file (envd: io.copy);
#              cold rewrites every file first, "1 file" changes one small file.
#   apt        apt-get install jq with the apt cache in cache mounts; cold: empty cache
#              mounts, warm: the step runs again (--no-cache) with the caches filled.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
RUNS=${1:-${RUNS:-3}}
W=${ENVKIT_BENCH_DIR:-/var/tmp/envkit-bench}
OUT=${OUT:-$W/results.md}

# shellcheck source=benches/lib.sh
source benches/lib.sh
bench_setup

# --- workloads -------------------------------------------------------------------------------
mk() { mkdir -p "$W/ctx/$1"; }
mk chain20
{
  echo '# syntax=v1'
  echo 'def build():'
  echo '    base(image="debian:bookworm", dev=False)'
  for i in $(seq 1 20); do echo "    run(commands=[\"echo $i > /f$i\"])"; done
} >"$W/ctx/chain20/build.envd"
{
  echo 'FROM debian:bookworm'
  for i in $(seq 1 20); do echo "RUN echo $i > /f$i"; done
} >"$W/ctx/chain20/Dockerfile"

mk parallel4
cp tests/golden/llb/parallel4.pb "$W/ctx/parallel4/def.pb"
{
  echo 'FROM busybox:latest AS base'
  for i in 1 2 3 4; do
    echo "FROM base AS b$i"
    echo "RUN sleep 1 && echo $i > /p$i"
  done
  echo 'FROM base'
  for i in 1 2 3 4; do echo "COPY --from=b$i /p$i /p$i"; done
} >"$W/ctx/parallel4/Dockerfile"

mk context
cat >"$W/ctx/context/build.envd" <<'EOF'
# syntax=v1
def build():
    base(image="debian:bookworm", dev=False)
    io.copy(source="data", target="/data")
EOF
printf 'FROM debian:bookworm\nCOPY data /data\n' >"$W/ctx/context/Dockerfile"
python3 - "$W/ctx/context/data" <<'EOF'
import os, sys
root = sys.argv[1]
for d in range(20):
    os.makedirs(f"{root}/dir{d:02}", exist_ok=True)
    for f in range(100):
        with open(f"{root}/dir{d:02}/f{f:03}.txt", "wb") as fh:
            fh.write(os.urandom(16) + b"x" * (4096 - 16))
with open(f"{root}/big.bin", "wb") as fh:
    for _ in range(100):
        fh.write(os.urandom(1 << 20))
EOF

mk apt
cat >"$W/ctx/apt/build.envd" <<'EOF'
# syntax=v1
def build():
    base(image="debian:bookworm", dev=False)
    install.apt_packages(name=["jq"])
EOF
cat >"$W/ctx/apt/Dockerfile" <<'EOF'
FROM debian:bookworm
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,target=/var/lib/apt,sharing=locked \
    rm -f /etc/apt/apt.conf.d/docker-clean && apt-get update && apt-get install -y jq
EOF
chown -R "$TUSER:$TUSER" "$W"

declare -A RESULT
MAXRSS_ENVKIT=0
record() { # BUILDER WORKLOAD MODE SECONDS...
  local b=$1 wl=$2 mode=$3
  shift 3
  RESULT["$b|$wl|$mode"]=$(median "$@")
  echo "  $b $wl $mode: $* -> median ${RESULT["$b|$wl|$mode"]}" >&2
}
note_rss() {
  local r
  r=$(cat "$W/rss")
  [ "$r" -gt "$MAXRSS_ENVKIT" ] && MAXRSS_ENVKIT=$r
  return 0
}

envkit_build() { # WORKLOAD [extra args]
  local wl=$1
  shift
  if [ "$wl" = parallel4 ]; then
    timed "$ENVKIT" solve --progress plain -t parallel4:bench "$@" "$W/ctx/parallel4/def.pb"
  else
    timed "$ENVKIT" build --progress plain -p "$W/ctx/$wl" -t "$wl:bench" "$@"
  fi
}
buildah_build() { # WORKLOAD [extra args]
  local wl=$1
  shift
  timed "${BAH[@]}" "${BAH_BUD[@]}" "$@" -t "$wl-bench" "$W/ctx/$wl"
}

touch_context() { # every file gets new content
  python3 - "$W/ctx/context/data" <<'EOF'
import os, sys
for dp, _, fs in os.walk(sys.argv[1]):
    for f in fs:
        with open(os.path.join(dp, f), "r+b") as fh:
            fh.write(os.urandom(16))
EOF
  chown -R "$TUSER:$TUSER" "$W/ctx/context/data"
}
touch_one() {
  head -c 16 /dev/urandom | dd of="$W/ctx/context/data/dir07/f042.txt" conv=notrunc status=none
}

clear_caches() { # BUILDER: empty the cache mounts (apt cold)
  case $1 in
    envkit) as_user "$ENVKIT" prune --filter type=exec.cachemount >/dev/null ;;
    buildah) rm -rf /var/tmp/buildah-cache "/var/tmp/buildah-cache-$TUID" ;; # where buildah keeps them
  esac
}

bench_builder() { # NAME BUILD-FUNCTION
  local b=$1 fn=$2 wl i t cold warm one
  echo "== $b" >&2
  # Prime: pull bases, fill caches once (not measured).
  for wl in chain20 parallel4 context apt; do $fn "$wl" >/dev/null; done
  [ "$b" = envkit ] && note_rss
  for wl in chain20 parallel4 context apt; do
    cold=() warm=() one=()
    for i in $(seq 1 "$RUNS"); do
      [ "$wl" = context ] && touch_context
      [ "$wl" = apt ] && clear_caches "$b"
      t=$($fn "$wl" --no-cache)
      [ "$b" = envkit ] && note_rss
      cold+=("$t")
    done
    record "$b" "$wl" cold "${cold[@]}"
    for i in $(seq 1 "$RUNS"); do
      if [ "$wl" = apt ]; then
        t=$($fn "$wl" --no-cache) # the step again, caches warm
      else
        t=$($fn "$wl")
      fi
      [ "$b" = envkit ] && note_rss
      warm+=("$t")
    done
    record "$b" "$wl" warm "${warm[@]}"
    if [ "$wl" = context ]; then
      for i in $(seq 1 "$RUNS"); do
        touch_one
        t=$($fn "$wl")
        one+=("$t")
      done
      record "$b" "$wl" "1 file" "${one[@]}"
    fi
  done
}

BUILDERS=(envkit)
bench_builder envkit envkit_build
if command -v buildah >/dev/null; then
  BUILDERS+=(buildah)
  bench_builder buildah buildah_build
fi

# --- table -----------------------------------------------------------------------------------
{
  header="| workload | mode |"
  for b in "${BUILDERS[@]}"; do header+=" $b |"; done
  echo "$header envkit / best peer |"
  printf '|---|---|'
  for _ in "${BUILDERS[@]}"; do printf -- '---:|'; done
  echo '---:|'
  for key in "chain20|cold" "chain20|warm" "parallel4|cold" "parallel4|warm" \
             "context|cold" "context|warm" "context|1 file" "apt|cold" "apt|warm"; do
    wl=${key%%|*}
    mode=${key#*|}
    row="| $wl | $mode |"
    best=""
    for b in "${BUILDERS[@]}"; do
      v=${RESULT["$b|$wl|$mode"]:-}
      row+=" ${v:-–} s |"
      if [ "$b" != envkit ] && [ -n "$v" ]; then
        best=$(python3 -c "a='$best'; print(min(float(a), $v) if a else $v)")
      fi
    done
    ratio="–"
    if [ -n "$best" ]; then
      ratio=$(python3 -c "print(f'{${RESULT["envkit|$wl|$mode"]} / $best:.2f}x')")
    fi
    echo "$row $ratio |"
  done
  echo
  echo "envkit peak RSS over all runs: $((MAXRSS_ENVKIT / 1024)) MiB (the envkit process itself; its helpers and the steps' processes are separate)."
  echo
  echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr);" \
       "envkit $(git -C "$REPO" rev-parse --short HEAD) (release);" \
       "$(buildah --version 2>/dev/null | head -1); medians of $RUNS runs."
} | tee "$OUT"
