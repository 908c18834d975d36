#!/usr/bin/env bash
# What auditing costs: one key-file volume, mounted in turn with auditing on (as always)
# and off (DOMFS_BENCH_NO_AUDIT=1, honoured for key-file volumes only, and said loudly in
# the mount's output), the same fio jobs on the same file each time, and the ratio.
#
# Per round and setting: fio's 4 KiB random reads with O_DIRECT (every read a request to
# the daemon: bench/fio/01-randread-4k-direct.fio) and through the page cache
# (02-randread-4k-buffered.fio), then an open/close loop (python3, one file) for the cost
# of one audited open. Beside each rate, the daemon's CPU time (user + system, all
# threads, from /proc/PID/stat) per operation: what the daemon spends, which a busy
# machine disturbs much less than the rates. Rounds alternate the order (on, off / off,
# on), so drift of a shared machine does not favour one side; the table shows medians.
# Reads are never
# audited (the open is the viewing event), so the aim is a read ratio of at least 0.90.
# At the end `domfs audit --verify` must find the volume's log intact (exit 1 otherwise).
#
# Usage: bench/audit-cost.sh [--quick] [--rounds N] [--opens N] [--results DIR] [--keep]
#   --quick          smoke run: 128 MiB file, 3 s per job, 1 s ramp, 1 round
#   --rounds N       rounds (default 3)
#   --opens N        opens per open/close loop (default 20000)
#   --results DIR    keep fio's JSON output and a TSV of every number in DIR
#   --keep           keep the work directory (volume, key) afterwards
# Environment:
#   DOMFS            the domfs binary (default: cargo build --release -p domfs)
#   BENCH_WORKDIR    parent of the work directory (default /var/tmp, not a tmpfs)
#   SIZE, RUNTIME, RAMP   test file size and seconds per job / ramp (default 1G, 20, 2)
#   DOMFS_CACHE      domfs --cache-size (default: domfs's own, 256M)
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

quick=0
rounds=3
opens=20000
results=
keep=0

while (($#)); do
    case "$1" in
        --quick) quick=1 ;;
        --rounds)
            [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || die "--rounds needs a positive number."
            rounds=$2
            shift
            ;;
        --opens)
            [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || die "--opens needs a positive number."
            opens=$2
            shift
            ;;
        --results)
            [[ $# -ge 2 ]] || die "--results needs a directory."
            results=$2
            shift
            ;;
        --keep) keep=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "audit-cost: unknown argument '$1' (try --help)" >&2
            exit 2
            ;;
    esac
    shift
done

if ((quick)); then
    SIZE=${SIZE:-128M} RUNTIME=${RUNTIME:-3} RAMP=${RAMP:-1}
    rounds=1
else
    SIZE=${SIZE:-1G} RUNTIME=${RUNTIME:-20} RAMP=${RAMP:-2}
fi
export SIZE RUNTIME RAMP

repo=$BENCH_LIB_REPO
fio_dir=$repo/bench/fio
jobs=(01-randread-4k-direct.fio 02-randread-4k-buffered.fio)

need_root_fuse
need_tools fio python3 -- "Debian: apt-get install -y fio python3"
for job in "${jobs[@]}"; do [[ -f "$fio_dir/$job" ]] || die "missing $fio_dir/$job."; done

need_domfs

work=$(mktemp -d "${BENCH_WORKDIR:-/var/tmp}/domfs-audit-cost.XXXXXX")
# A private copy: a build elsewhere in the shared target directory changes nothing here.
DOMFS=$(private_copy "$DOMFS" "$work")
[[ -n "$results" ]] || results=$work/results
mkdir -p "$results"
results=$(cd "$results" && pwd)
mnt=$work/mnt
mkdir -p "$mnt"

cleanup() {
    if is_mounted "$mnt"; then
        say "cleanup: unmounting $mnt"
        unmount_domfs "$mnt"
    fi
    if ((keep)) || is_mounted "$mnt"; then
        say "work directory kept: $work"
    else
        rm -rf --one-file-system "$work"
    fi
}
on_exit cleanup

key=$work/audit.key
vol=$work/audit.vol
"$DOMFS" -q key new "$key"
"$DOMFS" -q create --size 8G --key-file "$key" "$vol"

mount_as() { # on|off
    local out
    if [[ $1 == off ]]; then
        out=$(DOMFS_BENCH_NO_AUDIT=1 "$DOMFS" mount --key-file "$key" ${DOMFS_CACHE:+--cache-size "$DOMFS_CACHE"} \
            "$vol" "$mnt" 2>&1) || die "mount (audit off) failed: $out"
        [[ $out == *"AUDITING IS OFF"* ]] || die "the mount did not turn auditing off (said: $out)"
    else
        out=$("$DOMFS" mount --key-file "$key" ${DOMFS_CACHE:+--cache-size "$DOMFS_CACHE"} \
            "$vol" "$mnt" 2>&1) || die "mount failed: $out"
        [[ $out != *"AUDITING IS OFF"* ]] || die "auditing is off on the 'on' mount"
    fi
}

say "work directory $work; results $results"
say "laying out the $SIZE test file..."
mount_as on
fio --name=layout --directory="$mnt" --filename=domfs-bench.dat --size="$SIZE" \
    --fallocate=none --create_only=1 --output=/dev/null || die "laying out the test file failed."
"$DOMFS" -q unmount "$mnt"

{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), kernel $(uname -r)"
    echo "fio: $(fio --version); domfs: $("$DOMFS" --version); tree: $(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown)"
    echo "file $SIZE; runtime ${RUNTIME}s + ramp ${RAMP}s per job; rounds $rounds; $opens opens per loop"
} >"$results/environment.txt"

