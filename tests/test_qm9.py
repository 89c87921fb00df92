"""Tests of the QM9 reader, atom references, split and metrics."""
import os
import tarfile
import zipfile

import numpy as np
import pytest

import noisy_nodes  # noqa: F401
from noisy_nodes.gns.qm9 import metrics
from noisy_nodes.gns.qm9 import reader
from noisy_nodes.data.structures import DataError

HA = 27.211386246

# dsgdb9nsd_000001.xyz of QM9 (methane), verbatim, tabs as in the release.
METHANE = (
    "5\n"
    "gdb 1\t157.7118\t157.70997\t157.70699\t0.\t13.21\t-0.3877\t0.1171\t"
    "0.5048\t35.3641\t0.044749\t-40.47893\t-40.476062\t-40.475117\t"
    "-40.498597\t6.469\t\n"
    "C\t-0.0126981359\t 1.0858041578\t 0.0080009958\t-0.535689\n"
    "H\t 0.002150416\t-0.0060313176\t 0.0019761204\t 0.133921\n"
    "H\t 1.0117308433\t 1.4637511618\t 0.0002765748\t 0.133922\n"
    "H\t-0.540815069\t 1.4475266138\t-0.8766437152\t 0.133923\n"
    "H\t-0.5238136345\t 1.4379326443\t 0.9063972942\t 0.133923\n"
    "1341.307\t1341.3284\t1341.365\t1562.6731\t1562.7453\t3038.3205\t"
    "3151.6034\t3151.6788\t3151.7078\n"
    "C\tC\t\n"
    "InChI=1S/CH4/h1H4\tInChI=1S/CH4/h1H4\n")


def _file(index, symbols, pos, values, charges=None, sep="\t"):
  """Raw QM9 text with the given header values (strings, as written)."""
  charges = charges or ["0."] * len(symbols)
  lines = [str(len(symbols)), sep.join([f"gdb {index}"] + list(values))]
  for s, p, q in zip(symbols, pos, charges):
    lines.append(sep.join([s] + list(p) + [q]))
  lines += ["100.\t200.\t300.", "O\tO", "InChI=1S/H2O/h1H2\tInChI=1S/H2O/h1H2"]
  return "\n".join(lines) + "\n"


def _water(index, u0="-76.4", sep="\t"):
  vals = ["1.5*^3", "2.0", "3.0", "1.8*^-6", "6.3", "-0.26", "0.07", "0.33",
          "19.0", "0.021", u0, "-76.39", "-76.38", "-76.41", "6.0"]
  pos = [["0.", "0.", "0.1*^-9"], ["0.7", "0.5", "0."], ["-0.7", "0.5", "0."]]
  return _file(index, ["O", "H", "H"], pos, vals, ["-0.4", "0.2", "0.2"], sep)


def test_methane_verbatim():
  s = reader.parse_qm9_text(METHANE, "dsgdb9nsd_000001.xyz",
                            keep_frequencies=True)
  assert s.id == "dsgdb9nsd_000001" and s.info["index"] == 1
  np.testing.assert_array_equal(s.atomic_numbers, [6, 1, 1, 1, 1])
  t = s.targets
  assert t["A"] == 157.7118 and t["C"] == 157.70699 and t["mu"] == 0.0
  assert t["alpha"] == 13.21 and t["r2"] == 35.3641 and t["Cv"] == 6.469
  np.testing.assert_allclose(t["homo"], -0.3877 * HA, rtol=1e-15)
  np.testing.assert_allclose(t["gap"], 0.5048 * HA, rtol=1e-15)
  np.testing.assert_allclose(t["U0"], -1101.48780, atol=1e-5)  # eV
  np.testing.assert_allclose(t["zpve"], 0.044749 * HA, rtol=1e-15)
  # A real geometry: four C-H bonds of 1.09 Å, neutral charges.
  d = np.linalg.norm(s.positions[1:] - s.positions[0], axis=1)
  np.testing.assert_allclose(d, 1.0919, atol=2e-4)
  np.testing.assert_allclose(s.node_arrays["charges"].sum(), 0.0, atol=1e-5)
  assert s.info["smiles"] == "C" and s.info["inchi"] == "InChI=1S/CH4/h1H4"
  assert len(s.info["frequencies"]) == 3 * 5 - 6
  assert set(s.targets) == set(reader.PROPERTY_NAMES)


def test_star_exponents_and_spaces():
  for sep in ("\t", "   "):
    s = reader.parse_qm9_text(_water(7, sep=sep), "w.xyz")
    assert s.targets["A"] == 1500.0
    assert s.targets["mu"] == pytest.approx(1.8e-6, rel=1e-12)
    assert s.positions[0, 2] == pytest.approx(1e-10, rel=1e-12)
    np.testing.assert_allclose(s.targets["U0"], -76.4 * HA)
    np.testing.assert_allclose(s.node_arrays["charges"], [-0.4, 0.2, 0.2])


