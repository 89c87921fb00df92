"""Nothing lost, nothing silent (issue 20): one test per fault a new user hit.

The faults are checked at the layer that owns them: dataset tables and
structures (``crystal.io``, ``Structure.validate``, ``validate_all``), config
values (``engine.checks``), checkpoints (``engine.checkpoint``: signature,
checksums, fallback), and the CLI's error contract (``noisy_nodes.errors``:
one line, exit 2). In-process on the toy task (tests/toy_task.py) except
where the point is a CLI's exit status and message.
"""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import noisy_nodes  # noqa: F401
from noisy_nodes import errors
from noisy_nodes.engine import checkpoint as ckpt_lib
from noisy_nodes.engine import checks
from noisy_nodes.engine import trainer
from noisy_nodes.data.structures import DataError, Structure, validate_all

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import toy_config  # noqa: E402  pylint: disable=g-import-not-at-top


def _toy(**overrides):
  c = toy_config.get_config()
  for key, value in overrides.items():
    trainer._set_path(c, key, value)  # pylint: disable=protected-access
  return c


def _snapshot(workdir):
  """Every file of a workdir with its bytes (what a rejected run must keep)."""
  out = {}
  for root, _, files in os.walk(workdir):
    for f in files:
      p = os.path.join(root, f)
      with open(p, "rb") as fh:
        out[os.path.relpath(p, workdir)] = fh.read()
  return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished toy run: checkpoints at steps 2, 4, 6 and a best one."""
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  trainer.train(_toy(**{"train.num_steps": 6, "train.checkpoint_every": 2,
                        "train.eval_every": 3, "train.log_every": 2}),
                workdir)
  return workdir


@pytest.fixture(scope="module")
def restored(finished):
  """(experiment, train state, meta) of ``finished``'s latest checkpoint."""
  exp, ts, meta, _, _ = trainer.restore_run(finished, "latest")
  return exp, ts, meta


def _copy(finished, tmp_path):
  run = str(tmp_path / "run")
  shutil.copytree(finished, run)
  return run


def _state_file(run, step):
  """The largest array data file of one checkpoint (params live there)."""
  files = []
  for root, _, names in os.walk(os.path.join(run, "checkpoints", str(step),
                                             "state")):
    files += [os.path.join(root, n) for n in names
              if os.sep + "d" + os.sep in os.path.join(root, n) + os.sep]
  return max(files, key=os.path.getsize)


# -- dataset tables and structures (cases 1, 2, 5, 6, 14) ---------------------------
# A cubic P1 cell (3.9 Å) with the occupancy column; {sites} are its rows.
_CIF = "\n".join(
    ["data_x"] + [f"_cell_length_{a} 3.9" for a in "abc"]
    + [f"_cell_angle_{a} 90" for a in ("alpha", "beta", "gamma")]
    + ["_symmetry_space_group_name_H-M 'P 1'", "loop_"]
    + [f"_atom_site_{k}" for k in ("label", "type_symbol", "fract_x",
                                   "fract_y", "fract_z", "occupancy")]
    + ["{sites}", ""])
_ORDERED = "Pt1 Pt 0 0 0 1.0\nPt2 Pt 0.5 0.5 0 1.0"


def _folder(path, rows, sites=None):
  os.makedirs(path, exist_ok=True)
  for r in rows:
    with open(os.path.join(path, f"{r[0]}.cif"), "w") as f:
      f.write(_CIF.format(sites=(sites or {}).get(r[0], _ORDERED)))
  with open(os.path.join(path, "targets.csv"), "w") as f:
    f.write("\n".join(",".join(str(c) for c in r) for r in rows) + "\n")
  return path


def test_targets_with_extra_columns_blame_the_odd_rows(tmp_path):
  """Case 2: the expected width is that of most rows, not the longest."""
  from crystal import io as io_lib  # pylint: disable=g-import-not-at-top
  rows = [("a", 1.0), ("b", 2.0), ("c", 3.0), ("odd", 4.0, 5.0)]
  path = _folder(str(tmp_path / "f"), rows)
  with pytest.raises(DataError) as e:
    io_lib.read_dataset_folder(path)
  assert e.value.sample.endswith("odd.cif")
  assert "line 4: 2 target columns, expected 1" in e.value.fault
  got, report = io_lib.read_dataset_folder(path, skip_invalid=True)
  assert [s.id for s in got] == ["a", "b", "c"]
  assert len(report.skipped) == 1 and "odd.cif" in report.skipped[0]


