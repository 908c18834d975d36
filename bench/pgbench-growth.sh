#!/usr/bin/env bash
# Keep-all growth under pgbench: how much a keep-all domfs volume grows while PostgreSQL
# runs pgbench on it, against the size of the data it holds. The requirement: a 10-minute
# pgbench run on a keep-all volume with PostgreSQL's scratch patterns excluded must not
# grow the volume's use beyond 2x its data.
#
# One key-file volume (keep-all, the default retention) created with --no-keep for the
# patterns below, mounted --allow-other; a PostgreSQL cluster (initdb, run as the
# `postgres` user, default settings: autovacuum on) with its data directory on the mount;
# `pgbench -i -s SCALE`, a CHECKPOINT, the "before" measurement; `pgbench -T DURATION -c 4
# -j 2`, a CHECKPOINT, the "after" measurement; a clean stop (shutdown checkpoint), the
# "after stop" measurement; unmount, `domfs fsck`.
#
# Measured at each point:
#   data      the visible files: `du` of the data directory (all of it: tables, indexes,
#             WAL, commit log...), and pg_database_size() of the pgbench database
#   use       the volume's allocated blocks: visible + hidden + domfs's own metadata
#             (Merkle tree, inode tables, block maps, space map, audit log). From statfs
#             of the mount: df's total is the capacity less what hidden versions hold,
#             so hidden = (total when the volume was empty) - total, and
#             use = (total when empty) - free
#   hidden    from `domfs hidden list --json` on the mount (blocks of each version),
#             grouped by what PostgreSQL file they were, and checked against statfs
# The verdict: use after the run / data after the run <= 2 (PASS), with data = the data
# directory's du. Also shown: that ratio against pg_database_size, and the growth during
# the run ((use after - use before) / data). pgbench's tps is only indicative on a
# shared machine.
#
# Excluded (--no-keep), each a file PostgreSQL itself discards, never a record; the hidden
# versions the run leaves are listed by kind, so the evidence for each is in the output
# (bench/README.md has the numbers):
#   pg_wal/*          WAL segments: recycled or removed after each checkpoint; the data
#                     they describe is in the table files
#   pgsql_tmp*        temporary files of sorts, hashes and large queries, deleted at the
#                     end of each query (base/pgsql_tmp/pgsql_tmpPID.N)
#   pgsql_tmp/**      the same for parallel workers: shared filesets are directories
#                     base/pgsql_tmp/pgsql_tmpPID.N.fileset/ whose files (0.0, 1.0...)
#                     'pgsql_tmp*' does not match (pgbench -i's parallel index build
#                     leaves them)
#   pg_subtrans/*     the subtransaction map: needed only while transactions are open;
#                     old segments are removed at every checkpoint (256 KiB per 65,536
#                     transactions), the rest zeroed at every start
#   pg_internal.init* the relation cache's init files: deleted at every start and
#                     whenever a catalog change (autovacuum, ANALYZE) invalidates them,
#                     rebuilt by the next backend (a temp file renamed over the old one)
#   pg_stat_tmp/*     the statistics collector's files up to PostgreSQL 14 (rewritten up
#                     to twice a second, a temp file renamed over the old one); 15 and
#                     later keep statistics in shared memory and leave it empty
# Not excluded: table and index files (base/, global/: the records), their free space and
# visibility maps, the commit log (pg_xact), multixacts, pg_logical (replication origin
# progress, rewritten at each checkpoint), pg_stat (statistics kept over a restart),
# postmaster.pid.
#
# Usage: bench/pgbench-growth.sh [--keep] [--results DIR]
#   --keep           keep the work directory (volume, key, server log) afterwards
#   --results DIR    write the measurements (TSV, hidden lists as JSON, pgbench's
#                    output, the server log) into DIR
# Environment:
#   DURATION         seconds of pgbench (default 600)
#   SCALE            pgbench scale (default 20: ~300 MiB of tables and indexes)
#   CLIENTS, THREADS pgbench -c / -j (default 4, 2)
#   VOL_SIZE         volume size (default 8G; sparse)
#   PROGRESS         seconds between progress lines (default 30)
#   NO_KEEP          the excluded patterns, space-separated (default: the list above);
#                    for experiments, e.g. NO_KEEP='pg_wal/* pgsql_tmp*'
#   DOMFS            the domfs binary (default: target/release/domfs, built if missing)
#   PG_BINDIR        PostgreSQL's server binaries (default: the newest
#                    /usr/lib/postgresql/N/bin)
#   BENCH_WORKDIR    parent of the work directory (default /var/tmp, not a tmpfs)
#   DOMFS_CACHE      domfs --cache-size (default: domfs's own, 256M)
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