@pytest.mark.parametrize("text,fault", [
    ("", "empty"),
    ("\n\n", "empty"),
    (_water(1).replace("3\n", "4\n", 1), "wrong atom count"),
    (_water(1).replace("3\n", "2\n", 1), "wrong atom count"),
    (_water(1).replace("\t6.3\t", "\t6.x3\t"), "alpha"),
    (_water(1).replace("\t6.3\t", "\t"), "15 property values"),
    (_water(1).replace("-76.4", "nan"), "missing"),
    (_water(1).replace("\nO\t0.", "\nCl\t0."), "unknown element"),
    (_water(1).replace("\nO\t0.", "\nXx\t0."), "unknown element"),
    (_water(1).replace("0.7\t0.5", "0.7\t0..5"), "bad number"),
    (_water(1).replace("gdb 1", "gdb one"), "index"),
    ("three\n", "not an integer"),
])
def test_errors_name_file(text, fault):
  with pytest.raises(DataError) as e:
    reader.parse_qm9_text(text, "bad_000001.xyz")
  assert e.value.sample == "bad_000001.xyz"
  assert fault in e.value.fault


def test_allow_nan_drops_unavailable_targets():
  text = _water(2).replace("-76.39", "nan")
  s = reader.parse_qm9_text(text, "x.xyz", allow_nan=True)
  assert "U" not in s.targets and s.info["unavailable"] == ["U"]
  assert len(s.targets) == 14


def _write_dir(tmp_path, indices):
  d = tmp_path / "raw"
  d.mkdir()
  for i in indices:
    (d / f"dsgdb9nsd_{i:06d}.xyz").write_text(_water(i, u0=f"-{70 + i}."))
  return d


def test_read_dir_archives_exclude_and_cache(tmp_path):
  d = _write_dir(tmp_path, [12, 3, 1, 7])
  (d / "notes.txt").write_text("not a molecule")
  out = reader.read_qm9_dir(str(d))
  assert [s.info["index"] for s in out] == [1, 3, 7, 12]
  np.testing.assert_allclose([s.targets["U0"] for s in out],
                             [-(70 + i) * HA for i in (1, 3, 7, 12)])
  out = reader.read_qm9_dir(str(d), exclude_ids={3, 12}, workers=2,
                            chunk_size=1)
  assert [s.id for s in out] == ["dsgdb9nsd_000001", "dsgdb9nsd_000007"]

  tbz = tmp_path / "dsgdb9nsd.xyz.tar.bz2"
  with tarfile.open(tbz, "w:bz2") as tf:
    for nm in sorted(os.listdir(d)):
      tf.add(d / nm, arcname=nm)
  zp = tmp_path / "qm9.zip"
  with zipfile.ZipFile(zp, "w") as zf:
    for nm in os.listdir(d):
      zf.write(d / nm, arcname=f"sub/{nm}")
  ref = reader.read_qm9_dir(str(d))
  for arch in (tbz, zp):
    got = reader.read_qm9_dir(str(arch))
    assert [s.id for s in got] == [s.id for s in ref]
    for a, b in zip(got, ref):
      np.testing.assert_array_equal(a.positions, b.positions)
      assert a.targets == b.targets

  cache = tmp_path / "cache"
  first = reader.read_qm9_dir(str(d), cache_dir=str(cache))
  files = os.listdir(cache)
  assert len(files) == 1 and files[0].endswith(".npz")
  second = reader.read_qm9_dir(str(d), cache_dir=str(cache))
  assert [s.targets for s in second] == [s.targets for s in first]
  np.testing.assert_array_equal(second[2].node_arrays["charges"],
                                first[2].node_arrays["charges"])
  # A new file changes the key: a second cache entry, one more molecule.
  (d / "dsgdb9nsd_000020.xyz").write_text(_water(20))
  assert len(reader.read_qm9_dir(str(d), cache_dir=str(cache))) == 5
  assert len(os.listdir(cache)) == 2


