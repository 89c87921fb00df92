"""Atomic writes of cache files that several processes may build at once.

Caches (featurised graphs, frame indices, structure chunks, shard metadata)
are keyed by content, so two runs sharing a cache directory -- one process
per core of a sweep, or data-loader workers -- often build the *same* file
at the same moment. Each writer therefore writes to its own temporary file
in the target's directory (unique per process and thread, from
``tempfile.mkstemp``) and renames it over the target: the rename is atomic
on POSIX, so readers see either no file or a complete one, and the last of
several identical writes wins harmlessly. A fixed temporary name
(``path + ".tmp"``) would let one writer rename or truncate another's file.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator

import numpy as np


@contextlib.contextmanager
def replacing(path: str, suffix: str = ".tmp") -> Iterator[str]:
  """Yields a fresh temporary path beside ``path``; on success renames it
  over ``path``, on an exception removes it.

  ``suffix``: the temporary file's ending (``.npz`` for ``np.savez``, which
  appends ``.npz`` to any other name).
  """
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=d, prefix=os.path.basename(path) + ".",
                             suffix=suffix)
  os.close(fd)
  os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def savez(path: str, **arrays) -> None:
  """``np.savez(path, **arrays)``, atomically (see the module docstring)."""
  with replacing(path, suffix=".tmp.npz") as tmp:
    np.savez(tmp, **arrays)


def write_text(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` atomically."""
  with replacing(path) as tmp:
    with open(tmp, "w") as f:
      f.write(text)
