"""CrysGNN engine tasks: pre-training through the engine, a frozen teacher
during distillation, the teacher's own graph rebuilt on device, projection
only for differing widths, fine-tuning initialisation, every wired student
distilling; the configs carry the reference's settings and benchmark-shape
folders (MP-2018: CGCNN id_prop.csv + CIF, absolute split sizes; JARVIS:
ALIGNN id_prop.csv + POSCAR, fractions) load through the shared data layer."""
import ast
import glob
import hashlib
import json
import math
import os

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

import noisy_nodes  # noqa: F401
from noisy_nodes.data import batching
from noisy_nodes.engine import trainer
from noisy_nodes.data.structures import DataError
from crystal import datasets
from crystal import tasks as crystal_tasks
from crystal.crysgnn import distill
from crystal.crysgnn import losses
from crystal.crysgnn import tasks



from configs import crysgnn_distill
from configs import crysgnn_pretrain


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("crysgnn")
  cfg = crysgnn_pretrain.get_config("tiny")
  cfg.data.cache_dir = str(root / "cache")
  workdir = str(root / "teacher")
  trainer.train(cfg, workdir)
  return workdir


def _rows(workdir, split):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["split"] == split]


def _distill_config(root, **model):
  """The tiny distillation config; a ``name`` replaces the student (on the
  DeeperGATGNN reference graph, so the teacher sees its own graph)."""
  cfg = crysgnn_distill.get_config("tiny")
  cfg.data.cache_dir = str(root)
  if "name" in model:
    cfg.model = model
    cfg.data.graph = {}
  else:
    cfg.model.update(model)
  return cfg


def test_pretrain_engine_steps_and_host_metrics(teacher_dir):
  names = ("loss_feature", "loss_connectivity", "loss_space_group",
           "loss_contrastive")
  train = _rows(teacher_dir, "train")
  assert [r["step"] for r in train] == [3, 6]
  for r in train:
    assert all(np.isfinite(r[k]) and r[k] > 0 for k in names + ("loss",))
    # Eq. 2 with the 0.25 weights.
    np.testing.assert_allclose(r["loss"], 0.25 * sum(r[k] for k in names),
                               rtol=1e-5)
  # The host metrics on val equal the jitted loss on one batch holding the
  # whole validation split (NT-Xent: one chunk, same pairs).
  exp, ts, _, budget, _ = trainer.restore_run(teacher_dir, "latest")
  graphs = exp.graphs("val")
  assert 1 < len(graphs) <= budget.max_graphs
  host = exp.evaluate(ts.params, ts.state, "val", budget)
  batch = batching.pad_graphs(graphs, budget)
  apply = exp.transformed().apply
  out, _ = apply(ts.params, ts.state, None, batch, is_training=False)
  total, weight, metrics = losses.crysgnn_pretrain_loss(out, batch)
  for k in names:
    np.testing.assert_allclose(host[k], float(metrics[k] / weight), rtol=1e-4)
  np.testing.assert_allclose(host["loss"], float(total / weight), rtol=1e-4)
  # noisy_nodes.load on the teacher: the model's embeddings, no property.
  preds = exp.predict(ts.params, ts.state, "val", budget)
  model = noisy_nodes.load(teacher_dir, "latest")
  emb = model.embed(exp.splits["val"])
  np.testing.assert_allclose(emb["graph_embedding"],
                             np.stack(preds["crystal_embedding"]),
                             rtol=1e-5, atol=1e-6)
  assert [e.shape[0] for e in emb["node_embedding"]] == [
      s.num_atoms for s in exp.splits["val"]]
  with pytest.raises(ValueError, match="Predictor.embed"):
    model.predict(exp.splits["val"])
  # The engine logged the same numbers at its last evaluation (step 6).
  val = _rows(teacher_dir, "val")[-1]
  assert val["step"] == 6
  for k in names + ("loss", "space_group_accuracy"):
    np.testing.assert_allclose(val[k], host[k], rtol=1e-5)


