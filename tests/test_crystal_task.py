"""CrystalPropertyTask through the engine: splits, metrics, loss, every model
(and the deeper option) training, periodic-image invariance, the training
CLI on a MatDeepLearn folder and the outputs it leaves, k-fold CV (outputs
per fold) and the predict CLI."""
import csv
import json
import os
import subprocess
import sys

import haiku as hk
import jax
import numpy as np
import pytest

import noisy_nodes  # noqa: F401
import configs
from noisy_nodes.data import batching
from noisy_nodes.engine import optim, parallel
from noisy_nodes.data.structures import DataError, Structure
from crystal import generators, tasks
from crystal.io import write_matdeeplearn_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name, variant="tiny", cache_dir=None, **data):
  c = configs.load(name, variant)
  if cache_dir is not None:
    c.data.cache_dir = str(cache_dir)
  c.data.update(data)
  return c


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", OMP_NUM_THREADS="1")
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


# -- splits and metrics (no training) ---------------------------------------------
def test_holdout_and_kfold_splits():
  c = _config("deeper_gatgnn")
  idx = tasks.split_indices(100, c.data)
  assert [len(idx[k]) for k in ("train", "val", "test")] == [80, 5, 15]
  c.data.cv_folds = 3
  tests_ = []
  for fold in range(3):
    c.data.fold = fold
    # Reference: train on all the other folds, no validation set.
    c.data.cv_val_fraction = 0.0
    ref = tasks.split_indices(100, c.data)
    assert len(ref["val"]) == 0 and len(ref["train"]) + len(ref["test"]) == 100
    c.data.cv_val_fraction = 0.05
    s = tasks.split_indices(100, c.data)
    parts = [set(s[k].tolist()) for k in ("train", "val", "test")]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or
                parts[1] & parts[2])
    assert set.union(*parts) == set(range(100))
    # val is cv_val_fraction of the training folds, never the test fold.
    assert len(s["val"]) == round(0.05 * (100 - len(s["test"])))
    np.testing.assert_array_equal(s["test"], ref["test"])
    tests_.append(parts[2])
  assert set.union(*tests_) == set(range(100))
  assert sum(len(t) for t in tests_) == 100
  c.data.fold = 3
  with pytest.raises(DataError, match="fold 3"):
    tasks.split_indices(100, c.data)


def test_regression_metrics_known_values():
  true = np.array([[1.0, 0.0], [2.0, 1.0], [3.0, 2.0], [4.0, 5.0]])
  pred = np.array([[1.5, 0.0], [2.0, 1.0], [2.5, 3.0], [4.0, 5.0]])
  m = tasks.regression_metrics(true, pred)
  assert m["mae"] == pytest.approx((0.5 + 0.5 + 1.0) / 8)
  assert m["mse"] == pytest.approx((0.25 + 0.25 + 1.0) / 8)
  # R^2 per column: 1 - 0.5/5 and 1 - 1/14, averaged.
  assert m["r2"] == pytest.approx(0.5 * ((1 - 0.5 / 5) + (1 - 1 / 14)))
  assert m["mae_0"] == pytest.approx(0.25)
  assert m["mae_1"] == pytest.approx(0.25)


# -- every model through the engine's training step ------------------------------------
def _task_and_batch(config):
  task = tasks.CrystalPropertyTask(config)
  splits = task.load_splits()
  task.setup(splits["train"])
  graphs = [task.featurize(s, None, True) for s in splits["train"][:8]]
  # Pt10: 10 atoms and 100 edges, plus 10 phantom self-loop twins when
  # the edges are paired (GATGNN).
  budget = batching.Budget(8 * 10 + 8, sum(int(g.n_edge[0]) for g in graphs)
                           + 64, 8)
  return task, splits, batching.pad_graphs(graphs, budget), graphs


# Plain CGCNN/SchNet/MPNN/MEGNet are tested in test_crystal_models.py and
# DeeperGATGNN by the CLI test below; here every model family with the task.
@pytest.mark.parametrize("name,variant,check_loss", [
    ("gatgnn", "tiny", True), ("cgcnn", "tiny", False),
    ("cgcnn", "tiny,deeper", True), ("schnet", "tiny,deeper", False),
    ("mpnn", "tiny,deeper", False), ("megnet", "tiny,deeper", True)])
