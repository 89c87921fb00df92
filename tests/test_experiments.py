"""Shared-``--out`` bookkeeping of the experiment scripts."""
import os
import subprocess
import sys

from experiments.crysgnn_distill import claim

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _claim_elsewhere(workdir):
  code = ("import sys; sys.path.insert(0, %r); "
          "from experiments.crysgnn_distill import claim; "
          "print(claim(%r))" % (_ROOT, workdir))
  return subprocess.run([sys.executable, "-c", code], check=True,
                        capture_output=True, text=True).stdout.strip()


def test_processes_sharing_out_split_the_runs(tmp_path):
  run = str(tmp_path / "cgcnn_vanilla_n200_s0")
  assert claim(run) and claim(run)          # ours, and still ours.
  assert _claim_elsewhere(run) == "False"   # held by a live process.
  with open(os.path.join(run, "claim.pid"), "w") as f:
    f.write("999999999")                    # a holder that died.
  assert _claim_elsewhere(str(tmp_path / "other")) == "True"
  assert claim(run)
  with open(os.path.join(run, "claim.pid")) as f:
    assert f.read() == str(os.getpid())
