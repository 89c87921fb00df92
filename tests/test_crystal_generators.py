"""EMT-labelled Pt-cluster and alloy-surface generators (tiny sizes)."""
import numpy as np
import pytest

import noisy_nodes  # noqa: F401
from crystal import generators as G


def _emt_energy_forces(s, fixed=None):
  from ase.calculators.emt import EMT
  from ase.constraints import FixAtoms
  atoms = s.to_ase()
  if fixed is not None:
    atoms.set_constraint(FixAtoms(mask=fixed.astype(bool)))
  atoms.calc = EMT()
  return atoms.get_potential_energy(), atoms.get_forces(apply_constraint=True)


def _same(a, b):
  assert [s.id for s in a] == [s.id for s in b]
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x.atomic_numbers, y.atomic_numbers)
    np.testing.assert_allclose(x.positions, y.positions, atol=1e-10)
    np.testing.assert_allclose(x.targets["target"], y.targets["target"],
                               atol=1e-10)


def test_pt_clusters_relaxed_perturbed_deterministic():
  kw = dict(sizes=(5, 8))
  a = G.generate("pt_clusters", 4, seed=7, **kw)
  assert [s.info["relaxed"] for s in a] == [True, False, True, False]
  for s in a:
    assert 5 <= s.num_atoms <= 8 and set(s.atomic_numbers) == {78}
    e, f = _emt_energy_forces(s)
    # Label = EMT energy per atom of exactly the stored geometry.
    np.testing.assert_allclose(s.targets["target"], [e / s.num_atoms],
                               rtol=1e-10)
    fmax = np.linalg.norm(f, axis=1).max()
    if s.info["relaxed"]:
      assert fmax < G.FMAX
    else:
      assert fmax > G.FMAX  # displaced off the minimum
    d = np.linalg.norm(s.positions[:, None] - s.positions[None], axis=-1)
    assert d[np.triu_indices(s.num_atoms, 1)].min() > 2.0
  _same(a, G.generate("pt_clusters", 4, seed=7, **kw))
  b = G.generate("pt_clusters", 4, seed=8, **kw)
  assert not np.allclose(a[0].targets["target"], b[0].targets["target"])


def test_pt10_clusters_edges():
  from crystal.features import CrystalFeaturizer, reference_config
  cl = G.pt10_clusters(6, seed=0)
  f = CrystalFeaturizer(reference_config())
  edges = [int(f(s).n_edge[0]) for s in cl]
  assert all(s.num_atoms == 10 for s in cl)
  assert all(90 <= e <= 100 for e in edges) and np.mean(edges) >= 98
  t = np.array([s.targets["target"][0] for s in cl])
  assert t.std() > 1e-3  # labels vary
  e, _ = _emt_energy_forces(cl[0])
  np.testing.assert_allclose(t[0], e / 10, rtol=1e-10)
  _same(cl, G.pt10_clusters(6, seed=0))


def test_surfaces_adsorption_energy():
  # Workers are single-threaded: in this (unpinned) process EMT relaxations
  # of 37-atom slabs would be ~10x slower.
  refs = G.gas_references()
  s_list = G.generate("surfaces", 2, seed=3, num_workers=2)
  for s in s_list:
    assert s.num_atoms == 37 and s.periodic
    tags, fixed = s.node_arrays["tags"], s.node_arrays["fixed"]
    assert (tags == 0).sum() == 18 and (tags == 1).sum() == 18
    assert tags[-1] == 2 and np.array_equal(fixed == 1, tags == 0)
    alloy = set(s.info["alloy"])
    assert set(s.to_ase().get_chemical_symbols()[:-1]) <= alloy
    assert s.info["adsorbate"] in G.ADSORBATES
    e, f = _emt_energy_forces(s, fixed)
    assert np.linalg.norm(f, axis=1).max() < G.FMAX  # relaxed
    np.testing.assert_allclose(e, s.info["energy"], rtol=1e-10)
    np.testing.assert_allclose(
        s.targets["target"],
        [e - s.info["slab_energy"] - refs[s.info["adsorbate"]]], atol=1e-10)
    assert 0.3 < s.info["adsorbate_height"] < 3.0  # still adsorbed
  # Deterministic and independent of the number of workers.
  _same(s_list, G.generate("surfaces", 2, seed=3, num_workers=1))


def test_cli_writes_matdeeplearn_folder(tmp_path):
  from crystal.io import read_dataset_folder
  out = str(tmp_path / "pt")
  G.main(["--kind=pt_clusters", "--n=2", f"--out={out}", "--seed=2",
          "--workers=0", "--min_atoms=5", "--max_atoms=6"])
  read, report = read_dataset_folder(out)
  assert report.format == "matdeeplearn" and not report.unlisted
  _same(read, G.generate("pt_clusters", 2, seed=2, sizes=(5, 6)))
  with pytest.raises(ValueError, match="unknown kind"):
    G.generate("bulk", 1)