def test_model_trains_through_engine_step(tmp_path, name, variant,
                                          check_loss):
  """The engine's sharded step on a real batch: finite, parameters move,
  and (check_loss) its loss is the L1 error of the model's own outputs."""
  config = _config(name, variant, tmp_path)
  task, _, batch, graphs = _task_and_batch(config)
  transformed = hk.transform_with_state(task.model)
  params, state = jax.jit(lambda b: transformed.init(
      jax.random.PRNGKey(0), b, True))(batch)
  expected = None
  if check_loss:
    out, _ = jax.jit(lambda p, s, b: transformed.apply(p, s, None, b, True))(
        params, state, batch)
    pred = np.asarray(out["graph"])[:len(graphs), 0]
    true = np.array([g.globals["target"][0, 0] for g in graphs])
    expected = np.mean(np.abs(pred - true))   # reference: no normalisation

  optimizer = optim.make_optimizer(config.optim)
  mesh = parallel.make_mesh(local_only=True)
  ts = parallel.replicate(parallel.TrainState(
      step=np.zeros((), np.int32), params=jax.device_get(params),
      state=jax.device_get(state),
      opt_state=jax.device_get(optimizer.init(params)),
      ema_params=jax.device_get(params),
      rng=np.asarray(jax.random.key_data(jax.random.PRNGKey(1)))), mesh)
  step = parallel.make_train_step(task, transformed, optimizer, mesh)
  stacked = batching.stack_device_batches([batch] * jax.local_device_count())
  ts, metrics = step(ts, parallel.shard_batch(stacked, mesh))
  metrics = jax.device_get(metrics)
  assert metrics["finite"] == 1.0
  if check_loss:
    np.testing.assert_allclose(metrics["loss"], expected, rtol=2e-5)
    np.testing.assert_allclose(metrics["mae"], expected, rtol=2e-5)
  ts, metrics2 = step(ts, parallel.shard_batch(stacked, mesh))
  assert np.isfinite(jax.device_get(metrics2["loss"]))
  moved = [np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(
      jax.tree_util.tree_leaves(jax.device_get(ts.params)),
      jax.tree_util.tree_leaves(jax.device_get(params)))]
  assert max(moved) > 0


# -- periodic images ------------------------------------------------------------------
def _low_symmetry_crystal():
  """3 atoms in a triclinic cell; distinct distances (no 12-NN ties)."""
  cell = np.array([[4.1, 0.0, 0.0], [0.7, 3.8, 0.0], [0.4, 0.6, 5.2]])
  frac = np.array([[0.02, 0.05, 0.01], [0.47, 0.41, 0.53],
                   [0.71, 0.13, 0.37]])
  return Structure(id="tri", atomic_numbers=np.array([78, 8, 29]),
                   positions=frac @ cell, cell=cell, pbc=np.ones(3, bool),
                   targets={"target": np.array([0.3])})


def _supercell(s, reps=(2, 2, 1)):
  """Copies in blocks: atom i of copy k is row k * n + i (as ASE repeat)."""
  shifts = np.array([[a, b, c] for a in range(reps[0]) for b in range(reps[1])
                     for c in range(reps[2])], np.float64)
  pos = (shifts @ s.cell)[:, None, :] + s.positions[None]
  return Structure(id="super", atomic_numbers=np.tile(s.atomic_numbers,
                                                      len(shifts)),
                   positions=pos.reshape(-1, 3),
                   cell=s.cell * np.array(reps)[:, None], pbc=s.pbc,
                   targets=dict(s.targets))


