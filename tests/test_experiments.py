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


def test_ledger_keeps_finished_runs_and_refuses_other_settings(tmp_path):
  import json
  import pytest
  from experiments.ledger import Ledger, LedgerMismatch
  settings = {"epochs": 300, "sizes": (200, 800)}
  led = Ledger(str(tmp_path / "ledger"), settings)
  assert led.get("cgcnn_vanilla_n200_s0") is None
  led.put("cgcnn_vanilla_n200_s0", {"test_mae": 0.0144, "size": 200})
  # A fresh process (a later sitting on another machine) reads it back;
  # tuples and lists compare equal after the JSON round trip.
  again = Ledger(str(tmp_path / "ledger"), {"sizes": [200, 800],
                                            "epochs": 300})
  assert again.get("cgcnn_vanilla_n200_s0") == {"test_mae": 0.0144,
                                                "size": 200}
  assert again.names() == ["cgcnn_vanilla_n200_s0"]
  longer = Ledger(str(tmp_path / "ledger"), dict(settings, epochs=1000))
  with pytest.raises(LedgerMismatch, match=r"cgcnn_vanilla_n200_s0\.json.*"
                     r"epochs=300 \(now 1000\)"):
    longer.get("cgcnn_vanilla_n200_s0")
  (tmp_path / "ledger" / "broken.json").write_text(json.dumps({"row": {}}))
  with pytest.raises(ValueError, match="broken.json: not a ledger entry"):
    led.get("broken")
  with pytest.raises(ValueError, match="bad run name"):
    led.put("../escape", {})
  # Sweep-wide facts live beside the runs but are not runs.
  assert again.get_fact("mean_baseline") is None
  led.put_fact("mean_baseline", {"test_mae": 0.1018})
  assert again.get_fact("mean_baseline") == {"test_mae": 0.1018}
  assert again.names() == ["broken", "cgcnn_vanilla_n200_s0"]
  with pytest.raises(LedgerMismatch, match=r"_mean_baseline\.json"):
    longer.get_fact("mean_baseline")
  with pytest.raises(ValueError, match="bad run name"):
    led.put("_mean_baseline", {})


def test_depth_scan_flatness_waits_for_the_floor_learning_rate(tmp_path):
  import json
  from experiments.depth_scan import flattened, lr_floor_epoch
  # A pause at a high rate: flat by the curve alone.
  val = [0.5, 0.2, 0.1, 0.05] + [0.051] * 12
  assert flattened(val, 0.01, 4)
  rows = [{"split": "train", "epoch": e, "lr": max(5e-3 * 0.5 ** e, 1e-5)}
          for e in range(1, 17)]
  rows += [{"split": "val", "step": e, "mae": v} for e, v in
           enumerate(val, 1)]
  (tmp_path / "metrics.jsonl").write_text(
      "\n".join(json.dumps(r) for r in rows) + "\n")
  # 5e-3 * 0.5**e reaches 1e-5 at epoch 9 (floor-clamped): the last
  # quarter (epochs 13-16) ran at the floor, so the run is flat.
  assert lr_floor_epoch(str(tmp_path), 1e-5) == 9
  assert lr_floor_epoch(str(tmp_path), 1e-6) == float("inf")
  assert lr_floor_epoch(str(tmp_path / "missing"), 1e-5) == float("inf")
