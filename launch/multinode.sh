#!/usr/bin/env bash
# Plain multi-node recipe: run the same command on every node, each with its
# own --process_id; process 0's host is the coordinator. One process per node
# drives all of the node's accelerators.
#
#   # on node 0 (10.0.0.1) and node 1:
#   launch/multinode.sh --coordinator_address=10.0.0.1:1234 --num_processes=2 \
#     --process_id=0 -- --config=configs/oc20.py:demo --workdir=/shared/run
#   launch/multinode.sh --coordinator_address=10.0.0.1:1234 --num_processes=2 \
#     --process_id=1 -- --config=configs/oc20.py:demo --workdir=/shared/run
#
#   # print the command of every node (to paste, or to feed to pdsh/ssh):
#   launch/multinode.sh --hosts=10.0.0.1,10.0.0.2 --port=1234 \
#     -- --config=configs/oc20.py:demo --workdir=/shared/run
#
# The arguments after `--` go to `python -m noisy_nodes.train` (or
# noisy_nodes.evaluate with --entry=evaluate). The coordinates are passed as
# NN_COORDINATOR_ADDRESS / NN_NUM_PROCESSES / NN_PROCESS_ID, which the CLI
# hands to jax.distributed.initialize. The workdir must
# be on storage that all nodes share. After a preemption (exit status 143)
# rerun the same commands: training resumes from the last checkpoint.
set -uo pipefail

ENTRY=train
PYTHON=${PYTHON:-python}
COORDINATOR=""
NUM=""
PID=""
HOSTS=""
PORT=""
DRY_RUN=0
ARGS=()

usage() {
  cat <<EOF
Usage: $(basename "$0") --coordinator_address=HOST:PORT --num_processes=N --process_id=I
                         [--entry=train|evaluate] [--python=PY] [--dry-run] -- CLI_ARGS...
       $(basename "$0") --hosts=HOST0,HOST1,... --port=PORT [--entry=...] -- CLI_ARGS...
         (prints the command of every node; HOST0 is the coordinator)
EOF
}

die() { echo "$(basename "$0"): $*" >&2; exit 2; }

# Shell-quotes like Python's shlex.quote (the printed lines can be pasted).
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

while (($#)); do
  case $1 in
    --coordinator_address=*|--coordinator-address=*) COORDINATOR=${1#*=} ;;
    --num_processes=*|--num-processes=*) NUM=${1#*=} ;;
    --process_id=*|--process-id=*) PID=${1#*=} ;;
    --hosts=*) HOSTS=${1#*=} ;;
    --port=*) PORT=${1#*=} ;;
    --entry=*) ENTRY=${1#*=} ;;
    --python=*) PYTHON=${1#*=} ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; ARGS=("$@"); break ;;
    *) usage >&2; die "unknown argument: $1 (CLI arguments go after --)" ;;
  esac
  shift
done

[[ $ENTRY == train || $ENTRY == evaluate ]] || die "--entry must be train or evaluate"

if [[ -n $HOSTS ]]; then
  [[ $PORT =~ ^[0-9]+$ ]] || die "--hosts needs --port=PORT"
  [[ -z $COORDINATOR$NUM$PID ]] || die "--hosts excludes --coordinator_address/--num_processes/--process_id"
  IFS=, read -r -a hosts <<<"$HOSTS"
  for i in "${!hosts[@]}"; do
    echo "# on ${hosts[i]}:"
    quote_all "NN_COORDINATOR_ADDRESS=${hosts[0]}:$PORT" \
      "NN_NUM_PROCESSES=${#hosts[@]}" "NN_PROCESS_ID=$i" \
      "$PYTHON" -m "noisy_nodes.$ENTRY" "${ARGS[@]}"
    echo
  done
  exit 0
fi

[[ $COORDINATOR =~ ^.+:[0-9]+$ ]] || die "--coordinator_address=HOST:PORT is required"
if ! [[ $NUM =~ ^[1-9][0-9]*$ ]]; then
  die "--num_processes must be a positive integer"
fi
if ! [[ $PID =~ ^(0|[1-9][0-9]*)$ ]] || ((PID >= NUM)); then
  die "--process_id must be in [0, $NUM)"
fi

# The coordinates travel as NN_* variables, which both CLIs (train and
# evaluate) read; printed as VAR=value prefixes, which a shell accepts.
VARS=("NN_COORDINATOR_ADDRESS=$COORDINATOR" "NN_NUM_PROCESSES=$NUM"
      "NN_PROCESS_ID=$PID")
CMD=("$PYTHON" -m "noisy_nodes.$ENTRY" "${ARGS[@]}")
if ((DRY_RUN)); then
  quote_all "${VARS[@]}" "${CMD[@]}"; echo
  exit 0
fi
echo "+ $(quote_all "${VARS[@]}" "${CMD[@]}")" >&2
export "${VARS[@]}"
exec "${CMD[@]}"