def _snapshot(tree):
  return jax.tree_util.tree_map(np.array, tree)


def _hash_dir(path):
  h = hashlib.sha256()
  for f in sorted(glob.glob(os.path.join(path, "**"), recursive=True)):
    if os.path.isfile(f) and not f.endswith("metrics.jsonl"):
      h.update(f.encode())
      with open(f, "rb") as fh:
        h.update(fh.read())
  return h.hexdigest()


def _checkpoint_tree(workdir, step):
  with open(os.path.join(workdir, "checkpoints", str(step), "state",
                         "_METADATA")) as f:
    keys = json.load(f)["tree_metadata"]
  out = {}
  for k, v in keys.items():
    out[ast.literal_eval(k)] = tuple(v["value_metadata"].get("write_shape",
                                                            ()))
  return out


def test_distillation_keeps_teacher_frozen(teacher_dir, tmp_path):
  cfg = _distill_config(tmp_path)
  cfg.teacher.workdir = teacher_dir
  teacher = distill.load_teacher(teacher_dir)
  before = _snapshot((teacher.params, teacher.state))
  disk = _hash_dir(teacher_dir)
  # Real running statistics (pre-training moved them off zeros/ones).
  bn = [v for m, v in teacher.state.items() if "mean" in v]
  assert bn and any(np.abs(v["mean"]).max() > 1e-3 for v in bn)
  result = trainer.train(cfg, str(tmp_path / "student"))
  assert np.isfinite(result["mae"]) and np.isfinite(result["loss_kd"])
  after = (teacher.params, teacher.state)
  jax.tree_util.tree_map(np.testing.assert_array_equal, before, after)
  assert _hash_dir(teacher_dir) == disk
  # The student's checkpoint holds the student only: params are exactly those
  # of the plain student (same width: no projection), nothing of the teacher.
  tree = _checkpoint_tree(str(tmp_path / "student"), 4)
  params = {p[1:] for p in tree if p[0] == "params"}
  modules = {p[0] for p in params}
  assert all(m.startswith("original_cgcnn/") for m in modules), modules
  assert not any("crysgnn" in "/".join(p) for p in tree)
  n_student = sum(int(np.prod(tree[("params",) + p])) for p in params)
  n_teacher = sum(v.size for v in jax.tree_util.tree_leaves(teacher.params))
  assert n_student != n_teacher
  train = _rows(str(tmp_path / "student"), "train")
  assert all(np.isfinite(r["loss_kd"]) and r["loss_kd"] > 0 for r in train)
  # noisy_nodes.load on the student: its property, as evaluation scored it.
  student = noisy_nodes.load(str(tmp_path / "student"))
  val = student.dataset("val")
  pred = student.predict([s.to_ase() for s in val])
  assert sorted(pred) == ["target"]
  true = np.stack([np.atleast_1d(s.targets["target"]) for s in val])
  assert np.mean(np.abs(pred["target"] - true)) == pytest.approx(
      student.evaluate("val")["mae"], rel=1e-5)


def _task_and_batch(cfg):
  task = tasks.CrysGNNDistillTask(cfg)
  splits = task.load_splits()
  task.setup(splits["train"])
  structures = splits["train"][:3]
  graphs = [task.featurize(s, None, False) for s in structures]
  budget = batching.Budget(64, 1024, 4)
  return task, structures, batching.pad_graphs(graphs, budget), budget


