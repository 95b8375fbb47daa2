# Sourced by run.sbatch and array.sbatch: `launch NAME SCRIPT FLAGS...` runs a prefrl script as this job's run
# `NAME` (unless the flags give a --run-name) and keeps it going across the batch system's interruptions:
#   - preemption or `scontrol requeue` (the templates ask for --requeue): SLURM sends SIGTERM, the script saves its
#     checkpoint and exits; when the job starts again (SLURM_RESTART_COUNT > 0) it continues with --resume;
#   - the time limit: --signal=B:USR1@180 warns the job 3 minutes ahead; the script is stopped (it saves) and the job
#     requeues itself, so a run longer than one job's time limit goes on in the next one.
requeue_before_the_limit() {  # PID: stop the run (it saves its checkpoint), then put this job back in the queue
  echo "time limit near: stopping the run and requeueing the job"
  kill -TERM "$1" 2>/dev/null || true
  while kill -0 "$1" 2>/dev/null; do sleep 1; done
  scontrol requeue "$SLURM_JOB_ID" || echo "scontrol requeue failed: continue with --resume by hand" >&2
  exit 0
}

launch() {
  local name="$1" script="$2"
  shift 2
  local runs_dir="runs" given_name="" prev=""
  for arg in "$@"; do
    case "$prev" in
      --runs-dir) runs_dir="$arg" ;;
      --run-name) given_name="$arg" ;;
    esac
    case "$arg" in
      --runs-dir=*) runs_dir="${arg#*=}" ;;
      --run-name=*) given_name="${arg#*=}" ;;
    esac
    prev="$arg"
  done
  local folder="$runs_dir/${given_name:-$name}"
  local command=("$PY" "$script" "$@" --torch-threads "${SLURM_CPUS_PER_TASK:-1}")
  [ -n "$given_name" ] || command+=(--run-name "$name")
  if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] && [ -f "$folder/checkpoint.pt" ]; then
    echo "restart ${SLURM_RESTART_COUNT} of job $SLURM_JOB_ID: continuing $folder"
    command=("$PY" "$script" --resume "$folder")
  fi
  "${command[@]}" &
  local child=$!
  # shellcheck disable=SC2064
  trap "requeue_before_the_limit $child" USR1
  trap ":" TERM  # (SLURM signals the script itself too: this shell waits for it to save)
  local status=0
  wait "$child" || status=$?
  while [ "$status" -gt 128 ] && kill -0 "$child" 2>/dev/null; do  # a trapped signal ended the wait, not the run
    status=0
    wait "$child" || status=$?
  done
  return "$status"
}
