#!/usr/bin/env bash
# Start a real single-node Slurm cluster on this machine (for integration tests of Hydra sweeps
# through the submitit_slurm launcher).
#
#   bash scripts/slurm_up.sh      # start (idempotent: exits 0 at once if already up)
#   bash scripts/slurm_down.sh    # stop everything again (by PID files)
#
# What runs: munged, MariaDB (own datadir, 127.0.0.1 + a free port, unix socket in the base dir),
# slurmdbd (accounting, so that submitit's `sacct` polling sees killed jobs), slurmctld and slurmd.
# Everything (configs, state, spool, logs, PID files, sockets, database) lives under one base dir.
#
# Needs root (Slurm daemons run as root, munged as the munge user). Without systemd.
# Missing packages are installed with apt-get (apt-get update only if needed).
#
# Environment:
#   SLURM_BASE                  base dir (default /tmp/lora-repro-slurm); wiped on a cold start
#                               (only if it holds this script's marker file or is empty)
#   LORA_SLURM_LOCAL_PARTITION  partition name (default debug)
#   LORA_SLURM_CLUSTER          cluster name (default lora)
#   LORA_SLURM_CTLD_PORT, LORA_SLURM_SLURMD_PORT, LORA_SLURM_DBD_PORT   (6817, 6818, 6819)
#   LORA_SLURM_DB_PORT          first MariaDB port to try (default 3307; the next free one is used)
#   LORA_SLURM_WAIT_S           how long to wait for each daemon (default 60)
#
# Exit codes: 0 up; 1 failed to start (see the logs printed); 2 not root; 3 apt-get failed.
# On success it writes $SLURM_BASE/cluster.env (KEY=VALUE lines: SLURM_CONF, PARTITION, ...).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
BASE="${SLURM_BASE:-/tmp/lora-repro-slurm}"
PARTITION="${LORA_SLURM_LOCAL_PARTITION:-debug}"
CLUSTER="${LORA_SLURM_CLUSTER:-lora}"
CTLD_PORT="${LORA_SLURM_CTLD_PORT:-6817}"
SLURMD_PORT="${LORA_SLURM_SLURMD_PORT:-6818}"
DBD_PORT="${LORA_SLURM_DBD_PORT:-6819}"
DB_PORT_START="${LORA_SLURM_DB_PORT:-3307}"
WAIT_S="${LORA_SLURM_WAIT_S:-60}"
HOST="$(hostname -s)"
MARKER=".lora-repro-slurm"
export SLURM_CONF="$BASE/etc/slurm.conf"
export PATH="$PATH:/usr/sbin:/sbin"

