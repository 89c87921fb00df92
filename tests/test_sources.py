"""noisy_nodes.data.sources: the random-access Source contract."""
import os
import pickle

import numpy as np
import pytest

from noisy_nodes.data import sources as sources_lib
from noisy_nodes.data.sources import (Concat, LazyHandle, ListSource, Mapped,
                                      Source, Subset, as_source)
from noisy_nodes.data.structures import Structure


def _structure(i):
  return Structure(id=f"s{i}", atomic_numbers=[1 + i % 5, 8],
                   positions=np.arange(6.0).reshape(2, 3) + i,
                   targets={"y": float(i)})


def _open_counted(path, counter_path):
  with open(counter_path, "a") as f:
    f.write("x")
  return open(path, "rb")


class _FileSource(Source):
  """A file-backed source: fixed-size records of 2 float64 (id, target)."""

  def __init__(self, path, counter_path):
    self.path = path
    self.n = os.path.getsize(path) // 16
    self._fh = LazyHandle(_open_counted, path, counter_path)

  def __len__(self):
    return self.n

  def _read(self, i):
    fh = self._fh.get()
    fh.seek(16 * i)
    a, b = np.frombuffer(fh.read(16), np.float64)
    return Structure(id=f"r{int(a)}", atomic_numbers=[1], positions=[[0, 0, 0]],
                     targets={"y": b})

  def _name(self, i):
    return f"r{i}"


@pytest.fixture
def file_source(tmp_path):
  path, counter = str(tmp_path / "recs.bin"), str(tmp_path / "opens")
  np.array([[i, 10.0 * i] for i in range(7)], np.float64).tofile(path)
  open(counter, "w").close()
  return _FileSource(path, counter), counter


def _opens(counter):
  return os.path.getsize(counter)


def test_list_source_sequence_protocol():
  data = [_structure(i) for i in range(5)]
  src = ListSource(data)
  assert len(src) == 5 and src[0] is data[0] and src[-1] is data[4]
  assert [s.id for s in src] == [s.id for s in data]
  assert src.name(2) == "s2" and src.num_atoms(3) == 2
  assert float(src.targets(4)["y"]) == 4.0
  assert src.index(data[3]) == 3 and data[1] in src
  for bad in (5, -6, 100):
    with pytest.raises(IndexError, match="out of range"):
      src[bad]
    with pytest.raises(IndexError):
      src.name(bad)
  with pytest.raises(TypeError):
    src["a"]
  assert as_source(src) is src and isinstance(as_source(data), ListSource)


def test_subset_and_concat_indexing():
  a = ListSource([_structure(i) for i in range(4)])
  b = ListSource([_structure(i) for i in range(10, 13)])
  cat = Concat([a, b, []])
  assert len(cat) == 7
  assert [s.id for s in cat] == ["s0", "s1", "s2", "s3", "s10", "s11", "s12"]
  assert cat[4].id == "s10" and cat[-1].id == "s12" and cat.name(3) == "s3"
  with pytest.raises(IndexError):
    cat[7]
  sub = Subset(cat, [6, 0, -3, 4])
  assert [s.id for s in sub] == ["s12", "s0", "s10", "s10"]
  assert sub.name(0) == "s12" and float(sub.targets(2)["y"]) == 10.0
  with pytest.raises(IndexError):
    sub[4]
  with pytest.raises(IndexError, match="out of range"):
    Subset(cat, [0, 7])
  # Slices are subsets; nested subsets compose.
  assert [s.id for s in cat[1:6:2]] == ["s1", "s3", "s11"]
  assert [s.id for s in Subset(sub, [3, 0])] == ["s10", "s12"]
  assert len(Subset(cat, [])) == 0 and list(Subset(cat, [])) == []


def test_mapped_applies_on_access():
  calls = []

  def fn(s, i):
    calls.append(i)
    return Structure(id=s.id + "!", atomic_numbers=s.atomic_numbers,
                     positions=s.positions)

  m = Mapped([_structure(i) for i in range(3)], fn)
  assert m.name(1) == "s1" and not calls  # names do not read through fn
  assert m[2].id == "s2!" and calls == [2]


