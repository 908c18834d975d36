#!/usr/bin/env bash
# Runs the fio jobs in bench/fio/ on domfs and on its peers, all set up in this one run on
# this machine, and prints each target's rate and domfs's ratio to each peer. Ratios from
# one run are what count: the machine is shared and noisy, absolute numbers drift.
#
# Targets (all mounted at once, under one work directory on the same file system):
#   raw        a plain directory on the host file system (no FUSE, no crypto)
#   bindfs     bindfs passthrough FUSE over a plain directory (the FUSE ceiling)
#   gocryptfs  gocryptfs (AES-GCM per 4 KiB block, FUSE; no Merkle tree, no rollback
#              protection, no crash-atomic commits)
#   domfs      domfs mount, write-through (the default)
#   domfs-wb   domfs mount --writeback-cache (unless --no-writeback)
#
# Every job runs on every target before the next job starts (same target order each
# time), with a `sync` between runs so one target's write-back does not land in the next
# one's measurement. Rate: IOPS (reads + writes) for small-block jobs, MB/s (10^6 bytes/s)
# for 1 MiB jobs. "cpu" is the FUSE daemon's CPU time (user + system, all threads) per
# operation or per MB, measured around the whole fio run (ramp included) and divided by
# rate x wall time: the cost the daemon adds, independent of how busy the machine is.
# At the end the domfs volumes are unmounted and checked with `domfs fsck`, which must
# report them clean (exit status 1 otherwise).
#
# Usage: bench/compare.sh [--quick] [--rounds N] [--jobs REGEX] [--no-writeback]
#                         [--results DIR] [--keep]
#   --quick          smoke run: 128 MiB file, 3 s per job, 1 s ramp
#   --rounds N       repeat the whole sequence N times; the table shows medians (default 1)
#   --jobs REGEX     only the job files whose name matches (grep -E), e.g. 'randread'
#   --no-writeback   skip the domfs --writeback-cache target
#   --results DIR    keep fio's JSON output and a TSV of every number in DIR
#   --keep           keep the work directory (volumes, keys, data) after unmounting
# Environment:
#   DOMFS            the domfs binary (default: build it with cargo, release profile)
#   BENCH_WORKDIR    parent of the work directory (default /var/tmp; not a tmpfs, so the
#                    raw baseline and the backing stores of the FUSE targets are on disk)
#   SIZE, RUNTIME, RAMP   override the test file size and the seconds per job / ramp
#                    (defaults 1G, 20, 2; --quick: 128M, 3, 1)
#   DOMFS_CACHE      domfs --cache-size (default: domfs's own default, 256M)
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

