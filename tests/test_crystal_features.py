"""Element, edge and global features and the crystal featurizer."""
import math

import numpy as np
import pytest

import noisy_nodes  # noqa: F401
from noisy_nodes.data.structures import DataError, Structure
from crystal import features as F


def _nacl(cubic=True):
  import ase.build
  return Structure.from_ase(
      ase.build.bulk("NaCl", "rocksalt", a=5.64, cubic=cubic), "nacl",
      targets={"target": [-2.5, 1.0]})


def _onehots(z):
  row = F.cgcnn92_table()[z]
  return {k: np.nonzero(row[s])[0].tolist()
          for k, s in F.cgcnn_slices().items()}


def test_cgcnn92_layout():
  table = F.cgcnn92_table()
  assert table.shape == (101, 92)
  assert sum(w for _, w in F.CGCNN_LAYOUT) == 92
  # Every property is a one-hot (or all-zero when unknown).
  for z in range(1, 101):
    for name, cols in _onehots(z).items():
      assert len(cols) <= 1, (z, name)
  assert np.all(table[0] == 0)


def test_cgcnn92_hand_bins():
  # Hand-derived from the raw properties (module docstring bins):
  # H: X 2.20 -> (2.2-0.5)/0.35 = 4.86 -> 4; r_cov 31 pm -> 0.27 -> 0;
  #    IE 13.598 eV, ln = 2.610 -> (2.610-1.3)/0.2 = 6.55 -> 6;
  #    EA 0.754 -> (0.754+3)/0.67 = 5.60 -> 5; V 11.42 cm3/mol, ln = 2.435
  #    -> (2.435-1.5)/0.28 = 3.34 -> 3.
  assert _onehots(1) == {
      "group": [1], "period": [0], "electronegativity": [4],
      "covalent_radius": [0], "valence_electrons": [0],
      "first_ionization_energy": [6], "electron_affinity": [5],
      "block": [0], "atomic_volume": [3]}
  # Fe: group 8, period 4, X 1.83 -> 3.8 -> 3; 132 pm -> 4.76 -> 4;
  #    valence 8; IE 7.902 eV, ln = 2.067 -> 3.84 -> 3; EA 0.153 -> 4.71 -> 4;
  #    block d; V 7.09, ln = 1.959 -> 1.64 -> 1.
  assert _onehots(26) == {
      "group": [8], "period": [3], "electronegativity": [3],
      "covalent_radius": [4], "valence_electrons": [7],
      "first_ionization_energy": [3], "electron_affinity": [4],
      "block": [2], "atomic_volume": [1]}
  # He: no Pauling electronegativity -> all zero; IE 24.59 eV, ln 3.20 -> 9.
  he = _onehots(2)
  assert he["electronegativity"] == [] and he["first_ionization_energy"] == [9]
  assert he["valence_electrons"] == [1] and he["group"] == [18]
  # La (f block): group slot 0; Lu (d block): group 3.
  assert _onehots(57)["group"] == [0] and _onehots(57)["block"] == [3]
  assert _onehots(71)["group"] == [3]
  # Fm: molar volume unknown -> zeros.
  assert _onehots(100)["atomic_volume"] == []


def test_bin_index_edges():
  assert F.bin_index(0.5, 0.5, 4.0) == 0
  assert F.bin_index(0.8499, 0.5, 4.0) == 0
  assert F.bin_index(0.8501, 0.5, 4.0) == 1
  assert F.bin_index(4.0, 0.5, 4.0) == 9
  assert F.bin_index(-7.0, 0.5, 4.0) == 0 and F.bin_index(9, 0.5, 4.0) == 9
  assert F.bin_index(float("nan"), 0, 1) is None


def test_gaussian_expansion_values():
  # MatDeepLearn: sigma = (stop - start) * width = 0.2, centres 0, .25, ...
  g = F.gaussian_expansion(np.array([0.25, 0.45]), 0.0, 1.0, 5, 0.2)
  assert g.shape == (2, 5)
  np.testing.assert_allclose(g[0, 1], 1.0)
  np.testing.assert_allclose(g[1, 1], math.exp(-0.5), rtol=1e-6)
  np.testing.assert_allclose(g[0, 0], math.exp(-0.5 * 1.25 ** 2), rtol=1e-6)
  # CGCNN: exp(-(d - mu)^2 / var^2), 41 centres 0..8 step 0.2.
  g = F.gaussian_expansion(np.array([1.1]), 0.0, 8.0, 41, 0.2, form="cgcnn")
  mu = np.arange(41) * 0.2
  np.testing.assert_allclose(g[0], np.exp(-((1.1 - mu) / 0.2) ** 2),
                             rtol=1e-5, atol=1e-7)


