"""OC20 task: Noisy Nodes featurisation, loss masking, training end to end."""
import json
import os
import subprocess
import sys

import haiku as hk
import jax
import ml_collections
import numpy as np
import pytest

from ase.constraints import FixAtoms

import noisy_nodes  # noqa: F401
import noisy_nodes.api
from noisy_nodes import errors
from noisy_nodes.data import batching
from noisy_nodes.gns import noise
from noisy_nodes.engine import trainer
from noisy_nodes.data.neighbors import neighbor_list
from noisy_nodes.gns.oc20 import emt
from noisy_nodes.gns.oc20 import metrics as oc20_metrics
from noisy_nodes.data.structures import DataError, Structure
from noisy_nodes.gns.oc20.task import OC20Task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from configs import oc20 as oc20_config  # noqa: E402  pylint: disable=g-import-not-at-top


@pytest.fixture(scope="module")
def emt_folder(tmp_path_factory):
  """train/val/test.aselmdb of 10 real EMT relaxations (in-process)."""
  out = str(tmp_path_factory.mktemp("emt"))
  emt.generate(10, seed=3, workers=0, out_dir=out,
               split_sizes={"train": 6, "val": 2, "test": 2})
  return out


def _config(folder, variant="tiny"):
  c = oc20_config.get_config(variant)
  c.data.path = folder
  return c


def _task(folder, variant="tiny"):
  task = OC20Task(_config(folder, variant))
  splits = task.load_splits()
  task.setup(splits["train"])
  return task, splits


def _edge_set(g):
  return set(zip(g.senders.tolist(), g.receivers.tolist(),
                 map(tuple, g.edges["shifts"].tolist())))


def test_split_files_and_normalisation(emt_folder):
  task, splits = _task(emt_folder)
  assert {k: len(v) for k, v in splits.items()} == {"train": 6, "val": 2,
                                                    "test": 2}
  e = np.array([s.targets["energy_relaxed"] for s in splits["train"]])
  assert task.mean == pytest.approx(e.mean()) and task.std == pytest.approx(
      e.std())
  g = task.featurize(splits["val"][0], None, False)
  want = (float(splits["val"][0].targets["energy_relaxed"]) - e.mean()) / e.std()
  assert g.globals["target"].shape == (1, 1)
  assert g.globals["target"][0, 0] == pytest.approx(want, rel=1e-5)
  # A single file is split deterministically instead.
  c = _config(os.path.join(emt_folder, "train.aselmdb"))
  c.data.val_fraction, c.data.test_fraction = 0.2, 0.2
  a, b = OC20Task(c).load_splits(), OC20Task(c).load_splits()
  assert [len(a[k]) for k in ("train", "val", "test")] == [4, 1, 1]
  assert [s.id for s in a["val"]] == [s.id for s in b["val"]]
  with pytest.raises(DataError, match="no such file"):
    OC20Task(_config(emt_folder + "/missing")).load_splits()


def test_eval_graph_is_clean_and_deterministic(emt_folder):
  task, splits = _task(emt_folder)
  s = splits["train"][0]
  g1, g2 = task.featurize(s, None, False), task.featurize(s, None, False)
  for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(g1.nodes["positions"], s.positions, atol=1e-5)
  # Eval node target: relaxed - initial.
  np.testing.assert_allclose(
      g1.nodes["positions"] + g1.nodes["position_target"],
      s.node_arrays["positions_relaxed"], atol=1e-4)
  np.testing.assert_array_equal(g1.nodes["tags"], s.node_arrays["tags"])
  np.testing.assert_array_equal(g1.nodes["fixed"], s.node_arrays["fixed"])