def test_teacher_view_and_projection_only_when_widths_differ(teacher_dir,
                                                             tmp_path):
  cfg = _distill_config(tmp_path, name="gatgnn", dim=8, num_layers=2,
                        heads=2)
  cfg.teacher.workdir = teacher_dir
  task, structures, batch, budget = _task_and_batch(cfg)
  assert not task.shares_teacher_graph()
  assert task.teacher.dim == 16
  model = hk.transform_with_state(task.model)
  params, state = model.init(jax.random.PRNGKey(0), batch, True)
  proj = [m for m in params if "kd_projection" in m]
  assert len(proj) == 1 and params[proj[0]]["w"].shape == (8, 16)
  out, _ = model.apply(params, state, None, batch, is_training=True)
  # Z^T from the rebuilt teacher graph == the teacher on its own featurised
  # batch (same atoms, its own edges and features).
  own = batching.pad_graphs(
      [task.teacher.featurizer(s) for s in structures], budget)
  t_out, _ = task.teacher.apply(task.teacher.params, task.teacher.state, None,
                                own, is_training=False)
  h = np.asarray(t_out["node_embedding"], np.float64)
  n = sum(s.num_atoms for s in structures)
  z = h[:n] / np.linalg.norm(h[:n], axis=1, keepdims=True)
  np.testing.assert_allclose(np.asarray(out["teacher_embedding"])[:n], z,
                             atol=2e-5)
  assert np.all(np.asarray(out["teacher_embedding"])[n:] == 0)
  # Eq. 3 against numpy: δ·MSE(normalised target) + (1-δ)·MSE(Z^S, Z^T).
  loss, weight, metrics = task.loss(out, batch)
  zs = np.asarray(out["kd_embedding"])[:n]
  sq = (zs - z) ** 2
  bounds = np.cumsum([0] + [s.num_atoms for s in structures])
  kd = np.mean([sq[a:b].mean() for a, b in zip(bounds[:-1], bounds[1:])])
  g = len(structures)
  y = (np.asarray(batch.globals["target"])[:g] - task.target_mean) / (
      task.target_std)
  prop = np.mean((np.asarray(out["graph"])[:g] - y) ** 2)
  assert float(weight) == g
  np.testing.assert_allclose(float(loss / weight), 0.5 * prop + 0.5 * kd,
                             rtol=1e-4)
  np.testing.assert_allclose(float(metrics["loss_kd"] / weight), kd,
                             rtol=1e-4)
  # Same width: no projection parameters at all.
  cfg16 = _distill_config(tmp_path, name="gatgnn", dim=16, num_layers=2,
                          heads=2)
  cfg16.teacher.workdir = teacher_dir
  task16, _, batch16, _ = _task_and_batch(cfg16)
  shapes = jax.eval_shape(
      lambda b: hk.transform_with_state(task16.model).init(
          jax.random.PRNGKey(0), b, True), batch16)[0]
  assert not any("kd_projection" in m for m in shapes)


def test_finetune_init_equals_teacher(teacher_dir, tmp_path):
  cfg = _distill_config(tmp_path)
  cfg.teacher.workdir = teacher_dir
  teacher_model = json.load(open(os.path.join(teacher_dir, "config.json")))
  cfg.model = dict(teacher_model["model"], head=True)
  cfg.init_from_teacher = True
  cfg.distill.delta = 1.0
  task, _, batch, _ = _task_and_batch(cfg)
  assert task.shares_teacher_graph()
  assert not any(k.startswith("teacher_") for k in batch.nodes)
  params, state = hk.transform_with_state(task.model).init(
      jax.random.PRNGKey(1), batch, True)
  new_params, new_state = task.init_params(params, state)
  encoder = [m for m in new_params if "/head/" not in m]
  assert len(encoder) >= 3
  for m in encoder:
    for k, v in new_params[m].items():
      np.testing.assert_array_equal(v, task.teacher.params[m][k])
  for m in new_state:
    for k, v in new_state[m].items():
      np.testing.assert_array_equal(v, task.teacher.state[m][k])
  heads = [m for m in new_params if "/head/" in m]
  assert heads and all(new_params[m]["w"] is params[m]["w"] for m in heads)
  # A student whose encoder differs cannot be initialised from the teacher.
  cfg2 = _distill_config(tmp_path)
  cfg2.teacher.workdir = teacher_dir
  cfg2.init_from_teacher = True
  task2, _, batch2, _ = _task_and_batch(cfg2)
  shapes = jax.eval_shape(
      lambda b: hk.transform_with_state(task2.model).init(
          jax.random.PRNGKey(0), b, True), batch2)
  with pytest.raises(ValueError, match="init_from_teacher"):
    task2.init_params(*shapes)


