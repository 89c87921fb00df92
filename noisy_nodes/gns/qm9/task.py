"""QM9 property prediction with the Noisy Nodes GNS (Godwin et al. 2022, §5.2).

Data (``config.data``):
  * ``path``: a folder or archive of raw ``dsgdb9nsd_*.xyz`` files
    (``noisy_nodes.gns.qm9.reader.open_qm9``: parsed once into the npz
    cache of ``cache_dir``, then read on demand); molecules listed in
    ``uncharacterized_path`` (the official ``uncharacterized.txt``) are
    excluded when it is given.
  * ``path`` empty: a small QM9-like set computed with GFN2-xTB
    (``noisy_nodes.gns.qm9.xtb``, ``num_generated`` molecules) on first use,
    cached in ``cache_dir``.
  Split: the paper's random 10k validation / 10k test split
  (``reader.split_indices``; sizes scale with smaller sets).

Targets: ``data.target`` (one of the 12 benchmark targets or a list), in the
reader's units (eV for energies, §5.2).  For U0, U, H and G a per-element
reference fitted by least squares on the TRAINING split is subtracted
("a fixed per atom energy ... computed from linear regression", §5.2);
predictions and metrics are in these referenced units (the MAE is the same
as on raw energies, since the reference depends on composition only).
Then targets are mean/std normalised over the training split (§4).

Noisy Nodes: σ = 0.02 Å Gaussian noise on the input positions, the graph is
rebuilt from the noisy positions, and the node decoder denoises (target
clean - noisy = -σ, ``noise.denoising_sample``), weighted by the position
loss coefficient (0.1, Table 10).  Evaluation uses clean positions.
Metrics: per-target MAE, std. MAE, logMAE (App. 8.3, σ_m = the std of each
ground-truth target over the training split, U0/U/H/G as atomization
energies; reported as ``sigma_m/<target>``) and the MAE of the
training-mean predictor.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional, Sequence

import jax.numpy as jnp
import numpy as np

import noisy_nodes  # noqa: F401  (jraph compatibility shim)
from noisy_nodes import models as models_lib
from noisy_nodes.gns import analysis
from noisy_nodes.gns import model as _gns  # noqa: F401  (registers 'gns')
from noisy_nodes.gns import noise
from noisy_nodes.data.graphs import structure_to_graph
from noisy_nodes.gns.qm9 import metrics as qm9_metrics_lib
from noisy_nodes.gns.qm9 import reader
from noisy_nodes.data.sources import Source, Subset, validated
from noisy_nodes.data.structures import DataError, Structure
from noisy_nodes.tasks.base import Task


# Energies whose σ_m is taken on atomization energies, with the free atoms'
# U0 (QM9's atomref table, ``qm9.QM9_ATOM_REFS_U0_EV``) for all four: their
# thermal corrections (< 0.1 eV per atom)
# are not in the files and change σ_m by ~1 %.
ATOMIZATION_TARGETS = ("U0", "U", "H", "G")


def _targets(value) -> List[str]:
  names = [value] if isinstance(value, str) else list(value)
  names = [t.strip() for n in names for t in str(n).split(",") if t.strip()]
  bad = [t for t in names if t not in reader.PROPERTY_NAMES]
  if not names or bad:
    raise ValueError(f"data.target {value!r}: use names from "
                     f"{reader.BENCHMARK_TARGETS}")
  return names


class QM9Task(Task):
  """One (or several) QM9 targets with the denoising Noisy Nodes loss."""

  randomized_features = True
  selection_metric = "std_mae"
  analyses = {"mad": analysis.write_mad}

  def __init__(self, config):
    super().__init__(config)
    self.targets = _targets(config.data.target)
    self.sigma = float(config.data.get("noise_sigma", 0.02))
    self.randomized_features = bool(
        self.sigma > 0 or config.data.get("random_rotation", False))
    self.mean = np.zeros(len(self.targets))
    self.std = np.ones(len(self.targets))
    self.atom_refs: Dict[str, Dict[int, float]] = {}
    self.sigma_m = np.ones(len(self.targets))

  # -- data ------------------------------------------------------------------
  def load_splits(self) -> Dict[str, Source]:
    d = self.config.data
    cache = os.path.expanduser(str(d.get("cache_dir",
                                         "~/.cache/noisy_nodes/qm9")))
    exclude = None
    if d.get("uncharacterized_path", ""):
      exclude = reader.read_uncharacterized(
          os.path.expanduser(str(d.uncharacterized_path)))
      logging.info("excluding %d uncharacterized molecules", len(exclude))
    path = os.path.expanduser(str(d.get("path", "") or ""))
    allow_nan = False
    if not path:
      path = self._generated(cache)
      allow_nan = True
    # The npz cache as compact arrays, one molecule built per access. QM9
    # is small (134k molecules): validated up front, in one pass.
    structures = reader.open_qm9(path, exclude_ids=exclude,
                                 allow_nan=allow_nan, cache_dir=cache)
    structures = validated(structures, bool(d.get("skip_invalid", False)),
                           self.skipped, check=self._check_targets,
                           upfront=True)
    if d.get("whole", False):  # evaluate --split=all: never re-split
      return {"all": structures}
    n_val = int(d.get("num_val", -1))
    n_test = int(d.get("num_test", -1))
    idx = reader.split_indices(len(structures), int(d.get("split_seed", 0)),
                               None if n_val < 0 else n_val,
                               None if n_test < 0 else n_test)
    return {k: Subset(structures, v) for k, v in idx.items()}

  def _check_targets(self, s: Structure, sample: str) -> None:
    missing = [t for t in self.targets if t not in s.targets]
    if missing:
      raise DataError(sample, f"target(s) {missing} unavailable")

  def _generated(self, cache: str) -> str:
    """The xTB QM9-like folder (generated once, marked complete)."""
    from noisy_nodes.gns.qm9 import xtb  # pylint: disable=g-import-not-at-top
    d = self.config.data
    n, seed = int(d.num_generated), int(d.get("seed", 0))
    heavy = int(d.get("max_heavy", 7))
    folder = os.path.join(cache, f"xtb_s{seed}_n{n}_h{heavy}")
    marker = os.path.join(folder, "COMPLETE")
    if not os.path.exists(marker):
      logging.info("generating %d QM9-like molecules with GFN2-xTB in %s",
                   n, folder)
      xtb.generate(folder, n, seed, int(d.get("gen_workers", 1)), heavy)
      with open(marker, "w") as f:
        f.write("done\n")
    return folder

  def _raw(self, s: Structure) -> np.ndarray:
    return np.array([float(s.targets[t]) for t in self.targets])

  def _truth(self, s: Structure) -> np.ndarray:
    """t̂ of σ_m: raw targets, U0/U/H/G as atomization energies (eV)."""
    y = self._raw(s)
    for j, t in enumerate(self.targets):
      if t in ATOMIZATION_TARGETS:
        y[j] -= reader.atom_reference_sum(s, reader.QM9_ATOM_REFS_U0_EV)
    return y

  def _referenced(self, s: Structure) -> np.ndarray:
    y = self._raw(s)
    for j, t in enumerate(self.targets):
      if t in self.atom_refs:
        y[j] -= reader.atom_reference_sum(s, self.atom_refs[t])
    return y

  def setup(self, train: Sequence[Structure]) -> None:
    ref_targets = set(self.config.data.get("atom_reference_targets",
                                           ("U0", "U", "H", "G")))
    self.atom_refs = {t: reader.fit_atom_references(train, t)
                      for t in self.targets if t in ref_targets}
    y = np.stack([self._referenced(s) for s in train])
    self.mean = y.mean(0)
    self.std = np.maximum(y.std(0), 1e-8)
    logging.info("QM9 targets %s: mean %s std %s (after atom references "
                 "for %s)", self.targets, self.mean, self.std,
                 sorted(self.atom_refs))
    # σ_m of std. MAE / logMAE (App. 8.3): the spread of the ground-truth
    # target t̂ itself over the training split, not of the residual after
    # the fitted per-atom reference (narrower) and not of the evaluated
    # split (a tiny split would make it zero); fixed at setup so every split
    # is comparable.  U0/U/H/G as atomization energies (minus the free
    # atoms' U0), the convention of the benchmark's std. MAE.
    raw = np.stack([self._truth(s) for s in train])
    self.sigma_m = np.array([qm9_metrics_lib.target_std(raw[:, j])
                             for j in range(len(self.targets))])
    bad = [t for t, v in zip(self.targets, self.sigma_m) if not v > 0]
    if bad:
      raise DataError(self.config.data.get("path", "") or "qm9",
                      f"target(s) {bad} are constant over the {len(train)} "
                      "training molecules: std. MAE is undefined")
    for t, v in zip(self.targets, self.sigma_m):
      logging.info("std. MAE sigma_m/%s = %.6g %s (std of the target over "
                   "the training split)", t, v, reader.TARGET_UNITS.get(t, ""))

  def state_dict(self):
    return {"targets": self.targets, "mean": self.mean.tolist(),
            "std": self.std.tolist(), "sigma_m": self.sigma_m.tolist(),
            "atom_refs": {t: {str(z): v for z, v in r.items()}
                          for t, r in self.atom_refs.items()}}

  def load_state_dict(self, state):
    if list(state["targets"]) != self.targets:
      raise ValueError(f"checkpoint targets {state['targets']} != config "
                       f"{self.targets}")
    self.mean = np.asarray(state["mean"], np.float64)
    self.std = np.asarray(state["std"], np.float64)
    self.atom_refs = {t: {int(z): float(v) for z, v in r.items()}
                      for t, r in state["atom_refs"].items()}
    if "sigma_m" not in state:
      raise ValueError("checkpoint predates sigma_m (the training-split std "
                       "of each target, for std. MAE): retrain or rerun setup")
    self.sigma_m = np.asarray(state["sigma_m"], np.float64)

  # -- featurisation ------------------------------------------------------------
  def featurize(self, s: Structure, rng: Optional[np.random.Generator],
                training: bool):
    d = self.config.data
    positions = s.positions
    if training and rng is not None:
      if d.get("random_rotation", False):
        centre = positions.mean(0)
        positions = (positions - centre) @ noise.random_rotation(rng).T
      sample = noise.denoising_sample(positions, self.sigma, rng)
      positions, target = sample.positions, sample.target
    else:
      target = np.zeros_like(positions)
    if all(t in s.targets for t in self.targets):
      y = (self._referenced(s) - self.mean) / self.std
    else:  # an unlabelled molecule (prediction); training data has labels
      y = np.zeros(len(self.targets))
    return structure_to_graph(
        s, float(d.cutoff), int(d.get("max_neighbors", 0)) or None,
        positions=positions,
        extra_nodes={"position_target": target.astype(np.float32)},
        extra_globals={"target": y.astype(np.float32)[None]})

  # -- model and loss ---------------------------------------------------------------
  def model(self, graph, is_training):
    # The GNS unless config.model.name says otherwise (runs saved before
    # model.name existed); molecules have neither tags nor a cell.
    return models_lib.build_model(
        {"name": "gns", **models_lib.plain(self.config.model)},
        num_targets=len(self.targets), cutoff=float(self.config.data.cutoff),
        use_tags=False, use_cell_vector=False)(graph, is_training)

  def loss(self, outputs, graph):
    lc = self.config.loss
    loss_sum, weight, metrics = noise.noisy_nodes_loss(
        outputs, graph,
        position_loss_weight=float(lc.get("position_loss_weight", 0.1)),
        graph_loss_weight=float(lc.get("graph_loss_weight", 1.0)))
    return loss_sum, weight, {k: v for k, v in metrics.items()
                              if k in ("graph_mse", "node_mse")}

  def predict(self, outputs, graph):
    y = outputs["graph"] * jnp.asarray(self.std, jnp.float32) + jnp.asarray(
        self.mean, jnp.float32)
    return {t: y[:, j] for j, t in enumerate(self.targets)}

  def metrics(self, structures, predictions):
    true = np.stack([self._referenced(s) for s in structures])
    preds = {t: np.asarray(predictions[t], np.float64)
             for t in self.targets}
    out = qm9_metrics_lib.qm9_metrics(
        preds, {t: true[:, j] for j, t in enumerate(self.targets)},
        stds={t: self.sigma_m[j] for j, t in enumerate(self.targets)})
    for j, t in enumerate(self.targets):
      out[f"sigma_m/{t}"] = float(self.sigma_m[j])
      out[f"baseline_mae/{t}"] = qm9_metrics_lib.mae(
          np.full(len(true), self.mean[j]), true[:, j])
    return out

  def describe(self) -> str:
    m = self.config.model
    return (f"Noisy Nodes GNS QM9 {self.targets} {m.num_block_iterations}x"
            f"{m.num_message_passing_steps}, sigma {self.sigma}")
