#!/usr/bin/env bash
# Evaluate a training workdir on a Cloud TPU VM pod slice: the eval-only
# counterpart of tpu_pod.sh (same slice, code and install options), running
#   python -m noisy_nodes.evaluate --workdir=DIR [--split=..] [--checkpoint=..]
# on all workers at once. Reuses the slice if it exists (e.g. the training
# slice); otherwise creates it (give --accelerator-type). Example:
#   launch/tpu_eval.sh --name=nn-eval --zone=us-central2-b \
#     --accelerator-type=v4-8 --workdir=gs://bucket/oc20_run \
#     --split=test --checkpoint=best --delete-after
# See `launch/tpu_eval.sh --help`; --dry-run prints the commands.
exec bash "$(dirname "$0")/tpu_pod.sh" --entry=evaluate "$@"
