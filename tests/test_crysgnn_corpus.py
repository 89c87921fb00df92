"""Pre-training corpus: deterministic by seed, labels = spglib of the stored
structure, failures recorded not fatal."""
import json
import os

import numpy as np
import pytest
from ase.build import bulk
import ase.io

from crystal.crysgnn import corpus, symmetry


def _check_labels(structures):
  for s in structures:
    labels = symmetry.symmetry_labels(s)
    assert s.targets["space_group"] == labels["space_group"]
    assert s.targets["crystal_system"] == labels["crystal_system"]
    assert s.info["space_group"] == labels["space_group"]
    assert s.num_atoms <= 24


def test_deterministic_by_seed_and_chunking(tmp_path):
  kw = dict(n=6, seed=3, workers=1, max_atoms=24, log=lambda *_: None)
  m1 = corpus.build_corpus(str(tmp_path / "a.json"), chunk_size=4, **kw)
  m2 = corpus.build_corpus(str(tmp_path / "b.json"), chunk_size=6, **kw)
  assert len(m1["chunks"]) == 2 and len(m2["chunks"]) == 1
  a = corpus.load_corpus(str(tmp_path / "a.json"))
  b = corpus.load_corpus(str(tmp_path / "b.json"))
  assert len(a) == m1["n_structures"] == 6 - m1["n_failures"] >= 4
  assert [s.id for s in a] == [s.id for s in b]
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x.atomic_numbers, y.atomic_numbers)
    np.testing.assert_array_equal(x.positions, y.positions)
  _check_labels(a)
  assert m1["structures_per_s"] > 0
  corpus.build_corpus(str(tmp_path / "c.json"), n=2, seed=4, workers=1,
                      max_atoms=24, log=lambda *_: None)
  c = corpus.load_corpus(str(tmp_path / "c.json"))
  assert (c[0].num_atoms != a[0].num_atoms
          or not np.allclose(c[0].positions, a[0].positions))


@pytest.mark.parametrize("source", corpus.SOURCES)
def test_each_source(source):
  mix = [1.0 if s == source else 0.0 for s in corpus.SOURCES]
  made = 0
  for i in range(3):
    s, fail = corpus.make_item(("gen", i), 11, mix, 24, 30)
    if s is None:
      assert fail["source"] == source and fail["error"]
      continue
    made += 1
    assert s.info["source_kind"] == source
    _check_labels([s])
    if source == "pyxtal":  # The request is kept, labels are detected.
      assert 1 <= s.info["requested_space_group"] <= 230
  assert made >= 2


def test_user_inputs_and_recorded_failures(tmp_path):
  d = tmp_path / "inputs"
  d.mkdir()
  ase.io.write(str(d / "nacl.cif"), bulk("NaCl", "rocksalt", a=5.64))
  (d / "broken.cif").write_text("data_x\n_cell_length_a oops\n")
  out = str(tmp_path / "u.json")
  m = corpus.build_corpus(out, n=0, seed=0, workers=1, inputs=[str(d)],
                          log=lambda *_: None)
  assert m["n_structures"] == 1 and m["n_failures"] == 1
  assert "broken.cif" in m["failures"][0]["item"]
  (s,) = corpus.load_corpus(out)
  assert s.targets["space_group"] == 225 and s.info["source_kind"] == "file"
  with open(out) as f:
    assert json.load(f)["failures"][0]["source"] == "file"
  with pytest.raises(ValueError):
    corpus.build_corpus(out, n=1, mix=(1, 0, 0), log=lambda *_: None)


