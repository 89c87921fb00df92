"""OC20 sources read on demand: legacy LMDB records, trajectory frames by sid
joined to IS2RE records (issue 15 points 1-2)."""
import json
import os
import pickle
import sys

import lmdb
import numpy as np
import pytest

from noisy_nodes.data.sources import Subset
from noisy_nodes.data.structures import DataError
from noisy_nodes.gns.oc20 import legacy_lmdb, readers
from noisy_nodes.gns.oc20.frames import FramesSource
from noisy_nodes.gns.oc20.task import OC20Task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "configs"))
import oc20 as oc20_config  # noqa: E402  pylint: disable=g-import-not-at-top


def _relax(i, path):
  """A tiny EMT relaxation (Cu slab + O) written as an ASE trajectory."""
  import ase.build  # pylint: disable=g-import-not-at-top
  from ase.calculators.emt import EMT  # pylint: disable=g-import-not-at-top
  from ase.constraints import FixAtoms  # pylint: disable=g-import-not-at-top
  from ase.optimize import BFGS  # pylint: disable=g-import-not-at-top
  slab = ase.build.fcc111("Cu", (2, 2, 2), vacuum=5.0)
  slab.set_constraint(FixAtoms(mask=slab.get_tags() == 2))
  ase.build.add_adsorbate(slab, "O", 1.6 + 0.1 * i, "fcc")
  slab.rattle(0.05, seed=i)
  slab.calc = EMT()
  BFGS(slab, trajectory=path, logfile=None).run(fmax=0.05, steps=4 + i)
  return readers.read_trajectory(path)[0]


def _is2re_fields(s, sid):
  return {"sid": sid, "atomic_numbers": s.atomic_numbers.astype(np.float32),
          "pos": s.positions, "pos_relaxed": s.node_arrays["positions_relaxed"],
          "cell": s.cell[None], "natoms": s.num_atoms,
          "tags": s.node_arrays["tags"], "fixed": s.node_arrays["fixed"],
          "y_init": -0.1 * sid, "y_relaxed": -0.2 * sid}


@pytest.fixture(scope="module")
def frames_data(tmp_path_factory):
  """IS2RE train/val LMDBs of 4 systems; raw trajectories of 3 of them."""
  root = tmp_path_factory.mktemp("frames")
  trajs = root / "trajs"
  trajs.mkdir()
  systems = []
  for i in range(4):
    sid = 100 + i
    path = str(trajs / f"random{sid}.traj")
    systems.append(_relax(i, path))
    if i == 2:
      os.remove(path)  # a system whose relaxation is missing
  data = root / "is2re"
  for split, items in (("train", [0, 1, 2]), ("val", [3])):
    (data / split).mkdir(parents=True)
    legacy_lmdb.write_legacy_lmdb_for_tests(
        str(data / split / "data.lmdb"),
        [_is2re_fields(systems[i], 100 + i) for i in items])
  return str(data), str(trajs), systems


def _config(path, frames):
  c = oc20_config.get_config("tiny")
  c.data.path = path
  c.data.frames_path = frames
  c.data.noise_sigma = 0.0  # the noisy input is exactly the drawn frame
  return c


def test_frames_sampled_from_disk_and_missing_systems_reported(
    frames_data, tmp_path, monkeypatch):
  path, trajs, systems = frames_data
  from noisy_nodes.engine import trainer  # pylint: disable=g-import-not-at-top
  exp = trainer.Experiment(_config(path, trajs), str(tmp_path))
  task, train = exp.task, exp.splits["train"]
  assert len(train) == 3 and isinstance(task.frames, FramesSource)
  # The training records carry no frames: they come from the trajectories.
  assert "frames_positions" not in train[0].node_arrays
  exp.write_data_report()
  report = json.load(open(tmp_path / "data_report.json"))
  assert report["frames"]["systems_with_frames"] == 2
  assert report["frames"]["systems_without_frames"] == 1
  assert report["frames"]["without_frames"] == ["102"]
  assert report["num_skipped"] == 0
  task.setup(train)
  reads = []
  real = FramesSource.frame
  monkeypatch.setattr(FramesSource, "frame", lambda self, sid, f: (
      reads.append((sid, f)), real(self, sid, f))[1])
  drawn = set()
  for seed in range(12):
    rng = np.random.default_rng(seed)
    g = task.featurize(train[1], rng, True)
    assert len(reads) == 1  # only the drawn frame is read from disk
    sid, f = reads.pop()
    assert sid == "101"
    want = systems[1].node_arrays["frames_positions"][f]
    np.testing.assert_allclose(g.nodes["positions"], want, atol=1e-5)
    drawn.add(f)
  assert len(drawn) > 1  # frames, not always the initial structure
  # Without frames: the initial structure, and nothing read.
  g = task.featurize(train[2], np.random.default_rng(0), True)
  np.testing.assert_allclose(g.nodes["positions"], systems[2].positions,
                             atol=1e-5)
  assert not reads
  # Evaluation never samples frames.
  g = task.featurize(train[1], None, False)
  np.testing.assert_allclose(g.nodes["positions"], systems[1].positions,
                             atol=1e-5)
  assert not reads
  # A data worker rebuilds the task from config and state: same frames.
  worker = OC20Task(task.config)
  worker.load_state_dict(task.state_dict())
  rng = np.random.default_rng(5)
  g = worker.featurize(train[1], rng, True)
  sid, f = reads.pop()
  np.testing.assert_allclose(g.nodes["positions"], systems[1].node_arrays[
      "frames_positions"][f], atol=1e-5)
  # The source pickles (paths and indices) and reads in the copy too.
  back = pickle.loads(pickle.dumps(task.frames))
  np.testing.assert_allclose(back.frame("101", 0), systems[1].positions)


