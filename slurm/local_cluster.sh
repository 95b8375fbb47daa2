#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for tests and for trying the sbatch templates without a real cluster.
#
#   slurm/local_cluster.sh up       # install the Debian packages if missing (root + apt-get), configure, start
#   slurm/local_cluster.sh status   # each daemon alive or dead, then sinfo
#   slurm/local_cluster.sh down     # stop the daemons by the PIDs recorded at start
#   slurm/local_cluster.sh env      # the line to source so sbatch/squeue/sacct find this cluster
#
# Daemons: munged (authentication), mariadbd + slurmdbd (accounting, so sacct and submitit see a cancelled job
# as CANCELLED instead of UNKNOWN), slurmctld (controller) and slurmd (the one compute node). They run in the
# foreground of their own session, started with setsid, so their PIDs are known; no systemd is needed.
# Everything they write lives under PREFRL_SLURM_DIR (default /tmp/prefrl-slurm): configs, state, logs, sockets.
#
# Environment:
#   PREFRL_SLURM_DIR      state folder (default /tmp/prefrl-slurm)
#   PREFRL_SLURM_NO_DBD   set to 1 to run without slurmdbd/mariadb (faster to start; no sacct)
#   PREFRL_SLURM_FRESH    set to 1 to purge the controller's job state on `up` (job ids restart at 1)
set -euo pipefail

DIR="${PREFRL_SLURM_DIR:-/tmp/prefrl-slurm}"
NO_DBD="${PREFRL_SLURM_NO_DBD:-0}"
CONF="$DIR/slurm.conf"
PACKAGES=(slurm-wlm munge)
[ "$NO_DBD" = 1 ] || PACKAGES+=(slurmdbd mariadb-server)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

log() { echo "local_cluster: $*" >&2; }

install_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    log "missing Debian packages: ${missing[*]}; install them as root: apt-get install --no-install-recommends ${missing[*]}"
    exit 1
  fi
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
    apt-get -o DPkg::Lock::Timeout=120 update -qq
    apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  }
}

pid_of() { cat "$DIR/$1.pid" 2>/dev/null || true; }

# alive: the process exists and is not a zombie (a killed daemon lingers as state Z for a while)
alive() {
  local pid; pid=$(pid_of "$1")
  [ -n "$pid" ] || return 1
  local state; state=$(ps -o stat= -p "$pid" 2>/dev/null | cut -c1) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# start NAME CMD...: run CMD in its own session with output to NAME.log, record its PID
start() {
  local name=$1; shift
  if alive "$name"; then return 0; fi
  setsid "$@" >>"$DIR/$name.log" 2>&1 < /dev/null &
  echo $! >"$DIR/$name.pid"
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  local end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $end ]; then log "timed out after ${limit}s waiting for $what (logs in $DIR)"; return 1; fi
    sleep 0.2
  done
}

write_configs() {
  local host cpus mem
  host=$(hostname -s)
  cpus=$(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' | head -1)
  mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)
  mkdir -p "$DIR/ctld" "$DIR/spool" "$DIR/mysql-run"
  local accounting="AccountingStorageType=accounting_storage/none"
  if [ "$NO_DBD" != 1 ]; then
    accounting="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStoragePass=$DIR/munge.socket"
  fi
  # cred_expire=10: a requeued job starts again 10 s after its requeue (120 s by default); the schedulers look at
  # pending jobs every 1-2 s instead of every 30/60 s, so the requeued job is started as soon as it may be.
  # KillWait=30 (SLURM's default): a preempted run has 30 s between SIGTERM and SIGKILL to save its checkpoint
  cat >"$CONF" <<EOF
ClusterName=prefrl
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge.socket,cred_expire=10
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.daemon.pid
SlurmdPidFile=$DIR/slurmd.daemon.pid
SlurmctldLogFile=$DIR/slurmctld.daemon.log
SlurmdLogFile=$DIR/slurmd.daemon.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
KillWait=30
MinJobAge=300
MailProg=/bin/true
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
$accounting
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  cat >"$DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$DIR/munge.socket
DbdHost=localhost
DbdPort=6819
SlurmUser=root
PidFile=$DIR/slurmdbd.daemon.pid
LogFile=$DIR/slurmdbd.daemon.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=prefrl_acct
EOF
  chmod 600 "$DIR/slurmdbd.conf"
}