def test_bad_teacher_and_bad_pretrain_features(tmp_path):
  cfg = _distill_config(tmp_path)
  with pytest.raises(ValueError, match="teacher.workdir"):
    tasks.CrysGNNDistillTask(cfg)
  cfg.teacher.workdir = str(tmp_path / "nothing")
  with pytest.raises(DataError, match="config.json"):
    tasks.CrysGNNDistillTask(cfg)
  pcfg = crysgnn_pretrain.get_config("tiny")
  pcfg.data.graph.node_features = "onehot"
  with pytest.raises(ValueError, match="92-d CGCNN"):
    tasks.CrysGNNPretrainTask(pcfg)


# Every wired student distils: (model config, graph) at test sizes.
STUDENTS = {
    "cgcnn": dict(name="cgcnn", dim=16, num_layers=2, post_fc_layers=1),
    "gatgnn": dict(name="gatgnn", dim=16, num_layers=2, heads=2),
    "deeper_gatgnn": dict(name="gatgnn", dim=16, num_layers=3, heads=2,
                          deeper=True),
    "schnet": dict(name="schnet", dim=16, num_layers=2, post_fc_layers=1),
    "mpnn": dict(name="mpnn", dim=16, num_layers=2, post_fc_layers=1),
    "megnet": dict(name="megnet", dim=16, num_layers=2, post_fc_layers=1),
    "gns": dict(name="gns", latent_size=16, mlp_layers=1,
                num_message_passing_steps=2, num_basis=8, use_tags=False),
}


@pytest.fixture(scope="module")
def student_cache(tmp_path_factory):
  return tmp_path_factory.mktemp("students")


@pytest.mark.parametrize("student", sorted(STUDENTS))
def test_every_student_distils(student, teacher_dir, student_cache):
  """A few Adam steps on one batch: L_KD falls; the teacher's params and
  BatchNorm statistics are the same arrays, unchanged, and never in the
  student's params or state."""
  import optax  # pylint: disable=g-import-not-at-top
  cfg = _distill_config(student_cache, **STUDENTS[student])
  cfg.teacher.workdir = teacher_dir
  cfg.distill.delta = 0.0       # L_KD alone, so its fall is the signal.
  task, _, batch, _ = _task_and_batch(cfg)
  teacher = task.teacher
  before = _snapshot((teacher.params, teacher.state))
  model = hk.transform_with_state(task.model)
  # Jitted: eager init of a scanned stack costs more than compiling it.
  params, state = jax.jit(lambda b: model.init(jax.random.PRNGKey(0), b,
                                               True))(batch)
  assert not set(params) & set(teacher.params)
  assert not set(state) & set(teacher.state)
  opt = optax.adam(1e-2)

  def kd(params, state):
    out, new_state = model.apply(params, state, jax.random.PRNGKey(1), batch,
                                 is_training=True)
    loss, weight, metrics = task.loss(out, batch)
    return loss / weight, (metrics["loss_kd"] / weight, new_state)

  @jax.jit
  def step(params, state, opt_state):
    (_, (loss_kd, state)), grads = jax.value_and_grad(kd, has_aux=True)(
        params, state)
    updates, opt_state = opt.update(grads, opt_state)
    return optax.apply_updates(params, updates), state, opt_state, loss_kd

  opt_state = opt.init(params)
  history = []
  # The reference's plain MEGNet (no skip inside φ, zeros(3) global input)
  # distils more slowly than the others at width 16.
  for _ in range(20 if student == "megnet" else 10):
    params, state, opt_state, loss_kd = step(params, state, opt_state)
    history.append(float(loss_kd))
  assert np.all(np.isfinite(history))
  assert history[-1] < 0.7 * history[0], history
  jax.tree_util.tree_map(np.testing.assert_array_equal, before,
                         (teacher.params, teacher.state))