quick=0
rounds=1
job_filter=
writeback=1
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
        --jobs)
            [[ $# -ge 2 ]] || die "--jobs needs a regular expression."
            job_filter=$2
            shift
            ;;
        --no-writeback) writeback=0 ;;
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
            echo "compare: unknown argument '$1' (try --help)" >&2
            exit 2
            ;;
    esac
    shift
done

if ((quick)); then
    SIZE=${SIZE:-128M} RUNTIME=${RUNTIME:-3} RAMP=${RAMP:-1}
else
    SIZE=${SIZE:-1G} RUNTIME=${RUNTIME:-20} RAMP=${RAMP:-2}
fi
export SIZE RUNTIME RAMP

repo=$BENCH_LIB_REPO
fio_dir=$repo/bench/fio

# --- prerequisites -------------------------------------------------------------------------

need_root_fuse
need_tools fio bindfs gocryptfs python3 umount -- \
    "scripts/install-deps installs the benchmark peers; Debian: apt-get install -y fio bindfs gocryptfs"

mapfile -t jobs < <(find "$fio_dir" -maxdepth 1 -name '*.fio' -printf '%f\n' | sort |
    { if [[ -n "$job_filter" ]]; then grep -E -- "$job_filter" || true; else cat; fi })
if ((${#jobs[@]} == 0)); then
    [[ -z "$job_filter" ]] || die "no job files in $fio_dir match '$job_filter'."
    die "no job files in $fio_dir."
fi

need_domfs

# --- work directory, mounts and their cleanup ----------------------------------------------

work=$(mktemp -d "${BENCH_WORKDIR:-/var/tmp}/domfs-compare.XXXXXX")
# Run a private copy: a cargo build elsewhere in the (shared) target directory during the
# run must not change the binary that later mounts, unmounts and fscks use.
domfs_built="$(date -u -r "$DOMFS" '+%Y-%m-%d %H:%M UTC')"
DOMFS=$(private_copy "$DOMFS" "$work")
[[ -n "$results" ]] || results=$work/results
mkdir -p "$results"
results=$(cd "$results" && pwd)

mounted=() # mount points, in mount order
cleanup() {
    local i mnt
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        mnt=${mounted[i]}
        is_mounted "$mnt" || continue
        say "cleanup: unmounting $mnt"
        case "${mnt##*/}" in
            domfs*) unmount_domfs "$mnt" ;;
            *) umount "$mnt" || umount -l "$mnt" || true ;;
        esac
    done
    if ((keep)); then
        say "work directory kept: $work"
    else
        # Only after every mount is gone: never delete through a live mount.
        local busy=0
        for mnt in "${mounted[@]}"; do
            if is_mounted "$mnt"; then busy=1; fi
        done
        if ((busy)); then
            say "cleanup: something is still mounted; leaving $work in place"
        else
            rm -rf --one-file-system "$work"
        fi
    fi
}
on_exit cleanup

# Space: the file on each target, the domfs volumes' redirect-on-write copies, slack.
need_kib=$(python3 -c '
import sys
s = sys.argv[1].upper()
mult = {"K": 1, "M": 1 << 10, "G": 1 << 20, "T": 1 << 30}
kib = int(float(s[:-1]) * mult[s[-1]]) if s[-1] in mult else int(s) // 1024
print(kib * 8)' "$SIZE") || die "cannot read SIZE='$SIZE' (e.g. 1G, 512M)."
avail_kib=$(df -Pk "$work" | awk 'NR == 2 { print $4 }')
((avail_kib > need_kib)) ||
    die "$work has $((avail_kib / 1024)) MiB free; about $((need_kib / 1024)) MiB needed (set BENCH_WORKDIR)."

targets=(raw bindfs gocryptfs domfs)
((writeback)) && targets+=(domfs-wb)
declare -A dir_of pid_of
mkdir -p "$work/mnt"

say "work directory $work; results $results"
say "setting up: raw"
mkdir "$work/raw"
dir_of[raw]=$work/raw

say "setting up: bindfs"
mkdir "$work/bindfs-src" "$work/mnt/bindfs"
bindfs "$work/bindfs-src" "$work/mnt/bindfs" >&2 || die "bindfs failed to mount."
mounted+=("$work/mnt/bindfs")
dir_of[bindfs]=$work/mnt/bindfs

say "setting up: gocryptfs"
mkdir "$work/gocryptfs-cipher" "$work/mnt/gocryptfs"
gocryptfs -q -init -extpass "echo pw" "$work/gocryptfs-cipher" >&2 || die "gocryptfs -init failed."
gocryptfs -q -nosyslog -extpass "echo pw" "$work/gocryptfs-cipher" "$work/mnt/gocryptfs" >&2 ||
    die "gocryptfs failed to mount."
mounted+=("$work/mnt/gocryptfs")
dir_of[gocryptfs]=$work/mnt/gocryptfs

"$DOMFS" -q key new "$work/domfs.key" >&2
mount_domfs() { # target name, extra mount options...
    local name=$1
    shift
    say "setting up: $name"
    "$DOMFS" -q create --size 8G --key-file "$work/domfs.key" "$work/$name.vol" >&2 ||
        die "domfs create failed."
    mkdir "$work/mnt/$name"
    "$DOMFS" -q mount --key-file "$work/domfs.key" ${DOMFS_CACHE:+--cache-size "$DOMFS_CACHE"} "$@" \
        "$work/$name.vol" "$work/mnt/$name" >&2 || die "domfs mount ($name) failed."
    mounted+=("$work/mnt/$name")
    dir_of[$name]=$work/mnt/$name
}
mount_domfs domfs
((writeback)) && mount_domfs domfs-wb --writeback-cache

# The daemon serving each FUSE target: the process whose command line ends in its mount
# point (the paths are unique to this run). Only read, for its CPU time.
for t in "${targets[@]}"; do
    [[ $t == raw ]] && continue
    mnt=${dir_of[$t]}
    pid=$(daemon_pid "$mnt")
    if [[ -n "$pid" ]]; then
        pid_of[$t]=$pid
    else
        say "note: no daemon process found for $t; its cpu column stays empty"
    fi
done

# --- the runs --------------------------------------------------------------------------------

versions=$(
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(awk '/MemTotal/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r)"
    echo "work fs: $(df -PT "$work" | awk 'NR == 2 { print $1 " (" $2 ")" }')"
    echo "fio: $(fio --version); bindfs: $(bindfs --version 2>&1 | head -n 1); gocryptfs: $(gocryptfs -version 2>&1 | head -n 1)"
    echo "domfs: $("$DOMFS" --version), binary built $domfs_built; tree: $(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown) (cache ${DOMFS_CACHE:-default})"
    echo "file $SIZE; runtime ${RUNTIME}s + ramp ${RAMP}s per job; rounds $rounds"
)
printf '%s\n' "$versions" >"$results/environment.txt"
printf '%s\n' "$versions" >&2

for t in "${targets[@]}"; do
    say "laying out the $SIZE test file on $t..."
    fio --name=layout --directory="${dir_of[$t]}" --filename=domfs-bench.dat --size="$SIZE" \
        --fallocate=none --create_only=1 --output=/dev/null ||
        die "laying out the test file on $t failed."
done
sync

hz=$(getconf CLK_TCK)
printf 'round\tjob\ttarget\twall_s\tdaemon_cpu_s\n' >"$results/runs.tsv"
total=$((rounds * ${#jobs[@]} * ${#targets[@]}))
n=0
for ((round = 1; round <= rounds; round++)); do
    for job in "${jobs[@]}"; do
        name=${job%.fio}
        mkdir -p "$results/$round/$name"
        for t in "${targets[@]}"; do
            n=$((n + 1))
            say "[$n/$total] round $round: $name on $t"
            pid=${pid_of[$t]:-}
            before=0
            [[ -n "$pid" ]] && before=$(cpu_ticks "$pid")
            start=$(date +%s.%N)
            out=$results/$round/$name/$t.json
            if ! DIR=${dir_of[$t]} fio --output-format=json --output="$out" "$fio_dir/$job"; then
                die "fio $job on $t failed (output: $out)."
            fi
            end=$(date +%s.%N)
            after=0
            [[ -n "$pid" ]] && after=$(cpu_ticks "$pid")
            if [[ -n "$pid" ]]; then
                cpu=$(awk -v a="$after" -v b="$before" -v hz="$hz" 'BEGIN { printf "%.3f", (a - b) / hz }')
            else
                cpu=
            fi
            printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$t" \
                "$(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f", e - s }')" "$cpu" >>"$results/runs.tsv"
            sync
        done
    done
done

# --- unmount, fsck ---------------------------------------------------------------------------

fsck_failed=0
fsck_report=
for t in "${targets[@]}"; do
    [[ $t == domfs* ]] || continue
    say "unmounting $t"
    "$DOMFS" -q unmount "${dir_of[$t]}" >&2 || die "domfs unmount ${dir_of[$t]} failed."
    say "domfs fsck $t.vol"
    if out=$("$DOMFS" fsck --key-file "$work/domfs.key" "$work/$t.vol" 2>&1); then
        fsck_report+="fsck $t.vol (exit 0): $out"$'\n'
    else
        rc=$?
        fsck_report+="fsck $t: FAILED (exit $rc): $out"$'\n'
        fsck_failed=1
    fi
done

# --- table -------------------------------------------------------------------------------------

python3 - "$results" "${targets[*]}" "${jobs[*]}" "$rounds" <<'PY'
import csv, json, os, statistics, sys

results, targets, jobs, rounds = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), int(sys.argv[4])
jobs = [j[:-4] for j in jobs]
runs = {}
with open(os.path.join(results, "runs.tsv")) as f:
    for row in csv.DictReader(f, delimiter="\t"):
        runs[(int(row["round"]), row["job"], row["target"])] = row

def measure(rnd, job, target):
    with open(os.path.join(results, str(rnd), job, target + ".json")) as f:
        doc = json.load(f)
    j = doc["jobs"][0]  # group_reporting: one entry for all clones
    iops = j["read"]["iops"] + j["write"]["iops"]
    mbs = (j["read"]["bw_bytes"] + j["write"]["bw_bytes"]) / 1e6
    ios = j["read"]["total_ios"] + j["write"]["total_ios"]
    large = ios > 0 and mbs * 1e6 / max(iops, 1e-9) >= 128 * 1024
    clat = [j[d]["clat_ns"]["percentile"].get("99.000000", 0) for d in ("read", "write") if j[d]["total_ios"]]
    sync = j.get("sync", {}).get("lat_ns", {})
    run = runs[(rnd, job, target)]
    cpu = None
    if run["daemon_cpu_s"]:
        work = (mbs if large else iops) * float(run["wall_s"])
        if work > 0:
            cpu = float(run["daemon_cpu_s"]) / work * 1e6  # µs per op or per MB
    return {
        "iops": iops, "mbs": mbs, "large": large, "p99_us": max(clat) / 1e3 if clat else 0.0,
        "sync_mean_us": sync.get("mean", 0) / 1e3 if sync.get("N") else 0.0, "cpu": cpu,
    }

def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None

table = {}
with open(os.path.join(results, "results.tsv"), "w") as out:
    out.write("job\ttarget\tiops\tMBps\tp99_clat_us\tsync_mean_us\tdaemon_cpu_us_per_unit\n")
    for job in jobs:
        for t in targets:
            ms = [measure(r, job, t) for r in range(1, rounds + 1)]
            m = {k: med([x[k] for x in ms]) for k in ("iops", "mbs", "p99_us", "sync_mean_us", "cpu")}
            m["large"] = ms[0]["large"]
            m["rate"] = m["mbs"] if m["large"] else m["iops"]
            table[(job, t)] = m
            out.write("\t".join([job, t] + ["" if m[k] is None else f"{m[k]:.3f}"
                      for k in ("iops", "mbs", "p99_us", "sync_mean_us", "cpu")]) + "\n")

def fmt(v):
    if v is None:
        return "-"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"

def ratio(a, b):
    return "-" if not b or a is None else f"{a / b:.2f}"

domfs_like = [t for t in targets if t.startswith("domfs")]
peers = [t for t in ("raw", "bindfs", "gocryptfs") if t in targets]
head = ["job", "unit"] + targets + [f"{d}/{p}" for d in domfs_like for p in peers]
rows = []
for job in jobs:
    unit = "MB/s" if table[(job, targets[0])]["large"] else "IOPS"
    row = [job, unit] + [fmt(table[(job, t)]["rate"]) for t in targets]
    row += [ratio(table[(job, d)]["rate"], table[(job, p)]["rate"]) for d in domfs_like for p in peers]
    rows.append(row)

def show(title, head, rows):
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    print(title)
    line = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    print(line(head))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))
    print()

note = f" (median of {rounds} rounds)" if rounds > 1 else ""
show(f"Throughput{note}; ratios > 1 mean domfs is faster", head, rows)

fuse = [t for t in targets if t != "raw"]
head2 = ["job", "unit"] + fuse
rows2 = []
for job in jobs:
    unit = "µs/MB" if table[(job, targets[0])]["large"] else "µs/op"
    rows2.append([job, unit] + [fmt(table[(job, t)]["cpu"]) for t in fuse])
show("FUSE daemon CPU time per operation (IOPS jobs) or per MB (MB/s jobs)", head2, rows2)

head3 = ["job"] + [f"{t} p99" for t in targets]
rows3 = [[job] + [fmt(table[(job, t)]["p99_us"]) for t in targets] for job in jobs]
show("p99 completion latency of reads/writes, µs (fsync time not included)", head3, rows3)

sync_jobs = [job for job in jobs if any(table[(job, t)]["sync_mean_us"] for t in targets)]
if sync_jobs:
    head4 = ["job"] + targets
    rows4 = [[job] + [fmt(table[(job, t)]["sync_mean_us"]) for t in targets] for job in sync_jobs]
    show("mean fsync/fdatasync latency, µs", head4, rows4)
PY

cat "$results/environment.txt"
printf '%s' "$fsck_report"
if ((fsck_failed)); then
    die "domfs fsck found problems (see above)."
fi