@pytest.mark.parametrize("where", ["csv", "structure"])
def test_target_beyond_float32_is_an_error(tmp_path, where):
  """Case 5: 1e39 is finite in float64 but inf in the float32 model."""
  if where == "csv":
    from crystal import io as io_lib  # pylint: disable=g-import-not-at-top
    path = _folder(str(tmp_path / "f"), [("a", 1.0), ("big", "1e39")])
    with pytest.raises(DataError, match="big.cif: targets.csv line 2: target "
                       "1e39 overflows float32"):
      io_lib.read_dataset_folder(path)
  else:
    s = Structure(id="big", atomic_numbers=[18], positions=[[0, 0, 0]],
                  targets={"energy": [1e39]})
    with pytest.raises(DataError, match="big: target 'energy' overflows"):
      s.validate()


def test_partially_occupied_site_is_an_error(tmp_path):
  """Case 6: Pt 0.5 / Au 0.5 on one site is not read as one Au atom."""
  from crystal import io as io_lib  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "mixed.cif")
  with open(path, "w") as f:
    f.write(_CIF.format(sites="Pt1 Pt 0 0 0 0.5\nAu1 Au 0 0 0 0.5"))
  with pytest.raises(DataError) as e:
    io_lib.read_structure(path)
  assert e.value.sample == path
  assert "partially occupied site 0 (" in e.value.fault
  assert "Pt 0.5" in e.value.fault and "Au 0.5" in e.value.fault


def _crystal_config(path, skip):
  from configs import deeper_gatgnn  # pylint: disable=g-import-not-at-top
  c = deeper_gatgnn.get_config("tiny")
  with c.unlocked():
    c.data.path = path
    c.data.skip_invalid = skip
  return c


def test_crystal_skips_reach_the_report_and_name_the_file(tmp_path):
  """Cases 1 and 14: skipped samples are in ``task.skipped`` (so in
  data_report.json); an element the node features cannot hold (Z=105 > 100)
  names the file and is skipped under ``skip_invalid``."""
  from crystal import tasks  # pylint: disable=g-import-not-at-top
  rows = [(f"s{i}", float(i)) for i in range(8)] + [("db", 9.0),
                                                     ("bad", "x")]
  path = _folder(str(tmp_path / "f"), rows,
                 sites={"db": "Db1 Db 0 0 0 1.0\nPt1 Pt 0.5 0.5 0 1.0"})
  strict = tasks.CrystalPropertyTask(_crystal_config(path, False))
  with pytest.raises(DataError) as e:
    strict.load_splits()
  assert e.value.sample.endswith("bad.cif")  # csv order: the first fault
  task = tasks.CrystalPropertyTask(_crystal_config(path, True))
  splits = task.load_splits()
  assert sum(len(v) for v in splits.values()) == 8
  assert len(task.skipped) == 2
  assert any(l.endswith("bad.cif: targets.csv line 10: non-numeric target "
                        "'x'") for l in task.skipped)
  db = [l for l in task.skipped if "db.cif" in l]
  assert db and "atomic number 105 outside 1..100" in db[0]
  assert db[0].startswith(os.path.join(path, "db.cif"))


def test_every_config_has_skip_invalid():
  """Case 14: the README documents data.skip_invalid for every config."""
  import configs  # pylint: disable=g-import-not-at-top
  names = [f[:-3] for f in os.listdir(os.path.join(REPO, "configs"))
           if f.endswith(".py") and f not in ("crystal_common.py",
                                               "__init__.py")]
  for name in names:
    c = configs.load(name)
    assert c.data.skip_invalid is False, name


def test_validate_all_names_the_source_file_and_skips():
  s = Structure(id="x", atomic_numbers=[200], positions=[[0, 0, 0]],
                info={"source": "/data/x.traj"})
  with pytest.raises(DataError, match=r"^/data/x.traj: unknown element"):
    validate_all([s])
  report = []
  assert validate_all([s], True, report) == [] and report[0].startswith(
      "/data/x.traj: unknown element with atomic number 200")


