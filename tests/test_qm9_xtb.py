"""Tests of the GFN2-xTB QM9-like generator (skipped without tblite/RDKit)."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import noisy_nodes  # noqa: F401,E402
from noisy_nodes.gns.qm9 import reader  # noqa: E402

pytest.importorskip("tblite.interface")
pytest.importorskip("rdkit")
from noisy_nodes.gns.qm9 import xtb  # noqa: E402  pylint: disable=g-import-not-at-top

HA = reader.HARTREE_TO_EV


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
  out = tmp_path_factory.mktemp("xtb")
  paths = xtb.generate(str(out), n=2, seed=0)
  return out, paths


def test_files_round_trip_through_reader(generated):
  out, paths = generated
  assert [os.path.basename(p) for p in paths] == [
      "dsgdb9nsd_000001.xyz", "dsgdb9nsd_000002.xyz"]
  mols = reader.read_qm9_dir(str(out))
  assert [m.info["smiles"] for m in mols] == ["C", "N"]  # methane, ammonia
  for m in mols:
    assert set(m.targets) == set(reader.PROPERTY_NAMES)
    assert all(np.isfinite(v) for v in m.targets.values())
    np.testing.assert_allclose(m.targets["gap"],
                               m.targets["lumo"] - m.targets["homo"],
                               atol=1e-8)
    assert m.targets["homo"] < 0 < m.targets["gap"]
    # Neutral molecule: the xTB charges sum to zero.
    assert abs(m.node_arrays["charges"].sum()) < 1e-6
    # Harmonic thermochemistry: U0 < U < H, G < H, H - U = kT.
    t = m.targets
    assert t["U0"] < t["U"] < t["H"] and t["G"] < t["H"]
    np.testing.assert_allclose(t["H"] - t["U"], xtb.KB_EV * 298.15,
                               rtol=1e-6)
  ch4 = mols[0]
  d = np.linalg.norm(ch4.positions[1:] - ch4.positions[0], axis=1)
  np.testing.assert_allclose(d, d.mean(), atol=1e-3)  # Td after relaxation
  assert 1.07 < d.mean() < 1.11
  # Close to QM9's B3LYP methane (gdb 1): ZPVE 0.044749 Ha, U - U0
  # 0.002868 Ha, Cv 6.469 cal/(mol K), A = B = C ~ 157.7 GHz.
  np.testing.assert_allclose(ch4.targets["zpve"] / HA, 0.044749, rtol=0.03)
  np.testing.assert_allclose((ch4.targets["U"] - ch4.targets["U0"]) / HA,
                             0.002868, rtol=0.03)
  np.testing.assert_allclose(ch4.targets["Cv"], 6.469, rtol=0.03)
  np.testing.assert_allclose([ch4.targets[k] for k in "ABC"], 157.7,
                             rtol=0.04)
  assert ch4.targets["mu"] < 1e-3  # no dipole by symmetry
  assert mols[1].targets["mu"] > 1.0  # ammonia is polar


def test_raw_text_layout(generated):
  _, paths = generated
  with open(paths[0]) as f:
    lines = f.read().split("\n")
  assert lines[0] == "5" and lines[1].startswith("gdb 1\t")
  assert len(lines[1].rstrip("\t").split("\t")) == 16
  freqs = [float(v) for v in lines[7].split("\t")]
  assert len(freqs) == 3 * 5 - 6 and min(freqs) > 1000  # CH4 modes
  assert lines[8] == "C\tC"
  assert lines[9] == "InChI=1S/CH4/h1H4\tInChI=1S/CH4/h1H4"


def test_format_number_round_trip():
  for x in (0.0, 1.5, -40.47893, 2.5e-6, -3.1e-17, 6.02e23, 157.70997):
    s = xtb.format_number(x)
    assert reader._number(s) == pytest.approx(x, rel=1e-9, abs=0)
  assert xtb.format_number(2.5e-6) == "2.5*^-6"
  assert xtb.format_number(0.0) == "0."
  assert xtb.format_number(float("nan")) == "nan"


def test_entropy_with_point_group_symmetry(generated):
  """S(CH4, 298 K) with sigma = 12 is the experimental 186.3 J/(mol K)."""
  out, _ = generated
  ch4 = reader.read_qm9_xyz(str(out / "dsgdb9nsd_000001.xyz"))
  p1 = xtb.molecule_properties(ch4.atomic_numbers, ch4.positions)
  p12 = xtb.molecule_properties(ch4.atomic_numbers, ch4.positions,
                                point_group_symmetry=True)
  assert p1["symmetry_number"] == 1 and p12["symmetry_number"] == 12
  to_j = HA * 96485.33212 / 298.15  # Ha -> J/(mol K) of T*S
  s12 = (p12["H"] - p12["G"]) * to_j
  np.testing.assert_allclose(s12, 186.3, atol=1.5)
  np.testing.assert_allclose((p1["H"] - p1["G"]) * to_j - s12,
                             8.314462618 * np.log(12), rtol=1e-6)
  # Finite-field polarisability is positive and isotropic for Td.
  assert p1["alpha"] > 0


def test_random_molecules_are_deterministic():
  from rdkit import Chem  # pylint: disable=g-import-not-at-top
  a = [s for s, _ in zip(xtb.candidate_smiles(5), range(40))]
  b = [s for s, _ in zip(xtb.candidate_smiles(5), range(40))]
  assert a == b and len(set(a)) == 40
  for smi in a[len(xtb.BUILTIN_SMILES):]:
    m = Chem.MolFromSmiles(smi)
    assert m is not None and m.GetNumHeavyAtoms() <= 7
    assert {at.GetSymbol() for at in m.GetAtoms()} <= {"C", "N", "O", "F"}
    assert not m.HasSubstructMatch(Chem.MolFromSmarts("O~O"))
