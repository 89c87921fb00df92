"""Tests for the OC20 readers on small files written in each real format."""
import os
import pickle
import zlib

import numpy as np
import pytest

from noisy_nodes.data import sources

import noisy_nodes  # noqa: F401
from noisy_nodes.gns.oc20 import legacy_lmdb, readers
from noisy_nodes.data.structures import DataError


def _slab(seed=0):
  from ase.build import add_adsorbate, fcc111
  from ase.constraints import FixAtoms
  slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
  add_adsorbate(slab, "O", 1.6, "fcc")
  slab.constraints = [FixAtoms(indices=[a.index for a in slab if a.tag == 3])]
  rng = np.random.RandomState(seed)
  slab.positions[-1] += rng.normal(0, 0.1, 3)
  return slab


def _write_traj(path, with_tags=False, steps=4):
  from ase.calculators.emt import EMT
  from ase.io.trajectory import Trajectory
  from ase.optimize import BFGS
  atoms = _slab()
  # ase.build tags layers 1..3 (top..bottom) and the adsorbate 0: OC20 tags
  # are 1 surface (top layer here), 0 sub-surface, 2 adsorbate.
  ase_tags = atoms.get_tags()
  atoms.set_tags(np.where(ase_tags == 0, 2, np.where(ase_tags == 1, 1, 0))
                 if with_tags else 0)
  atoms.calc = EMT()
  with Trajectory(path, "w", atoms) as traj:
    opt = BFGS(atoms, logfile=None)
    opt.attach(traj)
    opt.run(fmax=0.05, steps=steps)
  return atoms


def test_read_trajectory_total_and_adsorption(tmp_path):
  path = str(tmp_path / "sys1.traj")
  final = _write_traj(path)
  from ase.io import read
  frames = read(path, ":")
  (s,) = readers.read_trajectory(path)
  n = len(final)
  assert s.num_atoms == n and s.info["energy_kind"] == "total"
  assert s.node_arrays["frames_positions"].shape == (len(frames), n, 3)
  np.testing.assert_allclose(s.positions, frames[0].positions)
  np.testing.assert_allclose(s.node_arrays["positions_relaxed"],
                             frames[-1].positions)
  assert s.targets["energy_relaxed"] == pytest.approx(
      frames[-1].get_potential_energy())
  assert s.targets["energy_initial"] == pytest.approx(
      frames[0].get_potential_energy())
  # FixAtoms on the bottom layer (4 atoms) -> fixed; tags were absent, so
  # they are inferred: O adsorbate, free Cu surface, fixed Cu sub-surface.
  assert s.node_arrays["fixed"].sum() == 4
  tags = s.node_arrays["tags"]
  assert s.info["tags_source"] == "inferred"
  assert tags[-1] == 2 and np.all(tags[:-1] < 2)
  np.testing.assert_array_equal(tags[:-1] == 0,
                                s.node_arrays["fixed"][:-1] == 1)
  # Referenced energies: E_ads = E - E_slab - E_O.
  (a,) = readers.read_trajectory(path, gas_refs={"O": -1.0}, slab_energy=2.0)
  assert a.info["energy_kind"] == "adsorption"
  assert a.targets["energy_relaxed"] == pytest.approx(
      s.targets["energy_relaxed"] - 2.0 + 1.0)
  with pytest.raises(DataError, match="no gas reference energy for element O"):
    readers.read_trajectory(path, gas_refs={"H": 0.0}, slab_energy=0.0)


def test_trajectory_tags_from_file(tmp_path):
  path = str(tmp_path / "tagged.traj")
  atoms = _write_traj(path, with_tags=True, steps=1)
  (s,) = readers.read_trajectory(path)
  assert s.info["tags_source"] == "file"
  np.testing.assert_array_equal(s.node_arrays["tags"], atoms.get_tags())
  assert sorted(set(atoms.get_tags())) == [0, 1, 2]
  # ASE layer tags (1..3, adsorbate 0) are not OC20 tags: inferred instead.
  ase_path = str(tmp_path / "asetags.traj")
  from ase.io import write
  write(ase_path, _slab())
  (a,) = readers.read_trajectory(ase_path)
  assert a.info["tags_source"].startswith("inferred")
  # The bottom layer is fixed: the free Cu atoms (2 layers) are surface.
  assert a.node_arrays["tags"].tolist() == [0] * 4 + [1] * 8 + [2]
  # Without constraints only the top layer is surface.
  free = _slab()
  free.constraints = []
  write(ase_path, free)
  (a,) = readers.read_trajectory(ase_path)
  assert a.node_arrays["tags"].tolist() == [0] * 8 + [1] * 4 + [2]
  assert a.node_arrays["fixed"].sum() == 0 and "energy_relaxed" not in a.targets


