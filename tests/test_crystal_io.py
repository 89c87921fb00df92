"""Readers of structure files and labelled dataset folders (crystal.io)."""
import os

import numpy as np
import pytest

import noisy_nodes  # noqa: F401
from noisy_nodes.data.structures import DataError, Structure
from crystal import io as cio

NACL_CIF = """data_NaCl
_symmetry_space_group_name_H-M   'P 1'
_cell_length_a   5.64
_cell_length_b   5.64
_cell_length_c   5.64
_cell_angle_alpha   90
_cell_angle_beta   90
_cell_angle_gamma   90
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Na1 Na 0.0 0.0 0.0
Na2 Na 0.0 0.5 0.5
Na3 Na 0.5 0.0 0.5
Na4 Na 0.5 0.5 0.0
Cl1 Cl 0.5 0.5 0.5
Cl2 Cl 0.5 0.0 0.0
Cl3 Cl 0.0 0.5 0.0
Cl4 Cl 0.0 0.0 0.5
"""


def _nacl():
  import ase.build
  return ase.build.bulk("NaCl", "rocksalt", a=5.64, cubic=True)


def _cu(a=3.6):
  import ase.build
  return ase.build.bulk("Cu", "fcc", a=a)


def _write(path, text):
  with open(path, "w") as f:
    f.write(text)
  return path


# -- single files ----------------------------------------------------------------
def test_read_formats_agree(tmp_path):
  import ase.io
  atoms = _nacl()
  files = {"a.cif": "cif", "POSCAR": "vasp", "b.vasp": "vasp",
           "c.xyz": "extxyz", "d.json": "json"}
  for name, fmt in files.items():
    ase.io.write(str(tmp_path / name), atoms, format=fmt)
  _write(tmp_path / "cifjson.json", NACL_CIF)  # MatDeepLearn CIF-in-json
  for name in list(files) + ["cifjson.json"]:
    s = cio.read_structure(str(tmp_path / name))
    assert s.num_atoms == 8, name
    assert sorted(s.atomic_numbers.tolist()) == [11] * 4 + [17] * 4, name
    np.testing.assert_allclose(np.abs(np.linalg.det(s.cell)), 5.64 ** 3,
                               rtol=1e-5, err_msg=name)
    assert s.pbc.all(), name
    # Same multiset of positions (fractional, wrapped) as the source.
    frac = np.sort(np.round(np.linalg.solve(s.cell.T, s.positions.T).T % 1, 4)
                   % 1, axis=0)
    ref = np.sort(np.round(atoms.get_scaled_positions() % 1, 4) % 1, axis=0)
    np.testing.assert_allclose(frac, ref, atol=1e-3, err_msg=name)
  assert cio.read_structure(str(tmp_path / "a.cif")).id == "a"
  assert cio.read_structure(str(tmp_path / "a.cif"), id="x").id == "x"


@pytest.mark.parametrize("name,text,fault", [
    ("empty.cif", "", "empty file"),
    ("blank.json", "   \n", "empty file"),
    ("bad.cif", "data_x\n_cell_length_a 3\nloop_\n_atom_site_label\n"
     "_atom_site_fract_x\nNa ab\n", "malformed CIF"),
    ("zero.xyz", "0\n\n", "no atoms"),
    ("unk.xyz", "1\n\nXx 0 0 0\n", "unknown element symbol 'Xx'"),
    ("nan.xyz", "2\n\nCu 0 0 0\nCu nan 0 0\n", "non-finite"),
    ("same.xyz", "2\n\nCu 0 0 0\nCu 0.05 0 0\n", "same position"),
])
def test_bad_files(tmp_path, name, text, fault):
  path = _write(tmp_path / name, text)
  with pytest.raises(DataError) as e:
    cio.read_structure(str(path))
  assert e.value.sample == str(path)
  assert fault in e.value.fault, e.value.fault


def test_cell_checks(tmp_path):
  import ase.io
  flat = _cu()
  flat.cell[2] = flat.cell[0] + flat.cell[1]  # coplanar: singular
  ase.io.write(str(tmp_path / "singular.json"), flat, format="json")
  left = _cu()
  left.set_cell(-np.asarray(left.cell))  # negative volume
  ase.io.write(str(tmp_path / "left.json"), left, format="json")
  huge = _cu()
  huge.set_cell(np.asarray(huge.cell) * 300, scale_atoms=True)
  ase.io.write(str(tmp_path / "huge.json"), huge, format="json")
  for name, fault in [("singular", "singular"), ("left", "negative-volume"),
                      ("huge", "huge cell")]:
    path = str(tmp_path / f"{name}.json")
    with pytest.raises(DataError, match=fault) as e:
      cio.read_structure(path)
    assert e.value.sample == path
  # The limit is configurable.
  s = cio.read_structure(str(tmp_path / "huge.json"), max_cell_length=2000)
  assert s.num_atoms == 1