def test_corpus_source_reads_memory_mapped_chunks_on_demand(tmp_path):
  """``CorpusSource``: len / index / name / num_atoms over chunks, equal to
  loading the chunks whole; a picklable index (no structures held); a
  corrupted chunk is a DataError naming its file."""
  import pickle  # pylint: disable=g-import-not-at-top  (picklability only)
  from noisy_nodes.data.structures import DataError, load_structures  # pylint: disable=g-import-not-at-top
  d = tmp_path / "inputs"
  d.mkdir()
  for name, atoms in (("nacl", bulk("NaCl", "rocksalt", a=5.64)),
                      ("cu", bulk("Cu", "fcc", a=3.6)),
                      ("si", bulk("Si", "diamond", a=5.43)),
                      ("mg", bulk("Mg", "hcp", a=3.21, c=5.21))):
    ase.io.write(str(d / f"{name}.cif"), atoms)
  out = str(tmp_path / "m.json")
  m = corpus.build_corpus(out, n=3, seed=1, workers=1, inputs=[str(d)],
                          chunk_size=2, mix=(0, 0, 1, 0), log=lambda *_: None)
  paths = [str(tmp_path / c["path"]) for c in m["chunks"]]
  assert len(paths) >= 3
  src = corpus.CorpusSource(out)
  whole = [s for p in paths for s in load_structures(p)]
  assert len(src) == len(whole) == 7
  for i in (6, 0, 2, 5, 1, 3, -3):               # any order, across chunks
    s, ref = src[i], whole[i]
    assert s.id == ref.id == src.name(i)
    assert src.num_atoms(i) == s.num_atoms == ref.num_atoms
    np.testing.assert_array_equal(s.positions, ref.positions)
    np.testing.assert_array_equal(s.cell, ref.cell)
    assert s.targets == ref.targets == src.targets(i) and s.info == ref.info
  chunk = src._chunks.get()(0)  # pylint: disable=protected-access
  assert isinstance(chunk.pos, np.memmap)
  copy = pickle.loads(pickle.dumps(src))
  assert copy._chunks._handle is None           # pylint: disable=protected-access
  assert [s.id for s in copy] == [s.id for s in whole]
  with open(paths[-1], "r+b") as f:
    f.write(b"garbage!" * 8)
  with pytest.raises(DataError, match=os.path.basename(paths[-1])):
    corpus.CorpusSource(out)[-1]


def test_changed_folder_gets_a_new_cache_key(tmp_path):
  d = tmp_path / "inputs"
  d.mkdir()
  ase.io.write(str(d / "cu.cif"), bulk("Cu", "fcc", a=3.6))
  cfg = {"path": str(d), "cache_dir": str(tmp_path / "cache"),
         "corpus": {"extra": 0}}
  key = corpus.CorpusRequest(cfg).cache_path()
  assert corpus.CorpusRequest(cfg).cache_path() == key   # stable
  ase.io.write(str(d / "al.cif"), bulk("Al", "fcc", a=4.05))
  added = corpus.CorpusRequest(cfg).cache_path()
  assert added != key
  os.utime(d / "cu.cif", ns=(1, 1))                       # rewritten
  assert corpus.CorpusRequest(cfg).cache_path() not in (key, added)


def test_changed_folder_converts_only_the_chunks_it_touches(tmp_path):
  d = tmp_path / "inputs"
  d.mkdir()
  for i in range(8):
    ase.io.write(str(d / f"cu{i}.cif"), bulk("Cu", "fcc", a=3.5 + 0.02 * i))
  kw = dict(n=0, workers=1, inputs=[str(d)], chunk_size=3,
            log=lambda *_: None)
  first = corpus.build_corpus(str(tmp_path / "a.json"), **kw)
  assert len(first["chunks"]) >= 2 and first["n_structures"] == 8
  again = corpus.build_corpus(str(tmp_path / "b.json"), **kw)
  assert all(c.get("reused") for c in again["chunks"])
  ase.io.write(str(d / "cu3.cif"), bulk("Cu", "fcc", a=3.9))   # rewritten
  os.utime(d / "cu3.cif", ns=(10**9, 10**9))   # whatever the clock's tick
  changed = corpus.build_corpus(str(tmp_path / "c.json"), **kw)
  rebuilt = [c for c in changed["chunks"] if not c.get("reused")]
  assert len(rebuilt) == 1 and len(changed["chunks"]) == len(first["chunks"])
  assert [s.id for s in corpus.CorpusSource(str(tmp_path / "c.json"))] == [
      s.id for s in corpus.CorpusSource(str(tmp_path / "a.json"))]