def test_defaults_are_the_reference_settings():
  p = crysgnn_pretrain.get_config()
  assert p.model.name == "original_cgcnn" and p.model.num_layers == 5
  assert not p.model.input_bias and p.model.dim == 64
  assert (p.optim.optimizer, p.optim.lr, p.optim.clip_norm) == ("adam", 0.03,
                                                                0.0)
  assert p.batch.max_graphs == 128 and not p.batch.max_nodes
  assert p.train.num_steps == 20 * math.ceil(47500 / 128)
  assert dict(p.loss.weights) == dict(feature=0.25, connectivity=0.25,
                                      space_group=0.25, contrastive=0.25)
  assert p.loss.temperature == 0.07
  d = crysgnn_distill.get_config()
  assert (d.model.name, d.model.num_layers, d.model.dim) == (
      "original_cgcnn", 3, 64)
  assert (d.optim.lr, d.optim.schedule, d.optim.decay_factor) == (
      3e-3, "piecewise", 0.1)
  assert d.distill.delta == 0.5 and d.batch.max_graphs == 128
  per_epoch = math.ceil(1600 / 128)
  assert d.train.num_steps == 1000 * per_epoch
  assert tuple(d.optim.decay_steps) == (100 * per_epoch,)
  mp = crysgnn_distill.get_config("mp2018")
  assert tuple(mp.data.split_sizes) == (60000, 5000, 4239)
  assert mp.train.num_steps == 1000 * 469
  assert tuple(mp.optim.decay_steps) == (46900,)
  lib = crysgnn_pretrain.get_config("library")
  assert lib.model.name == "cgcnn" and lib.optim.lr == 1e-3
  assert crysgnn_distill.get_config("library").model.name == "gatgnn"


def test_absolute_split_sizes():
  tr, va, te = datasets.holdout_split(100, seed=2, sizes=(60, 5, 4))
  assert (len(tr), len(va), len(te)) == (60, 5, 4)
  assert len(set(np.concatenate([tr, va, te]).tolist())) == 69
  again = datasets.holdout_split(100, seed=2, sizes=(60, 5, 4))
  assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), again))
  # The same permutation as the fractions: sizes only move the cut points.
  frac = datasets.holdout_split(100, seed=2, fractions=(0.6, 0.05, 0.35))
  assert np.array_equal(frac[0], tr) and np.array_equal(frac[1], va)
  with pytest.raises(ValueError, match="need 70 samples"):
    datasets.holdout_split(69, seed=2, sizes=(60, 5, 5))


def _write_folder(root, kind, n=12):
  from ase.io import write  # pylint: disable=g-import-not-at-top
  os.makedirs(root)
  rows = []
  for i in range(n):
    atoms = bulk("Cu", "fcc", a=3.5 + 0.02 * i)
    name = f"m{i}.cif" if kind == "cgcnn" else f"POSCAR-m{i}"
    write(os.path.join(root, name), atoms,
          format="cif" if kind == "cgcnn" else "vasp")
    rows.append(f"{name[:-4] if kind == 'cgcnn' else name},{-0.1 * i:.3f}")
  with open(os.path.join(root, "id_prop.csv"), "w") as f:
    f.write("\n".join(rows) + "\n")


@pytest.mark.parametrize("variant", ["mp2018", "jarvis"])
def test_benchmark_shape_folders(variant, tmp_path):
  kind = "cgcnn" if variant == "mp2018" else "alignn"
  root = str(tmp_path / kind)
  _write_folder(root, kind)
  cfg = crysgnn_distill.get_config(variant)
  cfg.data.path = root
  cfg.data.cache_dir = str(tmp_path / "cache")
  cfg.data.graph_cache = False
  if variant == "mp2018":
    cfg.data.split_sizes = (8, 2, 2)
  task = crystal_tasks.CrystalPropertyTask(cfg)
  splits = task.load_splits()
  sizes = tuple(len(splits[k]) for k in ("train", "val", "test"))
  assert sizes == ((8, 2, 2) if variant == "mp2018" else (9, 1, 2))
  ids = {s.id for v in splits.values() for s in v}
  assert len(ids) == 12
  if variant == "mp2018":
    cfg.data.split_sizes = (60000, 5000, 4239)
    with pytest.raises(DataError, match="69239"):
      crystal_tasks.CrystalPropertyTask(cfg).load_splits()