def test_pickle_round_trip_drops_handle_and_reopens(file_source):
  src, counter = file_source
  assert src[3].id == "r3" and float(src[3].targets["y"]) == 30.0
  assert src[5].id == "r5"
  assert _opens(counter) == 1  # opened once, lazily, then reused
  blob = pickle.dumps(Subset(Concat([src, src]), [8, 1]))
  assert b"recs.bin" in blob and len(blob) < 2000  # paths and indices only
  fresh = pickle.loads(blob)
  assert fresh.source.sources[0]._fh._handle is None  # not opened yet
  assert _opens(counter) == 1
  assert [s.id for s in fresh] == ["r1", "r1"]
  assert float(fresh.targets(0)["y"]) == 10.0
  assert _opens(counter) == 2  # the fresh object opened its own handle
  # The original still reads with its own handle.
  assert src[6].id == "r6" and _opens(counter) == 2


def test_handle_reopened_in_another_process(file_source, monkeypatch):
  src, counter = file_source
  src[0]
  assert _opens(counter) == 1
  # A forked child sees its parent's handle object but another pid.
  real = os.getpid()
  monkeypatch.setattr(sources_lib.os, "getpid", lambda: real + 1)
  assert src[2].id == "r2" and _opens(counter) == 2
  assert src[4].id == "r4" and _opens(counter) == 2


def test_list_source_pickles_its_structures():
  src = Subset(ListSource([_structure(i) for i in range(3)]), [2])
  back = pickle.loads(pickle.dumps(src))
  np.testing.assert_array_equal(back[0].positions, src[0].positions)
  assert back[0].id == "s2"


def _same_structures(a, b):
  assert a.id == b.id and a.info == b.info and a.targets.keys() == b.targets.keys()
  np.testing.assert_array_equal(a.atomic_numbers, b.atomic_numbers)
  np.testing.assert_array_equal(a.positions, b.positions)


def test_structure_files_parse_only_the_rows_they_read(tmp_path):
  """save_structures writes (id, info) per row (structures.IndexRows): a
  corpus chunk opens without parsing its index, a bad row is a DataError
  naming FILE[j] when that structure is read, and files written with the
  older whole-file index still read the same."""
  from crystal.crysgnn import chunks  # pylint: disable=g-import-not-at-top
  from noisy_nodes.data import structures as structures_lib  # pylint: disable=g-import-not-at-top
  from noisy_nodes.data.structures import DataError  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  structs = [_structure(i) for i in range(5)]
  for i, s in enumerate(structs):
    s.info.update(space_group=200 + i, source=f"f{i}.cif")
  path = str(tmp_path / "chunk.npz")
  structures_lib.save_structures(path, structs)
  with np.load(path) as z:
    members = {k: z[k] for k in z.files}
  assert {"index_rows", "index_rows_at"} <= set(members)
  for s_new in (sources_lib.NpzSource(path), chunks._Chunk(path)):
    read = (s_new.structure if isinstance(s_new, chunks._Chunk)
            else s_new.__getitem__)
    for i, s in enumerate(structs):
      _same_structures(read(i), s)
  # The older layout: one JSON index, no rows.
  old = dict(members)
  del old["index_rows"], old["index_rows_at"]
  old["index_json"] = np.frombuffer(json.dumps(
      {"ids": [s.id for s in structs], "info": [s.info for s in structs],
       "targets": {}, "nodes": {}}).encode(), np.uint8)
  old_path = str(tmp_path / "old.npz")
  np.savez(old_path, **old)
  src, chunk = sources_lib.NpzSource(old_path), chunks._Chunk(old_path)
  for i, s in enumerate(structs):
    _same_structures(src[i], s)
    _same_structures(chunk.structure(i), s)
    assert src.name(i) == s.id
  # A corrupt row: only its structure fails, naming the file and row.
  bad = dict(members)
  rows = bad["index_rows"].copy()
  at = bad["index_rows_at"]
  rows[at[3]] = ord("#")
  bad["index_rows"] = rows
  bad_path = str(tmp_path / "bad.npz")
  np.savez(bad_path, **bad)
  chunk = chunks._Chunk(bad_path)   # opens: nothing parsed yet
  _same_structures(chunk.structure(2), structs[2])
  with pytest.raises(DataError, match=r"bad\.npz\[3\]: unreadable index row"):
    chunk.structure(3)