def test_training_graph_is_noisy_and_rebuilt(emt_folder):
  task, splits = _task(emt_folder)
  s = splits["train"][1]
  clean = task.featurize(s, None, False)
  g = task.featurize(s, np.random.default_rng(7), True)
  again = task.featurize(s, np.random.default_rng(7), True)
  np.testing.assert_array_equal(g.nodes["positions"], again.nodes["positions"])
  noisy = g.nodes["positions"].astype(np.float64)
  assert np.abs(noisy - s.positions).max() > 0.1  # σ = 0.3 Å
  # The edges are those of the NOISY positions, not of the clean ones.
  d = task.config.data
  nl = neighbor_list(noisy, s.cell, s.pbc, d.cutoff, d.max_neighbors)
  np.testing.assert_array_equal(g.senders, nl.senders)
  np.testing.assert_array_equal(g.receivers, nl.receivers)
  np.testing.assert_allclose(g.edges["vectors"], nl.vectors, atol=1e-4)
  assert _edge_set(g) != _edge_set(clean)
  # IS2RE target: the relaxed structure, relative to the noisy input.
  back = noisy + g.nodes["position_target"]
  diff = noise.minimum_image(back - s.node_arrays["positions_relaxed"],
                             s.cell, s.pbc)
  assert np.abs(diff).max() < 1e-4


def test_is2rs_target_is_delta_minus_noise(emt_folder):
  task, splits = _task(emt_folder, "tiny,is2rs")
  s = splits["train"][2]
  g = task.featurize(s, np.random.default_rng(1), True)
  sigma = g.nodes["positions"].astype(np.float64) - s.positions  # no frames
  assert np.std(sigma) == pytest.approx(0.3, rel=0.25)
  delta = noise.minimum_image(s.node_arrays["positions_relaxed"] -
                              s.positions, s.cell, s.pbc)
  np.testing.assert_allclose(g.nodes["position_target"], delta - sigma,
                             atol=1e-4)


def test_loss_ignores_padding_and_sums_graphs(emt_folder):
  task, splits = _task(emt_folder)
  rng = np.random.default_rng(0)
  graphs = [task.featurize(s, rng, True) for s in splits["train"][:2]]
  budget = batching.Budget(200, 4000, 3)
  model = hk.transform_with_state(task.model)
  batch = batching.pad_graphs(graphs, budget)
  params, state = model.init(jax.random.PRNGKey(0), batch, True)

  @jax.jit
  def loss_fn(b):
    out, _ = model.apply(params, state, None, b, True)
    return task.loss(out, b)[:2]

  def loss(b):
    value, weight = loss_fn(b)
    return float(value), float(weight)

  total, weight = loss(batch)
  assert weight == 2.0
  singles = [loss(batching.pad_graphs([g], budget))[0] for g in graphs]
  assert total == pytest.approx(sum(singles), rel=1e-4)
  # Garbage in the padding slots changes nothing.
  n, g_real = int(batch.n_node[:2].sum()), 2
  junk = batch._replace(
      nodes=dict(batch.nodes, position_target=batch.nodes[
          "position_target"].copy()),
      globals=dict(batch.globals, target=batch.globals["target"].copy()))
  junk.nodes["position_target"][n:] = 1e3
  junk.globals["target"][g_real:] = -1e3
  assert loss(junk)[0] == pytest.approx(total, rel=1e-6)


