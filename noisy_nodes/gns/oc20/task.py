"""OC20 IS2RE / IS2RS with the Noisy Nodes GNS (Godwin et al. 2022, §5.1).

Data (``config.data``):
  * ``path`` empty: the EMT demo set (``noisy_nodes.gns.oc20.emt``), generated
    once into ``cache_dir`` with ``num_train/num_val/num_test`` systems.
  * ``path`` a folder with split files (``train*``, ``val*``, ``test*``:
    ``.aselmdb``, ``.traj``, ``.db``/``.json``, ``data.lmdb`` or sub-folders
    of them): one split per name, each under its OWN name, e.g. fairchem's
    ``train/``, ``val_id/``, ``val_ood_ads/``, ``val_ood_cat/``,
    ``val_ood_both/`` (each a ``data.lmdb``); the engine evaluates every
    ``val*`` split separately and their average (``split_name``).  A folder
    without such names, or a single file, is split deterministically
    (``val_fraction``, ``test_fraction``, ``split_seed``).
  * ``whole=True`` (``evaluate --split=all``): everything under ``path`` is
    one split ``all``, never re-split.
  * Every split is a source read on demand (``noisy_nodes.data.sources``:
    records indexed, parsed when read; ``setup`` reads the targets only).
  * ``frames_path``: trajectory frames by sid (``frames.FramesSource``: a
    folder of ``<sid>.traj`` or S2EF LMDBs) for IS2RE frame sampling; the
    drawn frame is read from disk when drawn, and training systems without
    frames are counted in data_report.json with a warning.

Featurisation (``featurize``):
  * training: Noisy Nodes (§3.3).  IS2RE samples a trajectory frame when the
    data has frames, adds N(0, σ²) to every coordinate and targets the
    relaxed structure (relaxed - noisy); IS2RS starts from the initial
    structure, target Δ - σ.  The neighbour graph is REBUILT from the noisy
    positions (``randomized_features``), so edges change with the noise.
  * evaluation: the clean initial structure, no noise; node target Δ.
  Nodes carry ``tags``, ``fixed`` and ``position_target`` [n, 3]; globals
  ``cell`` and the normalised energy ``target`` [1, 1].

Loss: ``noise.noisy_nodes_loss`` (MSE on normalised energy + position loss
coefficient x node MSE, averaged over block iterations; Fig. 1B).
Metrics: energy MAE (eV), EwT and the mean-predictor baseline MAE; IS2RS
adds ADwT and positions MAE (free atoms) and the same numbers for the
"do not move" baseline (initial structure as prediction).
"""
from __future__ import annotations

import glob
import logging
import os
from typing import Dict, Iterable, List, Optional, Sequence

import haiku as hk
import jax.numpy as jnp
import numpy as np

import noisy_nodes  # noqa: F401  (jraph compatibility shim)
from noisy_nodes import models as models_lib
from noisy_nodes.gns import analysis
from noisy_nodes.gns import model as _gns  # noqa: F401  (registers 'gns')
from noisy_nodes.gns import noise
from noisy_nodes.data.graphs import structure_to_graph
from noisy_nodes.gns.oc20 import metrics as oc20_metrics
from noisy_nodes.data import sources
from noisy_nodes.data.sources import Concat, Source, Subset, validated
from noisy_nodes.data.structures import DataError, Structure
from noisy_nodes.tasks.base import Task

SPLIT_NAMES = ("train", "val", "test")
_SUFFIXES = {".aselmdb": "aselmdb", ".traj": "traj", ".db": "ase_db",
             ".json": "ase_db", ".lmdb": "legacy_lmdb"}
# data.format -> the readers' source class (traj: one file per system).
_OPENERS = {"aselmdb": "AseLmdbSource", "ase_db": "AseDbSource",
            "legacy_lmdb": "LegacyLmdbSource", "traj": "TrajectorySource"}


# -- reading -------------------------------------------------------------------
def infer_format(path: str) -> str:
  """'aselmdb' | 'traj' | 'ase_db' | 'legacy_lmdb' from a file or folder."""
  if os.path.isdir(path):
    if os.path.exists(os.path.join(path, "data.mdb")):
      return "legacy_lmdb"  # an LMDB environment folder
    found = {fmt for f in os.listdir(path)
             for suf, fmt in _SUFFIXES.items() if f.endswith(suf)}
    if len(found) != 1:
      raise DataError(path, f"cannot infer data.format: found formats "
                      f"{sorted(found) or 'none'}; set data.format")
    return found.pop()
  for suf, fmt in _SUFFIXES.items():
    if path.endswith(suf):
      return fmt
  raise DataError(path, "unknown file type; set data.format to aselmdb, "
                  "traj, ase_db or legacy_lmdb")


