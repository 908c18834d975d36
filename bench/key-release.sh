#!/usr/bin/env bash
# Key release at the TTP and mount latency through the agent, all set up in this run:
#   1. releases per second at domfs-ttp from N concurrent clients (default 64), over
#      established connections, then with a new TLS connection per release
#      (domfs-keyload: each release = verify the manager's signature, check the host and
#      the list, derive K, RSA-OAEP-wrap it to the host's TPM key);
#   2. `domfs mount` latency through the agent (read-only mounts): cold (the agent has just
#      started, so the TTP is asked and the TPM unwraps) and warm (another mount of the
#      domain keeps the agent's lease, so the key comes from its cache), median of R
#      mounts each, the unmount not counted. Both include the fork, the FUSE mount and
#      opening the volume, which key-file mode pays as well (also measured, as the peer).
# The TTP, the agent and swtpm share this machine's 2 cores with the load generator: the
# rate is what one small box serves, a lower bound for a dedicated TTP.
#
# Usage: bench/key-release.sh [--clients N] [--seconds S] [--rounds R]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
clients=64 seconds=10 rounds=5
while [ $# -gt 0 ]; do
  case $1 in
    --clients) clients=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    *) echo "usage: $0 [--clients N] [--seconds S] [--rounds R]" >&2; exit 2 ;;
  esac
done

cargo build --release -q -p domfs -p domfs-ttp -p domfs-agent -p domfs-bench --bin domfs-keyload
bin=$(domfs_target_dir)/release
DOMFS=$bin/domfs
work=$(mktemp -d /var/tmp/domfs-keybench.XXXXXX)
pids=()
cleanup() {
  for m in "$work/mnt" "$work/holder"; do
    if is_mounted "$m"; then unmount_domfs "$m" 2>/dev/null; fi
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  is_mounted "$work/mnt" || is_mounted "$work/holder" || rm -rf "$work"
}
on_exit cleanup
export TSS2_LOG=all+none

tpm_port=$(free_port)
swtpm socket --tpmstate dir="$work" --tpm2 --server type=tcp,port="$tpm_port",bindaddr=127.0.0.1 \
  --ctrl type=tcp,port=$((tpm_port + 1)),bindaddr=127.0.0.1 --flags not-need-init,startup-clear &
pids+=($!)
"$bin/domfs-ttp" init --state "$work/ttp" >/dev/null
for who in host:bench-host manager:bench-manager; do
  "$bin/domfs-ttp" cert issue --state "$work/ttp" --role "${who%%:*}" --name "${who#*:}" --out "$work/certs" >/dev/null
done
ttp_port=$(free_port)
"$bin/domfs-ttp" serve --state "$work/ttp" --listen "127.0.0.1:$ttp_port" --lease 300 >"$work/ttp.out" 2>"$work/ttp.out.err" &
pids+=($!)
ttp=$(wait_line "$work/ttp.out" "domfs-ttp: listening on ")
host_tls=(--tls-ca "$work/certs/ca.crt" --tls-cert "$work/certs/bench-host.crt" --tls-key "$work/certs/bench-host.key")

start_agent() {
  "$bin/domfs-agent" serve --state "$work/agent" --socket "$work/agent.sock" --ttp "$ttp" \
    --tcti "swtpm:host=127.0.0.1,port=$tpm_port" --pcrs sha256:16 "${host_tls[@]}" \
    >"$work/agent.out" 2>"$work/agent.out.err" &
  agent_pid=$!
  pids+=("$agent_pid")
  wait_line "$work/agent.out" "domfs-agent: serving " >/dev/null
}
stop_agent() { kill "$agent_pid"; wait "$agent_pid" 2>/dev/null || true; : >"$work/agent.out"; }

start_agent
for _ in $(seq 1 100); do "$bin/domfs-ttp" hosts list --state "$work/ttp" | grep -q bench-host && break; sleep 0.1; done
"$bin/domfs-ttp" hosts approve bench-host --state "$work/ttp" >/dev/null
"$bin/domfs" -q manager keygen --out "$work/manager.key"
"$bin/domfs-ttp" managers add bench-manager "$work/manager.key.pub" --state "$work/ttp" >/dev/null
"$bin/domfs" -q create --ttp "$ttp" --tls-ca "$work/certs/ca.crt" --tls-cert "$work/certs/bench-manager.crt" \
  --tls-key "$work/certs/bench-manager.key" --manager-key "$work/manager.key" --grant bench-host=rw \
  --size 256M "$work/bench.vol"
mkdir -p "$work/mnt" "$work/holder"
"$bin/domfs" -q key new "$work/plain.key"
"$bin/domfs" -q create --key-file "$work/plain.key" --size 256M "$work/plain.vol"

echo "== key releases at the TTP ($clients clients, $seconds s each)"
"$bin/domfs-keyload" --ttp "$ttp" "${host_tls[@]}" --volume "$work/bench.vol" --clients "$clients" --seconds "$seconds" | tee "$work/established.txt"
"$bin/domfs-keyload" --ttp "$ttp" "${host_tls[@]}" --volume "$work/bench.vol" --clients "$clients" --seconds "$seconds" --new-connections | tee "$work/new.txt"

echo "== mount latency through the agent (median of $rounds)"
# The first mount formats the volume; not measured.
"$bin/domfs" -q mount --agent "$work/agent.sock" "$work/bench.vol" "$work/mnt"
"$bin/domfs" unmount "$work/mnt"
"$bin/domfs" -q mount --key-file "$work/plain.key" "$work/plain.vol" "$work/mnt"
"$bin/domfs" unmount "$work/mnt"
cold=() warm=() plain=()
for _ in $(seq 1 "$rounds"); do
  stop_agent; start_agent
  t=$(now_ms); "$bin/domfs" -q mount --agent "$work/agent.sock" --read-only "$work/bench.vol" "$work/holder"; cold+=($(($(now_ms) - t)))
  t=$(now_ms); "$bin/domfs" -q mount --agent "$work/agent.sock" --read-only "$work/bench.vol" "$work/mnt"; warm+=($(($(now_ms) - t)))
  "$bin/domfs" unmount "$work/mnt"
  "$bin/domfs" unmount "$work/holder"
  t=$(now_ms); "$bin/domfs" -q mount --key-file "$work/plain.key" --read-only "$work/plain.vol" "$work/mnt"; plain+=($(($(now_ms) - t)))
  "$bin/domfs" unmount "$work/mnt"
done
c=$(printf '%s\n' "${cold[@]}" | median)
w=$(printf '%s\n' "${warm[@]}" | median)
p=$(printf '%s\n' "${plain[@]}" | median)
echo "mount, cold (TTP + TPM unwrap): median ${c} ms of: ${cold[*]}"
echo "mount, warm (agent cache):      median ${w} ms of: ${warm[*]}"
echo "mount, key file (the peer):     median ${p} ms of: ${plain[*]}"
echo "{\"mount_cold_ms\":$c,\"mount_warm_ms\":$w,\"mount_keyfile_ms\":$p}"