def test_supercell_gives_same_prediction_in_eval_mode(tmp_path):
  """A 2x2x1 supercell: same per-atom embeddings and crystal prediction.

  Uses every periodic image within the cutoff (12 nearest): the reference's
  minimum-image graph keeps one edge per atom pair, so it depends on the cell
  chosen whenever the cell is smaller than twice the cutoff.
  """
  config = _config("deeper_gatgnn", "tiny", tmp_path)
  config.data.graph.minimum_image = False
  task = tasks.CrystalPropertyTask(config)
  task.num_targets = 1
  unit = _low_symmetry_crystal()
  sup = _supercell(unit)
  g_unit = task.featurize(unit, None, False)
  g_sup = task.featurize(sup, None, False)
  assert int(g_sup.n_edge[0]) == 4 * int(g_unit.n_edge[0])
  budget = batching.Budget(16, 4 * 13 * 3 + 64, 2)
  batch = batching.pad_graphs([g_unit, g_sup], budget)
  transformed = hk.transform_with_state(task.model)
  params, state = transformed.init(jax.random.PRNGKey(0), batch, True)
  # One training-mode pass so the BatchNorm/DGN running statistics are not
  # the identity.
  _, state = transformed.apply(params, state, None, batch, True)
  out, _ = transformed.apply(params, state, None, batch, False)
  y = np.asarray(out["graph"])[:2, 0]
  np.testing.assert_allclose(y[0], y[1], rtol=1e-5, atol=1e-6)
  emb = np.asarray(out["node_embedding"])
  n = unit.num_atoms
  for k in range(4):
    np.testing.assert_allclose(emb[n + k * n:n + (k + 1) * n], emb[:n],
                               rtol=1e-4, atol=1e-5)


# -- CLI, outputs, predict -------------------------------------------------------------
@pytest.fixture(scope="module")
def pt_folder(tmp_path_factory):
  """A MatDeepLearn folder (targets.csv + ASE json) of 30 EMT Pt10 clusters."""
  folder = str(tmp_path_factory.mktemp("pt_folder"))
  structures = generators.pt10_clusters(30, seed=3)
  write_matdeeplearn_folder(folder, structures)
  return folder