def test_trajectory_errors(tmp_path):
  with pytest.raises(DataError, match="file not found"):
    readers.read_trajectory(str(tmp_path / "missing.traj"))
  empty = tmp_path / "empty.traj"
  empty.write_bytes(b"")
  with pytest.raises(DataError, match="empty file"):
    readers.read_trajectory(str(empty))
  path = str(tmp_path / "t.traj")
  _write_traj(path, steps=2)
  raw = open(path, "rb").read()
  trunc = tmp_path / "trunc.traj"
  trunc.write_bytes(raw[: len(raw) // 3])
  with pytest.raises(DataError, match="trunc.traj"):
    readers.read_trajectory(str(trunc))
  junk = tmp_path / "junk.traj"
  junk.write_bytes(b"this is not a trajectory at all" * 10)
  with pytest.raises(DataError, match="junk.traj"):
    readers.read_trajectory(str(junk))


def _oc20_structure(i):
  from noisy_nodes.data.structures import Structure
  atoms = _slab(seed=i)
  n = len(atoms)
  rng = np.random.RandomState(i)
  return Structure.from_ase(
      atoms, id=f"s{i}",
      targets={"energy_relaxed": -1.5 + i, "energy_initial": 0.5 * i},
      info={"sid": 1000 + i, "energy_kind": "adsorption"},
      positions_relaxed=atoms.positions + rng.normal(0, 0.05, (n, 3)),
      tags=np.where(atoms.get_tags() == 0, 2,
                    np.where(atoms.get_tags() == 1, 1, 0)).astype(np.int32))


def test_ase_db_roundtrip(tmp_path):
  import ase.db
  for ext in ("db", "json"):
    path = str(tmp_path / f"x.{ext}")
    refs = [_oc20_structure(i) for i in range(2)]
    with ase.db.connect(path) as db:
      for s in refs:
        atoms = s.to_ase()
        from ase.constraints import FixAtoms
        atoms.constraints = [FixAtoms(mask=s.node_arrays["fixed"] == 1)]
        db.write(atoms, sid=s.info["sid"], y_relaxed=float(
            s.targets["energy_relaxed"]), y_init=float(
                s.targets["energy_initial"]),
                 data={"pos_relaxed": s.node_arrays["positions_relaxed"]})
    got = readers.read_ase_db(path)
    assert len(got) == 2
    for g, s in zip(got, refs):
      _assert_same(g, s)


def _assert_same(g, s):
  assert g.id == str(s.info["sid"])
  assert g.info["energy_kind"] == "adsorption"
  np.testing.assert_array_equal(g.atomic_numbers, s.atomic_numbers)
  np.testing.assert_allclose(g.positions, s.positions, atol=1e-12)
  np.testing.assert_allclose(g.cell, s.cell)
  for k in ("tags", "fixed"):
    np.testing.assert_array_equal(g.node_arrays[k], s.node_arrays[k])
  np.testing.assert_allclose(g.node_arrays["positions_relaxed"],
                             s.node_arrays["positions_relaxed"], atol=1e-12)
  for k in ("energy_relaxed", "energy_initial"):
    assert float(g.targets[k]) == pytest.approx(float(s.targets[k]))


def test_aselmdb_roundtrip_and_layout(tmp_path):
  import lmdb
  import orjson
  from ase.db.row import AtomsRow
  path = str(tmp_path / "data.aselmdb")
  refs = [_oc20_structure(i) for i in range(3)]
  readers.write_aselmdb(path, refs, metadata={"split": "train"})
  got = readers.read_aselmdb(path)
  assert len(got) == 3
  for g, s in zip(got, refs):
    _assert_same(g, s)
  # The on-disk layout is fairchem's: an LMDB file with keys 1..N + nextid,
  # zlib(orjson(AtomsRow dict)) values that ASE's AtomsRow understands.
  env = lmdb.open(path, subdir=False, readonly=True, lock=False)
  with env.begin() as txn:
    keys = sorted(bytes(k) for k in txn.cursor().iternext(values=False))
    dct = orjson.loads(zlib.decompress(txn.get(b"2")))
    nextid = orjson.loads(zlib.decompress(txn.get(b"nextid")))
  env.close()
  assert keys == [b"1", b"2", b"3", b"metadata", b"nextid"] and nextid == 4
  atoms = AtomsRow(dct).toatoms()
  np.testing.assert_allclose(atoms.positions, refs[1].positions)
  assert atoms.constraints[0].get_indices().tolist() == np.flatnonzero(
      refs[1].node_arrays["fixed"]).tolist()


def test_aselmdb_errors(tmp_path):
  import lmdb
  with pytest.raises(DataError, match="file not found"):
    readers.read_aselmdb(str(tmp_path / "nope.aselmdb"))
  empty = tmp_path / "e.aselmdb"
  empty.write_bytes(b"")
  with pytest.raises(DataError, match="empty file"):
    readers.read_aselmdb(str(empty))
  junk = tmp_path / "junk.aselmdb"
  junk.write_bytes(b"\x00garbage" * 1000)
  with pytest.raises(DataError, match="junk.aselmdb"):
    readers.read_aselmdb(str(junk))
  path = str(tmp_path / "ok.aselmdb")
  readers.write_aselmdb(path, [_oc20_structure(0)])
  raw = open(path, "rb").read()
  trunc = tmp_path / "trunc.aselmdb"
  trunc.write_bytes(raw[:4096])
  with pytest.raises(DataError, match="trunc.aselmdb"):
    readers.read_aselmdb(str(trunc))
  # A value that is not zlib'd JSON names the key.
  bad = str(tmp_path / "bad.aselmdb")
  env = lmdb.open(bad, subdir=False, lock=False)
  with env.begin(write=True) as txn:
    txn.put(b"1", b"not compressed")
  env.close()
  with pytest.raises(DataError, match=r"bad.aselmdb\[1\].*corrupt value"):
    readers.read_aselmdb(bad)
  # Bad values: NaN positions.
  s = _oc20_structure(0)
  s.positions[0, 0] = np.nan
  nan_path = str(tmp_path / "nan.aselmdb")
  readers.write_aselmdb(nan_path, [s])
  with pytest.raises(DataError, match=r"nan.aselmdb\[1\]"):
    readers.read_aselmdb(nan_path)


def _oc20_fields(i):
  s = _oc20_structure(i)
  return {"sid": 2000 + i, "atomic_numbers": s.atomic_numbers.astype(float),
          "pos": s.positions, "pos_relaxed": s.node_arrays["positions_relaxed"],
          "cell": s.cell[None], "natoms": s.num_atoms,
          "tags": s.node_arrays["tags"], "fixed": s.node_arrays["fixed"],
          "y_init": 0.25 * i, "y_relaxed": -0.75 + i}


@pytest.mark.parametrize("pyg2", [True, False])
def test_legacy_lmdb(tmp_path, pyg2):
  path = str(tmp_path / "data.lmdb")
  fields = [_oc20_fields(i) for i in range(2)]
  legacy_lmdb.write_legacy_lmdb_for_tests(path, fields, pyg2=pyg2)
  got = readers.read_legacy_lmdb(path)
  assert [g.id for g in got] == ["2000", "2001"]
  for g, f in zip(got, fields):
    # Tensors were stored as float32 like OC20's files.
    np.testing.assert_allclose(g.positions, f["pos"].astype(np.float32))
    np.testing.assert_allclose(g.node_arrays["positions_relaxed"],
                               f["pos_relaxed"].astype(np.float32))
    np.testing.assert_allclose(g.cell, f["cell"][0].astype(np.float32))
    np.testing.assert_array_equal(g.atomic_numbers, f["atomic_numbers"])
    np.testing.assert_array_equal(g.node_arrays["tags"], f["tags"])
    np.testing.assert_array_equal(g.node_arrays["fixed"], f["fixed"])
    assert g.targets["energy_relaxed"] == pytest.approx(f["y_relaxed"])
    assert g.targets["energy_initial"] == pytest.approx(f["y_init"])
    assert g.info["energy_kind"] == "adsorption"


def test_legacy_tensor_strides_and_dtypes():
  # A transposed (non-contiguous) int64 view and a uint8 tensor, built the
  # way torch pickles them (storage + offset + size + stride).
  flat = np.arange(12, dtype=np.int64)
  storage = legacy_lmdb._Call(
      legacy_lmdb._Global("torch.storage", "_load_from_bytes"),
      (legacy_lmdb._storage_bytes(flat),))
  view = legacy_lmdb._Call(
      legacy_lmdb._Global("torch._utils", "_rebuild_tensor_v2"),
      (storage, 1, (4, 2), (1, 4), False,
       legacy_lmdb._Call(legacy_lmdb._Global("collections", "OrderedDict"))))
  blob = legacy_lmdb._dumps({"v": view}, 4)
  out = legacy_lmdb.unpickle_data(blob)
  np.testing.assert_array_equal(out["v"], flat[1:].reshape(-1)[
      np.arange(4)[:, None] + 4 * np.arange(2)[None]])
  np.testing.assert_array_equal(out["v"], [[1, 5], [2, 6], [3, 7], [4, 8]])


def test_legacy_lmdb_refuses_other_globals(tmp_path):
  import lmdb
  path = str(tmp_path / "evil.lmdb")
  env = lmdb.open(path, subdir=False, lock=False)
  with env.begin(write=True) as txn:
    txn.put(b"0", pickle.dumps(_Evil(), protocol=4))
  env.close()
  with pytest.raises(DataError, match=r"evil.lmdb\[0\].*refusing to unpickle "
                     r"posix.system"):
    readers.read_legacy_lmdb(path)


class _Evil:

  def __reduce__(self):
    return (os.system, ("echo pwned",))


def test_legacy_lmdb_errors(tmp_path):
  import lmdb
  with pytest.raises(DataError, match="file not found"):
    readers.read_legacy_lmdb(str(tmp_path / "none.lmdb"))
  e = tmp_path / "empty.lmdb"
  e.write_bytes(b"")
  with pytest.raises(DataError, match="empty file"):
    readers.read_legacy_lmdb(str(e))
  path = str(tmp_path / "data.lmdb")
  legacy_lmdb.write_legacy_lmdb_for_tests(path, [_oc20_fields(0)])
  raw = open(path, "rb").read()
  t = tmp_path / "trunc.lmdb"
  t.write_bytes(raw[:4096])
  with pytest.raises(DataError, match="trunc.lmdb"):
    readers.read_legacy_lmdb(str(t))
  # A truncated pickle value names the key.
  bad = str(tmp_path / "bad.lmdb")
  blob = legacy_lmdb.data_pickle(_oc20_fields(0))
  env = lmdb.open(bad, subdir=False, lock=False)
  with env.begin(write=True) as txn:
    txn.put(b"0", blob[: len(blob) // 2])
  env.close()
  with pytest.raises(DataError, match=r"bad.lmdb\[0\]"):
    readers.read_legacy_lmdb(bad)
  # 'length' disagreeing with the keys.
  lpath = str(tmp_path / "len.lmdb")
  env = lmdb.open(lpath, subdir=False, lock=False)
  with env.begin(write=True) as txn:
    txn.put(b"0", blob)
    txn.put(b"length", pickle.dumps(5))
  env.close()
  with pytest.raises(DataError, match="'length' says 5"):
    readers.read_legacy_lmdb(lpath)
  # Keys that are not 0..N-1: a missing end at open, a gap when read.
  for name, keys in (("ends", (b"0", b"1", b"3")), ("gap", (b"0", b"2", b"3"))):
    gpath = str(tmp_path / f"{name}.lmdb")
    env = lmdb.open(gpath, subdir=False, lock=False)
    with env.begin(write=True) as txn:
      for k in keys:
        txn.put(k, blob)
    env.close()
    if name == "ends":
      with pytest.raises(DataError, match="not 0..N-1.*no key '2'"):
        legacy_lmdb.LegacyLmdbSource(gpath)
    else:
      src = legacy_lmdb.LegacyLmdbSource(gpath)  # N = 3 entries: '2' is there
      assert len(src) == 3
      with pytest.raises(DataError, match=r"gap.lmdb\[1\]"):
        src[1]
      # release() closes this process's environment (its mapped pages go);
      # the next read reopens it. Wrappers pass it on.
      first = src[0].positions
      assert any(gpath in str(k) for k in legacy_lmdb._ENVS)  # pylint: disable=protected-access
      sources.Subset(src, [0, 2]).release()
      assert not any(gpath in str(k) for k in legacy_lmdb._ENVS)  # pylint: disable=protected-access
      np.testing.assert_array_equal(src[0].positions, first)
      releaser = sources.Releaser(src, every=2)  # what the stream uses
      releaser.tick()
      assert any(gpath in str(k) for k in legacy_lmdb._ENVS)  # pylint: disable=protected-access
      releaser.tick()
      assert not any(gpath in str(k) for k in legacy_lmdb._ENVS)  # pylint: disable=protected-access
  # Bad values: natoms disagreeing with the atoms.
  f = _oc20_fields(0)
  f["natoms"] = 3
  npath = str(tmp_path / "natoms.lmdb")
  legacy_lmdb.write_legacy_lmdb_for_tests(npath, [f])
  with pytest.raises(DataError, match=r"natoms.lmdb\[0\].*natoms=3"):
    readers.read_legacy_lmdb(npath)


def test_legacy_writer_matches_real_torch(tmp_path):
  torch = pytest.importorskip("torch")
  pyg = pytest.importorskip("torch_geometric.data")
  f = _oc20_fields(1)
  d = pickle.loads(legacy_lmdb.data_pickle(f))
  assert isinstance(d, pyg.Data)
  np.testing.assert_allclose(d.pos.numpy(), f["pos"].astype(np.float32))
  assert d.tags.dtype == torch.int64 and d.sid == f["sid"]
  real = pyg.Data(**{k: torch.tensor(v) if isinstance(v, np.ndarray) else v
                     for k, v in f.items()})
  got = legacy_lmdb.unpickle_data(pickle.dumps(real, protocol=-1))
  for k, v in f.items():
    np.testing.assert_allclose(np.asarray(got[k], np.float64),
                               np.asarray(v, np.float64))
