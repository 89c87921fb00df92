"""The CrysGNN corpus as a random-access source: memory-mapped npz chunks.

``CorpusSource(manifest)`` is a ``noisy_nodes.data.sources.Source`` over the
chunks a corpus manifest lists (``corpus.build_corpus``): it holds paths and
counts only (picklable), and each process that reads memory-maps the chunks
it touches, so no structure is parsed before it is asked for and memory is
flat in the corpus size.
"""
from __future__ import annotations

import bisect
import collections
import json
import os
import struct
import zipfile
from typing import Dict, Sequence, Tuple

import numpy as np

from noisy_nodes.data.sources import LazyHandle, Source
from noisy_nodes.data.structures import DataError, IndexRows, Structure


def _memmap_npz(path: str) -> Dict[str, np.ndarray]:
  """Memory-maps every array of an uncompressed ``.npz`` (``np.savez``).

  A zip member stored without compression is the ``.npy`` bytes at a known
  offset, so it can be mapped instead of read whole: one structure of a
  10,000-structure chunk costs its own bytes, not the chunk's.
  """
  out = {}
  try:
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
      for info in zf.infolist():
        if info.compress_type != zipfile.ZIP_STORED:
          raise ValueError(f"member {info.filename} is compressed")
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
          raise ValueError(f"bad local header of {info.filename}")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        if dtype.hasobject:
          raise ValueError(f"member {info.filename} holds Python objects")
        name = info.filename[:-4] if info.filename.endswith(".npy") else (
            info.filename)
        if int(np.prod(shape)) == 0:
          out[name] = np.zeros(shape, dtype)
        else:
          out[name] = np.memmap(path, dtype, "r", offset=f.tell(),
                                shape=shape, order="F" if fortran else "C")
  except (OSError, ValueError, zipfile.BadZipFile, struct.error) as e:
    raise DataError(path, f"unreadable corpus chunk ({e})") from e
  return out


class _Chunk:
  """One ``save_structures`` chunk, memory-mapped; structures on demand."""

  def __init__(self, path: str):
    self.path = path
    a = _memmap_npz(path)
    try:
      self.rows = IndexRows(a, path)   # rows parsed when read, not here
      self.n_atoms = np.asarray(a["n_atoms"], np.int64)
      self.offsets = np.concatenate([[0], np.cumsum(self.n_atoms)])
      self.z, self.pos = a["atomic_numbers"], a["positions"]
      self.cell, self.pbc = a["cell"], a["pbc"]
    except (KeyError, ValueError) as e:
      raise DataError(path, f"not a structure chunk ({e})") from e
    self.targets = {k[2:]: (a[k], a["th/" + k[2:]]) for k in a
                    if k.startswith("t/")}
    self.nodes = {k[2:]: (a[k], np.concatenate([[0], np.cumsum(
        a["nl/" + k[2:]])]), a["nc/" + k[2:]]) for k in a if k.startswith("n/")}

  def structure(self, j: int) -> Structure:
    sl = slice(int(self.offsets[j]), int(self.offsets[j + 1]))
    try:
      targets = {k: np.array(v[j]) for k, (v, has) in self.targets.items()
                 if has[j]}
      nodes = {}
      for k, (flat, o, counts) in self.nodes.items():
        if o[j + 1] == o[j] and counts[j] == 0:
          continue
        v = np.array(flat[o[j]:o[j + 1]])
        if k.startswith("frames"):
          v = v.reshape((int(counts[j]), -1) + v.shape[1:])
        nodes[k] = v
      ident, info = self.rows.row(j)
      return Structure(id=ident, atomic_numbers=np.array(self.z[sl]),
                       positions=np.array(self.pos[sl]),
                       cell=np.array(self.cell[j]), pbc=np.array(self.pbc[j]),
                       targets=targets, node_arrays=nodes,
                       info=dict(info))
    except (IndexError, ValueError, OSError) as e:
      raise DataError(f"{self.path}[{j}]", f"unreadable structure ({e})") from e


class _Chunks:
  """Per-process LRU of memory-mapped chunks (bounded open maps).

  Opening a chunk maps its members (~2 ms) and parses nothing else
  (``IndexRows``), and an open chunk holds ~0.2 MB besides the pages read,
  so up to 128 stay open: a shuffled epoch of an 800K corpus (80 chunks)
  opens each once per release (``sources.Releaser``) instead of on most
  reads.
  """

  def __init__(self, paths: Sequence[str], keep: int = 128):
    self.paths, self.keep = list(paths), keep
    self.open: "collections.OrderedDict[int, _Chunk]" = (
        collections.OrderedDict())

  def __call__(self, k: int) -> _Chunk:
    chunk = self.open.pop(k, None) or _Chunk(self.paths[k])
    self.open[k] = chunk
    while len(self.open) > self.keep:
      self.open.popitem(last=False)
    return chunk


class CorpusSource(Source):
  """A corpus manifest's structures, read from its chunks on demand.

  Holds the manifest's chunk paths and counts only (picklable); each process
  that reads memory-maps the chunks it touches (``_memmap_npz``), so memory is
  flat in the corpus size and no structure is parsed before it is asked for.
  """

  def __init__(self, manifest_path: str):
    try:
      with open(manifest_path) as f:
        manifest = json.load(f)
      chunks = [(c["path"], int(c["count"])) for c in manifest["chunks"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise DataError(manifest_path, f"unreadable corpus manifest ({e})") from e
    root = os.path.dirname(os.path.abspath(manifest_path))
    self.manifest_path = manifest_path
    self.paths = [os.path.join(root, p) for p, n in chunks if n]
    self.offsets = np.cumsum([0] + [n for _, n in chunks if n]).tolist()
    self._chunks = LazyHandle(_Chunks, self.paths)

  def __len__(self) -> int:
    return int(self.offsets[-1])

  def _locate(self, i: int) -> Tuple[_Chunk, int]:
    k = bisect.bisect_right(self.offsets, i) - 1
    return self._chunks.get()(k), i - self.offsets[k]

  def _read(self, i: int) -> Structure:
    chunk, j = self._locate(i)
    return chunk.structure(j)

  def _name(self, i: int) -> str:
    chunk, j = self._locate(i)
    return chunk.rows.id(j)

  def _num_atoms(self, i: int) -> int:
    chunk, j = self._locate(i)
    return int(chunk.n_atoms[j])

  def _targets(self, i: int) -> Dict[str, np.ndarray]:
    chunk, j = self._locate(i)
    return {k: np.array(v[j]) for k, (v, has) in chunk.targets.items()
            if has[j]}