def test_oc20_validation_without_energies_is_an_error(tmp_path):
  """Case 8: a validation file without energies is not a silently empty
  set of validation metrics (and best checkpoints)."""
  import ase.build  # pylint: disable=g-import-not-at-top
  import ase.db  # pylint: disable=g-import-not-at-top
  from configs import oc20  # pylint: disable=g-import-not-at-top
  from noisy_nodes.gns.oc20 import task as oc20_task  # pylint: disable=g-import-not-at-top
  for split, labelled in (("train", True), ("val", False)):
    with ase.db.connect(str(tmp_path / f"{split}.db")) as db:
      for i in range(3):
        slab = ase.build.fcc111("Pt", (2, 2, 2), vacuum=6.0)
        slab.rattle(0.05, seed=i)
        db.write(slab, **({"y_relaxed": -0.5 * i} if labelled else {}))
  c = oc20.get_config("demo")
  c.data.path = str(tmp_path)
  with pytest.raises(DataError, match=f"^{tmp_path}/val.db: "
                     "structure has no 'energy_relaxed' target"):
    oc20_task.OC20Task(c).load_splits()
  c.data.skip_invalid = True
  task = oc20_task.OC20Task(c)
  splits = task.load_splits()
  assert (len(splits["train"]), len(splits["val"])) == (3, 0)
  assert len(task.skipped) == 3


def test_qm9_metric_sigma_comes_from_training():
  """Case 9: a small validation split whose targets are all equal (sigma 0
  there) still gets finite std. MAE / logMAE: sigma_m is the training
  split's (noisy_nodes/gns/qm9/task.py)."""
  from configs import qm9  # pylint: disable=g-import-not-at-top
  from noisy_nodes.gns.qm9.task import QM9Task  # pylint: disable=g-import-not-at-top
  c = qm9.get_config("demo")
  c.data.target = "gap"
  methane = dict(atomic_numbers=[6, 1, 1, 1, 1],
                 positions=[[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63],
                            [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63]])
  gaps = np.linspace(8.0, 12.0, 18)
  train = [Structure(id=f"t{i}", targets={"gap": g}, **methane)
           for i, g in enumerate(gaps)]
  val = [Structure(id=f"v{i}", targets={"gap": 10.0}, **methane)
         for i in range(2)]
  task = QM9Task(c)
  task.setup(train)
  m = task.metrics(val, {"gap": [np.array(10.5), np.array(9.75)]})
  assert m["sigma_m/gap"] == pytest.approx(np.std(gaps))
  assert m["std_mae"] == pytest.approx(0.375 / np.std(gaps))
  assert np.isfinite(m["log_mae"])


def test_qm9_generator_without_its_extra_says_which(monkeypatch):
  """Case 16: one line naming the extra, not an ImportError traceback."""
  from noisy_nodes.gns.qm9 import xtb  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(sys.modules, "tblite", None)
  monkeypatch.setitem(sys.modules, "tblite.interface", None)
  with pytest.raises(errors.MissingExtraError) as e:
    xtb._require()  # pylint: disable=protected-access
  status, line = errors.describe(e.value)
  assert status == 2 and "\n" not in line
  assert 'pip install -e ".[generate]"' in line and "tblite" in line


# -- config values and the error contract (cases 7, 10, 12) --------------------------
@pytest.mark.parametrize("key,value,flag", [
    ("train.num_steps", -5, "--config.train.num_steps=-5: must be >= 1"),
    ("batch.max_graphs", 0, "--config.batch.max_graphs=0: must be >= 1"),
    ("train.checkpoint_every", 0, "--config.train.checkpoint_every=0"),
    ("train.log_every", 0, "--config.train.log_every=0"),
    ("optim.lr", 0.0, "--config.optim.lr=0.0: must be a finite number > 0"),
    ("optim.ema_decay", 1.0, "--config.optim.ema_decay=1.0: must be in"),
])
def test_config_values_are_checked(key, value, flag):
  with pytest.raises(errors.ConfigError) as e:
    checks.check_config(_toy(**{key: value}))
  assert str(e.value).startswith(flag)
  assert errors.describe(e.value) == (2, f"error: {e.value}")


