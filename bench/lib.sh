# shellcheck shell=bash
# Helpers shared by the bench scripts (bench/*.sh) and scripts/demo. Source it; it runs
# nothing by itself and sets no shell options (each script has its own `set -euo pipefail`):
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"          # from bench/
#   . "$root/bench/lib.sh"                              # from elsewhere
#
# Messages are prefixed with BENCH_NAME (default: the script's file name without .sh).
#
#   say MSG / die MSG           a message on stderr / the same as an error, then exit 1
#   usage                       the script's header comment (line 2 up to `set -euo`), for --help
#   free_port                   a free TCP port on 127.0.0.1
#   wait_line FILE PREFIX       waits (30 s) for a line starting with PREFIX in FILE, a
#                               daemon's stdout, and prints the rest of it; on timeout shows
#                               FILE and FILE.err and exits 1
#   now_ms                      wall clock in milliseconds
#   median                      the median of the numbers on stdin, one a line
#   need_root_fuse              exit unless root with /dev/fuse
#   need_tools TOOL... [-- HINT]   exit unless every TOOL is on PATH (HINT: how to install)
#   domfs_target_dir            cargo's target directory for this workspace
#   need_domfs                  sets DOMFS: $DOMFS if set, else built with `cargo build
#                               --release -p domfs`
#   private_copy BIN DIR        copies BIN into DIR and prints the copy's path (a build in the
#                               shared target directory during a run then changes nothing)
#   is_mounted DIR              whether DIR is a mount point (from /proc/self/mountinfo, so a
#                               FUSE mount whose daemon died still counts)
#   unmount_domfs DIR           `domfs unmount`, else umount, else umount -l (needs DOMFS)
#   daemon_pid DIR              the pid of the FUSE daemon serving DIR (its command line ends
#                               in DIR) or nothing
#   cpu_ticks PID               user + system CPU of PID, all threads, in clock ticks
#   on_exit COMMAND             runs COMMAND (a string, eval'ed) at exit, last registered
#                               first, on any exit; the first call installs the traps: EXIT,
#                               and INT/TERM exit with 130/143 (so EXIT's cleanup runs). The
#                               cleanup itself ignores INT, TERM and PIPE: a second Ctrl-C,
#                               or a reader of its stderr that is already gone, does not cut
#                               it short (leaving a mount or a server behind)

BENCH_LIB_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_NAME=${BENCH_NAME:-$(basename "$0" .sh)}

say() { echo "$BENCH_NAME: $*" >&2; }
die() {
    echo "$BENCH_NAME: error: $*" >&2
    exit 1
}
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_line() {
    local line
    for _ in $(seq 1 300); do
        if line=$(grep -m1 "^$2" "$1" 2>/dev/null); then
            echo "${line#"$2"}"
            return 0
        fi
        sleep 0.1
    done
    echo "timed out waiting for \"$2\" in $1:" >&2
    cat "$1" "$1.err" >&2 2>/dev/null || true
    exit 1
}

now_ms() { date +%s%3N; }
median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }

need_root_fuse() {
    [[ $(id -u) -eq 0 ]] || die "run as root (mounting needs it)."
    [[ -e /dev/fuse ]] || die "/dev/fuse is missing (modprobe fuse)."
}

need_tools() {
    local tools=() hint=
    while (($#)); do
        if [[ $1 == -- ]]; then
            hint=${2:-}
            break
        fi
        tools+=("$1")
        shift
    done
    for tool in "${tools[@]}"; do
        command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found${hint:+ ($hint)}."
    done
}

domfs_target_dir() {
    (cd "$BENCH_LIB_REPO" && cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
}

need_domfs() {
    if [[ -z ${DOMFS:-} ]]; then
        command -v cargo >/dev/null 2>&1 || die "cargo not found; build domfs or set DOMFS=/path/to/domfs."
        say "building domfs (cargo build --release -p domfs)..."
        (cd "$BENCH_LIB_REPO" && cargo build --release -q -p domfs) >&2 || die "cargo build --release -p domfs failed."
        DOMFS=$(domfs_target_dir)/release/domfs
    fi
    [[ -x $DOMFS ]] || die "domfs binary '$DOMFS' is not executable."
}

private_copy() {
    cp "$1" "$2/${1##*/}-bin" || die "cannot copy $1 to $2."
    echo "$2/${1##*/}-bin"
}

is_mounted() {
    [[ -n $1 ]] && awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo
}

unmount_domfs() {
    "$DOMFS" -q unmount "$1" >&2 || umount "$1" || umount -l "$1" || true
}

daemon_pid() { pgrep -f -- "[ /]${1}\$" | head -n 1 || true; }

cpu_ticks() {
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

BENCH_LIB_AT_EXIT=()
on_exit() {
    BENCH_LIB_AT_EXIT+=("$1")
    if ((${#BENCH_LIB_AT_EXIT[@]} == 1)); then
        trap bench_lib_run_at_exit EXIT
        trap 'exit 130' INT
        trap 'exit 143' TERM
    fi
}
bench_lib_run_at_exit() {
    local status=$? i
    trap - EXIT
    trap '' INT TERM PIPE
    for ((i = ${#BENCH_LIB_AT_EXIT[@]} - 1; i >= 0; i--)); do
        eval "${BENCH_LIB_AT_EXIT[i]}" || true
    done
    exit "$status"
}