def test_is2rs_trains_and_scores_adwt(emt_folder, tmp_path):
  c = _config(emt_folder, "tiny,is2rs")
  c.train.num_steps = 3
  final = trainer.train(c, str(tmp_path / "is2rs"))
  for key in ("adwt", "positions_mae", "baseline_adwt", "energy_mae",
              "baseline_energy_mae"):
    assert np.isfinite(final[key]), key
  assert 0.0 <= final["adwt"] <= 1.0
  # The "do not move" baseline, computed directly.
  val = OC20Task(c).load_splits()["val"]
  d = [np.abs(oc20_metrics.min_image_displacement(
      s.positions, s.node_arrays["positions_relaxed"], s.cell, s.pbc)
              )[s.node_arrays["fixed"] == 0] for s in val]
  assert final["baseline_positions_mae"] == pytest.approx(
      np.mean(np.concatenate(d)), rel=1e-9)
  # noisy_nodes.load: the evaluation's energies and relaxed positions from
  # the ase.Atoms of the initial structures (tags and FixAtoms carried).
  model = noisy_nodes.load(str(tmp_path / "is2rs"), "latest")
  atoms = []
  for s in val:
    a = s.to_ase()
    a.set_constraint(FixAtoms(mask=s.node_arrays["fixed"] == 1))
    atoms.append(a)
  pred = model.predict(atoms)
  true = np.array([s.targets["energy_relaxed"] for s in val]).reshape(-1)
  assert np.mean(np.abs(pred["energy"] - true)) == pytest.approx(
      final["energy_mae"], rel=1e-5)
  mine = oc20_metrics.is2rs_metrics(
      pred["node_positions"], [s.node_arrays["positions_relaxed"] for s in val],
      [s.cell for s in val], np.stack([s.pbc for s in val]),
      [s.node_arrays["fixed"] for s in val])
  assert mine["positions_mae"] == pytest.approx(final["positions_mae"],
                                                rel=1e-5)
  atoms[0].calc = model.as_ase_calculator()
  assert atoms[0].get_potential_energy() == pytest.approx(pred["energy"][0])
  # What the OC20 readers refuse (Structure.validate), refused the same way.
  bad = atoms[1].copy()
  bad.positions[2] = np.inf
  with pytest.raises(DataError) as api_error:
    model.predict([atoms[0], bad])
  with pytest.raises(DataError) as reader_error:
    Structure.from_ase(bad, id="items[1]").validate()
  assert str(api_error.value) == str(reader_error.value)
  np.testing.assert_allclose(
      atoms[0].calc.get_property("positions_relaxed", atoms[0]),
      pred["node_positions"][0])


def test_cli_tiny_generates_trains_and_evaluates(tmp_path):
  """The main job's entry point on the tiny EMT set (generated here)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", OMP_NUM_THREADS="1")
  workdir = str(tmp_path / "run")
  cmd = [sys.executable, "-m", "noisy_nodes.train",
         f"--config={ROOT}/configs/oc20.py:tiny", f"--workdir={workdir}",
         f"--config.data.cache_dir={tmp_path}/cache"]
  out = subprocess.run(cmd, env=env, capture_output=True, text=True,
                       timeout=600, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  val = [r for r in rows if r["split"] == "val"]
  assert len(val) == 2 and "baseline_energy_mae" in val[-1]
  assert [r["step"] for r in rows if r["split"] == "train"] == [2, 4, 6]
  ev = subprocess.run([sys.executable, "-m", "noisy_nodes.evaluate",
                       f"--workdir={workdir}", "--checkpoint=latest"],
                      env=env, capture_output=True, text=True, timeout=600,
                      cwd=ROOT)
  assert ev.returncode == 0, ev.stderr[-3000:]
  metrics = json.loads(ev.stdout.strip().splitlines()[-1])
  assert metrics["energy_mae"] == pytest.approx(val[-1]["energy_mae"],
                                                rel=1e-6)


def _fields(s, sid):
  """A Structure as OC20 Data fields (what fairchem's data.lmdb holds)."""
  return {"sid": sid,
          "atomic_numbers": s.atomic_numbers.astype(float),
          "pos": s.positions, "pos_relaxed": s.node_arrays["positions_relaxed"],
          "cell": s.cell[None], "natoms": s.num_atoms,
          "tags": s.node_arrays["tags"], "fixed": s.node_arrays["fixed"],
          "y_init": s.targets["energy_initial"],
          "y_relaxed": s.targets["energy_relaxed"]}


FAIRCHEM_VAL = ("val_id", "val_ood_ads", "val_ood_cat", "val_ood_both")


@pytest.fixture(scope="module")
def fairchem_folder(emt_folder, tmp_path_factory):
  """fairchem's IS2RE layout: train/ and four val_*/ folders of data.lmdb."""
  from noisy_nodes.gns.oc20 import legacy_lmdb, readers
  out = str(tmp_path_factory.mktemp("fairchem"))
  train = readers.read_aselmdb(os.path.join(emt_folder, "train.aselmdb"))
  held = (readers.read_aselmdb(os.path.join(emt_folder, "val.aselmdb")) +
          readers.read_aselmdb(os.path.join(emt_folder, "test.aselmdb")))
  parts = {"train": train, "val_id": held[:1], "val_ood_ads": held[1:2],
           "val_ood_cat": held[2:3], "val_ood_both": held[2:4]}
  for k, (name, items) in enumerate(parts.items()):
    os.makedirs(os.path.join(out, name))
    legacy_lmdb.write_legacy_lmdb_for_tests(
        os.path.join(out, name, "data.lmdb"),
        [_fields(s, 100 * k + i) for i, s in enumerate(items)])
  return out


@pytest.fixture(scope="module")
def fairchem_run(fairchem_folder, tmp_path_factory):
  """A tiny IS2RS run on the fairchem layout: (config, workdir, final)."""
  c = _config(fairchem_folder, "tiny,is2rs")
  c.train.update(num_steps=4, eval_every=2, log_every=2)
  workdir = str(tmp_path_factory.mktemp("fairchem_run"))
  return c, workdir, trainer.train(c, workdir)


def test_fairchem_layout_evaluates_each_split_and_average(fairchem_folder,
                                                          fairchem_run,
                                                          tmp_path):
  splits = OC20Task(_config(fairchem_folder)).load_splits()
  assert {k: len(v) for k, v in splits.items()} == {
      "train": 6, "val_id": 1, "val_ood_ads": 1, "val_ood_cat": 1,
      "val_ood_both": 2}
  c, workdir, final = fairchem_run
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f if '"train"' not in l]
  # Per evaluation: one row per validation split, then their average.
  assert [r["split"] for r in rows] == 2 * (sorted(FAIRCHEM_VAL) + ["val"])
  last = {r["split"]: r for r in rows[-5:]}
  for key in ("adwt", "positions_mae", "energy_mae"):
    want = np.mean([last[n][key] for n in FAIRCHEM_VAL])
    assert last["val"][key] == pytest.approx(want, rel=1e-9)
    assert final[key] == pytest.approx(want, rel=1e-9)
  assert last["val"]["num_structures"] == 5
  # Best checkpoint: selected on the average ADwT (IS2RS default).
  best = max(rows[4::5], key=lambda r: r["adwt"])
  got = noisy_nodes.load(workdir, "best").evaluate("val")
  assert got["step"] == best["step"]
  assert got["adwt"] == pytest.approx(best["adwt"], rel=1e-6)
  assert sorted(got["per_split"]) == sorted(FAIRCHEM_VAL)
  # --split=all on one LMDB scores all of it (no 80/10/10 re-split).
  one = os.path.join(fairchem_folder, "train", "data.lmdb")
  whole = noisy_nodes.load(workdir, "latest").evaluate(
      "all", overrides={"data.path": one})
  assert whole["num_structures"] == 6 and whole["split"] == "all"
  with pytest.raises(ValueError, match="select_split"):
    c = ml_collections.ConfigDict(c.to_dict())
    c.train.select_split = "val_nope"
    trainer.train(c, str(tmp_path / "bad"))