def test_overlap_through_periodic_image_and_allow(tmp_path):
  # Two atoms 0.05 Å apart only through the periodic boundary.
  text = "2\nLattice=\"3 0 0 0 3 0 0 0 3\" pbc=\"T T T\"\nCu 0.02 1 1\n" \
         "Cu 2.99 1 1\n"
  path = _write(tmp_path / "img.xyz", text)
  with pytest.raises(DataError, match=r"0.03 Å apart"):
    cio.read_structure(str(path))
  s = cio.read_structure(str(path), allow_overlap=True)
  assert s.num_atoms == 2


# -- folders -----------------------------------------------------------------------
def _mdl_folder(root, cif_in_json=False):
  import ase.io
  os.makedirs(root, exist_ok=True)
  rows = []
  for i, a in enumerate([3.5, 3.6, 3.7]):
    sid = f"cu{i}"
    if cif_in_json:
      ase.io.write(os.path.join(root, "tmp.cif"), _cu(a), format="cif")
      os.replace(os.path.join(root, "tmp.cif"), os.path.join(root, sid + ".json"))
    else:
      ase.io.write(os.path.join(root, sid + ".json"), _cu(a), format="json")
    rows.append(f"{sid},{-a:.3f},{i}")
  _write(os.path.join(root, "targets.csv"), "\n".join(rows) + "\n")
  return root


@pytest.mark.parametrize("cif_in_json", [False, True])
def test_matdeeplearn_folder(tmp_path, cif_in_json):
  root = _mdl_folder(str(tmp_path / "mdl"), cif_in_json)
  structs, report = cio.read_dataset_folder(root)
  assert report.format == "matdeeplearn" and not report.skipped
  assert [s.id for s in structs] == ["cu0", "cu1", "cu2"]
  np.testing.assert_allclose(structs[1].targets["target"], [-3.6, 1.0])
  vols = [abs(np.linalg.det(s.cell)) for s in structs]
  np.testing.assert_allclose(vols, [a ** 3 / 4 for a in (3.5, 3.6, 3.7)],
                             rtol=1e-5)


def test_cgcnn_folder(tmp_path):
  import ase.io
  root = tmp_path / "cg"
  root.mkdir()
  for i in range(2):
    ase.io.write(str(root / f"{1000 + i}.cif"), _cu(3.5 + 0.1 * i),
                 format="cif")
  _write(root / "id_prop.csv", "1000,0.5\n1001,0.25\n")
  _write(root / "atom_init.json", "{}")
  ase.io.write(str(root / "extra.cif"), _cu(), format="cif")
  structs, report = cio.read_dataset_folder(str(root))
  assert report.format == "cgcnn"
  assert [s.id for s in structs] == ["1000", "1001"]
  np.testing.assert_allclose([s.targets["target"][0] for s in structs],
                             [0.5, 0.25])
  assert report.unlisted == ["extra.cif"]


@pytest.mark.parametrize("header", [False, True])
def test_alignn_folder(tmp_path, header):
  import ase.io
  root = tmp_path / "al"
  root.mkdir()
  names = ["POSCAR-JVASP-1.vasp", "POSCAR-JVASP-2.vasp"]
  for i, n in enumerate(names):
    ase.io.write(str(root / n), _cu(3.5 + 0.1 * i), format="vasp")
  text = ("structure,target\n" if header else "") + \
      f"{names[0]},1.5\n{names[1]},2.5\n"
  _write(root / "id_prop.csv", text)
  structs, report = cio.read_dataset_folder(str(root))
  assert report.format == "alignn"
  assert [s.id for s in structs] == ["POSCAR-JVASP-1", "POSCAR-JVASP-2"]
  np.testing.assert_allclose([s.targets["target"][0] for s in structs],
                             [1.5, 2.5])


