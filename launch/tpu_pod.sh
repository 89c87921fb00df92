#!/usr/bin/env bash
# Train (or evaluate, see tpu_eval.sh) on a Cloud TPU VM pod slice.
#
# Creates the slice with `gcloud compute tpus tpu-vm create` unless it already
# exists (then it is reused), ships the project to every worker (git clone of
# --repo, or scp of a local checkout), installs it in a Python venv together
# with jax[tpu], and starts the same command on all workers at once
# (`tpu-vm ssh --worker=all`). Every worker runs one JAX process; with no
# NN_* variables or --coordinator_address given, the CLI calls
# jax.distributed.initialize() with no arguments and JAX finds the other
# workers of the slice from the TPU metadata server.
#
# Preemption: the trainer catches SIGTERM, checkpoints and exits with 143.
# With --restart-on-preemption, a slice found PREEMPTED/TERMINATED (or gone)
# after the run is deleted, created again, set up again, and the same command
# is rerun: it resumes from the last checkpoint in --workdir (use a gs:// path
# so checkpoints survive the slice).
#
# --dry-run prints every command (one per line, shell-quoted) instead of
# running it, assuming that the slice does not exist yet.
set -uo pipefail

ENTRY=train           # train | evaluate (tpu_eval.sh sets evaluate)
NAME=""
ZONE=""
PROJECT=""
ACCELERATOR=""
VERSION="tpu-ubuntu2204-base"
SPOT=0
PREEMPTIBLE=0
WORKDIR=""
CONFIG=""
REPO=""
REF=""
SPLIT=""
CHECKPOINT=""
PY_VERSION="3.11"
REMOTE_DIR="noisy_nodes"   # relative to the workers' home directories
VENV="nn_venv"
RESTART=0
MAX_RESTARTS=20
DELETE_AFTER=0
SKIP_INSTALL=0
DRY_RUN=0
CREATE_ARGS=()
EXTRA=()

usage() {
  local prog
  prog=$(basename "$0")
  [[ $ENTRY == evaluate ]] && prog="tpu_eval.sh"
  cat <<EOF
Usage: $prog --name=TPU --zone=ZONE --workdir=gs://BUCKET/RUN [options] [--config.x=y ...]

Slice:
  --name=NAME               TPU VM name (reused if it exists)
  --zone=ZONE               e.g. us-central2-b
  --project=PROJECT         gcloud project (default: gcloud's configured one)
  --accelerator-type=TYPE   e.g. v4-32, v5litepod-16 (needed to create)
  --version=RUNTIME         TPU VM runtime (default: $VERSION)
  --spot | --preemptible    create a spot / preemptible slice
  --create-arg=ARG          extra argument for 'tpu-vm create' (repeatable)
  --delete-after            delete the slice once the run succeeded
Code:
  --repo=URL_OR_PATH        git URL to clone on the workers, or a local
                            checkout to copy with scp (default: this checkout)
  --ref=BRANCH              branch or tag to clone (git URLs only)
  --python-version=X.Y      Python of the workers' venv (default: $PY_VERSION;
                            installed from the deadsnakes PPA if missing)
  --skip-install            the workers are already set up
Run:
EOF
  if [[ $ENTRY == evaluate ]]; then
    cat <<EOF
  --workdir=DIR             training workdir (gs:// path) to evaluate
  --split=val|test          split to evaluate (CLI default if omitted)
  --checkpoint=best|latest  checkpoint to evaluate (CLI default if omitted)
EOF
  else
    cat <<EOF
  --config=configs/NAME.py[:VARIANT]   training config
  --workdir=DIR             checkpoints and logs (use gs:// so they outlive
                            the slice)
  --restart-on-preemption   recreate a preempted slice and rerun (resumes)
  --max-restarts=N          give up after N restarts (default: $MAX_RESTARTS)
EOF
  fi
  cat <<EOF
  --config.KEY=VALUE, --KEY=VALUE after '--'   passed to the CLI unchanged
  --dry-run                 print the commands instead of running them
  -h, --help                this help
EOF
}

die() { echo "$(basename "$0"): $*" >&2; exit 2; }

# Shell-quotes one argument like Python's shlex.quote, so that the printed
# commands can be pasted into a shell (and parsed back by the tests).
quote() {
  local s=$1 q="'\\''"
  if [[ -n $s && $s =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//"'"/"$q"}"
  fi
}

quote_all() {
  local out="" a
  for a in "$@"; do out+="${out:+ }$(quote "$a")"; done
  printf '%s' "$out"
}

# Runs a command, or prints it under --dry-run.
run() {
  if ((DRY_RUN)); then
    quote_all "$@"; echo
    return 0
  fi
  echo "+ $(quote_all "$@")" >&2
  "$@"
}

note() {
  if ((DRY_RUN)); then echo "# $*"; else echo "[tpu_pod] $*" >&2; fi
}

while (($#)); do
  case $1 in
    --entry=*) ENTRY=${1#*=} ;;
    --name=*) NAME=${1#*=} ;;
    --zone=*) ZONE=${1#*=} ;;
    --project=*) PROJECT=${1#*=} ;;
    --accelerator-type=*|--accelerator_type=*) ACCELERATOR=${1#*=} ;;
    --version=*) VERSION=${1#*=} ;;
    --spot) SPOT=1 ;;
    --preemptible) PREEMPTIBLE=1 ;;
    --create-arg=*) CREATE_ARGS+=("${1#*=}") ;;
    --delete-after) DELETE_AFTER=1 ;;
    --workdir=*) WORKDIR=${1#*=} ;;
    --config=*) CONFIG=${1#*=} ;;
    --repo=*) REPO=${1#*=} ;;
    --ref=*) REF=${1#*=} ;;
    --split=*) SPLIT=${1#*=} ;;
    --checkpoint=*) CHECKPOINT=${1#*=} ;;
    --python-version=*) PY_VERSION=${1#*=} ;;
    --skip-install) SKIP_INSTALL=1 ;;
    --restart-on-preemption) RESTART=1 ;;
    --max-restarts=*) MAX_RESTARTS=${1#*=} ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    --config.*=*) EXTRA+=("$1") ;;
    --) shift; EXTRA+=("$@"); break ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done