def test_sources_read_files_and_archive_members_on_demand(tmp_path):
  import pickle  # pylint: disable=g-import-not-at-top
  d = _write_dir(tmp_path, [12, 3, 1, 7])
  ref = reader.read_qm9_dir(str(d))
  tar = tmp_path / "plain.tar"
  with tarfile.open(tar, "w") as tf:  # long member names: GNU/pax headers
    for nm in sorted(os.listdir(d)):
      tf.add(d / nm, arcname="x" * 120 + "/" + nm)
  zp = tmp_path / "qm9.zip"
  with zipfile.ZipFile(zp, "w") as zf:
    for nm in os.listdir(d):
      zf.write(d / nm, arcname=f"sub/{nm}")
  sources = [reader.open_qm9(str(p)) for p in (d, tar, zp)]
  sources.append(reader.open_qm9(str(d), cache_dir=str(tmp_path / "c")))
  for src in sources:
    assert len(src) == 4 and src.name(3) == "dsgdb9nsd_000012"
    back = pickle.loads(pickle.dumps(src))  # re-opens its own handle
    for i in (3, 0, 2):
      np.testing.assert_array_equal(back[i].positions, ref[i].positions)
      assert back[i].targets == ref[i].targets
    assert float(src.targets(1)["U0"]) == pytest.approx(-73 * HA)
  excl = reader.open_qm9(str(tar), exclude_ids={3})
  assert [excl.name(i) for i in range(3)] == [
      "dsgdb9nsd_000001", "dsgdb9nsd_000007", "dsgdb9nsd_000012"]
  tbz = tmp_path / "q.tar.bz2"
  with tarfile.open(tbz, "w:bz2") as tf:
    tf.add(d / "dsgdb9nsd_000001.xyz", arcname="dsgdb9nsd_000001.xyz")
  with pytest.raises(DataError, match="compressed tar"):
    reader.open_qm9(str(tbz))
  assert len(reader.open_qm9(str(tbz), cache_dir=str(tmp_path / "c"))) == 1


def test_read_dir_errors(tmp_path):
  d = _write_dir(tmp_path, [1, 2])
  (d / "dsgdb9nsd_000009.xyz").write_text(_water(2))
  with pytest.raises(DataError, match="QM9 index 2 also in"):
    reader.read_qm9_dir(str(d))
  (d / "dsgdb9nsd_000009.xyz").write_text("")
  with pytest.raises(DataError) as e:
    reader.read_qm9_dir(str(d))
  assert e.value.sample.endswith("dsgdb9nsd_000009.xyz")
  with pytest.raises(DataError, match="no such"):
    reader.read_qm9_dir(str(tmp_path / "missing"))
  junk = tmp_path / "junk.tar"
  junk.write_bytes(np.random.default_rng(0).bytes(1000))
  with pytest.raises(DataError, match="tar"):
    reader.read_qm9_dir(str(junk))
  junk.write_bytes(b"short")
  with pytest.raises(DataError, match="truncated"):
    reader.read_qm9_dir(str(junk))


def test_read_uncharacterized(tmp_path):
  text = (" Molecules which failed the geometry consistency check\n"
          " 3054 of 133885 molecules\n\n"
          "   Index    SMILES 1      SMILES 2       E1   E2\n"
          " ----------------------------------------------\n"
          "      21725   CC1=CC=CN1   CC1CC=CN1    1.0  2.0\n"
          "      59827   OC1CC1O      OCC1CO1      0.3  0.4\n"
          "     133001   C#N          C=N          0.1  0.1\n"
          " ----------------------------------------------\n")
  p = tmp_path / "uncharacterized.txt"
  p.write_text(text)
  assert reader.read_uncharacterized(str(p)) == {21725, 59827, 133001}
  p.write_text("no numbers here\n")
  with pytest.raises(DataError, match="no molecule indices"):
    reader.read_uncharacterized(str(p))
  p.write_text("Index a\n 5 C\n 5 C\n")
  with pytest.raises(DataError, match="listed twice"):
    reader.read_uncharacterized(str(p))


def _molecules(counts, values):
  out = []
  for i, (c, v) in enumerate(zip(counts, values)):
    z = np.repeat([1, 6, 7, 8, 9], c)
    out.append(reader.Structure(
        id=f"m{i}", atomic_numbers=z, positions=np.arange(3 * len(z)).reshape(
            -1, 3) * 1.5, targets={"U0": v}))
  return out


def test_fit_atom_references_recovers_synthetic_refs():
  rng = np.random.default_rng(0)
  counts = rng.integers(0, 6, size=(60, 5))
  counts[:, 1] += 1
  true = np.array([-13.6, -1029.8, -1485.1, -2042.6, -2713.4])
  y = counts @ true + rng.normal(0, 1e-6, 60)
  mols = _molecules(counts, y)
  split = reader.split_indices(60, seed=1, n_val=10, n_test=10)
  # Corrupt the held-out targets: the fit must not see them.
  for i in np.concatenate([split["val"], split["test"]]):
    mols[i].targets["U0"] = np.float64(1e6)
  refs = reader.fit_atom_references(mols, "U0", split["train"])
  np.testing.assert_allclose([refs[z] for z in (1, 6, 7, 8, 9)], true,
                             atol=1e-5)
  sub = reader.subtract_atom_references(mols, refs)
  for i in split["train"]:
    assert abs(sub[i].targets["U0"]) < 1e-5
  assert mols[0].targets["U0"] != sub[0].targets["U0"]  # input untouched
  assert sub[0].info["atom_ref_subtracted"] == ["U0"]
  np.testing.assert_array_equal(reader.element_counts(mols[:3]), counts[:3])


