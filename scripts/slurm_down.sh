#!/usr/bin/env bash
# Stop the single-node Slurm cluster started by scripts/slurm_up.sh: cancel its jobs, then stop
# slurmd, slurmctld, slurmdbd, MariaDB and munged by their PID files (a PID is only signalled if its
# command name is the expected one, so stale PID files are harmless). Idempotent; exits 0 also
# when nothing runs.
#
#   bash scripts/slurm_down.sh            # stop; keep $SLURM_BASE (logs) for inspection
#   bash scripts/slurm_down.sh --purge    # stop and delete $SLURM_BASE
set -uo pipefail

BASE="${SLURM_BASE:-/tmp/lora-repro-slurm}"
CONF="$BASE/etc/slurm.conf"
MARKER=".lora-repro-slurm"
export SLURM_CONF="$CONF"
export PATH="$PATH:/usr/sbin:/sbin"
purge=0
[[ "${1:-}" == "--purge" ]] && purge=1

log() { printf '[slurm_down] %s\n' "$*" >&2; }

# pid_of PIDFILE COMM: print the PID if it is alive and its command name is COMM.
pid_of() {
  local f="$1" comm="$2" pid
  [[ -s "$f" ]] || return 1
  pid="$(tr -dc '0-9' <"$f")"
  [[ -n "$pid" && -d "/proc/$pid" ]] || return 1
  [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$comm" ]] || return 1
  [[ "$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null)" != Z ]] || return 1 # zombie
  echo "$pid"
}

# stop_pid PID NAME TIMEOUT_S: SIGTERM, wait, then SIGKILL.
stop_pid() {
  local pid="$1" name="$2" secs="$3" i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < secs * 5; i++)); do
    [[ -d "/proc/$pid" ]] || { log "stopped $name (pid $pid)"; return 0; }
    # a zombie (not reaped by its parent) counts as gone
    [[ "$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null)" == Z ]] && { log "stopped $name (pid $pid)"; return 0; }
    sleep 0.2
  done
  log "$name (pid $pid) did not stop after ${secs}s; SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  sleep 0.5
}

stopped=0
if [[ ! -d "$BASE" ]]; then
  log "nothing to stop ($BASE does not exist)"
  exit 0
fi

# 1. Cancel jobs while slurmctld still runs, and give them a few seconds to end.
if pid_of "$BASE/run/slurmctld.pid" slurmctld >/dev/null && command -v squeue >/dev/null; then
  mapfile -t jobs < <(timeout 10 squeue -h -o '%A' 2>/dev/null)
  if ((${#jobs[@]})); then
    log "cancelling ${#jobs[@]} job(s)"
    timeout 10 scancel "${jobs[@]}" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      [[ -z "$(timeout 5 squeue -h -t running,completing -o '%A' 2>/dev/null)" ]] && break
      sleep 0.2
    done
  fi
fi

# 2. Daemons, in reverse start order.
for spec in slurmd:slurmd.pid:20 slurmctld:slurmctld.pid:20 slurmdbd:slurmdbd.pid:20 \
  mariadbd:mariadbd.pid:60; do
  IFS=: read -r comm file secs <<<"$spec"
  if pid="$(pid_of "$BASE/run/$file" "$comm")"; then
    stop_pid "$pid" "$comm" "$secs"
    stopped=$((stopped + 1))
  fi
  rm -f "$BASE/run/$file"
done

# 3. Job processes that outlived slurmd (slurmstepd and job tasks of *this* cluster only:
#    identified by SLURM_CONF=<our conf> in their environment, never by name alone).
self_and_parents=" $$ $PPID "
for env in /proc/[0-9]*/environ; do
  pid="${env#/proc/}"; pid="${pid%/environ}"
  [[ "$self_and_parents" == *" $pid "* ]] && continue
  vars="$(tr '\0' '\n' 2>/dev/null <"$env")" || continue
  grep -qxF "SLURM_CONF=$CONF" <<<"$vars" || continue
  if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == slurmstepd ]] || grep -q '^SLURM_JOB_ID=' <<<"$vars"; then
    log "killing leftover job process $pid ($(cat "/proc/$pid/comm" 2>/dev/null))"
    kill -KILL "$pid" 2>/dev/null || true
  fi
done

# 4. munged last (the Slurm daemons need it to shut down cleanly).
if pid="$(pid_of "$BASE/munge/munged.pid" munged)"; then
  stop_pid "$pid" munged 10
  stopped=$((stopped + 1))
fi
rm -f "$BASE/munge/munged.pid" "$BASE/munge/munge.socket.2" "$BASE/munge/munge.socket.2.lock" \
  "$BASE/mysql/mysqld.sock" "$BASE/cluster.env"

if ((stopped)); then log "stopped $stopped daemon(s)"; else log "nothing was running"; fi

if ((purge)); then
  if [[ -f "$BASE/$MARKER" ]]; then
    rm -rf "$BASE"
    log "removed $BASE"
  else
    log "not removing $BASE (no $MARKER marker)"
  fi
fi
exit 0
