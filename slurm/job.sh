# shellcheck shell=bash
# The body of slurm/train.sbatch and slurm/train_multinode.sbatch, sourced by them in the batch shell.
#
#   trap the warning signal (first thing: SLURM may send it at any time)
#   settings from variables (environment or sbatch --export) with the defaults below
#   check them and the run's config/data (gandist preflight) before anything is launched
#   srun: one `accelerate launch` per node, c10d rendezvous at the head node, port from the job id
#   on the warning signal: touch <run_dir>/STOP; every rank stops at the same step and checkpoints
#   the trainer left <run_dir>/REQUEUE: `scontrol requeue` (same job id, same run name: it resumes)
#
# Arguments of the batch script are passed to gandist/train.py: --config FILE and key=value overrides.

# --- 1. the warning signal ------------------------------------------------------------------------
# `#SBATCH --signal=B:USR2@300` sends USR2 to this shell only (torchrun would not forward USR1/USR2
# to its workers): the stop file reaches every rank on every node through the shared run folder.
STOP_SIGNAL=""
gandist_on_signal() {
    STOP_SIGNAL=$1
    echo "gandist-slurm: got SIG$1 at $(date +%T): asking the trainer to checkpoint and stop"
    if [[ $1 != TERM ]] && ((SECONDS < 120)); then
        # a --time shorter than the lead of --signal=B:USR2@LEAD: every requeued run is told to stop at once
        echo "gandist-slurm: warning: SIG$1 came ${SECONDS} s after the start; unless this is a preemption," \
            "make --time longer than the lead time in --signal=B:USR2@SECONDS"
    fi
    if [[ -n ${RUN_DIR:-} && -d $RUN_DIR ]]; then
        echo "SIG$1 to SLURM job ${SLURM_JOB_ID:-?}" >"$RUN_DIR/STOP"
    fi
}
trap 'gandist_on_signal USR2' USR2
trap 'gandist_on_signal USR1' USR1
trap 'gandist_on_signal TERM' TERM

gandist_die() {
    echo "gandist-slurm: error: $*" >&2
    exit 2
}

# --- 2. settings: everything site-specific -----------------------------------------------------------
: "${GANDIST_DIR:=${SLURM_SUBMIT_DIR:-$PWD}}" # the gandist checkout (gandist/, configs/, launch/)
: "${VENV:=$GANDIST_DIR/.venv}"               # virtual environment to activate; empty: use PATH as it is
: "${MODULES:=}"                              # environment modules to load first, e.g. "cuda/12.4 gcc/12"
: "${CONFIG:=}"                               # --config file for the trainer (or pass --config as an argument)
: "${DATA:=}"                                 # data.shards (brace pattern, comma list, pipe:, https://)
: "${OUTPUT_DIR:=$GANDIST_DIR/runs}"          # run folders go here (a file system shared by all nodes)
if [[ -n ${SLURM_ARRAY_JOB_ID:-} ]]; then
    : "${RUN_NAME:=${SLURM_JOB_NAME:-gandist}-${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}"
else
    : "${RUN_NAME:=${SLURM_JOB_NAME:-gandist}-${SLURM_JOB_ID:-0}}" # fixed per job: a requeued job resumes it
fi
: "${LAUNCH_CONFIG:=launch/multinode.yaml}" # accelerate config; launch/deepspeed_zero2.yaml for DeepSpeed ZeRO-2
: "${NODES:=${SLURM_JOB_NUM_NODES:-}}"      # nodes to train on (default: all of the job's)
: "${PROCS_PER_NODE:=${SLURM_GPUS_ON_NODE:-}}" # processes per node (default: the GPUs SLURM gave each node)
: "${MAIN_PORT:=$((20000 + ${SLURM_JOB_ID:-0} % 20000))}" # rendezvous port on the head node, from the job id
: "${REQUEUE:=1}"                           # 0: never requeue, end the job when the trainer stops early
: "${MAX_REQUEUES:=50}"                     # safety net against a run that stops early forever

# --- 3. checks: fail here, with a message, not after the launch -------------------------------------
[[ -n ${SLURM_JOB_ID:-} ]] || gandist_die "not inside a SLURM job: submit with sbatch (see slurm/README.md)"
[[ -f $GANDIST_DIR/gandist/train.py ]] ||
    gandist_die "GANDIST_DIR=$GANDIST_DIR is not a gandist checkout (no gandist/train.py):" \
        "submit from the checkout or set GANDIST_DIR"