keep=0
results=
while (($#)); do
    case "$1" in
        --keep) keep=1 ;;
        --results)
            [[ $# -ge 2 ]] || die "--results needs a directory."
            results=$2
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "$BENCH_NAME: unknown argument '$1' (try --help)" >&2
            exit 2
            ;;
    esac
    shift
done

DURATION=${DURATION:-600}
SCALE=${SCALE:-20}
CLIENTS=${CLIENTS:-4}
THREADS=${THREADS:-2}
VOL_SIZE=${VOL_SIZE:-8G}
PROGRESS=${PROGRESS:-30}
NO_KEEP=${NO_KEEP-pg_wal/* pgsql_tmp* pgsql_tmp/** pg_subtrans/* pg_internal.init* pg_stat_tmp/*}
for v in DURATION SCALE CLIENTS THREADS PROGRESS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive number, not '${!v}'."
done

# --- prerequisites -------------------------------------------------------------------------

need_root_fuse
need_tools python3 runuser du stat -- "Debian: apt-get install -y python3 util-linux coreutils"
id postgres >/dev/null 2>&1 || die "no postgres user: install postgresql (scripts/install-deps)."
if [[ -z ${PG_BINDIR:-} ]]; then
    PG_BINDIR=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' 2>/dev/null |
        sort -t/ -k5,5n | tail -n 1 | xargs -r dirname)
fi
[[ -n $PG_BINDIR && -x $PG_BINDIR/initdb ]] ||
    die "PostgreSQL server binaries not found (set PG_BINDIR; scripts/install-deps installs postgresql)."
pg_tool() { # the client tool from the server's bindir, else from PATH
    if [[ -x $PG_BINDIR/$1 ]]; then echo "$PG_BINDIR/$1"; else command -v "$1" || die "$1 not found."; fi
}
PGBENCH=$(pg_tool pgbench)
PSQL=$(pg_tool psql)

# The binary in target/release if there is one (built from this tree), else a build.
if [[ -z ${DOMFS:-} && -x $BENCH_LIB_REPO/target/release/domfs ]]; then
    DOMFS=$BENCH_LIB_REPO/target/release/domfs
fi
need_domfs
domfs_built=$(date -u -r "$DOMFS" '+%Y-%m-%d %H:%M UTC')

# --- work directory, volume, mount, cleanup -----------------------------------------------

work=$(mktemp -d "${BENCH_WORKDIR:-/var/tmp}/domfs-pgbench.XXXXXX")
chmod 755 "$work" # the server (user postgres) reaches its data directory through it
mnt=$work/mnt
run=$work/run # the server's socket and log, outside the volume
mkdir -p "$mnt" "$run"
chown postgres: "$run"
DOMFS=$(private_copy "$DOMFS" "$work")
[[ -n $results ]] || results=$work/results
mkdir -p "$results"
results=$(cd "$results" && pwd)
pgdata=$mnt/pgdata
port=$(free_port)

remove_work() {
    if ((keep)) || is_mounted "$mnt"; then
        say "work directory kept: $work"
    else
        rm -rf --one-file-system "$work"
    fi
}
cleanup_mount() {
    is_mounted "$mnt" || return 0
    say "cleanup: unmounting $mnt"
    unmount_domfs "$mnt"
}
on_exit remove_work
on_exit cleanup_mount

# Commands as postgres, connected to this cluster, from a directory postgres can read.
as_pg() {
    runuser -u postgres -- env -C "$run" -u PGDATA -u PGPASSWORD -u PGSERVICE \
        PGHOST="$run" PGPORT="$port" PGUSER=postgres PGDATABASE=postgres LC_ALL=C.UTF-8 "$@"
}
sql() { as_pg "$PSQL" -X -q -A -t -v ON_ERROR_STOP=1 "$@"; }
pg_running=0
stop_pg() { # fast (clean) stop; immediate, then SIGKILL, if that does not work
    ((pg_running)) || return 0
    as_pg "$PG_BINDIR/pg_ctl" -D "$pgdata" -w -t 120 -m fast stop >/dev/null 2>&1 ||
        as_pg "$PG_BINDIR/pg_ctl" -D "$pgdata" -w -t 30 -m immediate stop >/dev/null 2>&1 || {
        local pid
        pid=$(head -n 1 "$pgdata/postmaster.pid" 2>/dev/null || true)
        [[ -n $pid ]] && kill -KILL "$pid" 2>/dev/null && sleep 1
    }
    pg_running=0
}
save_log() { cp "$run/postgres.log" "$results/postgres.log" 2>/dev/null || true; }
cleanup_pg() {
    ((pg_running)) || return 0
    say "cleanup: stopping PostgreSQL"
    stop_pg
}
sampler=
stop_sampler() { [[ -z $sampler ]] || kill "$sampler" 2>/dev/null || true; }
on_exit save_log
on_exit cleanup_pg
on_exit stop_sampler

read -r -a no_keep <<<"$NO_KEEP"
create_args=()
for p in "${no_keep[@]}"; do create_args+=(--no-keep "$p"); done
say "work directory $work; results $results"
say "creating a $VOL_SIZE keep-all volume; --no-keep: ${no_keep[*]:-(none)}"
"$DOMFS" -q key new "$work/pg.key"
"$DOMFS" -q create --size "$VOL_SIZE" --key-file "$work/pg.key" "${create_args[@]}" "$work/pg.vol"
"$DOMFS" -q mount --key-file "$work/pg.key" --allow-other ${DOMFS_CACHE:+--cache-size "$DOMFS_CACHE"} \
    --log "$work/mount.log" "$work/pg.vol" "$mnt"
chmod 755 "$mnt"
# The empty volume: statfs's total now is every usable block (nothing hidden yet).
read -r bsize usable <<<"$(stat -f -c '%S %b' "$mnt")"
hidden_now=$("$DOMFS" hidden list --json "$mnt" | wc -l)
((hidden_now == 0)) || die "a fresh volume has $hidden_now hidden versions?"

# --- measurements --------------------------------------------------------------------------

# "visible_bytes hidden_bytes use_bytes" from statfs (see the header).
statfs_use() {
    stat -f -c '%b %f' "$mnt" |
        awk -v u="$usable" -v bs="$bsize" '{ printf "%d %d %d\n", ($1 - $2) * bs, (u - $1) * bs, (u - $2) * bs }'
}
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

# A measurement point: statfs, du of the data directory (whole, and per top-level entry),
# pg_database_size when the server runs, the hidden list.
measure() { # name
    local name=$1 dbsize=
    sync -f "$mnt/." 2>/dev/null || true
    ((pg_running)) && dbsize=$(sql -c "SELECT pg_database_size('postgres')")
    read -r vis hid use <<<"$(statfs_use)"
    {
        printf 'point\t%s\n' "$name"
        printf 'du_data\t%s\n' "$(du -sB1 "$pgdata" | cut -f1)"
        printf 'du_apparent\t%s\n' "$(du -sB1 --apparent-size "$pgdata" | cut -f1)"
        printf 'db_size\t%s\n' "${dbsize:-}"
        printf 'statfs_visible\t%s\nstatfs_hidden\t%s\nuse\t%s\n' "$vis" "$hid" "$use"
        (cd "$pgdata" && du -sB1 -- *) | sed 's/^\([0-9]*\)\t\(.*\)/du_top\t\2\t\1/'
    } >"$results/$name.tsv"
    "$DOMFS" hidden list --json "$mnt" >"$results/$name.hidden.jsonl"
}

# relfilenode -> relation name, for naming hidden table files (mapped catalogs included).
relation_names() {
    local db oid
    : >"$results/relations.tsv"
    while IFS='|' read -r oid db; do
        sql -d "$db" -F $'\t' -c \
            "SELECT $oid, pg_relation_filenode(c.oid), c.relname, c.relkind FROM pg_class c WHERE pg_relation_filenode(c.oid) IS NOT NULL" \
            >>"$results/relations.tsv" || true
    done < <(sql -c "SELECT oid, datname FROM pg_database WHERE datallowconn")
}

# --- PostgreSQL ----------------------------------------------------------------------------

mkdir "$pgdata"
chown postgres: "$pgdata"
say "initdb ($PG_BINDIR)"
as_pg "$PG_BINDIR/initdb" -D "$pgdata" -A trust -E UTF8 --no-locale >"$results/initdb.log" 2>&1 ||
    die "initdb failed: $(tail -n 20 "$results/initdb.log")"
# Settings: defaults (autovacuum on, checkpoint_timeout 5min, max_wal_size 1GB), plus
# logging of checkpoints, autovacuum runs and temporary files: the evidence for what the
# hidden versions are.
say "starting PostgreSQL on port $port"
as_pg "$PG_BINDIR/pg_ctl" -D "$pgdata" -w -t 600 -l "$run/postgres.log" \
    -o "-p $port -k $run -c listen_addresses='' -c log_checkpoints=on -c log_autovacuum_min_duration=0 -c log_temp_files=0" \
    start >/dev/null || die "pg_ctl start failed: $(tail -n 30 "$run/postgres.log")"
pg_running=1
pg_version=$(sql -c 'SHOW server_version')

say "pgbench -i -s $SCALE"
t0=$(date +%s)
as_pg "$PGBENCH" -i -s "$SCALE" -q >"$results/pgbench-init.txt" 2>&1 ||
    die "pgbench -i failed: $(tail -n 20 "$results/pgbench-init.txt")"
sql -c CHECKPOINT
say "pgbench -i took $(($(date +%s) - t0)) s; measuring (before)"
measure before

say "pgbench -T $DURATION -c $CLIENTS -j $THREADS (progress every $PROGRESS s)"
printf 'seconds\tvisible_bytes\thidden_bytes\tuse_bytes\tpg_wal_bytes\n' >"$results/samples.tsv"
sample_loop() {
    local start=$SECONDS vis hid use wal nap=
    trap '[[ -z $nap ]] || kill "$nap" 2>/dev/null; exit 0' TERM
    while :; do
        sleep "$PROGRESS" &
        nap=$!
        wait "$nap"
        read -r vis hid use <<<"$(statfs_use)"
        wal=$(du -sB1 "$pgdata/pg_wal" 2>/dev/null | cut -f1)
        printf '%s\t%s\t%s\t%s\t%s\n' "$((SECONDS - start))" "$vis" "$hid" "$use" "$wal" >>"$results/samples.tsv"
        say "$((SECONDS - start)) s: volume use $(mib "$use") MiB = visible $(mib "$vis") (pg_wal $(mib "$wal")) + hidden $(mib "$hid")"
    done
}
sample_loop &
sampler=$!
as_pg "$PGBENCH" -T "$DURATION" -c "$CLIENTS" -j "$THREADS" -P "$PROGRESS" >"$results/pgbench.txt" \
    2> >(trap '' INT TERM; exec tee "$results/pgbench-progress.txt" >&2) ||
    die "pgbench failed: $(tail -n 20 "$results/pgbench.txt")"
kill "$sampler" 2>/dev/null || true
wait "$sampler" 2>/dev/null || true
sampler=
tps=$(awk -F'[ =(]+' '/^tps = / { print $2; exit }' "$results/pgbench.txt")
txns=$(awk -F': *' '/^number of transactions actually processed/ { print $2; exit }' "$results/pgbench.txt")
sql -c CHECKPOINT
say "measuring (after)"
relation_names
measure after

say "stopping PostgreSQL (fast: shutdown checkpoint)"
as_pg "$PG_BINDIR/pg_ctl" -D "$pgdata" -w -t 300 -m fast stop >/dev/null || die "pg_ctl stop failed."
pg_running=0
measure stopped

say "unmounting; domfs fsck"
"$DOMFS" -q unmount "$mnt"
fsck_out=$("$DOMFS" fsck --key-file "$work/pg.key" "$work/pg.vol" 2>&1) && fsck_ok=1 || fsck_ok=0
audit_entries=$("$DOMFS" audit --json --key-file "$work/pg.key" "$work/pg.vol" 2>/dev/null | wc -l || true)
allocated=$("$DOMFS" header show --json --key-file "$work/pg.key" "$work/pg.vol" |
    python3 -c 'import json, sys; d = json.load(sys.stdin); print(max(d["superblocks"], key=lambda s: s["sequence"])["allocated_blocks"])')

{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(awk '/MemTotal/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "domfs: $("$DOMFS" --version), binary built $domfs_built; tree: $(git -C "$BENCH_LIB_REPO" describe --always --dirty 2>/dev/null || echo unknown)"
    echo "PostgreSQL $pg_version; pgbench -i -s $SCALE; pgbench -T $DURATION -c $CLIENTS -j $THREADS; volume $VOL_SIZE keep-all"
    echo "--no-keep: ${no_keep[*]:-(none)}"
} >"$results/environment.txt"

python3 - "$results" "$bsize" "$tps" "$txns" "$allocated" "$audit_entries" "$fsck_ok" "$DURATION" <<'PY'
import collections, json, os, re, sys

results, bsize, tps, txns, allocated, audit_entries, fsck_ok, duration = sys.argv[1:9]
bsize, allocated, fsck_ok = int(bsize), int(allocated), fsck_ok == "1"
MiB = 1 << 20

def point(name):
    p = {"du_top": {}}
    for line in open(os.path.join(results, name + ".tsv")):
        f = line.rstrip("\n").split("\t")
        if f[0] == "du_top":
            p["du_top"][f[1]] = int(f[2])
        elif f[0] == "point":
            continue
        else:
            p[f[0]] = int(f[1]) if f[1] else None
    p["hidden"] = [json.loads(l) for l in open(os.path.join(results, name + ".hidden.jsonl")) if l.strip()]
    return p

before, after, stopped = point("before"), point("after"), point("stopped")

RELKINDS = {'r': 'table', 'i': 'index', 't': 'toast', 'S': 'sequence', 'm': 'matview'}
relnames = {}
if os.path.exists(os.path.join(results, "relations.tsv")):
    for line in open(os.path.join(results, "relations.tsv")):
        f = line.rstrip("\n").split("\t")
        if len(f) == 4:
            what = RELKINDS.get(f[3], f[3])
            relnames[(f[0], f[1])] = f"{f[2]} ({what})"

# What PostgreSQL file a hidden version was, from its path in the data directory.
KINDS = [
    (r"(^|/)pg_wal/", "pg_wal: WAL segments"),
    (r"(^|/)pgsql_tmp", "pgsql_tmp: temporary files"),
    (r"(^|/)pg_stat_tmp/", "pg_stat_tmp: statistics temp files"),
    (r"(^|/)pg_subtrans/", "pg_subtrans: subtransaction map"),
    (r"(^|/)pg_internal\.init", "pg_internal.init: relcache init files"),
    (r"(^|/)(base/\d+|global)/\d+_fsm(\.\d+)?$", "relation free space maps (_fsm)"),
    (r"(^|/)(base/\d+|global)/\d+_vm(\.\d+)?$", "relation visibility maps (_vm)"),
    (r"(^|/)(base/\d+|global)/\d+(\.\d+)?$", "relation data (table/index files)"),
    (r"(^|/)pg_xact/", "pg_xact: commit log"),
    (r"(^|/)pg_multixact/", "pg_multixact"),
    (r"(^|/)pg_logical/", "pg_logical: replication origin checkpoints, snapshots"),
    (r"(^|/)pg_stat/", "pg_stat: statistics saved at shutdown"),
    (r"(^|/)postmaster\.(pid|opts)$", "postmaster.pid/.opts"),
]
def kind(path):
    for rx, name in KINDS:
        if re.search(rx, path):
            return name
    return "other"

def relation(path):
    m = re.search(r"base/(\d+)/(\d+)", path)
    return relnames.get((m.group(1), m.group(2)), "dropped or unknown relation") if m else ""

def by_kind(hidden):
    k = collections.defaultdict(lambda: [0, 0, collections.Counter()])
    for h in hidden:
        e = k[kind(h["path"])]
        e[0] += 1
        e[1] += h["blocks"] * bsize
        e[2][h["event"]] += 1
    return k

def show_kinds(title, hidden, total_bytes):
    k = by_kind(hidden)
    print(title)
    print(f"  {'kind':56} {'versions':>9} {'MiB':>9} {'share':>6}  events")
    for name, (n, b, ev) in sorted(k.items(), key=lambda x: -x[1][1]):
        share = f"{100 * b / total_bytes:5.1f}%" if total_bytes else "    -"
        evs = ", ".join(f"{e} {c}" for e, c in ev.most_common())
        print(f"  {name:56} {n:9d} {b / MiB:9.1f} {share:>6}  {evs}")
    if not k:
        print("  (none)")

def mib(b):
    return f"{b / MiB:9.1f}"

print()
print("== Volume use and data (MiB = 2^20 bytes)")
print(f"  {'':42} {'before':>9} {'after':>9} {'stopped':>9}")
rows = [
    ("data: du of the data directory", "du_data"),
    ("data: du --apparent-size", "du_apparent"),
    ("data: pg_database_size('postgres')", "db_size"),
    ("volume: visible (df used)", "statfs_visible"),
    ("volume: hidden versions (statfs)", "statfs_hidden"),
    ("volume: use = visible + hidden", "use"),
]
for label, key in rows:
    vals = [p.get(key) for p in (before, after, stopped)]
    print(f"  {label:42} " + " ".join(mib(v) if v is not None else f"{'-':>9}" for v in vals))
hl = [sum(h["blocks"] for h in p["hidden"]) * bsize for p in (before, after, stopped)]
print(f"  {'volume: hidden versions (hidden list)':42} " + " ".join(mib(v) for v in hl))
print(f"  {'hidden versions (count)':42} " + " ".join(f"{len(p['hidden']):9d}" for p in (before, after, stopped)))
own = [p["use"] - p["statfs_hidden"] - p["du_data"] for p in (before, after, stopped)]
print(f"  {'domfs metadata: use - hidden - du':42} " + " ".join(mib(v) for v in own))
print(f"  after unmount: {allocated} blocks allocated ({allocated * bsize / MiB:.1f} MiB, superblock)")
print()
print("  visible data by top-level entry of the data directory, MiB (before / after / stopped):")
tops = sorted(set(before["du_top"]) | set(after["du_top"]) | set(stopped["du_top"]),
              key=lambda t: -after["du_top"].get(t, 0))
for t in tops:
    v = [p["du_top"].get(t, 0) for p in (before, after, stopped)]
    if max(v) >= MiB // 10:
        print(f"    {t:20} " + " ".join(mib(x) for x in v))

print()
show_kinds("== Hidden versions after the run (server still up, after a CHECKPOINT), by kind", after["hidden"], after["statfs_hidden"])
print()
new_stop = [h for h in stopped["hidden"] if h["id"] not in {x["id"] for x in after["hidden"]}]
show_kinds("== Hidden at the clean stop (new since 'after')", new_stop, stopped["statfs_hidden"])
print()
ids_before = {h["id"] for h in before["hidden"]}
show_kinds("== Hidden before the run (initdb, pgbench -i)", before["hidden"], before["statfs_hidden"])
during = [h for h in stopped["hidden"] if h["id"] not in ids_before]
big = collections.defaultdict(lambda: [0, 0])
for h in during:
    key = re.sub(r"\.\d+$", "", h["path"])
    big[key][0] += 1
    big[key][1] += h["blocks"] * bsize
print()
print("== The paths that hold the most hidden bytes from the run and the stop (top 15)")
for path, (n, b) in sorted(big.items(), key=lambda x: -x[1][1])[:15]:
    print(f"  {path:48} {n:7d} versions {b / MiB:9.1f} MiB  {kind(path)}; {relation(path)}")

data = after["du_data"]
ratio = after["use"] / data
growth = (after["use"] - before["use"]) / data
print()
print("== Result")
print(f"  pgbench: {float(tps):.0f} tps (without initial connection time), {txns} transactions; indicative only (shared, noisy machine)")
print(f"  data after the run: {data / MiB:.1f} MiB (du of the data directory; pg_database_size {after['db_size'] / MiB:.1f} MiB)")
print(f"  use after the run: {after['use'] / MiB:.1f} MiB ({after['statfs_visible'] / MiB:.1f} visible + {after['statfs_hidden'] / MiB:.1f} hidden); before: {before['use'] / MiB:.1f} MiB; after the clean stop: {stopped['use'] / MiB:.1f} MiB")
print(f"  growth ratio = use after / data = {ratio:.2f}  (bound 2.00)")
wal = after["du_top"].get("pg_wal", 0)
print(f"  (after the clean stop: {stopped['use'] / stopped['du_data']:.2f}; growth during the run, (use after - use before) / data: {growth:.2f})")
print(f"  (against pg_database_size alone: {after['use'] / after['db_size']:.2f}, of which the live WAL (pg_wal, visible: {wal / MiB:.1f} MiB) is {wal / after['db_size']:.2f}; (use - pg_wal) / pg_database_size: {(after['use'] - wal) / after['db_size']:.2f})")
print(f"  hidden versions: {after['statfs_hidden'] / MiB:.1f} MiB = {100 * after['statfs_hidden'] / after['use']:.2f}% of the use")
print(f"  audit log: {audit_entries} entries; domfs fsck: {'clean' if fsck_ok else 'FAILED'}")
verdict = "PASS" if ratio <= 2.0 else "FAIL"
print(f"  {verdict}: keep-all use after a {duration} s pgbench run is {ratio:.2f}x its data (bound: 2x)")
with open(os.path.join(results, "verdict"), "w") as f:
    f.write(verdict + "\n")
PY
cat "$results/environment.txt"
echo "$fsck_out"
((fsck_ok)) || die "domfs fsck found problems (see above)."
[[ $(cat "$results/verdict") == PASS ]] || exit 1
