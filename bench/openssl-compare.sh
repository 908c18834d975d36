#!/usr/bin/env bash
# Compares domfs's sealed-block codec with OpenSSL on this machine, one core, 4 KiB blocks.
#
#   OpenSSL:  `openssl speed` for AES-256-XTS and HMAC-SHA256 on 4096-byte buffers; a block
#             needs both, so the combined rate is 1 / (1/xts + 1/hmac).
#   domfs:    `cargo bench -p domfs-bench --bench codec` (criterion): seal_4k = XTS encrypt +
#             tag, open_4k = verify + XTS decrypt, plus the two primitives alone.
#
# Prints MB/s (10^6 bytes/s) and domfs as a percentage of the OpenSSL combined rate.
# The aim is >= 60 %.
#
# Usage: bench/openssl-compare.sh [--check]
#   --check            exit 1 if seal_4k or open_4k is below the aim
# Environment:
#   OPENSSL            the openssl binary (default: openssl on PATH)
#   OPENSSL_SECONDS    seconds per `openssl speed` run (default 3)
#   MIN_PERCENT        the aim (default 60)
set -euo pipefail

check=0
for arg in "$@"; do
    case "$arg" in
        --check) check=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "openssl-compare: unknown argument '$arg' (try --help)" >&2
            exit 2
            ;;
    esac
done

OPENSSL=${OPENSSL:-openssl}
OPENSSL_SECONDS=${OPENSSL_SECONDS:-3}
MIN_PERCENT=${MIN_PERCENT:-60}
BYTES=4096

die() {
    echo "openssl-compare: error: $*" >&2
    exit 1
}

# --- prerequisites -------------------------------------------------------------------------

if ! command -v "$OPENSSL" >/dev/null 2>&1; then
    die "'$OPENSSL' not found. Install OpenSSL (Debian: apt-get install -y openssl) or set OPENSSL=/path/to/openssl."
fi
if ! "$OPENSSL" version >/dev/null 2>&1; then
    die "'$OPENSSL version' failed; is '$OPENSSL' really the OpenSSL command line tool?"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found on PATH."
command -v awk >/dev/null 2>&1 || die "awk not found on PATH."