def test_frames_join_preprocessed_shards(frames_data, tmp_path):
  from noisy_nodes import preprocess  # pylint: disable=g-import-not-at-top
  from noisy_nodes.engine import trainer  # pylint: disable=g-import-not-at-top
  path, trajs, _ = frames_data
  config = _config(path, trajs)
  out = str(tmp_path / "shards")
  preprocess.preprocess(config, out, workers=0, shard_size=10)
  config.data.path = out
  exp = trainer.Experiment(config, str(tmp_path / "run"))
  exp.write_data_report()
  report = json.load(open(tmp_path / "run" / "data_report.json"))
  assert report["frames"]["without_frames"] == ["102"]
  assert report["frames"]["systems_with_frames"] == 2


def test_frames_from_s2ef_lmdb_grouped_by_sid(frames_data, tmp_path):
  _, _, systems = frames_data
  # S2EF records of systems 100 and 101 shuffled over two files.
  recs = [(100 + i, f, p) for i in (0, 1) for f, p in
          enumerate(systems[i].node_arrays["frames_positions"])]
  order = np.random.default_rng(0).permutation(len(recs))
  s2ef = tmp_path / "s2ef"
  s2ef.mkdir()
  half = len(order) // 2
  for k, part in enumerate((order[:half], order[half:])):
    legacy_lmdb.write_legacy_lmdb_for_tests(str(s2ef / f"{k}.lmdb"), [
        {"sid": recs[j][0], "fid": recs[j][1], "pos": recs[j][2],
         "atomic_numbers": systems[0].atomic_numbers.astype(np.float32),
         "natoms": systems[0].num_atoms, "y": 0.0} for j in part])
  cache = str(tmp_path / "cache")
  frames = FramesSource(str(s2ef), cache_dir=cache)
  assert sorted(frames.sids()) == ["100", "101"] and "102" not in frames
  for i in (0, 1):
    want = systems[i].node_arrays["frames_positions"]
    assert frames.num_frames(str(100 + i)) == len(want)
    for f in range(len(want)):
      np.testing.assert_allclose(frames.frame(100 + i, f), want[f],
                                 atol=1e-5)
  assert len(os.listdir(cache)) == 1  # the sid index, cached
  again = FramesSource(str(s2ef), cache_dir=cache)
  np.testing.assert_allclose(again.frame("101", 2), systems[1].node_arrays[
      "frames_positions"][2], atol=1e-5)
  with pytest.raises(IndexError):
    frames.frame("100", 99)


def test_legacy_lmdb_source_is_lazy_and_names_a_corrupt_record(
    frames_data, tmp_path):
  _, _, systems = frames_data
  path = str(tmp_path / "data.lmdb")
  legacy_lmdb.write_legacy_lmdb_for_tests(
      path, [_is2re_fields(s, 100 + i) for i, s in enumerate(systems)])
  env = lmdb.open(path, subdir=False, lock=False)
  with env.begin(write=True) as txn:
    blob = txn.get(b"2")
    txn.put(b"2", blob[:len(blob) // 3])  # record 2 truncated
  env.close()
  src = legacy_lmdb.LegacyLmdbSource(path)  # indexing reads no record
  assert len(src) == 4
  assert src[1].id == "101" and src.name(3) == "103"
  assert float(src.targets(1)["energy_relaxed"]) == pytest.approx(-20.2)
  with pytest.raises(DataError) as e:
    src[2]
  assert e.value.sample == f"{path}[2]"  # file and key
  with pytest.raises(DataError, match=r"data\.lmdb\[2\]"):
    src.targets(2)
  # Picklable: a copy re-opens the file itself.
  sub = pickle.loads(pickle.dumps(Subset(src, [3, 0])))
  assert [s.id for s in sub] == ["103", "100"]
  # The task: the statistics pass names the record before training.
  c = oc20_config.get_config("tiny")
  c.data.path = path
  c.data.val_fraction = c.data.test_fraction = 0.0
  task = OC20Task(c)
  splits = task.load_splits()
  with pytest.raises(DataError, match=r"data\.lmdb\[2\]"):
    task.setup(splits["train"])
  # data.skip_invalid: one pass up front, the record skipped and listed.
  c.data.skip_invalid = True
  task = OC20Task(c)
  splits = task.load_splits()
  assert len(splits["train"]) == 3 and len(task.skipped) == 1
  assert task.skipped[0].startswith(f"{path}[2]")
