"""Crystal tasks for the one training engine (``config.task``).

``CrystalPropertyTask`` ("crystal"): graph-level property regression with
DeeperGATGNN or a (deeper) baseline, as in the DeeperGATGNN reference
(MatDeepLearn):

  data     a dataset folder (MatDeepLearn / CGCNN / ALIGNN layout, a
           ``crystal.io.FolderSource``: indexed, each file parsed when
           read; ``data.format='db'``: ``read_dataset_folder``) or, when
           ``data.path`` is empty, a generated EMT dataset (``crystal.generators``) made once
           and cached as npz under ``data.cache_dir``;
  splits   hold-out 0.8 / 0.05 / 0.15 of a seeded permutation (or absolute
           counts ``data.split_sizes = (train, val, test)``), or k-fold
           cross-validation (``data.cv_folds = k``, ``data.fold = i``): test
           = fold i, train = all the other folds and no validation set, the
           last epoch's model kept (the reference); with
           ``data.cv_val_fraction > 0`` a seeded slice of that fraction of
           the training folds is held out for validation and the best
           checkpoint is kept (a deviation; it never sees the test fold).
  features ``crystal.features.CrystalFeaturizer(data.graph)``; its min-max
           distance range is fitted on the training split and saved in the
           checkpoint (``state_dict``), so prediction on new files
           reproduces it. Graphs are cached on disk (``load_or_build``).
  targets  every column of ``targets['target']`` [T]; optional
           normalisation (reference: none) with mean/std in the checkpoint.
  loss     L1 (reference) or MSE on normalised targets, real graphs only;
           metrics MAE, MSE and R^2 in target units.
  outputs  once training ends (``noisy_nodes.train``, each CV fold):
           predictions_<split>.csv, parity_<split>.png and
           metrics_<split>.json in the workdir (``crystal.outputs``);
           ``train.write_outputs=False`` skips them.

Epochs: with ``train.epochs > 0`` the run length is ``epochs`` x
ceil(n_train / batch.max_graphs) steps ("epoch-equivalents": dynamic batches
hold at most ``max_graphs`` graphs), and ``train.eval_every <= 0`` evaluates
(and steps the plateau schedule) once per epoch-equivalent, as the
reference does. ``setup`` writes these resolved values into the config.

CrysGNN tasks (pre-training, distillation): ``crystal.crysgnn.tasks``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import jax.numpy as jnp
import numpy as np

import jraph

from noisy_nodes.data.sources import (ListSource, Mapped, Source, Subset,
                                      validated)
from noisy_nodes.data.structures import (DataError, Structure, load_structures,
                                    save_structures)
from noisy_nodes import models as models_lib
from noisy_nodes.models import plain
from noisy_nodes.tasks.base import Task

from crystal import datasets
from crystal import features as features_lib
from crystal.metrics import r2_score, regression_metrics  # noqa: F401

TARGET = "target"          # Structure.targets key and prediction key.
_GENERATED_KINDS = ("pt_clusters", "pt10", "surfaces")


# -- data ----------------------------------------------------------------------------
def generated_dataset(gen: Mapping[str, Any], cache_dir: str
                      ) -> List[Structure]:
  """An EMT-labelled dataset from ``crystal.generators``, cached as npz.

  Args:
    gen: ``kind`` ("pt_clusters": relaxed/perturbed Pt clusters of
      ``min_atoms``..``max_atoms`` atoms (``mode``); "pt10": 10-atom Pt
      clusters with single-point energies, ~4 ms each; "surfaces": alloy
      slabs with adsorbates), ``n``, ``seed``, ``workers``.
    cache_dir: folder of the cache; the file name holds the settings, so a
      different request never reads a stale file.
  """
  gen = dict(gen)
  kind = gen.get("kind", "pt_clusters")
  if kind not in _GENERATED_KINDS:
    raise DataError("data.generate", f"unknown kind {kind!r}; use one of "
                    f"{_GENERATED_KINDS}")
  n, seed = int(gen.get("n", 0)), int(gen.get("seed", 0))
  if n < 1:
    raise DataError("data.generate", f"n must be >= 1, got {n}")
  settings = {"kind": kind, "n": n, "seed": seed}
  if kind == "pt_clusters":
    settings.update(mode=gen.get("mode", "both"),
                    sizes=[int(gen.get("min_atoms", 5)),
                           int(gen.get("max_atoms", 40))])
  key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()
                       ).hexdigest()[:12]
  path = os.path.join(cache_dir, f"{kind}_{n}_seed{seed}_{key}.npz")
  if os.path.exists(path):
    return load_structures(path)
  from crystal import generators  # pylint: disable=g-import-not-at-top
  logging.info("generating %d %s samples (once; cached in %s)", n, kind, path)
  workers = int(gen.get("workers", 0))
  if kind == "pt10":
    structures = generators.pt10_clusters(n, seed)
  elif kind == "pt_clusters":
    structures = generators.generate(kind, n, seed, workers,
                                     mode=settings["mode"],
                                     sizes=tuple(settings["sizes"]))
  else:
    structures = generators.generate(kind, n, seed, workers)
  os.makedirs(cache_dir, exist_ok=True)
  save_structures(path, structures)
  return structures


def split_indices(n: int, data) -> Dict[str, np.ndarray]:
  """Index arrays of train/val/test for ``n`` samples (module docstring)."""
  seed = int(data.get("seed", 0))
  k = int(data.get("cv_folds", 0) or 0)
  if k > 1:
    fold = int(data.get("fold", 0))
    if not 0 <= fold < k:
      raise DataError("data.fold", f"fold {fold} outside 0..{k - 1}")
    if n < k:
      raise DataError("dataset", f"{n} samples cannot make {k} folds")
    train, test = datasets.kfold_splits(n, k, seed)[fold]
    frac = float(data.get("cv_val_fraction", 0.0))
    # Reference: no validation set (0); otherwise at least one sample.
    n_val = max(1, int(round(frac * len(train)))) if frac > 0 else 0
    # Seeded per fold, so every fold's validation slice differs.
    perm = np.random.default_rng([seed, fold]).permutation(train)
    return {"train": np.sort(perm[n_val:]), "val": np.sort(perm[:n_val]),
            "test": test}
  try:
    train, val, test = datasets.holdout_split(
        n, seed, tuple(data.split), tuple(data.get("split_sizes", ()) or ()))
  except ValueError as e:
    raise DataError("data.split_sizes", str(e)) from None
  return {"train": train, "val": val, "test": test}


def featurizer_config(graph_cfg) -> features_lib.FeaturizerConfig:
  """``data.graph`` -> ``FeaturizerConfig`` (reference graph when empty).

  ``max_neighbors = 0`` means no limit (ConfigDict fields cannot hold None
  and still be overridden from the command line).
  """
  items = plain(graph_cfg)
  if not items:
    return features_lib.reference_config()
  if items.get("max_neighbors", None) == 0:
    items["max_neighbors"] = None
  return features_lib.FeaturizerConfig(**items)


# -- the task ---------------------------------------------------------------------------
class CrystalPropertyTask(Task):
  """Graph-level regression of ``targets['target']`` (module docstring)."""

  selection_metric = "mae"
  randomized_features = False

  def __init__(self, config):
    super().__init__(config)
    self.featurizer = features_lib.CrystalFeaturizer(
        featurizer_config(config.data.get("graph", None)))
    self.num_targets: Optional[int] = None
    self.target_mean = np.zeros(1)
    self.target_std = np.ones(1)
    self.output_bias: Optional[np.ndarray] = None   # set by setup()
    self.mean_predictor: Optional[np.ndarray] = None
    self.loss_kind = str(config.train.get("loss", "l1")).lower()
    if self.loss_kind not in ("l1", "mse"):
      raise ValueError(f"train.loss must be 'l1' or 'mse', got "
                       f"{self.loss_kind!r}")
    self._cached: Dict[int, tuple] = {}
    self._all: Source = ListSource([])

  # -- data --------------------------------------------------------------------------
  def dataset(self) -> Source:
    """Every labelled structure of ``data.path`` (or the generated set).

    A folder is a ``crystal.io.FolderSource``: indexed here (file list and
    targets csv, whose faults raise or are skipped now), each structure
    parsed when read. With ``data.skip_invalid`` every structure is read
    once now and the bad ones listed; otherwise a bad file raises
    ``DataError`` naming it when first read, which ``setup`` does for every
    sample (the graph cache) before training.
    """
    d = self.config.data
    if d.get("path", ""):
      from crystal import io as io_lib  # pylint: disable=g-import-not-at-top
      skip = bool(d.get("skip_invalid", False))
      folder_format = d.get("format", "") or None
      if (folder_format or io_lib.infer_format(d.path)) == "db":
        structures, report = io_lib.read_dataset_folder(
            d.path, format="db", skip_invalid=skip)
      else:
        source = io_lib.FolderSource(d.path, format=folder_format,
                                     skip_invalid=skip)
        structures, report = source, source.report
      structures = validated(structures, skip, report.skipped,
                             check=self.featurizer.check)
      for line in report.lines():
        logging.warning("%s", line)
      self.skipped.extend(report.skipped)  # -> DIR/data_report.json
      return structures
    return ListSource(generated_dataset(d.generate, d.cache_dir))

  def load_splits(self) -> Dict[str, Source]:
    d = self.config.data
    files = d.get("predict_files", None)
    if files:
      # Prediction on new structure files (crystal/predict.py): no dataset.
      # "example" (the smallest structure) shapes the batch that restores
      # the parameters, so one large file cannot break the restore.
      from crystal import io as io_lib  # pylint: disable=g-import-not-at-top
      structures = [io_lib.read_structure(p) for p in files]
      smallest = min(structures, key=lambda s: s.num_atoms)
      return {"predict": structures, "example": [smallest]}
    structures = self.dataset()
    where = d.get("path", "") or "generated dataset"
    targets = [structures.targets(i) for i in range(len(structures))]
    for i, t in enumerate(targets):
      if TARGET not in t:
        raise DataError(structures.name(i), f"no targets[{TARGET!r}] to learn")
    index = int(d.get("target_index", -1))
    widths = set()
    for i, t in enumerate(targets):
      width = np.atleast_1d(np.asarray(t[TARGET])).shape
      if index >= 0 and index >= width[0]:
        raise DataError(where, f"data.target_index={index} but sample "
                        f"{structures.name(i)} has {width[0]} target "
                        "column(s)")
      widths.add((1,) if index >= 0 else width)
    if len(widths) != 1:
      raise DataError(where, f"samples have different numbers of targets "
                      f"{widths}")
    if index >= 0:
      structures = Mapped(structures, _SelectTarget(index),
                          keeps_targets=False)
    self.num_targets = int(np.prod(widths.pop()))
    idx = split_indices(len(structures), d)
    self._all = structures
    return {k: Subset(structures, v) for k, v in idx.items()}

  def setup(self, train: Sequence[Structure]) -> None:
    """Fits the distance range and target statistics; builds the graphs."""
    if self.featurizer.config.distance_scaling == "minmax":
      self.featurizer = self.featurizer.fit(train)
    targets = (train.targets if isinstance(train, Source)
               else lambda i: train[i].targets)
    t = np.stack([np.atleast_1d(targets(i)[TARGET])
                  for i in range(len(train))])
    self.num_targets = t.shape[1]
    if self.config.data.get("normalize_targets", False):
      self.target_mean, self.target_std = t.mean(0), t.std(0) + 1e-8
    else:
      self.target_mean = np.zeros(t.shape[1])
      self.target_std = np.ones(t.shape[1])
    # The training targets' mean in model units (0 when normalised): where
    # ``model.output_init='mean_predictor'`` starts the output bias.
    self.output_bias = (t.mean(0) - self.target_mean) / self.target_std
    self.mean_predictor = t.mean(0)
    self._resolve_epochs(len(train))
    if self.config.data.get("graph_cache", True):
      cache = os.path.join(self.config.data.cache_dir, "graphs")
      prints: List[str] = []
      graphs = datasets.load_or_build(self._all, self.featurizer, cache,
                                      fingerprints=prints)
      # Keyed by sample id (a source builds a new Structure per read) and
      # checked against the coordinates, so another structure of that id
      # (a prediction file) misses.
      self._cached = {self._all.name(i): (prints[i], g)
                      for i, g in enumerate(graphs)}

  def _resolve_epochs(self, n_train: int) -> None:
    tc = self.config.train
    epochs = int(tc.get("epochs", 0) or 0)
    if epochs <= 0:
      return
    per_epoch = max(1, math.ceil(n_train / int(self.config.batch.max_graphs)))
    tc.num_steps = epochs * per_epoch
    if int(tc.get("eval_every", 0)) <= 0:
      tc.eval_every = per_epoch
    if int(tc.get("checkpoint_every", 0)) <= 0:
      tc.checkpoint_every = 10 * per_epoch
    logging.info("%d epochs x %d steps = %d steps; evaluating every %d",
                 epochs, per_epoch, tc.num_steps, tc.eval_every)

  def state_dict(self) -> Dict[str, Any]:
    lo, hi = self.featurizer.distance_range()
    return {"distance_min": lo, "distance_max": hi,
            "num_targets": self.num_targets,
            "target_mean": [float(x) for x in self.target_mean],
            "target_std": [float(x) for x in self.target_std]}

  def load_state_dict(self, state: Mapping[str, Any]) -> None:
    import dataclasses  # pylint: disable=g-import-not-at-top
    self.featurizer = features_lib.CrystalFeaturizer(dataclasses.replace(
        self.featurizer.config, distance_min=state["distance_min"],
        distance_max=state["distance_max"]))
    self.num_targets = int(state["num_targets"])
    self.target_mean = np.asarray(state["target_mean"], np.float64)
    self.target_std = np.asarray(state["target_std"], np.float64)
    self._cached = {}

  def check_input(self, structure: Structure) -> Structure:
    """The dataset reader's checks (``crystal.io.check_structure``) and the
    node features' element range."""
    from crystal import io as io_lib  # pylint: disable=g-import-not-at-top
    io_lib.check_structure(structure)
    self.featurizer.check(structure, structure.info.get("source",
                                                        structure.id))
    return structure

  def featurize(self, structure: Structure, rng: Optional[np.random.Generator],
                training: bool) -> jraph.GraphsTuple:
    del rng, training  # deterministic features
    hit = self._cached.get(structure.id)
    if hit is not None and hit[0] == datasets.structure_fingerprint(structure):
      return hit[1]
    return self.featurizer(structure)

  def compact_graph(self, graph):
    return self.featurizer.compact(graph)  # shards: no Gaussians stored

  def expand_graph(self, graph):
    return self.featurizer.expand(graph)

  # -- model and loss ------------------------------------------------------------------
  def model(self, graph: jraph.GraphsTuple, is_training: bool):
    from crystal import models  # noqa: F401  (registers the crystal models)  # pylint: disable=g-import-not-at-top
    kwargs = plain(self.config.model)
    if self.num_targets is None:
      raise RuntimeError("the number of targets is unknown: call "
                         "load_splits() or load_state_dict() first")
    init = kwargs.pop("output_init", "default")
    if init not in ("default", "mean_predictor"):
      raise ValueError(f"model.output_init must be 'default' or "
                       f"'mean_predictor', got {init!r}")
    if init == "mean_predictor":
      # Weights 0 and bias at the training mean (restored runs overwrite
      # both, so the bias value only matters before training).
      kwargs["output_zero_weights"] = True
      if self.output_bias is not None:
        kwargs["output_bias"] = tuple(float(b) for b in self.output_bias)
    return models_lib.build_model(kwargs, num_targets=self.num_targets)(
        graph, is_training)

  def _norm(self):
    return (jnp.asarray(self.target_mean, jnp.float32),
            jnp.asarray(self.target_std, jnp.float32))

  def loss(self, outputs, graph):
    """Sums over real graphs of mean_T |error| (L1) or error^2 (MSE).

    Shapes: outputs['graph'] [G, T] (normalised units), globals['target']
    [G, T], globals['mask'] [G].
    """
    mean, std = self._norm()
    mask = graph.globals["mask"].astype(jnp.float32)
    err = outputs["graph"] - (graph.globals[TARGET] - mean) / std   # [G, T]
    if self.loss_kind == "l1":
      per_graph = jnp.mean(jnp.abs(err), axis=-1)
    else:
      per_graph = jnp.mean(jnp.square(err), axis=-1)
    err_units = err * std
    metrics = {
        "mae": jnp.sum(jnp.mean(jnp.abs(err_units), -1) * mask),
        "mse": jnp.sum(jnp.mean(jnp.square(err_units), -1) * mask),
    }
    return jnp.sum(per_graph * mask), jnp.sum(mask), metrics

  # ``crystal.analysis`` sets this: predictions then carry each crystal's
  # pooled embedding (the vector the output head reads), [G, F].
  predict_embeddings = False

  def predict(self, outputs, graph):
    mean, std = self._norm()
    out = {TARGET: outputs["graph"] * std + mean}                # [G, T]
    if self.predict_embeddings:
      out["pooled"] = outputs["pooled"]
    return out

  def metrics(self, structures, predictions):
    true = np.stack([np.atleast_1d(s.targets[TARGET]) for s in structures])
    pred = np.stack([np.atleast_1d(p) for p in predictions[TARGET]])
    return regression_metrics(true, pred)

  def describe(self) -> str:
    m = self.config.model
    deeper = m.get("deeper", False)
    return (f"{'deeper ' if deeper else ''}{m.name} "
            f"({m.get('num_layers', '?')} layers, dim {m.get('dim', '?')})")

  def write_outputs(self, workdir: str) -> None:
    """End of training: ``crystal.outputs.write_outputs(workdir)``.

    Writes predictions_<split>.csv, parity_<split>.png and
    metrics_<split>.json for the val and test splits (empty ones skipped)
    plus learning_curve.png, from the best validation checkpoint, or from
    the latest one when the run kept no best checkpoint (an empty
    validation split is never evaluated). Every process restores; process 0
    writes (``Task.write_outputs``).
    """
    # Imported here: only a finished run needs the plotting/restore modules.
    from crystal import outputs  # pylint: disable=g-import-not-at-top
    from noisy_nodes.engine import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
    ckpt = ckpt_lib.Checkpointer(workdir)
    try:
      which = "best" if ckpt.latest_step("best") is not None else "latest"
    finally:
      ckpt.close()
    result = outputs.write_outputs(workdir, which=which)
    for split in ("val", "test"):
      if split in result:
        logging.info("%s predictions (%s checkpoint): %s, %s", split, which,
                     result[split]["csv"], result[split]["parity"])
    for split in ("test", "val"):
      m = result.get(split, {}).get("metrics", {})
      if "mean_predictor_mae" in m:
        ratio = m["mean_predictor_mae"] / max(m["mae"], 1e-30)
        print(f"{split} MAE {m['mae']:.4g} vs {m['mean_predictor_mae']:.4g} "
              f"for the mean predictor ({ratio:.2f}x lower; {split} split, "
              f"n={m['n']}, {which} checkpoint)", flush=True)
        break


class _SelectTarget:
  """Keeps column ``index`` of ``targets['target']`` (picklable)."""

  def __init__(self, index: int):
    self.index = index

  def __call__(self, s: Structure, i: int) -> Structure:
    del i
    t = np.atleast_1d(np.asarray(s.targets[TARGET], np.float64))
    s.targets[TARGET] = t[self.index:self.index + 1]
    return s