def test_composition_and_onehot():
  c = F.composition_vector(np.array([11, 17, 17, 17]))
  assert c.shape == (108,)
  np.testing.assert_allclose(c[[10, 16]], [0.25, 0.75])
  assert c.sum() == pytest.approx(1.0)
  x = F.onehot_atomic_number(np.array([1, 100]))
  assert x[0, 0] == 1 and x[1, 99] == 1 and x.sum() == 2
  with pytest.raises(DataError, match="atomic number 101"):
    F.onehot_atomic_number(np.array([101]), sample="s")
  with pytest.raises(DataError, match="composition"):
    F.composition_vector(np.array([109]))
  deg = F.onehot_degree(np.array([0, 0, 1] + [2] * 20), 3)
  assert deg.argmax(1).tolist() == [2, 1, 13]


def test_rocksalt_12nn_graph():
  s = _nacl()
  f = F.CrystalFeaturizer()
  g = f(s)
  n = s.num_atoms
  assert g.n_node.tolist() == [8] and g.n_edge.tolist() == [8 * 13]
  assert g.nodes["features"].shape == (8, 114)
  assert g.edges["features"].shape == (8 * 13, 50)
  assert g.globals["composition"].shape == (1, 108)
  np.testing.assert_allclose(g.globals["target"], [[-2.5, 1.0]])
  np.testing.assert_allclose(np.linalg.norm(g.edges["vectors"], axis=1),
                             g.edges["distances"], atol=1e-5)
  z = g.nodes["atomic_numbers"]
  for i in range(n):
    into = g.receivers == i
    d = np.sort(g.edges["distances"][into])
    # self loop, 6 opposite ions at a/2, 6 of the 12 like ions at a/sqrt(2).
    np.testing.assert_allclose(d, [0] + [2.82] * 6 + [5.64 / 2 ** 0.5] * 6,
                               atol=1e-4)
    first = into & np.isclose(g.edges["distances"], 2.82, atol=1e-4)
    assert np.all(z[g.senders[first]] != z[i])
  # Node features: one-hot Z then degree 13 (12 neighbours + self loop).
  x = g.nodes["features"]
  assert np.all(x[np.arange(n), z - 1] == 1)
  assert np.all(x[:, 100 + 13] == 1) and x.sum() == 2 * n
  # Edge features: Gaussians of d / cutoff (unfitted min-max range [0, 8]).
  np.testing.assert_allclose(
      g.edges["features"],
      F.gaussian_expansion(g.edges["distances"] / 8.0, 0, 1, 50, 0.2),
      atol=1e-6)


def test_graph_invariances():
  s = _nacl()
  f = F.CrystalFeaturizer(F.FeaturizerConfig(max_neighbors=None,
                                             cutoff=4.5))
  g = f(s)
  perm = np.random.default_rng(0).permutation(s.num_atoms)
  s2 = Structure(id="p", atomic_numbers=s.atomic_numbers[perm],
                 positions=s.positions[perm] + [0.3, -1.1, 2.0], cell=s.cell,
                 pbc=s.pbc)
  g2 = f(s2)
  assert g.n_edge == g2.n_edge
  key = lambda gg: sorted(zip(gg.nodes["atomic_numbers"][gg.senders],
                              gg.nodes["atomic_numbers"][gg.receivers],
                              np.round(gg.edges["distances"], 4)))
  assert key(g) == key(g2)
  # ASE agrees on the number of edges within 4.5 Å (+ 8 self loops).
  from ase.neighborlist import neighbor_list
  i, _ = neighbor_list("ij", s.to_ase(), 4.5)
  assert int(g.n_edge[0]) == len(i) + 8


def test_minimum_image_and_cluster():
  import ase.build
  cu = Structure.from_ase(ase.build.bulk("Cu", "fcc", a=3.6), "cu")
  # All images: 12 neighbours at a/sqrt(2) + self loop; minimum image: only
  # the self loop (one atom, no pairs) as in the reference graph.
  g = F.CrystalFeaturizer()(cu)
  np.testing.assert_allclose(np.sort(g.edges["distances"]),
                             [0] + [3.6 / 2 ** 0.5] * 12, atol=1e-5)
  g = F.CrystalFeaturizer(F.reference_config())(cu)
  assert g.n_edge.tolist() == [1]
  # A 6-atom cluster: every ordered pair within 8 Å plus self loops.
  rng = np.random.default_rng(1)
  pos = rng.normal(size=(6, 3)) * 1.5
  cl = Structure(id="cl", atomic_numbers=[78] * 6, positions=pos)
  g = F.CrystalFeaturizer(F.reference_config(self_loops=False))(cl)
  assert g.n_edge.tolist() == [30]
  ref = np.linalg.norm(pos[g.receivers] - pos[g.senders], axis=1)
  np.testing.assert_allclose(g.edges["distances"], ref, rtol=1e-5)
  np.testing.assert_allclose(g.edges["vectors"],
                             pos[g.receivers] - pos[g.senders], atol=1e-5)
  assert np.all(g.nodes["features"][:, 100 + 5] == 1)  # degree 5