open_loop() { # file -> microseconds per open+close
    python3 - "$1" "$opens" <<'PY'
import os, sys, time
path, n = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDONLY)  # warm the lookup
os.close(fd)
t = time.perf_counter()
for _ in range(n):
    os.close(os.open(path, os.O_RDONLY))
print(f"{(time.perf_counter() - t) / n * 1e6:.3f}")
PY
}

hz=$(getconf CLK_TCK)
# µs of daemon CPU per operation: ticks before, ticks after, operations.
per_op() { awk -v a="$2" -v b="$1" -v n="$3" -v hz="$hz" 'BEGIN { printf "%.3f", (n > 0 ? (a - b) / hz / n * 1e6 : 0) }'; }

printf 'round\tsetting\tjob\tvalue\n' >"$results/runs.tsv"
for ((round = 1; round <= rounds; round++)); do
    if ((round % 2)); then order=(on off); else order=(off on); fi
    for setting in "${order[@]}"; do
        say "round $round: auditing $setting"
        mount_as "$setting"
        pid=$(daemon_pid "$mnt")
        [[ -n "$pid" ]] || die "no daemon process found for $mnt."
        for job in "${jobs[@]}"; do
            name=${job%.fio}
            out=$results/$round-$setting-$name.json
            before=$(cpu_ticks "$pid")
            DIR=$mnt fio --output-format=json --output="$out" "$fio_dir/$job" ||
                die "fio $job failed (output: $out)."
            after=$(cpu_ticks "$pid")
            read -r iops ios < <(python3 -c 'import json, sys; j = json.load(open(sys.argv[1]))["jobs"][0]; print(j["read"]["iops"] + j["write"]["iops"], j["read"]["total_ios"] + j["write"]["total_ios"])' "$out")
            printf '%s\t%s\t%s\t%s\n' "$round" "$setting" "$name" "$iops" >>"$results/runs.tsv"
            # total_ios leaves out the ramp; the CPU time includes it: an upper bound.
            printf '%s\t%s\t%s\t%s\n' "$round" "$setting" "$name cpu-us" "$(per_op "$before" "$after" "$ios")" >>"$results/runs.tsv"
        done
        before=$(cpu_ticks "$pid")
        us=$(open_loop "$mnt/domfs-bench.dat")
        after=$(cpu_ticks "$pid")
        printf '%s\t%s\t%s\t%s\n' "$round" "$setting" "open-close-us" "$us" >>"$results/runs.tsv"
        printf '%s\t%s\t%s\t%s\n' "$round" "$setting" "open-close cpu-us" "$(per_op "$before" "$after" "$opens")" >>"$results/runs.tsv"
        "$DOMFS" -q unmount "$mnt"
        sync
    done
done

verify=$("$DOMFS" audit --verify --key-file "$key" "$vol" 2>&1) && verified=1 || verified=0
entries=$("$DOMFS" audit --json --key-file "$key" "$vol" 2>/dev/null | wc -l || true)

python3 - "$results/runs.tsv" "$opens" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
opens = int(sys.argv[2])
jobs = []
for r in rows:
    if r["job"] not in jobs:
        jobs.append(r["job"])
def med(job, setting):
    values = [float(r["value"]) for r in rows if r["job"] == job and r["setting"] == setting and r["value"]]
    return statistics.median(values) if values else float("nan")
print("Auditing on vs. off (medians); for IOPS, on/off >= 0.90 meets the aim")
print(f"{'job':32} {'unit':>6} {'audit on':>12} {'audit off':>12} {'on/off':>8} {'cost':>8}")
for job in jobs:
    on, off = med(job, "on"), med(job, "off")
    if job.endswith("cpu-us"):
        label = job.replace(" cpu-us", ": daemon CPU")
        print(f"{label:32} {'µs/op':>6} {on:12.2f} {off:12.2f} {'':>8} {on - off:+7.2f}µs")
    elif job == "open-close-us":
        print(f"{'open+close (' + str(opens) + ' times)':32} {'µs':>6} {on:12.2f} {off:12.2f} {off / on:8.2f} {on - off:+7.2f}µs")
    else:
        print(f"{job:32} {'IOPS':>6} {on:12.0f} {off:12.0f} {on / off:8.3f} {100 * (1 - on / off):+7.1f}%")
PY
cat "$results/environment.txt"
echo "audit log after the runs: $entries entries; $verify"
((verified)) || die "domfs audit --verify failed."