[[ $ENTRY == train || $ENTRY == evaluate ]] || die "--entry must be train or evaluate"
[[ -n $NAME ]] || die "--name is required"
[[ -n $ZONE ]] || die "--zone is required"
[[ -n $WORKDIR ]] || die "--workdir is required"
if [[ $ENTRY == train ]]; then
  [[ -n $CONFIG ]] || die "--config is required"
  [[ -z $SPLIT && -z $CHECKPOINT ]] || die "--split/--checkpoint are for tpu_eval.sh"
fi
((SPOT && PREEMPTIBLE)) && die "--spot and --preemptible are exclusive"
[[ $MAX_RESTARTS =~ ^[0-9]+$ ]] || die "--max-restarts must be a number"
[[ $WORKDIR == gs://* ]] || note "warning: --workdir is not a gs:// path;" \
  "checkpoints will be lost with the slice and workers will not share them"
if [[ -z $REPO ]]; then
  REPO=$(cd "$(dirname "$0")/.." && pwd)
fi
IS_GIT_URL=0
if [[ $REPO =~ ^(https?|ssh|git)://|^git@|\.git$ ]] && [[ ! -d $REPO ]]; then
  IS_GIT_URL=1
elif [[ ! -d $REPO ]]; then
  die "--repo: $REPO is neither a git URL nor a directory"
fi
[[ -z $REF ]] || ((IS_GIT_URL)) || die "--ref needs a git URL in --repo"

LOC=(--zone="$ZONE")
[[ -n $PROJECT ]] && LOC+=(--project="$PROJECT")
TPU=(gcloud compute tpus tpu-vm)

# State of the slice: READY, CREATING, PREEMPTED, TERMINATED, ... or NOT_FOUND.
slice_state() {
  local state
  if state=$("${TPU[@]}" describe "$NAME" "${LOC[@]}" \
      --format='value(state)' 2>/dev/null) && [[ -n $state ]]; then
    echo "$state"
  else
    echo NOT_FOUND
  fi
}

create_slice() {
  [[ -n $ACCELERATOR ]] || die "--accelerator-type is required to create $NAME"
  local args=("${TPU[@]}" create "$NAME" "${LOC[@]}"
              --accelerator-type="$ACCELERATOR" --version="$VERSION")
  ((SPOT)) && args+=(--spot)
  ((PREEMPTIBLE)) && args+=(--preemptible)
  run "${args[@]}" "${CREATE_ARGS[@]}"
}

delete_slice() {
  run "${TPU[@]}" delete "$NAME" "${LOC[@]}" --quiet
}

# Makes sure a READY slice exists. Sets FRESH=1 when it had to be created.
FRESH=0
ensure_slice() {
  if ((DRY_RUN)); then
    quote_all "${TPU[@]}" describe "$NAME" "${LOC[@]}" --format='value(state)'
    echo
    if [[ -n $ACCELERATOR ]]; then
      note "if the slice does not exist:"
      create_slice
    else
      note "the slice must exist (no --accelerator-type to create it)"
    fi
    return 0
  fi
  local state waited=0
  state=$(slice_state)
  note "slice $NAME: $state"
  case $state in
    READY) ;;
    NOT_FOUND) create_slice || return 1; FRESH=1 ;;
    PREEMPTED|TERMINATED)
      # Spot/preemptible slices cannot be restarted: delete and recreate.
      delete_slice || return 1
      create_slice || return 1
      FRESH=1 ;;
    *)
      # CREATING, STARTING, RESTARTING, REPAIRING...: wait for READY.
      while [[ $state != READY ]]; do
        ((waited >= 1800)) && { note "slice stuck in $state"; return 1; }
        sleep 30; waited=$((waited + 30))
        state=$(slice_state)
        [[ $state == PREEMPTED || $state == TERMINATED || $state == NOT_FOUND ]] \
          && { ensure_slice; return; }
      done ;;
  esac
}

