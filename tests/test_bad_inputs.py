"""A corpus of broken inputs, each written here: one clear error, or skipped.

Every kind of broken input must give exactly one ``DataError`` whose message
names the file (or file[sample]) and the fault, or, under the explicit skip
option (``read_dataset_folder(skip_invalid=True)``, config
``data.skip_invalid``), be dropped and listed in the report
(DIR/data_report.json for a training run) - never a crash mid-epoch, a NaN in
training or a hang.

An isolated atom (no neighbour within the cutoff) is legal - a cluster or a
dilute gas has them - so it is read, it gets no edges but its self loop, and
its features and the training loss stay finite.
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import noisy_nodes  # noqa: F401
from crystal import io as cio
from noisy_nodes.gns.oc20 import legacy_lmdb, readers
from noisy_nodes.gns.qm9 import reader as qm9
from noisy_nodes.data.structures import DataError, Structure, load_structures
from noisy_nodes.data.structures import save_structures

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

NACL_CIF = """data_NaCl
_cell_length_a 5.64
_cell_length_b 5.64
_cell_length_c 5.64
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Na1 Na 0.0 0.0 0.0
Cl1 Cl 0.5 0.5 0.5
"""


def _xyz(rows):
  """extxyz text of a molecule: rows of (symbol, x, y, z) as strings."""
  return (f"{len(rows)}\nProperties=species:S:1:pos:R:3\n"
          + "".join(" ".join(r) + "\n" for r in rows))


def _poscar(cell, frac=((0, 0, 0), (0.5, 0.5, 0.5))):
  """POSCAR text (direct coordinates) of Na+Cl in ``cell`` (rows, Å)."""
  lines = ["NaCl", "1.0"] + [" ".join(map(str, v)) for v in cell]
  lines += ["Na Cl", "1 1", "Direct"]
  lines += [" ".join(map(str, f)) for f in frac]
  return "\n".join(lines) + "\n"


# One structure file per kind: (file name, content, fault in the message).
# The file name doubles as the sample id in the folder tests below.
BAD_FILES = {
    "malformed_cif": ("malformed_cif.cif",
                      "data_x\n_cell_length_a 3\n_cell_length_b\nloop_\n"
                      "_atom_site_label\nNa1 0 0\n", r"malformed CIF \("),
    "cif_without_atoms": ("cif_without_atoms.cif", NACL_CIF.split("loop_")[0],
                          r"malformed CIF \(no structure could be read\)"),
    "empty_file": ("empty_file.cif", "", r"empty file$"),
    "blank_file": ("blank_file.xyz", "\n  \n", r"empty file \(only whitespace"),
    "zero_atoms": ("zero_atoms.xyz", "0\n\n", r"structure has no atoms"),
    "same_position": ("same_position.xyz",
                      _xyz([("Ar", "0", "0", "0"), ("Ar", "3", "0", "0"),
                            ("Ar", "3", "0", "0.01")]),
                      r"atoms 1 and 2 are 0\.01 Å apart \(< 0\.1 Å\): two "
                      r"atoms at the same position"),
    "nan_coordinates": ("nan_coordinates.xyz",
                        _xyz([("Ar", "0", "0", "0"), ("Ar", "nan", "0", "0")]),
                        r"non-finite \(NaN or inf\) coordinates"),
    "inf_coordinates": ("inf_coordinates.xyz",
                        _xyz([("Ar", "0", "0", "0"), ("Ar", "0", "inf", "0")]),
                        r"non-finite \(NaN or inf\) coordinates"),
    "unknown_element": ("unknown_element.xyz",
                        _xyz([("Ar", "0", "0", "0"), ("Xx", "0", "0", "3")]),
                        r"unknown element symbol 'Xx'"),
    "singular_cell": ("singular_cell.vasp",
                      _poscar([(4, 0, 0), (0, 4, 0), (4, 4, 0)]),
                      r"singular or negative-volume cell \(volume 0 Å\^3\)"),
    "negative_volume": ("negative_volume.vasp",
                        _poscar([(4, 0, 0), (0, 4, 0), (0, 0, -4)]),
                        r"singular or negative-volume cell \(volume -64"),
    "huge_cell": ("huge_cell.vasp",
                  _poscar([(4000, 0, 0), (0, 4, 0), (0, 0, 4)]),
                  r"huge cell: lattice vector of 4000 Å > limit 500 Å"),
}


def _check(exc_info, path, fault):
  """One DataError naming ``path`` whose fault matches ``fault``."""
  e = exc_info.value
  assert isinstance(e, DataError)
  assert e.sample == str(path), (e.sample, path)
  assert re.search(fault, e.fault), e.fault
  assert str(e) == f"{path}: {e.fault}"


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_structure_file(tmp_path, kind):
  name, text, fault = BAD_FILES[kind]
  path = tmp_path / name
  path.write_text(text)
  with pytest.raises(DataError) as e:
    cio.read_structure(str(path))
  _check(e, path, fault)


def test_missing_structure_file(tmp_path):
  with pytest.raises(DataError) as e:
    cio.read_structure(str(tmp_path / "nowhere.cif"))
  _check(e, tmp_path / "nowhere.cif", r"cannot open structure file \(No such")


def _good_folder(path, n=3):
  """A MatDeepLearn folder of n NaCl cells with different lattice constants."""
  os.makedirs(path, exist_ok=True)
  rows = []
  for i in range(n):
    a = 5.5 + 0.1 * i
    (path / f"good{i}.cif").write_text(
        NACL_CIF.replace("5.64", str(a)))
    rows.append(f"good{i},{-3.0 - 0.1 * i}")
  return rows


# Faults in targets.csv: (rows, sample in the message, fault).
CSV_FAULTS = {
    "missing_target": (["nacl,"], "nacl.cif", r"targets\.csv line \d+: "
                       r"missing target"),
    "non_numeric_target": (["nacl,abc"], "nacl.cif",
                           r"non-numeric target 'abc'"),
    "nan_target": (["nacl,nan"], "nacl.cif", r"target is not finite \(nan\)"),
    "duplicate_id": (["good0,1.0"], "targets.csv",
                     r"duplicate id 'good0' \(1 rows\)"),
    "id_without_file": (["ghost,1.0"], "ghost",
                        r"id 'ghost' is listed in targets\.csv but has no "
                        r"structure file"),
}


@pytest.mark.parametrize("kind", sorted(CSV_FAULTS))
def test_bad_targets_file(tmp_path, kind):
  extra, sample, fault = CSV_FAULTS[kind]
  rows = _good_folder(tmp_path)
  (tmp_path / "nacl.cif").write_text(NACL_CIF)
  (tmp_path / "targets.csv").write_text("\n".join(rows + extra) + "\n")
  with pytest.raises(DataError) as e:
    cio.read_dataset_folder(str(tmp_path))
  _check(e, tmp_path / sample, fault)
  # Skipped and listed under skip_invalid; the good rows are all read.
  structures, report = cio.read_dataset_folder(str(tmp_path),
                                               skip_invalid=True)
  assert [s.id for s in structures] == ["good0", "good1", "good2"]
  assert len(report.skipped) == 1
  assert report.skipped[0].startswith(f"{tmp_path / sample}: ")
  assert re.search(fault, report.skipped[0])


def test_structure_file_without_id_is_listed_not_read(tmp_path):
  rows = _good_folder(tmp_path)
  (tmp_path / "stray.cif").write_text("not even a CIF")
  (tmp_path / "targets.csv").write_text("\n".join(rows) + "\n")
  structures, report = cio.read_dataset_folder(str(tmp_path))
  assert len(structures) == 3
  assert report.unlisted == ["stray.cif"]
  assert report.lines() == [f"stray.cif: not listed in {tmp_path}/targets.csv "
                            "(ignored)"]


@pytest.mark.parametrize("csv_text,fault", [
    ("", r"empty dataset \(no rows in targets file\)"),
    ("id,target\n", r"empty dataset \(header only\)")])
def test_empty_dataset(tmp_path, csv_text, fault):
  (tmp_path / "targets.csv").write_text(csv_text)
  with pytest.raises(DataError) as e:
    cio.read_dataset_folder(str(tmp_path), skip_invalid=True)  # never skipped
  _check(e, tmp_path / "targets.csv", fault)
  with pytest.raises(DataError) as e:
    cio.read_dataset_folder(str(tmp_path / "absent"))
  _check(e, tmp_path / "absent", "dataset folder not found")


def test_folder_of_every_bad_file_skips_each_once(tmp_path):
  """All the broken structure files in one folder with three good ones."""
  rows = _good_folder(tmp_path)
  for name, text, _ in BAD_FILES.values():
    (tmp_path / name).write_text(text)
    rows.append(f"{os.path.splitext(name)[0]},1.0")
  (tmp_path / "targets.csv").write_text("\n".join(rows) + "\n")
  with pytest.raises(DataError) as e:  # the first bad row in csv order
    cio.read_dataset_folder(str(tmp_path))
  first = next(iter(BAD_FILES.values()))
  _check(e, tmp_path / first[0], first[2])
  structures, report = cio.read_dataset_folder(str(tmp_path),
                                               skip_invalid=True)
  assert [s.id for s in structures] == ["good0", "good1", "good2"]
  assert all(np.isfinite(s.targets["target"]).all() for s in structures)
  assert len(report.skipped) == len(BAD_FILES)
  for line, (name, _, fault) in zip(report.skipped, BAD_FILES.values()):
    assert line.startswith(f"{tmp_path / name}: ") and re.search(fault, line)


# -- truncated binary / archive files of the other readers ---------------------
def _truncate(path, keep=0.5):
  raw = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(raw[:int(len(raw) * keep)])


def _slab_structure(i):
  from ase.build import fcc111  # pylint: disable=g-import-not-at-top
  atoms = fcc111("Cu", size=(2, 2, 2), vacuum=5.0)
  atoms.positions[0, 2] += 0.01 * i
  return Structure.from_ase(atoms, id=f"s{i}",
                            targets={"energy_relaxed": 0.1 * i},
                            tags=np.ones(len(atoms), np.int32))


def test_truncated_aselmdb(tmp_path):
  path = str(tmp_path / "data.aselmdb")
  readers.write_aselmdb(path, [_slab_structure(i) for i in range(20)])
  assert len(readers.read_aselmdb(path)) == 20
  _truncate(path, 0.3)
  with pytest.raises(DataError) as e:
    readers.read_aselmdb(path)
  assert e.value.sample.startswith(path)
  assert re.search(r"LMDB|corrupt|truncated", e.value.fault), e.value.fault


def test_truncated_legacy_lmdb(tmp_path):
  s = _slab_structure(0)
  fields = dict(atomic_numbers=s.atomic_numbers.astype(np.float32),
                pos=s.positions.astype(np.float32),
                cell=s.cell[None].astype(np.float32),
                natoms=s.num_atoms, tags=s.node_arrays["tags"],
                fixed=np.zeros(s.num_atoms, np.float32), sid=0,
                y_relaxed=0.5, pos_relaxed=s.positions.astype(np.float32))
  path = str(tmp_path / "data.lmdb")
  legacy_lmdb.write_legacy_lmdb_for_tests(path, [fields] * 4)
  assert len(readers.read_legacy_lmdb(path)) == 4
  _truncate(path, 0.3)
  with pytest.raises(DataError) as e:
    readers.read_legacy_lmdb(path)
  assert e.value.sample.startswith(path)


def test_truncated_trajectory(tmp_path):
  from ase.calculators.emt import EMT  # pylint: disable=g-import-not-at-top
  from ase.io.trajectory import Trajectory  # pylint: disable=g-import-not-at-top
  atoms = _slab_structure(0).to_ase()
  atoms.calc = EMT()
  path = str(tmp_path / "relax.traj")
  with Trajectory(path, "w") as traj:
    for k in range(3):
      atoms.positions[0, 2] += 0.02 * k
      atoms.get_potential_energy()
      traj.write(atoms)
  assert readers.read_trajectory(path)[0].node_arrays[
      "frames_positions"].shape[0] == 3
  _truncate(path, 0.6)
  with pytest.raises(DataError) as e:
    readers.read_trajectory(path)
  _check(e, path, r"unreadable or truncated trajectory")


def test_truncated_qm9_file(tmp_path):
  text = ("3\ngdb 7\t" + "\t".join(["1.0"] * 15) + "\n"
          "O\t0.0\t0.0\t0.1\t-0.4\nH\t0.7\t0.5\t0.0\t0.2\n")  # cut after 2 atoms
  path = tmp_path / "dsgdb9nsd_000007.xyz"
  path.write_text(text)
  with pytest.raises(DataError) as e:
    qm9.read_qm9_xyz(str(path))
  assert e.value.sample.endswith("dsgdb9nsd_000007.xyz")
  assert re.search(r"line 1 says 3 atoms but 2 atom lines follow",
                   e.value.fault), e.value


def test_truncated_structure_cache(tmp_path):
  path = str(tmp_path / "cache.npz")
  save_structures(path, [_slab_structure(i) for i in range(5)])
  assert len(load_structures(path)) == 5
  _truncate(path, 0.5)
  with pytest.raises(DataError) as e:
    load_structures(path)
  _check(e, path, r"unreadable structure cache")


# -- isolated atoms ---------------------------------------------------------------
def _cluster_with_isolated_atom():
  """Ar4 tetrahedron plus one Ar 20 Å away (nothing within any cutoff)."""
  pos = np.array([[0, 0, 0], [1.1, 0, 0], [0.55, 0.95, 0], [0.55, 0.3, 0.9],
                  [20.0, 0, 0]])
  return Structure(id="isolated", atomic_numbers=[18] * 5, positions=pos,
                   targets={"energy": [-1.0], "target": [-1.0]})


def test_isolated_atom_is_read_and_featurised_without_nan(tmp_path):
  from crystal import features  # pylint: disable=g-import-not-at-top
  s = _cluster_with_isolated_atom()
  path = tmp_path / "isolated.xyz"
  path.write_text(_xyz([("Ar",) + tuple(map(str, p)) for p in s.positions]))
  read = cio.read_structure(str(path))
  np.testing.assert_allclose(read.positions, s.positions)
  for cfg in (features.FeaturizerConfig(), features.cgcnn_config()):
    g = features.CrystalFeaturizer(cfg)(read)
    real = g.senders != g.receivers  # not the self loops
    assert not np.any(g.receivers[real] == 4) and not np.any(
        g.senders[real] == 4)
    assert np.sum(g.receivers == 4) == (1 if cfg.self_loops else 0)
    for x in list(g.nodes.values()) + list(g.edges.values()):
      assert np.all(np.isfinite(np.asarray(x, np.float64)))


def _toy_cli(workdir, data, *flags):
  env = dict(os.environ)
  env.update(PYTHONPATH=HERE + os.pathsep + env.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu", OMP_NUM_THREADS="1")
  cmd = [sys.executable, "-m", "noisy_nodes.train",
         f"--config={HERE}/toy_config.py", f"--workdir={workdir}",
         f"--config.data.path={data}", "--config.data.num_train=10",
         "--config.train.num_steps=6", "--config.train.eval_every=0",
         "--config.train.log_every=1", "--config.train.checkpoint_every=6",
         *flags]
  return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True,
                        text=True, timeout=300)


def test_training_skips_listed_inputs_and_stays_finite(tmp_path):
  """data.skip_invalid through the engine: DIR/data_report.json, finite loss.

  The data file holds 12 good clusters, one with an isolated atom, and four
  invalid records; without the option the run stops at once with exit 2.
  """
  sys.path.insert(0, HERE)
  import toy_task  # pylint: disable=g-import-not-at-top
  good = toy_task.make_clusters(12, seed=5)
  bad = [
      Structure(id="no_atoms", atomic_numbers=np.zeros(0, int),
                positions=np.zeros((0, 3)), targets={"energy": [0.0]}),
      Structure(id="nan_xyz", atomic_numbers=[18, 18],
                positions=[[0, 0, 0], [np.nan, 0, 0]],
                targets={"energy": [0.0]}),
      Structure(id="z_200", atomic_numbers=[18, 200],
                positions=[[0, 0, 0], [1.2, 0, 0]], targets={"energy": [0.0]}),
      Structure(id="no_label", atomic_numbers=[18, 18],
                positions=[[0, 0, 0], [1.2, 0, 0]]),
  ]
  iso = _cluster_with_isolated_atom()
  iso.targets = {"energy": [float(np.mean([g.targets["energy"][0]
                                           for g in good]))]}
  records = good[:3] + [bad[0], iso, bad[1]] + good[3:8] + bad[2:] + good[8:]
  data = str(tmp_path / "clusters.npz")
  save_structures(data, records)

  out = _toy_cli(str(tmp_path / "strict"), data)
  assert out.returncode == 2, out.stderr[-2000:]
  errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
  assert errors == [f"error: bad input: {data}[no_atoms]: structure has no "
                    "atoms"]

  workdir = str(tmp_path / "skip")
  out = _toy_cli(workdir, data, "--config.data.skip_invalid=True")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "4 invalid inputs were skipped" in out.stderr
  with open(os.path.join(workdir, "data_report.json")) as f:
    report = json.load(f)
  assert report["num_skipped"] == 4
  assert report["skipped"] == [
      f"{data}[no_atoms]: structure has no atoms",
      f"{data}[nan_xyz]: non-finite (NaN or inf) coordinates",
      f"{data}[z_200]: unknown element with atomic number 200",
      f"{data}[no_label]: no 'energy' target"]
  assert report["splits"] == {"train": 10, "val": 3}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  train = [r for r in rows if r["split"] == "train"]
  assert [r["step"] for r in train] == list(range(1, 7))
  # The isolated-atom cluster is in the training split and every step,
  # including those that see it, is finite.
  assert all(r["finite"] == 1.0 and np.isfinite(r["loss"]) and
             np.isfinite(r["grad_norm"]) for r in train)
  val = [r for r in rows if r["split"] == "val"][-1]
  assert np.isfinite(val["energy_mae"])