@pytest.fixture(scope="module")
def trained_run(pt_folder, tmp_path_factory):
  base = tmp_path_factory.mktemp("run")
  workdir = str(base / "dg")
  cmd = [sys.executable, "-m", "noisy_nodes.train",
         f"--config={ROOT}/configs/deeper_gatgnn.py:tiny",
         f"--workdir={workdir}", f"--config.data.path={pt_folder}",
         f"--config.data.cache_dir={base / 'cache'}",
         # Two data-parallel CPU devices, 4 of the config's 8 graphs each;
         # the outputs hook then predicts on one device.
         "--cpu_devices=2"]
  res = subprocess.run(cmd, cwd=str(base), env=_env(), capture_output=True,
                       text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  return workdir


def _check_outputs(workdir, sizes, checkpoint="best"):
  """The files the training CLI leaves in ``workdir`` (crystal.outputs), with
  ``sizes[split]`` rows each; returns {split: (csv rows, metrics)}."""
  res = {}
  for split, n in sizes.items():
    rows = _read_csv(os.path.join(workdir, f"predictions_{split}.csv"))
    assert len(rows) == n and len({r["id"] for r in rows}) == n
    true = np.array([float(r["target"]) for r in rows])
    pred = np.array([float(r["prediction"]) for r in rows])
    assert np.all(np.isfinite(true)) and np.all(np.isfinite(pred))
    np.testing.assert_allclose([float(r["abs_error"]) for r in rows],
                               np.abs(pred - true), rtol=1e-9)
    with open(os.path.join(workdir, f"metrics_{split}.json")) as f:
      metrics = json.load(f)
    assert metrics["n"] == n and metrics["checkpoint"] == checkpoint
    assert metrics["mae"] == pytest.approx(np.mean(np.abs(pred - true)))
    assert metrics["mse"] == pytest.approx(np.mean((pred - true) ** 2))
    with open(os.path.join(workdir, f"parity_{split}.png"), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    res[split] = (rows, metrics)
  with open(os.path.join(workdir, "learning_curve.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  return res


def test_train_cli_on_folder_leaves_outputs(trained_run, pt_folder):
  """The CLI alone (no write_outputs call) leaves csv / png / json files."""
  with open(os.path.join(trained_run, "config.json")) as f:
    config = json.load(f)
  assert config["data"]["path"] == pt_folder
  assert config["batch"]["max_graphs"] == 4  # 8 split over --cpu_devices=2
  with open(os.path.join(trained_run, "checkpoints", "6", "meta",
                         "metadata")) as f:
    meta = json.load(f)
  assert len(meta["data_positions"]) == 2  # one data shard per device
  # 30 samples: 24 train, 1 val, 5 test (0.8/0.05/0.15).
  out = _check_outputs(trained_run, {"val": 1, "test": 5})
  with open(os.path.join(pt_folder, "targets.csv")) as f:
    labels = {line.split(",")[0]: float(line.split(",")[1])
              for line in f.read().split()}
  for rows, _ in out.values():
    for r in rows:
      assert float(r["target"]) == pytest.approx(labels[r["id"]], rel=1e-12)
  # The best checkpoint is the lowest validation MAE the run logged.
  with open(os.path.join(trained_run, "metrics.jsonl")) as f:
    val = [json.loads(l) for l in f if '"val"' in l]
  val = [r for r in val if r.get("split") == "val"]
  assert out["val"][1]["mae"] == pytest.approx(min(r["mae"] for r in val),
                                               rel=1e-5)


def test_cpu_devices_split_the_global_batch():
  from absl import app  # pylint: disable=g-import-not-at-top
  from noisy_nodes import train  # pylint: disable=g-import-not-at-top
  config = _config("deeper_gatgnn", "tiny")
  config.batch.max_edges = 1000
  train.split_batch_over_cpu_devices(config, 2)
  assert (config.batch.max_graphs, config.batch.max_nodes,
          config.batch.max_edges) == (4, 0, 500)
  with pytest.raises(app.UsageError, match="batch.max_graphs=4"):
    train.split_batch_over_cpu_devices(config, 3)


def test_outputs_from_latest_checkpoint_without_best(trained_run, tmp_path):
  """A run that kept no best checkpoint (its validation split was empty, so
  never evaluated) gets its outputs from the latest checkpoint."""
  import shutil  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  shutil.copytree(trained_run, workdir, ignore=shutil.ignore_patterns(
      "best", "predictions_*", "metrics_*", "parity_*"))
  with open(os.path.join(workdir, "config.json")) as f:
    cfg = ml_collections.ConfigDict(json.load(f))
  tasks.CrystalPropertyTask(cfg).write_outputs(workdir)
  with open(os.path.join(workdir, "metrics_test.json")) as f:
    metrics = json.load(f)
  assert metrics["checkpoint"] == "latest"
  assert metrics["step"] == cfg.train.num_steps and metrics["n"] == 5
  assert len(_read_csv(os.path.join(workdir, "predictions_test.csv"))) == 5


def test_outputs_hook_only_for_property_tasks():
  """Task.write_outputs does nothing by default: pre-training writes no
  property predictions, distillation writes the student's."""
  from noisy_nodes.tasks import base  # pylint: disable=g-import-not-at-top
  from crystal.crysgnn import tasks as crysgnn_tasks  # pylint: disable=g-import-not-at-top
  assert (crysgnn_tasks.CrysGNNPretrainTask.write_outputs
          is base.Task.write_outputs)
  assert (crysgnn_tasks.CrysGNNDistillTask.write_outputs
          is tasks.CrystalPropertyTask.write_outputs)


def test_predict_cli_on_cif_and_poscar(trained_run, tmp_path):
  """A test-split cluster in a 30 Å box (no image within 8 Å) written as CIF
  and POSCAR gets the prediction the training CLI wrote for the cluster."""
  import ase.io  # pylint: disable=g-import-not-at-top
  row = _read_csv(os.path.join(trained_run, "predictions_test.csv"))[0]
  with open(os.path.join(trained_run, "config.json")) as f:
    folder = json.load(f)["data"]["path"]
  atoms = ase.io.read(os.path.join(folder, row["id"] + ".json"))
  atoms.set_cell([30.0, 30.0, 30.0])
  atoms.center()
  atoms.pbc = True
  cif, poscar = str(tmp_path / "x.cif"), str(tmp_path / "POSCAR")
  ase.io.write(cif, atoms)
  ase.io.write(poscar, atoms, format="vasp")
  csv_out = str(tmp_path / "preds.csv")
  res = subprocess.run(
      [sys.executable, "-m", "crystal.predict", f"--workdir={trained_run}",
       "--structures", cif, poscar, f"--out={csv_out}",
       "--cpu_devices=2"],  # one structure per device
      env=_env(), capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  rows = _read_csv(csv_out)
  assert [r["file"] for r in rows] == [cif, poscar]
  p = [float(r["prediction"]) for r in rows]
  assert p[0] == pytest.approx(p[1], abs=1e-6)
  assert p[0] == pytest.approx(float(row["prediction"]), abs=1e-4)
  bad = subprocess.run(
      [sys.executable, "-m", "crystal.predict", f"--workdir={trained_run}",
       "--structures", str(tmp_path / "missing.cif"), f"--out={csv_out}"],
      env=_env(), capture_output=True, text=True, timeout=600)
  assert bad.returncode == 2 and "missing.cif" in bad.stderr


# -- the Python API (noisy_nodes.load) ------------------------------------------
def _test_split_atoms(trained_run):
  """(rows of predictions_test.csv, the test clusters as ase.Atoms)."""
  import ase.io  # pylint: disable=g-import-not-at-top
  rows = _read_csv(os.path.join(trained_run, "predictions_test.csv"))
  with open(os.path.join(trained_run, "config.json")) as f:
    folder = json.load(f)["data"]["path"]
  return rows, [ase.io.read(os.path.join(folder, r["id"] + ".json"))
                for r in rows]


@pytest.fixture(scope="module")
def loaded(trained_run):
  return noisy_nodes.load(trained_run)


def test_load_predicts_as_training_evaluated(trained_run, loaded):
  """load(...).predict on the test clusters (ase.Atoms, pymatgen Molecules,
  the run's own Structure records) == predictions_test.csv, which the
  training CLI's evaluation wrote from the same checkpoint; a periodic box
  as ase.Atoms and as a pymatgen Structure gives the same numbers."""
  from pymatgen.io.ase import AseAtomsAdaptor  # pylint: disable=g-import-not-at-top
  rows, atoms = _test_split_atoms(trained_run)
  model = loaded
  want = np.array([[float(r["prediction"])] for r in rows])
  pred = model.predict(atoms)["target"]
  assert pred.shape == (5, 1) and pred.dtype == np.float64
  np.testing.assert_allclose(pred, want, rtol=1e-5, atol=1e-6)
  molecules = [AseAtomsAdaptor.get_molecule(a) for a in atoms]
  np.testing.assert_allclose(model.predict(molecules)["target"], pred,
                             rtol=1e-6, atol=1e-7)
  records = {s.id: s for s in model.dataset("test")}
  np.testing.assert_allclose(
      model.predict([records[r["id"]] for r in rows])["target"], pred,
      rtol=1e-6, atol=1e-7)
  # The evaluation CLI's metrics come from the same predictions.
  metrics = model.evaluate("test")
  true = np.array([[float(r["target"])] for r in rows])
  assert metrics["mae"] == pytest.approx(np.mean(np.abs(pred - true)),
                                         rel=1e-5)
  box = atoms[0].copy()
  box.set_cell([30.0, 30.0, 30.0])
  box.center()
  box.pbc = True
  p_box = model.predict(box)["target"]
  p_pmg = model.predict(AseAtomsAdaptor.get_structure(box))["target"]
  np.testing.assert_allclose(p_pmg, p_box, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(p_box, pred[:1], rtol=1e-4, atol=1e-5)
  emb = model.embed(atoms[:2])
  assert [e.shape[0] for e in emb["node_embedding"]] == [10, 10]
  np.testing.assert_allclose(emb["graph_embedding"],
                             [e.mean(0) for e in emb["node_embedding"]],
                             rtol=1e-5, atol=1e-6)


def test_ase_calculator_gives_energy_and_no_forces(trained_run, loaded):
  from ase.calculators.calculator import PropertyNotImplementedError  # pylint: disable=g-import-not-at-top
  from ase.optimize import BFGS  # pylint: disable=g-import-not-at-top
  _, atoms = _test_split_atoms(trained_run)
  model = loaded
  a = atoms[1]
  a.calc = model.as_ase_calculator()
  assert a.get_potential_energy() == pytest.approx(
      float(model.predict(a)["target"][0, 0]), rel=1e-7)
  with pytest.raises(PropertyNotImplementedError, match="force-free"):
    a.get_forces()
  with pytest.raises(PropertyNotImplementedError, match="force-free"):
    BFGS(a, logfile=None).run(fmax=0.05, steps=2)


def test_load_refuses_what_training_refuses(trained_run, loaded):
  """Bad inputs get the dataset reader's errors (crystal.io.check_structure)
  naming the item; an element never seen in training gets a warning."""
  import ase  # pylint: disable=g-import-not-at-top
  import ase.build  # pylint: disable=g-import-not-at-top
  from crystal import io as io_lib  # pylint: disable=g-import-not-at-top
  model = loaded
  _, atoms = _test_split_atoms(trained_run)
  overlap = atoms[0].copy()
  overlap.positions[1] = overlap.positions[0]
  with pytest.raises(DataError) as training_error:
    io_lib.check_structure(Structure.from_ase(overlap, id="items[1]"))
  with pytest.raises(DataError) as api_error:
    model.predict([atoms[0], overlap])
  assert str(api_error.value) == str(training_error.value)
  assert "items[1]" in str(api_error.value)
  nan = atoms[0].copy()
  nan.positions[0, 0] = np.nan
  with pytest.raises(DataError, match="non-finite"):
    model.predict(nan)
  with pytest.raises(DataError, match="no atoms"):
    model.predict(ase.Atoms())
  with pytest.raises(TypeError, match="ase.Atoms"):
    model.predict(["POSCAR"])
  from pymatgen.core import Lattice, Structure as PmgStructure  # pylint: disable=g-import-not-at-top
  alloy = PmgStructure(Lattice.cubic(3.9), [{"Pt": 0.5, "Cu": 0.5}],
                       [[0, 0, 0]])
  with pytest.raises(DataError, match="disordered"):
    model.predict(alloy)
  with pytest.warns(noisy_nodes.api.UnseenElementWarning,
                    match=r"1 of 2 structures .*: items\[1\] \(Cu\)"):
    out = model.predict([atoms[0], ase.build.bulk("Cu", "fcc", a=3.6,
                                                  cubic=True)])
  assert np.all(np.isfinite(out["target"]))
  with pytest.raises(DataError, match="no config.json"):
    noisy_nodes.load(os.path.dirname(trained_run))


def test_cross_validation_prints_table(pt_folder, tmp_path, capsys):
  from noisy_nodes import train as train_cli  # pylint: disable=g-import-not-at-top
  c = _config("cgcnn", "tiny", tmp_path / "cache", path=pt_folder,
              cv_folds=2)
  c.train.update(num_steps=2, eval_every=2, checkpoint_every=2, log_every=2)
  summary = train_cli.run_cross_validation(c, str(tmp_path / "cv"))
  table = capsys.readouterr().out
  assert "mae" in table and "r2" in table and "mean" in table
  with open(tmp_path / "cv" / "cv_results.json") as f:
    res = json.load(f)
  maes = [r["mae"] for r in res["folds"]]
  assert len(maes) == 2
  assert summary["mae"]["mean"] == pytest.approx(np.mean(maes))
  assert summary["mae"]["std"] == pytest.approx(np.std(maes))
  for k in range(2):
    fold_dir = str(tmp_path / "cv" / f"fold_{k}")
    with open(os.path.join(fold_dir, "config.json")) as f:
      assert json.load(f)["data"]["fold"] == k
    # Every fold leaves its outputs: 15 test samples; as the reference,
    # the 15 others all train (no validation set) and the last epoch is kept.
    out = _check_outputs(fold_dir, {"test": 15}, checkpoint="latest")
    assert not os.path.exists(os.path.join(fold_dir, "predictions_val.csv"))
    assert out["test"][1]["mae"] == pytest.approx(maes[k], rel=1e-5)


def test_repeats_print_a_mean_std_table(pt_folder, tmp_path, capsys):
  from noisy_nodes import train as train_cli  # pylint: disable=g-import-not-at-top
  c = _config("cgcnn", "tiny", tmp_path / "cache", path=pt_folder)
  c.train.update(num_steps=2, eval_every=2, checkpoint_every=2, log_every=2,
                 repeats=2, write_outputs=False)
  summary = train_cli.run_repeats(c, str(tmp_path / "rep"))
  assert "repeat" in capsys.readouterr().out
  with open(tmp_path / "rep" / "repeat_results.json") as f:
    maes = [r["mae"] for r in json.load(f)["repeats"]]
  assert len(maes) == 2 and maes[0] != maes[1]      # two training seeds
  assert summary["mae"]["mean"] == pytest.approx(np.mean(maes))
  assert summary["mae"]["std"] == pytest.approx(np.std(maes))
  for k in range(2):
    with open(tmp_path / "rep" / f"repeat_{k}" / "config.json") as f:
      assert json.load(f)["train"]["seed"] == k


def test_db_format_and_target_index(tmp_path):
  from crystal import io as io_lib  # pylint: disable=g-import-not-at-top
  structures = generators.pt10_clusters(5, seed=4)
  for i, s in enumerate(structures):
    s.targets["target"] = np.array([float(s.targets["target"][0]), 10.0 + i])
  folder = str(tmp_path / "db")
  io_lib.write_db_folder(folder, structures)
  assert io_lib.infer_format(folder) == "db"
  for index, col in ((0, 0), (1, 1)):
    c = _config("cgcnn", "tiny", tmp_path / "cache", path=folder,
                format="db", target_index=index, split=(0.6, 0.2, 0.2))
    task = tasks.CrystalPropertyTask(c)
    splits = task.load_splits()
    got = {s.id: s for k in ("train", "val", "test") for s in splits[k]}
    assert task.num_targets == 1 and len(got) == 5
    for s in structures:          # row k of targets.csv labels db row k
      np.testing.assert_allclose(got[s.id].positions, s.positions)
      assert got[s.id].targets["target"][0] == s.targets["target"][col]
  with open(os.path.join(folder, "targets.csv"), "a") as f:
    f.write("extra,1.0,2.0\n")
  with pytest.raises(DataError, match="6 rows but"):
    io_lib.read_dataset_folder(folder, format="db")
  with pytest.raises(DataError, match="target_index=2"):
    _load(_config("cgcnn", "tiny", tmp_path / "cache", path=pt_folder_of(
        tmp_path, structures), target_index=2))


def pt_folder_of(tmp_path, structures):
  folder = str(tmp_path / "mdl")
  write_matdeeplearn_folder(folder, structures)
  return folder


def _load(config):
  return tasks.CrystalPropertyTask(config).load_splits()


def test_output_bias_starts_at_the_training_mean(pt_folder, tmp_path):
  for norm in (False, True):
    c = _config("deeper_gatgnn", "tiny", tmp_path / "cache", path=pt_folder,
                normalize_targets=norm)
    c.model.output_init = "mean_predictor"
    task = tasks.CrystalPropertyTask(c)
    splits = task.load_splits()
    task.setup(splits["train"])
    g = task.featurize(splits["train"][0], None, False)
    params, _ = hk.transform_with_state(task.model).init(
        jax.random.PRNGKey(0), g, True)
    mean = np.mean([s.targets["target"][0] for s in splits["train"]])
    bias = float(params["gatgnn/head/out"]["b"][0])
    assert bias == pytest.approx(0.0 if norm else mean, abs=1e-5)
    assert not np.any(params["gatgnn/head/out"]["w"])   # the mean predictor


def test_analysis_writes_embeddings_and_tsne(trained_run, tmp_path):
  from crystal import analysis  # pylint: disable=g-import-not-at-top
  paths = analysis.analyse(trained_run, str(tmp_path / "an"))
  data = np.load(paths["npz"])
  n = len(data["ids"])
  assert n == 30 and data["embedding"].shape == (n, 16)   # tiny: dim 16
  assert data["tsne"].shape == (n, 2) and np.all(np.isfinite(data["tsne"]))
  assert set(data["split"]) == {"train", "val", "test"}
  rows = _read_csv(os.path.join(trained_run, "predictions_test.csv"))
  test = {i: p for i, p, s in zip(data["ids"], data["prediction"][:, 0],
                                  data["split"]) if s == "test"}
  for r in rows:       # the same model and checkpoint as the run's outputs
    assert test[r["id"]] == pytest.approx(float(r["prediction"]), abs=1e-4)
  with open(paths["png"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