cd "$GANDIST_DIR" || gandist_die "cannot cd to GANDIST_DIR=$GANDIST_DIR"
is_count() { [[ $1 =~ ^[0-9]+$ ]] && ((10#$1 >= 1)); }
is_count "$NODES" ||
    gandist_die "NODES='$NODES' (SLURM_JOB_NUM_NODES='${SLURM_JOB_NUM_NODES:-}'): need a node count of at least 1"
((NODES <= ${SLURM_JOB_NUM_NODES:-0})) ||
    gandist_die "NODES=$NODES but this job has ${SLURM_JOB_NUM_NODES:-0} node(s): submit with --nodes=$NODES"
if [[ -z $PROCS_PER_NODE ]] && command -v nvidia-smi >/dev/null; then
    PROCS_PER_NODE=$(nvidia-smi -L | grep -c '^GPU') # a site that hands out whole nodes without --gpus
fi
is_count "$PROCS_PER_NODE" ||
    gandist_die "PROCS_PER_NODE='$PROCS_PER_NODE': no GPU allocated to this job:" \
        "submit with --gpus-per-node=N (or set PROCS_PER_NODE=N for CPU processes)"
[[ -f $LAUNCH_CONFIG ]] || gandist_die "LAUNCH_CONFIG=$LAUNCH_CONFIG does not exist (see launch/README.md)"
if [[ -n $MODULES ]]; then
    # shellcheck disable=SC2086 # a list of module names
    module load $MODULES || gandist_die "module load $MODULES failed (MODULES=$MODULES)"
fi
if [[ -n $VENV ]]; then
    if [[ -f $VENV/bin/activate ]]; then
        # shellcheck disable=SC1091 # the user's environment
        source "$VENV/bin/activate"
    elif [[ $VENV != "$GANDIST_DIR/.venv" ]]; then
        gandist_die "VENV=$VENV has no bin/activate: point it at your virtual environment, or set VENV= to use PATH"
    fi
fi
command -v accelerate >/dev/null ||
    gandist_die "accelerate not found on PATH: set VENV= or MODULES= (python3: $(command -v python3))"

TRAIN_ARGS=()
[[ -n $CONFIG ]] && TRAIN_ARGS+=(--config "$CONFIG")
# in an array job, {task} in an argument becomes the task id: train.seed={task}, --config sweep-{task}.yaml
TRAIN_ARGS+=("${@//\{task\}/${SLURM_ARRAY_TASK_ID:-0}}")
[[ -n $DATA ]] && TRAIN_ARGS+=("data.shards=$DATA")
TRAIN_ARGS+=("output_dir=$OUTPUT_DIR" "run_name=$RUN_NAME")
WORLD_SIZE=$((NODES * PROCS_PER_NODE))
python3 -m gandist preflight --world-size "$WORLD_SIZE" "${TRAIN_ARGS[@]}" ||
    gandist_die "the run's config or data is wrong (above)${DATA:+; DATA=$DATA}${CONFIG:+; CONFIG=$CONFIG}"

# --- 4. launch: one accelerate launch per node ----------------------------------------------------
RUN_DIR=$OUTPUT_DIR/$RUN_NAME
mkdir -p "$RUN_DIR" || gandist_die "cannot create the run folder $RUN_DIR (OUTPUT_DIR=$OUTPUT_DIR)"
rm -f "$RUN_DIR/STOP" "$RUN_DIR/REQUEUE" # left by the previous job of this run: they are handled
[[ -n $STOP_SIGNAL ]] && gandist_on_signal "$STOP_SIGNAL" # it came while we were setting up
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
RESTARTS=${SLURM_RESTART_COUNT:-0}
LAUNCH=(accelerate launch --config_file "$LAUNCH_CONFIG" --num_machines "$NODES" --num_processes "$WORLD_SIZE"
    --main_process_port "$MAIN_PORT")
if ((NODES > 1)); then
    # accelerate ignores rdzv_backend from a config file (its flag defaults to static): pass it here
    LAUNCH+=(--main_process_ip "$HEAD_NODE" --rdzv_backend c10d)
fi
echo "gandist-slurm: job $SLURM_JOB_ID restart $RESTARTS | $NODES node(s) x $PROCS_PER_NODE process(es)" \
    "on $SLURM_JOB_NODELIST | head $HEAD_NODE:$MAIN_PORT | run $RUN_DIR"
printf '%s job=%s restart=%s nodes=%s processes=%s event=start\n' "$(date +%FT%T)" "$SLURM_JOB_ID" "$RESTARTS" \
    "$SLURM_JOB_NODELIST" "$WORLD_SIZE" >>"$RUN_DIR/slurm_jobs.log"
SRUN=(srun --nodes="$NODES" --ntasks="$NODES" --ntasks-per-node=1 --kill-on-bad-exit=1)
[[ -n ${SLURM_CPUS_PER_TASK:-} ]] && SRUN+=(--cpus-per-task="$SLURM_CPUS_PER_TASK") # srun does not inherit it
# The node rank must expand on each node, not here: hence the single quotes (in a double-quoted
# command $SLURM_NODEID would be this shell's, 0 on every node). The head node (node id 0) hosts
# the rendezvous store; is_host says so explicitly, also when several "nodes" share one host.
# shellcheck disable=SC2016
"${SRUN[@]}" bash -c 'n=$1; shift; exec "${@:1:n}" --machine_rank "$SLURM_NODEID" \
    --rdzv_conf "is_host=$((SLURM_NODEID == 0))" "${@:n+1}"' gandist-node "${#LAUNCH[@]}" "${LAUNCH[@]}" \
    gandist/train.py "${TRAIN_ARGS[@]}" &
SRUN_PID=$!
# A trapped signal interrupts `wait`: keep waiting until srun itself has ended.
while true; do
    wait "$SRUN_PID"
    RC=$?
    kill -0 "$SRUN_PID" 2>/dev/null || break
done
if ((RC > 128)) && [[ -n $STOP_SIGNAL ]]; then
    wait "$SRUN_PID" # the signal and srun's end came together: this is srun's own status
    RC=$?
fi

# --- 5. requeue or end ----------------------------------------------------------------------------
gandist_event() {
    printf '%s job=%s restart=%s event=%s\n' "$(date +%FT%T)" "$SLURM_JOB_ID" "$RESTARTS" "$1" \
        >>"$RUN_DIR/slurm_jobs.log"
}
if [[ ! -f $RUN_DIR/REQUEUE ]]; then
    # The trainer wrote summary.json (after its final checkpoint) during this launch and was not
    # stopped early: training is done even if a rank then died on its way out (gloo can abort at
    # interpreter exit: "terminate called without an active exception"). Do not fail the job for it.
    if ((RC != 0)) && [[ $RUN_DIR/summary.json -nt $RUN_DIR/slurm_jobs.log ]] &&
        grep -q '"stopped_early": false' "$RUN_DIR/summary.json"; then
        echo "gandist-slurm: warning: the launcher exited $RC after the trainer had finished" \
            "(summary.json written by this launch): the job counts as done"
        gandist_event "end rc=0 launcher_rc=$RC"
        exit 0
    fi
    gandist_event "end rc=$RC"
    echo "gandist-slurm: trainer ended with exit code $RC"
    exit "$RC"
fi
echo "gandist-slurm: trainer stopped early: $(cat "$RUN_DIR/REQUEUE")"
if [[ $STOP_SIGNAL == TERM ]]; then
    # SLURM itself is ending the job (scancel, time limit, end of a preemption's grace time); a
    # preempted job is requeued by SLURM (PreemptMode=REQUEUE), a cancelled one must stay cancelled.
    gandist_event "stopped-by-SIGTERM"
    exit 75
elif [[ $REQUEUE != 1 ]]; then
    gandist_event "stopped-no-requeue"
    echo "gandist-slurm: REQUEUE=$REQUEUE: not requeueing; resubmit with RUN_NAME=$RUN_NAME to continue"
    exit 75
elif ((RESTARTS >= MAX_REQUEUES)); then
    gandist_event "stopped-max-requeues"
    echo "gandist-slurm: error: already requeued $RESTARTS times (MAX_REQUEUES=$MAX_REQUEUES): not again" >&2
    exit 75
fi
gandist_event requeue
trap - USR1 USR2 TERM # the requeue ends this shell with SIGTERM: no stop file for the next start
echo "gandist-slurm: scontrol requeue $SLURM_JOB_ID (run $RUN_NAME resumes from its checkpoint)"
scontrol requeue "$SLURM_JOB_ID" || {
    echo "gandist-slurm: error: scontrol requeue failed; resubmit with RUN_NAME=$RUN_NAME to continue" >&2
    exit 75
}
exit 0 # SLURM ends the job here and starts it again later