def test_submission_file_round_trips(fairchem_run, tmp_path):
  from noisy_nodes.gns.oc20 import submission  # pylint: disable=g-import-not-at-top
  _, workdir, _ = fairchem_run
  out = str(tmp_path / "is2rs.npz")
  # The server's file for the val_* splits (a test_* layout is the same).
  # Through the task's hook, as ``noisy_nodes.evaluate --submission`` does.
  counts = noisy_nodes.api.write_submission(workdir, out, prefix="val")
  assert counts == {"id": 1, "ood_ads": 1, "ood_cat": 1, "ood_both": 2}
  with np.load(out) as f:
    assert sorted(f.files) == sorted(
        f"{s}_{k}" for s in submission.SPLITS
        for k in ("ids", "pos", "chunk_idx"))
  got = submission.read_submission(out)
  model = noisy_nodes.load(workdir, "best")
  for split in submission.SPLITS:
    structures = model.dataset(f"val_{split}")
    assert list(got[split]["ids"]) == sorted(s.id for s in structures)
    want = dict(zip([s.id for s in structures],
                    model.predict(structures)["node_positions"]))
    assert len(got[split]["positions"]) == len(want)
    for i, a in zip(got[split]["ids"], got[split]["positions"]):
      np.testing.assert_allclose(a, want[i], rtol=1e-6, atol=1e-6)
  # IS2RE layout through the writer, in fairchem's sorted id (string)
  # order; a missing split or a repeated id is refused.
  per = {s: {"ids": ["8", "10", "7"], "energy": [0.5, -1.25, 2.0]}
         for s in submission.SPLITS}
  submission.write_submission(str(tmp_path / "is2re.npz"), "is2re", per)
  back = submission.read_submission(str(tmp_path / "is2re.npz"))
  assert list(back["ood_cat"]["ids"]) == ["10", "7", "8"]
  np.testing.assert_array_equal(back["ood_cat"]["energy"], [-1.25, 2.0, 0.5])
  per["id"] = {"ids": ["7", "7"], "energy": [0.0, 1.0]}
  with pytest.raises(ValueError, match="repeated"):
    submission.write_submission(str(tmp_path / "x.npz"), "is2re", per)
  per["id"] = per["ood_cat"]
  del per["ood_both"]
  with pytest.raises(ValueError, match="ood_both"):
    submission.write_submission(str(tmp_path / "x.npz"), "is2re", per)


