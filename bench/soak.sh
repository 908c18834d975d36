#!/usr/bin/env bash
# Soak: runs the differential tester (fs/tests/differential.rs) for many more operations
# than CI does: a seeded random sequence of file operations on a domfs mount and on a
# plain directory, compared after every step, with a remount + fsck every 1000 steps.
#
# Usage: bench/soak.sh [OPS] [SEED]
#   OPS    operations (default 50000)
#   SEED   a number, a comma-separated list of numbers, or `random` (default): a random
#          seed is drawn here and printed, so that a failure can be replayed with it.
# Needs root and /dev/fuse, like the mount tests. A failure prints the seed, the step,
# the last operations and the command that replays it (exit status non-zero).
set -euo pipefail

case "${1:-}" in
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
esac

ops="${1:-50000}"
seed="${2:-random}"
if ! [[ "$ops" =~ ^[0-9]+$ ]]; then
    echo "soak: OPS must be a number, not '$ops'" >&2
    exit 2
fi
if [[ "$seed" == random ]]; then
    seed="$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')"
fi
if ! [[ "$seed" =~ ^(0x[0-9a-fA-F]+|[0-9]+)(,(0x[0-9a-fA-F]+|[0-9]+))*$ ]]; then
    echo "soak: SEED must be a number, a list of numbers or 'random', not '$seed'" >&2
    exit 2
fi

cd "$(dirname "$0")/.."
echo "soak: $ops operations, seed $seed"
echo "soak: replay with: bench/soak.sh $ops $seed"
start=$(date +%s)
status=0
DOMFS_DIFF_OPS="$ops" DOMFS_DIFF_SEED="$seed" \
    cargo test --release -p domfs --test differential -- --nocapture || status=$?
echo "soak: seed $seed, $ops operations: $([[ $status == 0 ]] && echo passed || echo FAILED)" \
    "in $(($(date +%s) - start)) s"
exit "$status"