@pytest.mark.parametrize("csv_text,sample,fault", [
    ("cu0,-3.5,0\ncu1,,1\ncu2,-3.7,2\n", "cu1.json", "missing target"),
    ("cu0,-3.5,0\ncu1,abc,1\ncu2,-3.7,2\n", "cu1.json",
     "non-numeric target 'abc'"),
    ("cu0,-3.5,0\ncu1,nan,1\ncu2,-3.7,2\n", "cu1.json", "not finite"),
    ("cu0,-3.5,0\ncu1,-3.6,1\ncu2,-3.7,2\ncu9,1,1\n", "cu9",
     "has no structure file"),
    ("cu0,-3.5,0\ncu1,-3.6,1\ncu2,-3.7,2\ncu1,-3,1\n", "targets.csv",
     "duplicate id 'cu1'"),
])
def test_folder_errors_and_skip(tmp_path, csv_text, sample, fault):
  root = _mdl_folder(str(tmp_path / "mdl"))
  _write(os.path.join(root, "targets.csv"), csv_text)
  with pytest.raises(DataError) as e:
    cio.read_dataset_folder(root)
  assert e.value.sample == os.path.join(root, sample)
  assert fault in e.value.fault
  structs, report = cio.read_dataset_folder(root, skip_invalid=True)
  assert len(report.skipped) == 1
  assert report.skipped[0].startswith(os.path.join(root, sample) + ": ")
  assert fault in report.skipped[0]
  ids = [s.id for s in structs]
  assert len(ids) == len(set(ids)) and "cu0" in ids


def test_folder_bad_structure_skip_and_unlisted(tmp_path):
  root = _mdl_folder(str(tmp_path / "mdl"))
  _write(os.path.join(root, "cu1.json"), "")  # empty structure file
  _write(os.path.join(root, "orphan.xyz"), "1\n\nCu 0 0 0\n")
  with pytest.raises(DataError, match="empty file") as e:
    cio.read_dataset_folder(root)
  assert e.value.sample == os.path.join(root, "cu1.json")
  structs, report = cio.read_dataset_folder(root, skip_invalid=True)
  assert [s.id for s in structs] == ["cu0", "cu2"]
  assert report.unlisted == ["orphan.xyz"]
  assert any("orphan.xyz: not listed" in l for l in report.lines())


def test_folder_source_parses_on_access(tmp_path):
  import pickle  # pylint: disable=g-import-not-at-top
  root = _mdl_folder(str(tmp_path / "mdl"))
  _write(os.path.join(root, "cu1.json"), "")  # read only when accessed
  src = cio.FolderSource(root)
  assert len(src) == 3 and src.name(1) == "cu1"
  np.testing.assert_allclose(src.targets(1)["target"], [-3.6, 1.0])
  back = pickle.loads(pickle.dumps(src))
  assert back[2].id == "cu2" and back[2].info["format"] == "matdeeplearn"
  with pytest.raises(DataError, match="empty file") as e:
    src[1]
  assert e.value.sample == os.path.join(root, "cu1.json")
  # csv faults are found by the index, without parsing a structure.
  with open(os.path.join(root, "targets.csv"), "a") as f:
    f.write("cu0,1.0,2\n")
  with pytest.raises(DataError, match="duplicate id 'cu0'"):
    cio.FolderSource(root)
  skipping = cio.FolderSource(root, skip_invalid=True)
  assert len(skipping) == 3 and len(skipping.report.skipped) == 1


def test_empty_dataset(tmp_path):
  root = tmp_path / "e"
  root.mkdir()
  _write(root / "targets.csv", "")
  with pytest.raises(DataError, match="empty dataset"):
    cio.read_dataset_folder(str(root))
  _write(root / "targets.csv", "a,1\n")
  with pytest.raises(DataError, match="empty dataset"):
    cio.read_dataset_folder(str(root), skip_invalid=True)
  with pytest.raises(DataError, match="unknown dataset layout"):
    cio.read_dataset_folder(str(tmp_path))


def test_write_roundtrip(tmp_path):
  import ase.build
  slab = ase.build.fcc111("Pt", (2, 2, 3), vacuum=6.0)
  s = Structure.from_ase(slab, "slab", targets={"target": [1.25]},
                         fixed=(np.arange(12) < 4).astype(np.int32))
  cio.write_matdeeplearn_folder(str(tmp_path / "w"), [s])
  structs, _ = cio.read_dataset_folder(str(tmp_path / "w"))
  np.testing.assert_allclose(structs[0].positions, s.positions, atol=1e-9)
  np.testing.assert_allclose(structs[0].targets["target"], [1.25])