def _data_files(path: str, fmt: str) -> List[str]:
  if not os.path.isdir(path) or (fmt == "legacy_lmdb" and os.path.exists(
      os.path.join(path, "data.mdb"))):
    return [path]
  sufs = [s for s, f in _SUFFIXES.items() if f == fmt]
  files = sorted(os.path.join(path, f) for f in os.listdir(path)
                 if any(f.endswith(s) for s in sufs))
  if not files:
    raise DataError(path, f"folder holds no {fmt} files")
  return files


def open_path(path: str, fmt: str = "",
              skipped: Optional[List[str]] = None) -> Source:
  """Every structure of a file or folder (sorted file order), as a source
  read on demand (nothing is parsed here: files are indexed).

  With ``skipped`` (a list: ``data.skip_invalid``) a file that cannot be
  indexed is listed there and skipped instead of raising.
  """
  from noisy_nodes.gns.oc20 import readers  # pylint: disable=g-import-not-at-top
  if not os.path.exists(path):
    raise DataError(path, "no such file or folder (data.path)")
  fmt = fmt or infer_format(path)
  files = _data_files(path, fmt) if fmt in _OPENERS else None
  if files is None:
    raise DataError(path, f"unknown data.format {fmt!r}")
  if fmt == "traj":  # one system per file: the file list is the index
    return readers.TrajectorySource(files)
  opener = getattr(readers, _OPENERS[fmt])
  parts = []
  for f in files:
    try:
      parts.append(opener(f))
    except DataError as e:
      if skipped is None:
        raise
      skipped.append(f"{e} (file skipped)")
  return parts[0] if len(parts) == 1 else Concat(parts)


def read_path(path: str, fmt: str = "", limit: int = 0,
              skipped: Optional[List[str]] = None) -> List[Structure]:
  """``open_path`` read into a list (at most ``limit`` structures)."""
  source = open_path(path, fmt, skipped)
  return list(source[:limit] if limit else source)


def split_name(entry: str) -> Optional[str]:
  """The split a folder entry holds, under its own name, or None.

  fairchem's layout names every split: ``train``, ``val_id``,
  ``val_ood_ads``, ``val_ood_cat``, ``val_ood_both`` (and ``test_*``); each
  keeps its name (the paper's tables report each split and their average).
  ``valid*`` is ``val``; suffixes (``.aselmdb``...) are dropped.
  """
  low = os.path.basename(entry.rstrip("/")).lower()
  for suf in _SUFFIXES:
    if low.endswith(suf):
      low = low[:-len(suf)]
  for split in SPLIT_NAMES:
    if low == split or low.startswith(f"{split}_"):
      return low
    if split == "val" and low.startswith("valid"):
      return "val" + low[len("valid"):].replace("ation", "")
    if low.startswith(split):  # train2, test-foo: the plain split
      return split
  return None


def _split_entries(path: str) -> Dict[str, List[str]]:
  """Folder entries named after a split: {'train': [...], 'val_id': ...}."""
  entries: Dict[str, List[str]] = {}
  for name in sorted(os.listdir(path)):
    full = os.path.join(path, name)
    if not os.path.isdir(full) and not any(name.lower().endswith(s)
                                           for s in _SUFFIXES):
      continue  # lock files, settings, READMEs
    split = split_name(name)
    if split is not None:
      entries.setdefault(split, []).append(full)
  return entries if "train" in entries else {}


def deterministic_split(n: int, val_fraction: float, test_fraction: float,
                        seed: int) -> Dict[str, np.ndarray]:
  """A fixed random split of range(n) (sorted index arrays)."""
  n_val = int(round(n * val_fraction))
  n_test = int(round(n * test_fraction))
  if n - n_val - n_test < 1:
    raise DataError("dataset", f"{n} structures leave nothing to train on "
                    f"with val_fraction={val_fraction}, test_fraction="
                    f"{test_fraction}")
  perm = np.random.default_rng(seed).permutation(n)
  return {"test": np.sort(perm[:n_test]),
          "val": np.sort(perm[n_test:n_test + n_val]),
          "train": np.sort(perm[n_test + n_val:])}