# Reads the number at a JSON path, with jq if present, else python3.
json_number() { # file, jq path (e.g. .mean.point_estimate)
    local file=$1 path=$2
    if command -v jq >/dev/null 2>&1; then
        jq -er "$path" "$file"
    elif command -v python3 >/dev/null 2>&1; then
        python3 -c '
import functools, json, sys
doc = json.load(open(sys.argv[1]))
print(functools.reduce(lambda d, k: d[k], sys.argv[2].strip(".").split("."), doc))
' "$file" "$path"
    else
        die "need jq or python3 to read criterion's JSON output."
    fi
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

# --- OpenSSL ---------------------------------------------------------------------------------

# Runs `openssl speed -mr ARGS` and prints the bytes/second for the 4096-byte column. In
# machine-readable mode the result line is "+F:<n>:<name>:<bytes per second>".
openssl_rate() {
    local out rate
    if ! out=$("$OPENSSL" speed -mr "$@" -bytes "$BYTES" -seconds "$OPENSSL_SECONDS" 2>&1); then
        printf '%s\n' "$out" >&2
        die "'$OPENSSL speed $* -bytes $BYTES' failed (see above)."
    fi
    rate=$(printf '%s\n' "$out" | awk -F: '/^\+F:/ { print $NF; exit }')
    if [[ -z "$rate" ]] || ! awk -v r="$rate" 'BEGIN { exit !(r + 0 > 0) }'; then
        printf '%s\n' "$out" >&2
        die "could not read a rate from '$OPENSSL speed $*' (no '+F:' line; output above)."
    fi
    printf '%s\n' "$rate"
}

echo "OpenSSL: $("$OPENSSL" version)" >&2
echo "CPU:     $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || echo unknown)" >&2
echo "running openssl speed (aes-256-xts, hmac sha256; ${OPENSSL_SECONDS}s each, one core)..." >&2
ossl_xts=$(openssl_rate -evp aes-256-xts)
ossl_hmac=$(openssl_rate -hmac sha256)
ossl_combined=$(awk -v x="$ossl_xts" -v h="$ossl_hmac" 'BEGIN { printf "%.2f", 1 / (1 / x + 1 / h) }')

# --- domfs (criterion) -----------------------------------------------------------------------

target_dir=${CARGO_TARGET_DIR:-}
if [[ -z "$target_dir" ]]; then
    meta=$(cargo metadata --format-version 1 --no-deps) || die "cargo metadata failed."
    if command -v jq >/dev/null 2>&1; then
        target_dir=$(printf '%s' "$meta" | jq -er .target_directory)
    else
        target_dir=$(printf '%s' "$meta" |
            python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    fi
fi
criterion_dir="$target_dir/criterion/codec"

# Only estimates written by this run count: compare against a marker file's time.
marker=$(mktemp)
trap 'rm -f "$marker"' EXIT
sleep 1 # file times may be whole seconds

echo "running cargo bench -p domfs-bench --bench codec..." >&2
cargo bench -p domfs-bench --bench codec >&2 || die "cargo bench -p domfs-bench --bench codec failed (see above)."

# Prints bytes/second for a criterion benchmark of one 4096-byte block per iteration.
domfs_rate() {
    local name=$1 file ns
    file="$criterion_dir/$name/new/estimates.json"
    [[ -f "$file" ]] || die "no criterion estimates for '$name' at $file."
    [[ "$file" -nt "$marker" ]] || die "$file was not updated by this run."
    ns=$(json_number "$file" .mean.point_estimate) || die "cannot read the mean from $file."
    awk -v ns="$ns" -v b="$BYTES" 'BEGIN { if (ns <= 0) exit 1; printf "%.2f", b / (ns * 1e-9) }' ||
        die "bad mean ($ns ns) in $file."
}

seal=$(domfs_rate seal_4k)
open=$(domfs_rate open_4k)
xts=$(domfs_rate xts_encrypt_4k)
hmac=$(domfs_rate hmac_4k)

# --- table -----------------------------------------------------------------------------------

mbs() { awk -v r="$1" 'BEGIN { printf "%9.1f", r / 1e6 }'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%6.1f %%", 100 * a / b }'; }

echo
printf '4 KiB blocks, one core                 MB/s   vs OpenSSL\n'
printf -- '--------------------------------- ---------  -----------------------------\n'
printf 'OpenSSL aes-256-xts                %s\n' "$(mbs "$ossl_xts")"
printf 'OpenSSL hmac(sha256)               %s\n' "$(mbs "$ossl_hmac")"
printf 'OpenSSL XTS+HMAC combined          %s\n' "$(mbs "$ossl_combined")"
printf 'domfs xts_encrypt_4k               %s   %s of aes-256-xts\n' "$(mbs "$xts")" "$(pct "$xts" "$ossl_xts")"
printf 'domfs hmac_4k                      %s   %s of hmac(sha256)\n' "$(mbs "$hmac")" "$(pct "$hmac" "$ossl_hmac")"
printf 'domfs seal_4k (encrypt + tag)      %s   %s of combined\n' "$(mbs "$seal")" "$(pct "$seal" "$ossl_combined")"
printf 'domfs open_4k (verify + decrypt)   %s   %s of combined\n' "$(mbs "$open")" "$(pct "$open" "$ossl_combined")"
echo

below=0
for pair in "seal_4k:$seal" "open_4k:$open"; do
    name=${pair%%:*}
    rate=${pair#*:}
    if awk -v r="$rate" -v c="$ossl_combined" -v m="$MIN_PERCENT" 'BEGIN { exit !(100 * r / c >= m) }'; then
        echo "$name: meets the aim (>= ${MIN_PERCENT} % of OpenSSL XTS+HMAC)"
    else
        echo "$name: BELOW the aim (>= ${MIN_PERCENT} % of OpenSSL XTS+HMAC)"
        below=1
    fi
done

if ((check && below)); then
    exit 1
fi
