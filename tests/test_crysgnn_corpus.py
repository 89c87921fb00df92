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