def test_fit_minmax_and_cgcnn_config():
  import ase.build
  structs = [_nacl(), Structure.from_ase(ase.build.bulk("Cu", a=3.6), "cu")]
  f = F.CrystalFeaturizer().fit(structs)
  lo, hi = f.distance_range()
  assert lo == 0.0  # self loops count, as in the reference
  assert hi == pytest.approx(max(float(F.CrystalFeaturizer().neighbors(
      s).distances.max()) for s in structs))
  g = f(structs[0])
  np.testing.assert_allclose(
      g.edges["features"],
      F.gaussian_expansion(g.edges["distances"] / hi, 0, 1, 50, 0.2),
      atol=1e-6)
  # CGCNN / CrysGNN preset: 92-d nodes, 41 raw-distance Gaussians.
  f = F.CrystalFeaturizer(F.cgcnn_config())
  g = f(structs[0])
  assert g.nodes["features"].shape == (8, 92) and f.node_dim == 92
  np.testing.assert_array_equal(g.nodes["features"],
                                F.cgcnn92_table()[g.nodes["atomic_numbers"]])
  assert g.edges["features"].shape == (96, 41)
  # ConfigDict / dict configs are accepted.
  assert F.CrystalFeaturizer({"cutoff": 5.0}).config.cutoff == 5.0


# -- graph cache and splits (crystal.datasets) ------------------------------------------
def _graphs_equal(a, b):
  for sec in ("nodes", "edges", "globals"):
    da, db = getattr(a, sec), getattr(b, sec)
    assert sorted(da) == sorted(db)
    for k in da:
      assert da[k].dtype == db[k].dtype, (sec, k)
      np.testing.assert_array_equal(da[k], db[k])
  for k in ("senders", "receivers", "n_node", "n_edge"):
    np.testing.assert_array_equal(getattr(a, k), getattr(b, k))


def _small_set():
  import ase.build
  out = [_nacl()]
  for i, a in enumerate([3.5, 3.6, 3.7]):
    out.append(Structure.from_ase(ase.build.bulk("Cu", a=a), f"cu{i}",
                                  targets={"target": [a, 0.0]}))
  return out


def test_graph_cache_roundtrip_and_invalidation(tmp_path):
  from crystal import datasets as D
  structs = _small_set()
  f = F.CrystalFeaturizer()
  direct = [f(s) for s in structs]
  g1 = D.load_or_build(structs, f, str(tmp_path))
  files = sorted(p.name for p in tmp_path.iterdir())
  assert len(files) == 1 and files[0].endswith(".npz")
  for a, b in zip(direct, g1):
    _graphs_equal(a, b)
  # Second call reads the cache (same file, same graphs).
  g2 = D.load_or_build(structs, f, str(tmp_path))
  assert sorted(p.name for p in tmp_path.iterdir()) == files
  for a, b in zip(direct, g2):
    _graphs_equal(a, b)
  # Changing a setting, or a structure, makes a new key.
  f2 = F.CrystalFeaturizer(F.FeaturizerConfig(cutoff=6.0))
  k0 = D.cache_key(structs, f)
  assert D.cache_key(structs, f2) != k0
  assert D.cache_key(structs, f.fit(structs)) != k0
  moved = _small_set()
  moved[1].positions = moved[1].positions + 0.01
  assert D.cache_key(moved, f) != k0
  g3 = D.load_or_build(structs, f2, str(tmp_path))
  assert len(list(tmp_path.iterdir())) == 2
  _graphs_equal(g3[0], f2(structs[0]))


def test_featurize_workers_match_inprocess():
  from crystal import datasets as D
  structs = _small_set()
  f = F.CrystalFeaturizer(F.cgcnn_config())
  par = D.featurize_all(structs, f, num_workers=2)
  for s, g in zip(structs, par):
    _graphs_equal(f(s), g)


def test_splits():
  from crystal import datasets as D
  tr, va, te = D.holdout_split(103, seed=3)
  assert (len(tr), len(va), len(te)) == (82, 5, 16)
  assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(103))
  again = D.holdout_split(103, seed=3)
  assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), again))
  assert not np.array_equal(D.holdout_split(103, seed=4)[0], tr)
  folds = D.kfold_splits(23, k=5, seed=1)
  tests = [te for _, te in folds]
  assert sorted(np.concatenate(tests).tolist()) == list(range(23))
  assert [len(t) for t in tests] == [5, 5, 5, 4, 4]
  for trn, tst in folds:
    assert not set(trn) & set(tst) and len(trn) + len(tst) == 23
  assert all(np.array_equal(a[1], b[1])
             for a, b in zip(folds, D.kfold_splits(23, 5, 1)))