def test_num_steps_negative_writes_nothing(tmp_path):
  """Case 7: no untrained model's predictions; the workdir is not made."""
  run = str(tmp_path / "run")
  with pytest.raises(errors.ConfigError, match="num_steps=-5"):
    trainer.train(_toy(**{"train.num_steps": -5}), run)
  assert not os.path.exists(run)


def test_workdir_that_is_a_file(tmp_path):
  f = tmp_path / "file"
  f.write_text("x")
  with pytest.raises(errors.ConfigError, match="is a file, not a directory"):
    checks.check_workdir(str(f))
  with pytest.raises(errors.ConfigError, match="is a file, not a directory"):
    checks.check_workdir(str(f / "run"))


def test_disk_full_is_one_line(finished, restored, tmp_path, monkeypatch):
  """Case 12: ENOSPC deep in orbax's exception chain -> one line, exit 2."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  run = _copy(finished, tmp_path)
  before = _snapshot(os.path.join(run, "checkpoints"))

  def full(self, step, *a, **k):
    try:
      raise OSError(errno.ENOSPC, "No space left on device",
                    os.path.join(str(self.directory), str(step)))
    except OSError as e:
      raise RuntimeError("tensorstore: write failed\n" + "x\n" * 400) from e
  monkeypatch.setattr(ocp.CheckpointManager, "save", full)
  c = ckpt_lib.Checkpointer(run)
  try:
    with pytest.raises(RuntimeError) as e:
      c.save(8, restored[1], {"step": 8})
  finally:
    c.close()
  status, line = errors.describe(e.value)
  assert status == 2 and "\n" not in line
  assert line.startswith(f"error: disk full writing {run}/checkpoints/8 (No "
                         "space left on device); complete checkpoints are "
                         "kept")
  assert _snapshot(os.path.join(run, "checkpoints")) == before
  assert errors.describe(ValueError("a bug")) is None  # a traceback


def _raise(exc):
  raise exc


@pytest.mark.parametrize("exc,status,line", [
    (DataError("a.cif", "malformed CIF"), 2, "error: bad input: a.cif: "
     "malformed CIF"),
    (errors.ConfigError("--split=x", "unknown split"), 2,
     "error: --split=x: unknown split"),
    (errors.NonFiniteError("non-finite loss\nat step 3"), 3,
     "error: non-finite loss at step 3"),
    (KeyboardInterrupt(), 130, "error: interrupted (Ctrl-C); complete "
     "checkpoints are kept"),
])
def test_run_cli_maps_faults_to_one_line_and_status(exc, status, line,
                                                    capsys):
  with pytest.raises(SystemExit) as e:
    errors.run_cli(lambda: _raise(exc))
  assert e.value.code == status
  assert capsys.readouterr().err.splitlines() == [line]
  with pytest.raises(ZeroDivisionError):  # a bug of ours: its traceback
    errors.run_cli(lambda: 1 / 0)


# -- rejected reruns leave the workdir alone (case 3) --------------------------------
@pytest.mark.parametrize("change,error", [
    ({"data.path": "/nonexistent/data.npz"}, DataError),
    ({"model.width": 16}, errors.ResumeError),
])
def test_rejected_rerun_does_not_touch_the_workdir(finished, tmp_path, change,
                                                   error):
  run = _copy(finished, tmp_path)
  before = _snapshot(run)
  with pytest.raises(error) as e:
    trainer.train(_toy(**{"train.num_steps": 8, **change}), run)
  assert _snapshot(run) == before
  if error is errors.ResumeError:
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400
    assert f"{run}/checkpoints/6 holds another model or config" in msg


# -- checkpoints: integrity and fallback (cases 4, 11) -------------------------------
def _flip(path):
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    data[len(data) // 2] ^= 0xFF
    f.seek(0)
    f.write(bytes(data))


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize("damage", [_flip, _truncate])
def test_corrupt_latest_checkpoint_falls_back(finished, restored, tmp_path,
                                              damage, caplog):
  """Cases 4 and 11: a bit flip or truncation is found, named, and the
  newest intact checkpoint is used."""
  run = _copy(finished, tmp_path)
  damage(_state_file(run, 6))
  caplog.set_level("WARNING")
  c = ckpt_lib.Checkpointer(run)
  try:
    state, meta, step = c.restore(restored[1])
  finally:
    c.close()
  assert step == meta["step"] == 4 and c.skipped == [6]
  assert int(state.step) == 4
  warned = [r.getMessage() for r in caplog.records
            if "skipped corrupt checkpoint" in r.getMessage()]
  assert len(warned) == 1 and f"{run}/checkpoints/6: " in warned[0]
  assert "using step 4" in warned[0]
  assert ("checksum mismatch in ." in warned[0] if damage is _flip
          else "unreadable" in warned[0])


def test_resume_past_a_corrupt_checkpoint(finished, tmp_path):
  """Case 11: training resumes from the newest intact checkpoint, sets the
  corrupt one aside (DIR/corrupt/) and writes that step again."""
  run = _copy(finished, tmp_path)
  _truncate(_state_file(run, 6))
  trainer.train(_toy(**{"train.num_steps": 8, "train.checkpoint_every": 2,
                        "train.eval_every": 0, "train.log_every": 2}), run)
  assert os.path.isdir(os.path.join(run, "corrupt", "checkpoints_6"))
  c = ckpt_lib.Checkpointer(run)
  try:
    assert sorted(c.latest.all_steps())[-2:] == [6, 8]
    assert c.restore_meta()[1] == 8
  finally:
    c.close()
  with open(os.path.join(run, "metrics.jsonl")) as f:
    steps = [json.loads(l)["step"] for l in f if '"train"' in l]
  assert steps == [2, 4, 6, 8]  # one history: the old step 6 row dropped


def test_no_intact_checkpoint_and_nan_parameters_are_refused(
    finished, restored, tmp_path):
  run = _copy(finished, tmp_path)
  for step in (2, 4, 6):
    _flip(_state_file(run, step))
  c = ckpt_lib.Checkpointer(run)
  try:
    with pytest.raises(errors.CheckpointError, match="no intact latest "
                       "checkpoint") as e:
      c.restore(restored[1])
  finally:
    c.close()
  assert errors.describe(e.value)[0] == 2
  # A checkpoint whose parameters are NaN (checksums valid): refused by
  # evaluation (and prediction: the same restore_run).
  run = _copy(finished, tmp_path / "nan")
  import jax  # pylint: disable=g-import-not-at-top
  ts = restored[1]
  bad = ts._replace(params=jax.tree_util.tree_map(
      lambda x: x * np.nan, ts.params))
  c = ckpt_lib.Checkpointer(run)
  try:
    c.save(100, bad, restored[2], "best")
  finally:
    c.close()
  with pytest.raises(errors.CheckpointError, match="best/100: parameters are "
                     "not finite"):
    trainer.restore_run(run, "best")


def test_nonfinite_first_step_and_empty_validation(tmp_path, caplog):
  """Case 5: exit 3's message must not promise a checkpoint that is not
  there. Case 15: an empty validation split is said, not silent."""
  ids = ",".join(f"ar{i}" for i in range(24))
  caplog.set_level("WARNING")
  with pytest.raises(errors.NonFiniteError, match="no checkpoint was written "
                     "yet"):
    trainer.train(_toy(**{"data.nan_target_ids": ids, "train.num_steps": 4,
                          "train.eval_every": 0, "data.num_val": 0}),
                  str(tmp_path / "run"))
  assert any("validation split is empty" in r.getMessage()
             for r in caplog.records)


def test_evaluation_predicts_graphs_larger_than_the_budget(restored):
  """Case 15: skip_oversized is for training; evaluation (and the end-of-run
  outputs built on it) predicts every structure."""
  from noisy_nodes.data import batching  # pylint: disable=g-import-not-at-top
  exp, ts = restored[0], restored[1]
  tiny = batching.Budget(max_nodes=4, max_edges=64, max_graphs=2)
  preds = exp.predict(ts.params, ts.state, "val", tiny)
  assert preds and all(p is not None for v in preds.values() for p in v)
  assert len(next(iter(preds.values()))) == len(exp.splits["val"])


# -- the CLI: one line, exit 2; Ctrl-C checkpoints (cases 10, 13) --------------------
def _env():
  e = dict(os.environ)
  e.update(PYTHONPATH=HERE + os.pathsep + REPO + os.pathsep
           + e.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu", OMP_NUM_THREADS="1")
  return e


@pytest.mark.parametrize("args,line", [
    (["noisy_nodes.train", f"--config={HERE}/toy_config.py",
      "--config.train.num_stepz=3"],
     "error: --config.train.num_stepz: unknown config key (did you mean "
     "'num_steps'?)"),
    (["noisy_nodes.train", f"--config={REPO}/configs/oc20.py:demoo"],
     f"error: --config={REPO}/configs/oc20.py:demoo: ValueError: unknown oc20 "
     "config variant token 'demoo'"),
    (["noisy_nodes.train", f"--config={HERE}/toy_config.py",
      "--workdir={file}"], "error: --workdir={file}: is a file, not a "
     "directory"),
    (["noisy_nodes.evaluate", "--workdir={run}", "--split=bogus"],
     "error: --split=bogus: unknown split; this run has train, val"),
])
def test_cli_user_errors_are_one_line_exit_2(finished, tmp_path, args, line):
  f = tmp_path / "file"
  f.write_text("x")
  args = [a.format(file=f, run=finished) for a in args]
  if args[0] == "noisy_nodes.train" and not any(a.startswith("--workdir")
                                                for a in args):
    args.append(f"--workdir={tmp_path / 'w'}")
  out = subprocess.run([sys.executable, "-m", *args], env=_env(), cwd=REPO,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip().splitlines() == [line.format(file=f)] or (
      out.stderr.strip().splitlines()[-1].startswith(line.format(file=f))
      and "Traceback" not in out.stderr), out.stderr[-2000:]


def test_sigint_checkpoints_and_exits_130(tmp_path):
  """Case 13: Ctrl-C behaves like SIGTERM: finish the step, checkpoint, exit
  128 + SIGINT, no traceback; the rerun resumes from that step."""
  run = str(tmp_path / "run")
  cmd = [sys.executable, "-m", "noisy_nodes.train",
         f"--config={HERE}/toy_config.py", f"--workdir={run}",
         "--config.train.num_steps=100000", "--config.train.log_every=1",
         "--config.train.checkpoint_every=100000",
         "--config.train.eval_every=0"]
  p = subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
  metrics = os.path.join(run, "metrics.jsonl")
  deadline = time.monotonic() + 120
  while not (os.path.exists(metrics) and os.path.getsize(metrics) > 200):
    assert p.poll() is None and time.monotonic() < deadline
    time.sleep(0.05)
  p.send_signal(signal.SIGINT)
  _, err = p.communicate(timeout=120)
  assert p.returncode == 128 + signal.SIGINT, err[-2000:]
  assert "Traceback" not in err and "KeyboardInterrupt" not in err
  stopped = int(err.split("preempted at step ")[1].split(":")[0])
  c = ckpt_lib.Checkpointer(run)
  try:
    assert c.latest_step() == stopped
  finally:
    c.close()
  with open(metrics) as f:
    steps = [json.loads(l)["step"] for l in f]
  assert max(steps) == stopped


@pytest.mark.parametrize("argv, fault", [
    (["--workdir=/x"], "required: --structures, --out"),
    (["--workdir=/x", "--structures=a.cif", "--out=o.csv",
      "--cpu_devices=0"], "--cpu_devices must be >= 1"),
    (["--workdir=/x", "--structures=a.cif", "--out=o.csv",
      "--checkpoint=bogus"], "invalid choice: 'bogus'"),
])
def test_predict_flag_errors_are_one_line_exit_2(argv, fault, capsys):
  """Case 10 for crystal.predict: argparse's faults as one line, exit 2."""
  from crystal import predict  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit) as e:
    predict.main(argv)
  err = capsys.readouterr().err
  assert e.value.code == 2 and fault in err
  assert err.count("\n") == 1 and err.startswith("error: crystal.predict: ")