def test_fit_atom_references_errors_and_absent_elements():
  mols = _molecules([[4, 1, 0, 0, 0], [2, 1, 0, 1, 0], [2, 2, 0, 0, 0]],
                    [-40.0, -115.0, -78.0])
  refs = reader.fit_atom_references(mols, "U0")
  assert refs[7] == 0.0 and refs[9] == 0.0
  # Three equations, three unknowns (H, C, O): exact solution.
  for m in mols:
    assert reader.atom_reference_sum(m, refs) == pytest.approx(
        float(m.targets["U0"]))
  with pytest.raises(DataError, match="missing"):
    reader.fit_atom_references(mols, "gap")
  s = reader.Structure(id="s", atomic_numbers=[16], positions=np.zeros((1, 3)))
  with pytest.raises(DataError, match="Z=16"):
    reader.element_counts([s])


def test_official_u0_references_on_methane():
  s = reader.parse_qm9_text(METHANE, "dsgdb9nsd_000001.xyz")
  atomisation_ha = (s.targets["U0"] / HA
                    - reader.atom_reference_sum(s, reader.QM9_ATOM_REFS_U0_HA))
  np.testing.assert_allclose(atomisation_ha, -0.631066, atol=1e-6)
  np.testing.assert_allclose(
      reader.atom_reference_sum(s, reader.QM9_ATOM_REFS_U0_EV),
      (-37.846772 - 4 * 0.500273) * HA)


def test_split_paper_sizes_and_determinism():
  sp = reader.split_indices(reader.QM9_SIZE, seed=0)
  assert (len(sp["train"]), len(sp["val"]), len(sp["test"])) == (
      113885, 10000, 10000)
  allidx = np.concatenate([sp["train"], sp["val"], sp["test"]])
  np.testing.assert_array_equal(np.sort(allidx), np.arange(reader.QM9_SIZE))
  small = reader.split_indices(1000, seed=3)
  assert (len(small["val"]), len(small["test"])) == (75, 75)
  again = reader.split_indices(1000, seed=3)
  other = reader.split_indices(1000, seed=4)
  for k in small:
    np.testing.assert_array_equal(small[k], again[k])
  assert not np.array_equal(small["test"], other["test"])
  assert len(reader.split_indices(10, 0, n_val=2, n_test=3)["train"]) == 5
  with pytest.raises(ValueError):
    reader.split_indices(10, 0, n_val=5, n_test=5)


def test_metrics_hand_computed():
  t = {"a": np.array([0.0, 2.0, 4.0]), "b": np.array([1.0, 1.0, 4.0])}
  p = {"a": np.array([1.0, 2.0, 3.0]), "b": np.array([1.0, 3.0, 4.0])}
  out = metrics.qm9_metrics(p, t)
  sa, sb = np.sqrt(8 / 3), np.sqrt(2.0)  # population stds
  assert out["mae/a"] == pytest.approx(2 / 3)
  assert out["mae/b"] == pytest.approx(2 / 3)
  assert out["std_mae/a"] == pytest.approx(2 / 3 / sa)
  assert out["std_mae"] == pytest.approx((2 / 3 / sa + 2 / 3 / sb) / 2)
  assert out["log_mae"] == pytest.approx(
      (np.log(2 / 3 / sa) + np.log(2 / 3 / sb)) / 2)
  # Unit invariance: eV -> meV leaves the aggregates unchanged.
  out2 = metrics.qm9_metrics({"a": p["a"] * 1e3, "b": p["b"]},
                             {"a": t["a"] * 1e3, "b": t["b"]})
  assert out2["std_mae"] == pytest.approx(out["std_mae"])
  # Given stds and NaN labels.
  out3 = metrics.qm9_metrics({"a": np.array([1.0, 5.0])},
                             {"a": np.array([0.0, np.nan])}, stds={"a": 0.5})
  assert out3["mae/a"] == 1.0 and out3["std_mae"] == 2.0
  assert out3["log_mae"] == pytest.approx(np.log(2.0))
  with pytest.raises(ValueError):
    metrics.qm9_metrics({"a": np.ones(2)}, {"b": np.ones(2)})
  with pytest.raises(ValueError):
    metrics.qm9_metrics({"a": np.ones(2)}, {"a": np.ones(2)})  # std 0