def test_unreadable_input_file_is_an_error_or_skipped(tmp_path):
  """A structure file of data.path the corpus cannot use names the file
  (exit 2 through the CLI), or is skipped and listed under skip_invalid."""
  import ase.io  # pylint: disable=g-import-not-at-top
  d = tmp_path / "inputs"
  d.mkdir()
  ase.io.write(str(d / "nacl.cif"), bulk("NaCl", "rocksalt", a=5.64))
  ase.io.write(str(d / "cu.cif"), bulk("Cu", "fcc", a=3.6))
  (d / "broken.cif").write_text("data_x\n_cell_length_a oops\n")
  cfg = crysgnn_pretrain.get_config("tiny")
  cfg.data.update(path=str(d), cache_dir=str(tmp_path / "cache"))
  # Nothing generated (extra=0); the mix only decides what is preloaded.
  cfg.data.corpus.update(extra=0, workers=1, mix=(0, 0, 1, 0))
  with pytest.raises(DataError, match=r"broken\.cif: .*skip_invalid"):
    tasks.CrysGNNPretrainTask(cfg).corpus()
  cfg.data.skip_invalid = True
  task = tasks.CrysGNNPretrainTask(cfg)
  assert len(task.corpus()) == 2
  assert len(task.skipped) == 1 and "broken.cif" in task.skipped[0]


def test_large_crystal_trains_through_a_step(tmp_path):
  """No size cap: a 100-atom crystal of data.path is kept and trains (its
  class-0 pairs sampled, tiny's loss.background_pairs = 8)."""
  import ase.io  # pylint: disable=g-import-not-at-top
  d = tmp_path / "inputs"
  d.mkdir()
  ase.io.write(str(d / "nacl.cif"), bulk("NaCl", "rocksalt", a=5.64))
  ase.io.write(str(d / "cu.cif"), bulk("Cu", "fcc", a=3.6))
  big = bulk("Cu", "fcc", a=3.6, cubic=True) * (5, 5, 1)
  big.rattle(0.05, seed=0)
  ase.io.write(str(d / "cu100.cif"), big)
  cfg = crysgnn_pretrain.get_config("tiny")
  cfg.data.update(path=str(d), cache_dir=str(tmp_path / "cache"), seed=1)
  cfg.data.corpus.update(extra=0, workers=1, mix=(0, 0, 1, 0))
  cfg.batch.update(max_nodes=128, max_edges=2048, max_graphs=4)
  cfg.train.update(num_steps=1, log_every=1, eval_every=1, checkpoint_every=1)
  workdir = str(tmp_path / "run")
  trainer.train(cfg, workdir)
  exp, _, _, _, _ = trainer.restore_run(workdir, "latest")
  assert [s.num_atoms for s in exp.splits["train"]].count(100) == 1
  (row,) = _rows(workdir, "train")
  assert row["step"] == 1 and np.isfinite(row["loss_connectivity"])
  assert row["loss_connectivity"] > 0
  # Shards store its graphs compact (no Gaussians, no 92-d features): read
  # back they equal the featurised graph bit for bit.
  s = next(x for x in exp.splits["train"] if x.num_atoms == 100)
  full = exp.task.featurize(s, None, False)
  stored = exp.task.compact_graph(full)
  assert "features" not in stored.edges and "features" not in stored.nodes
  back = exp.task.expand_graph(stored)
  assert sorted(back.nodes) == sorted(full.nodes)
  for part in ("nodes", "edges", "globals"):
    for k, v in getattr(full, part).items():
      np.testing.assert_array_equal(getattr(back, part)[k], v, err_msg=k)