ssh_all() {
  run "${TPU[@]}" ssh "$NAME" "${LOC[@]}" --worker=all --command="$1"
}

install() {
  local py="python$PY_VERSION" q_dir q_src
  q_dir=$(quote "$REMOTE_DIR")
  if ((IS_GIT_URL)); then
    local clone=(git clone -q --depth=1)
    [[ -n $REF ]] && clone+=(--branch="$REF")
    clone+=("$REPO" "$REMOTE_DIR")
    q_src="rm -rf $q_dir && $(quote_all "${clone[@]}")"
  else
    # One tarball of the checkout (without .git and caches), copied to all.
    local tarball="${TMPDIR:-/tmp}/nn_src_${NAME}.tgz"
    run tar -czf "$tarball" --exclude=.git --exclude=__pycache__ \
      --exclude='*.pyc' -C "$REPO" . || return 1
    run "${TPU[@]}" scp "$tarball" "$NAME:nn_src.tgz" "${LOC[@]}" \
      --worker=all || return 1
    q_src="rm -rf $q_dir && mkdir -p $q_dir && tar -xzf nn_src.tgz -C $q_dir"
  fi
  # TPU VM images ship an older Python than the project needs; the venv
  # keeps the system Python (used by the TPU runtime tools) untouched.
  local q_py
  q_py=$(quote "$py")
  ssh_all "set -e; $q_src; \
command -v $q_py >/dev/null || { sudo add-apt-repository -y ppa:deadsnakes/ppa \
&& sudo apt-get update -q && sudo apt-get install -y -q $q_py $q_py-venv; }; \
$q_py -m venv $(quote "$VENV") && $(quote "$VENV")/bin/pip install -q -U pip \
&& $(quote "$VENV")/bin/pip install -q -U 'jax[tpu]' \
&& $(quote "$VENV")/bin/pip install -q -e $q_dir"
}

# The CLI command every worker runs (quoted into one string for ssh).
cli_command() {
  # --distributed=on: on GCE TPU VMs no environment variable reveals the
  # slice (JAX asks the metadata server), so the CLI is told to call
  # jax.distributed.initialize() rather than guess.
  local cmd=(-m "noisy_nodes.$ENTRY" --distributed=on)
  if [[ $ENTRY == train ]]; then
    cmd+=(--config="$CONFIG" --workdir="$WORKDIR")
  else
    cmd+=(--workdir="$WORKDIR")
    [[ -n $SPLIT ]] && cmd+=(--split="$SPLIT")
    [[ -n $CHECKPOINT ]] && cmd+=(--checkpoint="$CHECKPOINT")
  fi
  # ~ stays unquoted so that the worker's shell expands it.
  printf 'cd %s && PYTHONUNBUFFERED=1 ~/%s/bin/python %s' "$(quote "$REMOTE_DIR")" \
    "$(quote "$VENV")" "$(quote_all "${cmd[@]}" "${EXTRA[@]}")"
}

main() {
  local restarts=0 rc state
  while true; do
    ensure_slice || return 1
    # A new slice is always set up; an existing one only on the first round.
    if ((FRESH || (restarts == 0 && !SKIP_INSTALL))); then
      install || return 1
    fi
    FRESH=0
    ssh_all "$(cli_command)"
    rc=$?
    if ((rc == 0)); then
      ((DELETE_AFTER)) && { delete_slice || return 1; }
      return 0
    fi
    ((RESTART)) || return "$rc"
    state=$(slice_state)
    note "run exited with $rc; slice $NAME is $state"
    case $state in
      PREEMPTED|TERMINATED|NOT_FOUND) ;;
      *) ((rc == 143)) || return "$rc" ;;  # a real failure: do not loop
    esac
    restarts=$((restarts + 1))
    if ((restarts > MAX_RESTARTS)); then
      note "giving up after $MAX_RESTARTS restarts"
      return "$rc"
    fi
    note "restart $restarts/$MAX_RESTARTS (resumes from $WORKDIR)"
  done
}

if ((DRY_RUN)); then
  ensure_slice
  ((SKIP_INSTALL)) || install
  ssh_all "$(cli_command)"
  ((DELETE_AFTER)) && delete_slice
  if ((RESTART)); then
    note "on exit status 143 or a PREEMPTED slice: delete, create, install," \
      "and rerun the same command (at most $MAX_RESTARTS times)"
  fi
  exit 0
fi
main
