"""Tests for the EMT OC20-like generator: physics, labels, determinism."""
import json
import os

import numpy as np
import pytest

from noisy_nodes.gns.oc20 import emt, readers

SEED = 7


@pytest.fixture(scope="module")
def samples():
  # One spawned worker: its BLAS is pinned to 1 thread (fast on a busy box).
  out = emt.generate_structures(3, SEED, workers=1)
  assert [s.info["index"] for s in out] == [0, 1, 2]
  return out


def test_relaxed_structures_are_minima(samples):
  from ase.calculators.emt import EMT
  for s in samples:
    assert s is not None and s.info["converged"]
    atoms = s.to_ase()
    atoms.positions = s.node_arrays["positions_relaxed"]
    atoms.calc = EMT()
    forces = atoms.get_forces()
    free = s.node_arrays["fixed"] == 0
    assert np.abs(np.linalg.norm(forces[free], axis=1)).max() < emt.FMAX
    # Fixed atoms never moved during the relaxation.
    frames = s.node_arrays["frames_positions"]
    np.testing.assert_array_equal(frames[:, ~free], np.broadcast_to(
        frames[0, ~free], frames[:, ~free].shape))
    assert not np.allclose(frames[0, free], frames[-1, free])
    np.testing.assert_array_equal(frames[0], s.positions)
    np.testing.assert_array_equal(frames[-1],
                                  s.node_arrays["positions_relaxed"])


def test_labels_are_adsorption_energies(samples):
  from ase.calculators.emt import EMT
  refs = emt.gas_references()
  # References from EMT molecules: H2/2, O2/2, N2/2, CO - O2/2.
  assert set(refs) == {"H", "C", "N", "O"}
  for s in samples:
    atoms = s.to_ase()
    atoms.calc = EMT()
    ads = s.node_arrays["tags"] == 2
    ref = sum(refs[sym] for sym in np.array(atoms.get_chemical_symbols())[ads])
    e0 = atoms.get_potential_energy()
    atoms.positions = s.node_arrays["positions_relaxed"]
    e1 = atoms.get_potential_energy()
    slab = s.info["slab_energy"]
    assert s.targets["energy_initial"] == pytest.approx(e0 - slab - ref,
                                                        abs=1e-9)
    assert s.targets["energy_relaxed"] == pytest.approx(e1 - slab - ref,
                                                        abs=1e-9)
    fe = s.targets["frames_energy"]
    assert fe.shape == (s.node_arrays["frames_positions"].shape[0],)
    assert fe[-1] == s.targets["energy_relaxed"]
    # BFGS lowers the energy overall.
    assert fe[-1] <= fe[0] + 1e-9


def test_tags_and_fixed_flags(samples):
  for s in samples:
    tags, fixed = s.node_arrays["tags"], s.node_arrays["fixed"]
    light = np.isin(s.atomic_numbers, (1, 6, 7, 8))
    np.testing.assert_array_equal(tags == 2, light)
    np.testing.assert_array_equal(tags == 0, fixed == 1)
    # 3x3x4 slab: bottom two layers (18 atoms) fixed, top two free.
    assert fixed.sum() == 18 and np.sum(tags == 1) == 18
    z = s.positions[:, 2]
    assert z[tags == 0].max() < z[tags == 1].min()
    assert s.info["energy_kind"] == "adsorption"
    assert s.info["adsorbate"] in emt.ADSORBATES


def test_deterministic_by_seed(samples):
  again = emt.generate_sample(1, SEED)
  np.testing.assert_array_equal(again.node_arrays["frames_positions"],
                                samples[1].node_arrays["frames_positions"])
  assert again.targets["energy_relaxed"] == samples[1].targets[
      "energy_relaxed"]
  other = emt.generate_sample(1, SEED + 1)
  assert not (other.num_atoms == again.num_atoms and np.allclose(
      other.positions, again.positions))


def test_ensure_dataset_two_workers_matches_one(samples, tmp_path,
                                                   monkeypatch):
  cache = str(tmp_path / "cache")
  paths = emt.ensure_dataset(cache, 1, 1, 1, seed=SEED, workers=2)
  assert sorted(paths) == ["test", "train", "val"]
  got = [readers.read_aselmdb(paths[k])[0] for k in ("train", "val", "test")]
  for g, s in zip(got, samples):
    assert g.id == s.id
    np.testing.assert_array_equal(g.positions, s.positions)
    np.testing.assert_array_equal(g.node_arrays["frames_positions"],
                                  s.node_arrays["frames_positions"])
    np.testing.assert_array_equal(g.node_arrays["tags"], s.node_arrays["tags"])
    np.testing.assert_array_equal(g.node_arrays["fixed"],
                                  s.node_arrays["fixed"])
    assert g.targets["energy_relaxed"] == s.targets["energy_relaxed"]
    assert g.targets["energy_initial"] == s.targets["energy_initial"]
  marker = os.path.join(os.path.dirname(paths["train"]), "dataset.json")
  assert json.load(open(marker))["split_sizes"] == {"train": 1, "val": 1,
                                                   "test": 1}
  # A second call reuses the cache without generating.
  def boom(*a, **k):
    raise AssertionError("regenerated")
  monkeypatch.setattr(emt, "generate", boom)
  assert emt.ensure_dataset(cache, 1, 1, 1, seed=SEED) == paths
  assert not [d for d in os.listdir(cache) if d.startswith(".")]


def test_traj_output_readable(samples, tmp_path):
  # Raw trajectories carry total energies; the reader references them back.
  path = str(tmp_path / "x.traj")
  s = samples[0]
  refs = emt.gas_references()
  ads_ref = sum(refs[sym] for sym in np.array(
      s.to_ase().get_chemical_symbols())[s.node_arrays["tags"] == 2])
  assert s.info["gas_reference_energy"] == pytest.approx(ads_ref)
  emt.write_traj(path, s)
  from ase.io import read
  assert read(path).get_potential_energy() == pytest.approx(
      s.info["total_energy_relaxed"])
  (r,) = readers.read_trajectory(path, gas_refs=refs,
                                 slab_energy=s.info["slab_energy"])
  np.testing.assert_array_equal(r.node_arrays["tags"], s.node_arrays["tags"])
  np.testing.assert_array_equal(r.node_arrays["fixed"], s.node_arrays["fixed"])
  for k in ("energy_relaxed", "energy_initial"):
    assert r.targets[k] == pytest.approx(s.targets[k], abs=1e-9)