def test_mad_analysis_writes_json_and_plot(fairchem_run):
  _, workdir, _ = fairchem_run
  # ``noisy_nodes.evaluate --analysis=mad`` finds it among the task's hooks.
  with pytest.raises(errors.ConfigError, match=r"analyses \['mad'\]"):
    noisy_nodes.api.analyze(workdir, "nope")
  paths = noisy_nodes.api.analyze(workdir, "mad", "val_ood_both", "latest")
  result = json.load(open(paths["json"]))
  assert len(result["latents"]) == 1 + 2 * 2  # encoder + N x M steps
  assert len(result["updates"]) == 2 * 2 and result["num_graphs"] == 2
  assert all(0.0 <= v <= 2.0 for v in result["latents"] + result["updates"])
  assert os.path.getsize(paths["png"]) > 1000


def test_stats_sample_and_a_missing_target_outside_it(emt_folder, tmp_path):
  """data.stats_sample: mean/std of a seeded sample; a training record
  without its target that the sample missed stops the stream naming it
  (never a made-up 0), and skip_invalid skips and reports it."""
  from noisy_nodes.data import sources
  from noisy_nodes.gns.oc20 import legacy_lmdb, readers
  train = readers.read_aselmdb(os.path.join(emt_folder, "train.aselmdb"))
  rng = np.random.default_rng(0)
  fields = []
  for i in range(40):
    f = _fields(train[i % len(train)], 1000 + i)
    f["y_relaxed"] = float(rng.normal(-1.0, 0.7))
    fields.append(f)
  idx = sources.sample_indices(40, 12, seed=0)
  assert len(idx) == 12 and np.all(np.diff(idx) > 0)
  assert np.array_equal(sources.sample_indices(40, 0), np.arange(40))
  bad = int(next(i for i in range(40) if i not in set(idx.tolist())))
  del fields[bad]["y_relaxed"]
  os.makedirs(tmp_path / "train")
  legacy_lmdb.write_legacy_lmdb_for_tests(str(tmp_path / "train/data.lmdb"),
                                          fields)
  os.makedirs(tmp_path / "val_id")
  legacy_lmdb.write_legacy_lmdb_for_tests(str(tmp_path / "val_id/data.lmdb"),
                                          fields[:bad][:2])
  c = _config(str(tmp_path))
  c.data.stats_sample = 12
  task = OC20Task(c)
  splits = task.load_splits()
  task.setup(splits["train"])
  ys = np.array([fields[i]["y_relaxed"] for i in idx])
  assert task.mean == pytest.approx(ys.mean(), rel=1e-9)
  assert task.std == pytest.approx(ys.std(), rel=1e-9)
  task.featurize(splits["train"][int(idx[0])], np.random.default_rng(0),
                 True)
  with pytest.raises(DataError, match=rf"data.lmdb\[{bad}\].*{1000 + bad} has no 'energy_relaxed'"):
    task.featurize(splits["train"][bad], np.random.default_rng(0), True)
  c.data.skip_invalid = True
  task = OC20Task(c)
  splits = task.load_splits()
  assert len(splits["train"]) == 39
  assert [l for l in task.skipped if f"data.lmdb[{bad}]" in l and "target" in l]