def _concat(parts: List[Source]) -> Source:
  return parts[0] if len(parts) == 1 else Concat(parts)


def _file_sources(splits: Dict[str, Source]) -> List[Source]:
  """The per-file sources under the splits (Concat/Subset/Mapped opened)."""
  out, todo = [], list(splits.values())
  while todo:
    s = todo.pop()
    inner = getattr(s, "sources", None) or ([s.source] if hasattr(
        s, "source") else None)
    if inner is None:
      out.append(s)
    else:
      todo.extend(inner)
  return out


def _first(source: Source) -> Structure:
  return source[0]


def _name(data: Sequence[Structure], i: int) -> str:
  return data.name(i) if isinstance(data, Source) else data[i].id


# -- the task --------------------------------------------------------------------
class OC20Task(Task):
  """IS2RE (``data.task='is2re'``) or IS2RS (``'is2rs'``) with Noisy Nodes."""

  randomized_features = True
  analyses = {"mad": analysis.write_mad}

  @classmethod
  def write_submission(cls, workdir, path, prefix, which, overrides):
    from noisy_nodes.gns.oc20 import submission  # pylint: disable=g-import-not-at-top
    return submission.submission_from_run(workdir, path, prefix, which,
                                          overrides)

  def __init__(self, config):
    super().__init__(config)
    d = config.data
    self.kind = str(d.get("task", "is2re")).lower()
    if self.kind not in ("is2re", "is2rs"):
      raise ValueError(f"data.task must be is2re or is2rs, got {self.kind!r}")
    self.target_name = str(d.get("target", "energy_relaxed"))
    self.sigma = float(d.get("noise_sigma", 0.3))
    self.mean, self.std = 0.0, 1.0
    self.position_scale = 1.0  # Å per unit of the node target and output
    self.energy_kind = "adsorption"
    self.frames = None  # data.frames_path: a frames.FramesSource
    # The paper's IS2RS metric (Table 3) is ADwT, higher is better.
    self.selection_metric = str(config.train.get("select_metric", "") or (
        "adwt" if self.kind == "is2rs" else "energy_mae"))
    self.selection_higher_is_better = self.selection_metric in (
        "adwt", "energy_ewt", "ewt")

  # -- data ------------------------------------------------------------------
  def load_splits(self) -> Dict[str, Source]:
    """{split: Source}: records are indexed here and read on demand.

    Validation: every reader validates a record when it reads it (a bad one
    raises ``DataError`` naming file and key). Validation splits, which
    every evaluation reads in full, are checked up front (target present);
    with ``data.skip_invalid`` every split is read once up front and its bad
    records skipped and listed in data_report.json (docs/design.md, data).
    """
    d = self.config.data
    limit = int(d.get("limit", 0) or 0)
    skip = bool(d.get("skip_invalid", False))
    skipped = self.skipped if skip else None
    if not d.get("path", ""):
      splits = self._emt_splits()
    else:
      path = os.path.expanduser(str(d.path))
      fmt = str(d.get("format", "") or "")
      entries = _split_entries(path) if os.path.isdir(path) else {}
      if d.get("whole", False):
        # Score a whole file or folder (evaluate --split=all): every
        # structure once, never a re-split.
        items = [i for v in entries.values() for i in v] or [path]
        splits = {"all": _concat([open_path(i, fmt, skipped)
                                  for i in items])}
      elif entries:
        splits = {split: _concat([open_path(i, fmt, skipped) for i in items])
                  for split, items in entries.items()}
      else:
        everything = open_path(path, fmt, skipped)
        idx = deterministic_split(len(everything),
                                  float(d.get("val_fraction", 0.1)),
                                  float(d.get("test_fraction", 0.1)),
                                  int(d.get("split_seed", 0)))
        splits = {k: Subset(everything, v) for k, v in idx.items()}
    if limit:
      splits = {k: v[:limit] for k, v in splits.items()}
    for name in list(splits):
      is_val = name == "val" or name.startswith("val_")
      # Training records without the target are skipped too under
      # skip_invalid (setup may only sample them: data.stats_sample).
      check = self._check_target if (is_val or (skip and name == "train")) and (
          self._uses_energy()) else None
      if skip or (check is not None and len(splits[name])):
        # A validation structure without the target would silently drop
        # every validation energy metric (and the best checkpoint).
        splits[name] = validated(splits[name], skip, self.skipped,
                                 check=check, upfront=True)
    kinds = {_first(v).info.get("energy_kind", "adsorption")
             for v in _file_sources(splits) if len(v)}
    self.energy_kind = "total" if "total" in kinds else "adsorption"
    if self.energy_kind == "total" and self._uses_energy():
      logging.warning(
          "OC20 data holds TOTAL energies (no adsorption referencing): "
          "training and reporting '%s' as total energies, which is not the "
          "IS2RE adsorption-energy benchmark", self.target_name)
    self.link_splits(splits)
    return splits

  def link_splits(self, splits: Dict[str, Sequence[Structure]]) -> None:
    """Joins the training split to ``data.frames_path`` (also for splits
    from preprocessed shards, which do not pass through ``load_splits``)."""
    if "train" in splits and self.config.data.get("frames_path", ""):
      self._join_frames(splits["train"])

  def _frames(self):
    """The frames source: built on first use in a process that did not join
    it (a data worker rebuilds the task from its config and state)."""
    d = self.config.data
    if self.frames is None and d.get("frames_path", ""):
      from noisy_nodes.gns.oc20 import frames as frames_lib  # pylint: disable=g-import-not-at-top
      cache = os.path.expanduser(str(d.get("cache_dir", "") or "")) or None
      self.frames = frames_lib.FramesSource(str(d.frames_path), cache)
    return self.frames

  def _join_frames(self, train: Source) -> None:
    """``data.frames_path``: trajectory frames by sid for the training split
    (IS2RE frame sampling); systems without frames are counted in
    data_report.json with a warning, never silently trained without."""
    from noisy_nodes.gns.oc20 import frames as frames_lib  # pylint: disable=g-import-not-at-top
    d = self.config.data
    self.frames = None
    frames = self._frames()
    sids = [_name(train, i) for i in range(len(train))]
    missing = frames_lib.missing_systems(sids, frames)
    self.data_report["frames"] = {
        "path": str(d.frames_path), "kind": frames.kind,
        "systems_with_frames": len(sids) - len(missing),
        "systems_without_frames": len(missing),
        "without_frames": missing[:1000]}
    if missing:
      logging.warning(
          "%d of %d training systems have no trajectory frames in %s (e.g. "
          "%s): they are trained from their initial structure; listed in "
          "data_report.json", len(missing), len(sids), d.frames_path,
          missing[0])

  def _emt_splits(self) -> Dict[str, Source]:
    from noisy_nodes.gns.oc20 import emt, readers  # pylint: disable=g-import-not-at-top
    d = self.config.data
    cache = os.path.expanduser(str(d.get("cache_dir",
                                         "~/.cache/noisy_nodes/oc20_emt")))
    paths = emt.ensure_dataset(cache, int(d.num_train), int(d.num_val),
                               int(d.num_test), seed=int(d.get("seed", 0)),
                               workers=int(d.get("gen_workers", 2)))
    logging.info("EMT data set (OC20-like, adsorption energies) in %s",
                 os.path.dirname(paths["train"]))
    return {k: readers.AseLmdbSource(p) for k, p in paths.items()}

  def _uses_energy(self) -> bool:
    return self.kind == "is2re" or float(
        self.config.loss.get("graph_loss_weight", 1.0)) != 0.0

  def _check_target(self, s: Structure, sample: str) -> None:
    if self._energy(s) is None:
      raise DataError(sample, f"structure has no {self.target_name!r} "
                      f"target")

  def _energy(self, s: Structure) -> Optional[float]:
    return self._target_value(s.targets)

  def _target_value(self, targets) -> Optional[float]:
    t = targets.get(self.target_name)
    return None if t is None else float(np.asarray(t).reshape(-1)[-1])

  def setup(self, train: Sequence[Structure]) -> None:
    """Target mean/std over the training split (§4: normalised targets).

    Reads the targets only (``source.targets(i)``: a legacy LMDB record is
    unpickled, no structure is built), except for IS2RS, which checks the
    structures for relaxed positions. ``data.stats_sample`` > 0 reads a
    seeded sample of at most that many training systems instead of all
    (``sources.sample_indices``): at OC20 "all" (460,328 systems) the full
    scan is ~80 s before the first step, while the mean/std of 100,000 is
    within 0.3 % of the std of the exact values. A system outside the
    sample that lacks its target stops training with a ``DataError``
    naming it when the stream reads it (``featurize``); shards written by
    ``noisy_nodes.preprocess`` give exact statistics from their metadata.
    """
    idx = sources.sample_indices(len(train), int(
        self.config.data.get("stats_sample", 0) or 0), seed=0)
    targets = (train.targets if isinstance(train, Source)
               else lambda i: train[i].targets)
    e = []
    for k, i in enumerate(idx):
      e.append(self._target_value(targets(int(i))))
      if k % 10_000 == 9_999 and isinstance(train, Source):
        train.release()  # unmap the pages read so far: RSS stays flat
    missing = [int(i) for i, v in zip(idx, e) if v is None]
    if missing and self._uses_energy():
      raise DataError(_name(train, missing[0]), f"training structure has no "
                      f"{self.target_name!r} target ({len(missing)} lack it)")
    def sampled():  # read on demand: O(1) memory at any sample size
      return (train[int(i)] for i in idx)
    if self.kind == "is2rs":
      bad = [s.id for s in sampled()
             if "positions_relaxed" not in s.node_arrays]
      if bad:
        raise DataError(bad[0], "IS2RS needs relaxed positions "
                        f"({len(bad)} training structures lack them)")
    e = np.array([v for v in e if v is not None], np.float64)
    if e.size:
      self.mean, self.std = float(e.mean()), float(max(e.std(), 1e-6))
    self.position_scale = self._position_scale(sampled())
    if isinstance(train, Source):
      train.release()  # unmap the pages the statistics pass touched
    logging.info("%s target %s (%s energies): mean %.4f eV, std %.4f eV "
                 "over %d training structures%s", self.kind, self.target_name,
                 self.energy_kind, self.mean, self.std, e.size,
                 "" if len(idx) == len(train) else
                 f" (a seeded sample of {len(train):,}: data.stats_sample)")

  def _position_scale(self, train: Iterable[Structure]) -> float:
    """Å per unit of the node target and output.

    1.0 (the paper's setting: Å, unnormalised) unless
    ``loss.normalize_position_target``: then the node target is normalised
    like the energy (§4 "mean and standard deviation normalised targets") by
    the RMS of the training target Δ - σ per coordinate, sqrt(mean Δ² + σ²),
    Δ the relaxation displacement over the training split's atoms (``train``:
    the structures ``setup`` sampled).  On small
    displacements (EMT: RMS 0.14 Å on free atoms) the unnormalised node MSE
    is ~0.1 of the normalised energy MSE: the energy term dominates.
    """
    if not self.config.loss.get("normalize_position_target", False):
      return 1.0
    sq, count = 0.0, 0
    for s in train:
      relaxed = s.node_arrays.get("positions_relaxed")
      if relaxed is not None:
        d = noise.minimum_image(np.asarray(relaxed, np.float64) - s.positions,
                                s.cell, s.pbc)
        sq, count = sq + float(np.sum(d * d)), count + d.size
    scale = float(np.sqrt(sq / max(count, 1) + self.sigma ** 2))
    logging.info("node target scale %.4f Å (RMS of Δ - σ, σ = %.3f)", scale,
                 self.sigma)
    return max(scale, 1e-3)

  def state_dict(self):
    return {"mean": self.mean, "std": self.std,
            "energy_kind": self.energy_kind,
            "position_scale": self.position_scale}

  def load_state_dict(self, state):
    self.mean, self.std = float(state["mean"]), float(state["std"])
    self.energy_kind = state.get("energy_kind", self.energy_kind)
    self.position_scale = float(state.get("position_scale", 1.0))

  # -- featurisation ---------------------------------------------------------------
  def featurize(self, s: Structure, rng: Optional[np.random.Generator],
                training: bool):
    """One system -> single graph; noisy and rebuilt when training."""
    d = self.config.data
    n = s.num_atoms
    arrays = s.node_arrays
    fixed = np.asarray(arrays.get("fixed", np.zeros(n)), np.int32)
    tags = np.asarray(arrays.get("tags", np.zeros(n)), np.int32)
    relaxed = arrays.get("positions_relaxed")
    frames = arrays.get("frames_positions")
    if training and d.get("frames_path", "") and self._frames() is not None:
      # data.frames_path: the frames of this system, read when drawn.
      sid = str(s.info.get("sid", s.id) if s.info else s.id)
      if sid in self.frames:
        frames = self.frames.system(sid)
    noise_fixed = None if d.get("noise_fixed_atoms", True) else fixed
    if training and rng is not None:
      if relaxed is not None:
        use_frames = (self.kind == "is2re" and d.get("sample_frames", True)
                      and frames is not None and len(frames) > 0)
        sample = noise.relaxation_sample(
            s.positions, relaxed, self.sigma, rng,
            frames_positions=frames if use_frames else None,
            fixed=noise_fixed, cell=s.cell, pbc=s.pbc, sample=s.id)
      else:  # no relaxed structure: denoising autoencoder (v' = v)
        sample = noise.denoising_sample(s.positions, self.sigma, rng,
                                        noise_fixed)
      positions, target = sample.positions, sample.target
    else:
      positions = s.positions
      if relaxed is not None:
        target = noise.minimum_image(np.asarray(relaxed, np.float64) -
                                     positions, s.cell, s.pbc)
      else:
        target = np.zeros((n, 3))
    e = self._energy(s)
    if e is None and training and self._uses_energy():
      # setup sampled the targets (data.stats_sample): never train on a
      # made-up 0 for a system that has none.
      raise DataError((s.info or {}).get("source", s.id), f"training "
                      f"structure {s.id} has no {self.target_name!r} target")
    norm = 0.0 if e is None else (e - self.mean) / self.std
    return structure_to_graph(
        s, float(d.cutoff), int(d.max_neighbors) or None, positions=positions,
        extra_nodes={"tags": tags, "fixed": fixed,
                     "position_target": (target / self.position_scale
                                         ).astype(np.float32)},
        extra_globals={"target": np.array([[norm]], np.float32)})

  # -- model and loss ----------------------------------------------------------------
  def model(self, graph, is_training):
    # The GNS unless config.model.name says otherwise (runs saved before
    # model.name existed); the Bessel basis ends at the graph's cutoff.
    return models_lib.build_model(
        {"name": "gns", **models_lib.plain(self.config.model)},
        num_targets=1, cutoff=float(self.config.data.cutoff))(graph,
                                                              is_training)

  def loss(self, outputs, graph):
    lc = self.config.loss
    graph_w = float(lc.get("graph_loss_weight", 1.0))
    loss_sum, weight, metrics = noise.noisy_nodes_loss(
        outputs, graph,
        position_loss_weight=float(lc.get("position_loss_weight", 1.0)),
        graph_loss_weight=graph_w)
    out = {"node_mse": metrics.get("node_mse", jnp.zeros(()))}
    if "graph_mae" in metrics:
      out["graph_mse"] = metrics["graph_mse"]
      out["energy_mae"] = metrics["graph_mae"] * self.std  # eV
    return loss_sum, weight, out

  def predict(self, outputs, graph):
    preds = {"energy": outputs["graph"][:, 0] * self.std + self.mean}
    if self.kind == "is2rs":
      preds["node_positions"] = graph.nodes["positions"] + (
          outputs["node"] * self.position_scale)
    return preds

  # -- metrics -------------------------------------------------------------------
  def metrics(self, structures, predictions):
    out: Dict[str, float] = {}
    true = [self._energy(s) for s in structures]
    if all(t is not None for t in true) and self._uses_energy():
      true = np.array(true)
      pred = np.array(predictions["energy"], np.float64)
      out.update(oc20_metrics.is2re_metrics(pred, true))
      mean = np.full_like(true, self.mean)
      out["baseline_energy_mae"] = oc20_metrics.energy_mae(mean, true)
      out["baseline_energy_ewt"] = oc20_metrics.energy_within_threshold(
          mean, true)
    if self.kind == "is2rs":
      pos = [np.asarray(p, np.float64) for p in predictions["node_positions"]]
      target = [s.node_arrays["positions_relaxed"] for s in structures]
      cells = [s.cell for s in structures]
      pbcs = np.stack([s.pbc for s in structures])
      fixed = [s.node_arrays.get("fixed", np.zeros(s.num_atoms))
               for s in structures]
      out.update(oc20_metrics.is2rs_metrics(pos, target, cells, pbcs, fixed))
      base = oc20_metrics.is2rs_metrics([s.positions for s in structures],
                                        target, cells, pbcs, fixed)
      out.update({f"baseline_{k}": v for k, v in base.items()})
    return out

  def describe(self) -> str:
    m = self.config.model
    return (f"Noisy Nodes GNS {self.kind} {m.num_block_iterations}x"
            f"{m.num_message_passing_steps} latent {m.latent_size}, "
            f"sigma {self.sigma}")