T0=$(date +%s.%N)
log() { printf '[slurm_up] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

if [[ "$(id -u)" != 0 ]]; then
  log "ERROR: must run as root (Slurm daemons run as root here, munged as the munge user)"
  exit 2
fi

# One instance at a time (the base dir itself is wiped on a cold start, so lock next to it).
mkdir -p "$(dirname "$BASE")"
exec 9>"$BASE.lock"
flock -w 300 9 || die "could not lock $BASE.lock"
# (every daemon below is started with 9>&- so that it does not inherit and keep the lock)

# ---------------------------------------------------------------------------- helpers
# pid_alive PIDFILE COMM: the PID in PIDFILE is alive and its command name is COMM.
pid_alive() {
  local f="$1" comm="$2" pid
  [[ -s "$f" ]] || return 1
  pid="$(tr -dc '0-9' <"$f")"
  [[ -n "$pid" && -d "/proc/$pid" ]] || return 1
  [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$comm" ]] || return 1
  [[ "$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null)" != Z ]] # zombie = gone
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for SECONDS DESCRIPTION CMD...: retry CMD every 0.2 s until it succeeds.
wait_for() {
  local secs="$1" what="$2"; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "timed out after ${secs}s waiting for $what"
      return 1
    fi
    sleep 0.2
  done
}

fail_with_logs() {
  log "ERROR: $*"
  local f
  for f in "$BASE"/log/*.log; do
    [[ -f "$f" ]] || continue
    log "----- last lines of $f"
    tail -n 20 "$f" >&2 || true
  done
  log "stopping what was started (scripts/slurm_down.sh)"
  bash "$HERE/slurm_down.sh" >&2 || true
  exit 1
}

node_idle() { [[ "$(sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null)" =~ ^(idle|mixed|allocated) ]]; }
ctld_up() { scontrol ping 2>/dev/null | grep -q 'is UP'; }

print_usage() {
  cat <<EOF
Slurm cluster '$CLUSTER' is up on $HOST (base dir $BASE).
  partition: $PARTITION
  use it:    export SLURM_CONF=$SLURM_CONF      (or: set -a; . $BASE/cluster.env; set +a)
             sinfo; squeue; sacct
  sweep:     python app.py -m x=1,2 hydra/launcher=slurm hydra.launcher.partition=$PARTITION \\
               hydra.launcher.cpus_per_task=1 hydra.launcher.mem_gb=1
  stop:      bash $HERE/slurm_down.sh
PARTITION=$PARTITION
SLURM_CONF=$SLURM_CONF
EOF
}

all_up() {
  pid_alive "$BASE/munge/munged.pid" munged &&
    pid_alive "$BASE/run/mariadbd.pid" mariadbd &&
    pid_alive "$BASE/run/slurmdbd.pid" slurmdbd &&
    pid_alive "$BASE/run/slurmctld.pid" slurmctld &&
    pid_alive "$BASE/run/slurmd.pid" slurmd &&
    ctld_up && node_idle
}

# ---------------------------------------------------------------------------- already up?
if [[ -f "$BASE/$MARKER" && -f "$BASE/cluster.env" ]] && command -v sinfo >/dev/null && all_up; then
  log "already up (nothing to do)"
  print_usage
  exit 0
fi

# ---------------------------------------------------------------------------- packages
need_pkgs=()
for spec in slurmctld:slurmctld slurmd:slurmd sinfo:slurm-client munged:munge \
  slurmdbd:slurmdbd mariadbd:mariadb-server; do
  command -v "${spec%%:*}" >/dev/null 2>&1 || [[ -x "/usr/sbin/${spec%%:*}" ]] ||
    need_pkgs+=("${spec#*:}")
done
if ((${#need_pkgs[@]})); then
  log "installing: ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Keep the packages' init scripts from starting system-wide daemons (we start our own).
  own_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt_get=(apt-get -o DPkg::Lock::Timeout=300)
  apt_ok=1
  # apt-get update only when needed (no package lists yet, or stale ones).
  if ! "${apt_get[@]}" install -y --no-install-recommends "${need_pkgs[@]}" \
    >"/tmp/slurm_up_apt.log" 2>&1; then
    log "apt-get install failed; running apt-get update first"
    if ! { "${apt_get[@]}" update && "${apt_get[@]}" install -y --no-install-recommends "${need_pkgs[@]}"; } \
      >>"/tmp/slurm_up_apt.log" 2>&1; then
      apt_ok=0
    fi
  fi
  if ((own_policy)); then
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
  if ((!apt_ok)); then
    tail -n 20 /tmp/slurm_up_apt.log >&2 || true
    log "ERROR: apt-get could not install ${need_pkgs[*]} (log: /tmp/slurm_up_apt.log)"
    exit 3
  fi
  log "packages installed after $(elapsed)s"
fi

# ---------------------------------------------------------------------------- clean slate
# Half-started or stale state: stop whatever of ours still runs, then start from scratch.
bash "$HERE/slurm_down.sh" >/dev/null 2>&1 || true
if [[ -d "$BASE" ]]; then
  if [[ -f "$BASE/$MARKER" || -z "$(ls -A "$BASE")" ]]; then
    rm -rf "$BASE"
  else
    die "$BASE exists and was not made by this script (no $MARKER); set SLURM_BASE elsewhere"
  fi
fi

for p in "$CTLD_PORT" "$SLURMD_PORT" "$DBD_PORT"; do
  port_in_use "$p" && die "port $p is in use by another program (a system Slurm?); stop it or set LORA_SLURM_*_PORT"
done
DB_PORT="$DB_PORT_START"
while port_in_use "$DB_PORT"; do
  DB_PORT=$((DB_PORT + 1))
  ((DB_PORT < DB_PORT_START + 100)) || die "no free MariaDB port in $DB_PORT_START..$DB_PORT"
done

mkdir -p "$BASE"/{etc,run,log,state,spool/slurmd,munge,mysql}
chmod 755 "$BASE"
touch "$BASE/$MARKER"

# ---------------------------------------------------------------------------- munge
getent passwd munge >/dev/null || die "user munge missing (package munge not installed properly?)"
dd if=/dev/urandom of="$BASE/munge/munge.key" bs=128 count=1 status=none
touch "$BASE/log/munged.log"
chown munge:munge "$BASE/munge" "$BASE/munge/munge.key" "$BASE/log/munged.log"
chmod 755 "$BASE/munge"
chmod 400 "$BASE/munge/munge.key"
MUNGE_SOCKET="$BASE/munge/munge.socket.2"
# munged checks its directories' permissions; --force accepts e.g. a world-writable /tmp parent.
runuser -u munge -- /usr/sbin/munged --force \
  --socket="$MUNGE_SOCKET" --key-file="$BASE/munge/munge.key" \
  --pid-file="$BASE/munge/munged.pid" --log-file="$BASE/log/munged.log" \
  --seed-file="$BASE/munge/munged.seed" </dev/null >>"$BASE/log/munged.log" 2>&1 9>&- ||
  fail_with_logs "munged did not start"
wait_for "$WAIT_S" munged bash -c "munge -S '$MUNGE_SOCKET' -n | unmunge -S '$MUNGE_SOCKET'" ||
  fail_with_logs "munge does not answer"

# ---------------------------------------------------------------------------- MariaDB
log "munged up ($(elapsed)s)"
DB_SOCKET="$BASE/mysql/mysqld.sock"
DB_PASS="$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
# A throwaway test database: no fsyncs (much faster table creation by slurmdbd).
DB_OPTS=(--no-defaults --user=root --datadir="$BASE/mysql/data" --innodb-flush-log-at-trx-commit=0
  --innodb-doublewrite=0 --innodb-flush-method=nosync --skip-log-bin)
mariadb-install-db "${DB_OPTS[@]}" --auth-root-authentication-method=socket --skip-test-db \
  --skip-name-resolve >"$BASE/log/mariadb-install.log" 2>&1 ||
  fail_with_logs "mariadb-install-db failed (log: $BASE/log/mariadb-install.log)"
lc_opt=()
[[ -d /usr/share/mysql ]] && lc_opt=(--lc-messages-dir=/usr/share/mysql)
setsid mariadbd "${DB_OPTS[@]}" "${lc_opt[@]}" --bind-address=127.0.0.1 --port="$DB_PORT" \
  --socket="$DB_SOCKET" --pid-file="$BASE/run/mariadbd.pid" --log-error="$BASE/log/mariadb.log" \
  --skip-name-resolve --innodb-buffer-pool-size=128M \
  --innodb-log-file-size=64M --innodb-lock-wait-timeout=900 \
  </dev/null >>"$BASE/log/mariadb.log" 2>&1 9>&- &
disown
wait_for "$WAIT_S" mariadb mariadb-admin --no-defaults --socket="$DB_SOCKET" ping ||
  fail_with_logs "MariaDB did not start"
mariadb --no-defaults --socket="$DB_SOCKET" -u root <<SQL || fail_with_logs "could not create the slurm DB user"
CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL

# ---------------------------------------------------------------------------- configs
log "MariaDB up on 127.0.0.1:$DB_PORT ($(elapsed)s)"
# Node shape from slurmd -C (CPUs, sockets, cores, threads, memory), ~90% of memory usable.
node_line="$(slurmd -C 2>/dev/null | head -n 1)"
field() { sed -n "s/.*[[:space:]]$1=\([0-9]*\).*/\1/p" <<<"$node_line"; }
CPUS="$(field CPUs)"; SOCKETS="$(field SocketsPerBoard)"; CORES="$(field CoresPerSocket)"
THREADS="$(field ThreadsPerCore)"; MEM="$(field RealMemory)"
[[ -n "$CPUS" && -n "$MEM" ]] || fail_with_logs "could not parse 'slurmd -C': $node_line"
REAL_MEM=$((MEM * 9 / 10))
DEF_MEM=$((REAL_MEM / CPUS / 2))
((DEF_MEM > 1024)) && DEF_MEM=1024

cat >"$BASE/etc/slurm.conf" <<EOF
# Generated by scripts/slurm_up.sh: single-node test cluster, everything under $BASE
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool/slurmd
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$BASE/etc/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEF_MEM
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# munge socket for the slurmdbd connection (AuthInfo does not cover it)
AccountingStoragePass=$MUNGE_SOCKET
JobCompType=jobcomp/none
MailProg=/bin/true
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS Sockets=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$REAL_MEM State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
: >"$BASE/etc/plugstack.conf"

cat >"$BASE/etc/slurmdbd.conf" <<EOF
# Generated by scripts/slurm_up.sh
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdAddr=127.0.0.1
DbdHost=$HOST
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$BASE/log/slurmdbd.log
PidFile=$BASE/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
chmod 600 "$BASE/etc/slurmdbd.conf"
chmod 644 "$BASE/etc/slurm.conf"

# ---------------------------------------------------------------------------- Slurm daemons
# (slurmdbd finds slurmdbd.conf next to $SLURM_CONF.)
slurmdbd </dev/null >>"$BASE/log/slurmdbd.log" 2>&1 9>&- || fail_with_logs "slurmdbd did not start"
wait_for "$WAIT_S" slurmdbd sacctmgr -n -i show cluster || fail_with_logs "slurmdbd does not answer"
if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
  sacctmgr -i add cluster "$CLUSTER" >/dev/null || fail_with_logs "sacctmgr add cluster failed"
fi

log "slurmdbd up ($(elapsed)s)"
slurmctld -i </dev/null >>"$BASE/log/slurmctld.log" 2>&1 9>&- || fail_with_logs "slurmctld did not start"
wait_for "$WAIT_S" "scontrol ping" ctld_up || fail_with_logs "slurmctld does not answer"

log "slurmctld up ($(elapsed)s)"
slurmd </dev/null >>"$BASE/log/slurmd.log" 2>&1 9>&- || fail_with_logs "slurmd did not start"
wait_for "$WAIT_S" "node $HOST idle" node_idle || fail_with_logs "node $HOST did not become idle"

cat >"$BASE/cluster.env" <<EOF
SLURM_CONF=$SLURM_CONF
PARTITION=$PARTITION
CLUSTER=$CLUSTER
NODE=$HOST
DB_PORT=$DB_PORT
EOF
log "up after $(elapsed)s"
print_usage