start_munge() {
  if [ ! -s "$DIR/munge.key" ]; then
    dd if=/dev/urandom of="$DIR/munge.key" bs=1024 count=1 status=none
    chmod 400 "$DIR/munge.key"
  fi
  start munged munged --foreground --force --key-file="$DIR/munge.key" --socket="$DIR/munge.socket" \
    --pid-file="$DIR/munged.daemon.pid" --log-file="$DIR/munged.daemon.log" --seed-file="$DIR/munge.seed"
  wait_for 10 munged munge -S "$DIR/munge.socket" -n
}

start_database() {
  if [ ! -d "$DIR/mysql/mysql" ]; then
    mkdir -p "$DIR/mysql"
    chown -R mysql:mysql "$DIR/mysql" "$DIR/mysql-run"
    mariadb-install-db --user=mysql --datadir="$DIR/mysql" --auth-root-authentication-method=socket >/dev/null 2>&1
  fi
  chown -R mysql:mysql "$DIR/mysql" "$DIR/mysql-run"
  start mariadbd mariadbd --no-defaults --user=mysql --datadir="$DIR/mysql" --socket="$DIR/mysql-run/mysqld.sock" \
    --pid-file="$DIR/mysql-run/mariadbd.pid" --skip-networking --innodb-buffer-pool-size=32M --skip-log-bin
  wait_for 30 mariadb mariadb --socket="$DIR/mysql-run/mysqld.sock" -e "select 1"
  # slurmdbd's MySQL client connects to "localhost" over the Unix socket named by MYSQL_UNIX_PORT
  export MYSQL_UNIX_PORT="$DIR/mysql-run/mysqld.sock"
  start slurmdbd slurmdbd -D  # reads slurmdbd.conf next to $SLURM_CONF
  wait_for 30 slurmdbd bash -c "exec 3<>/dev/tcp/127.0.0.1/6819"
}

up() {
  local t0=$SECONDS
  install_packages
  mkdir -p "$DIR"
  write_configs
  export SLURM_CONF="$CONF"
  start_munge
  [ "$NO_DBD" = 1 ] || start_database
  if [ "${PREFRL_SLURM_FRESH:-0}" = 1 ]; then rm -rf "$DIR/ctld"/*; fi
  start slurmctld slurmctld -D -f "$CONF"
  wait_for 30 slurmctld scontrol ping
  start slurmd slurmd -D -f "$CONF"
  wait_for 30 "the node to become idle" bash -c "sinfo -h -o %T | grep -qE '^(idle|mixed|allocated)'"
  if [ "$NO_DBD" != 1 ]; then wait_for 30 sacct sacct -n -X -S now; fi
  log "up in $((SECONDS - t0))s; use it with: export SLURM_CONF=$CONF"
}

down() {
  local d pid
  for d in slurmd slurmctld slurmdbd mariadbd munged; do
    pid=$(pid_of "$d")
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  local end=$((SECONDS + 20))
  for d in "${DAEMONS[@]}"; do
    while alive "$d" && [ $SECONDS -lt $end ]; do sleep 0.2; done
    if alive "$d"; then kill -9 "$(pid_of "$d")" 2>/dev/null || true; fi
    rm -f "$DIR/$d.pid"
  done
  log "down"
}

status() {
  local d rc=0
  for d in "${DAEMONS[@]}"; do
    if alive "$d"; then echo "$d: running (pid $(pid_of "$d"))"; elif [ "$d" = mariadbd ] || [ "$d" = slurmdbd ] && [ "$NO_DBD" = 1 ]; then
      echo "$d: not used"; else echo "$d: stopped"; rc=1; fi
  done
  if [ $rc = 0 ]; then SLURM_CONF="$CONF" sinfo; fi
  return $rc
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
