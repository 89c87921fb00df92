"""CrysGNN pre-training's input pipeline at corpus scale (issue 15's figures).

Usage (``benchmarks/data_bench.py --only=crysgnn`` runs the same):
  python benchmarks/crysgnn_data_bench.py           # 200,000 vs 5,000 crystals, 1,000 steps
  python benchmarks/crysgnn_data_bench.py --quick   # 20,000 vs 2,000 crystals, 30 steps
  python benchmarks/crysgnn_data_bench.py --rates_only [--big N]       # K = 1 vs 2 only
  python benchmarks/crysgnn_data_bench.py --preprocess_only [--big N]  # shards only

In a temporary directory it removes, it writes:

* a pre-training corpus in the format ``configs/crysgnn_pretrain.py`` trains
  from (``--config.data.path=corpus.json``: a manifest of ``save_structures``
  npz chunks of 10,000 crystals, as ``crystal.crysgnn.corpus.build_corpus``
  writes and ``chunks.CorpusSource`` memory-maps). The crystals are copies of
  32 templates (ASE cells of 1 to 144 atoms, mean 33, 7 of them over 48
  atoms: fcc/bcc/hcp/diamond/rock-salt/CsCl/fluorite/perovskite/wurtzite/
  rutile cells, supercells and 5 with one atom displaced for low-symmetry
  labels), each copy isotropically strained by ±2 % with its atoms shifted by
  a random origin: both leave the space group unchanged, so the spglib labels
  (space group, crystal system) of the template ARE each copy's labels.
  That is the one shortcut: ``build_corpus`` runs spglib on every crystal
  (5-10 ms for a 30-100-atom cell, ~20 min for 200,000 on one core), so the
  labels are detected once per template and checked by spglib on 100 copies
  (printed). Info and targets are those ``build_corpus`` stores. Nothing is
  learned here: this measures time and memory.
* a folder of CIF files (``--files``, default 1,000 / 200 with --quick): the
  path users take from structure files (``--config.data.path=DIR``) is the
  one-off conversion into labelled chunks (``corpus.CorpusRequest``, in
  ``data.corpus.workers`` = 2 processes, spglib on every file); its rate is
  printed and extrapolated to 200,000 and 800,000 files.

Then, each training run a fresh process (``data_bench._child``) at
``configs/crysgnn_pretrain.py:demo`` (the reference 5 x 64 CGCNN encoder,
batches of up to 32 crystals), with ``data.val_fraction = 0.05`` (the
paper-size config's) and ``data.cache_limit = 0``, so that both corpus sizes
take the streaming path a 200,000-crystal corpus takes by default (up to
20,000 training crystals the engine would featurise and hold them all):

* seconds to the first batch and the first training step (which includes
  compiling it), and the setup before the stream (splits, budget from 2,000
  crystals) at both sizes: flat in the corpus size;
* peak RSS at the last of ``--steps`` steps and at the end of the run, which
  adds the final validation of 5 % of the corpus (streamed here, as
  ``cache_limit = 0``; a validation split the engine holds featurised, up to
  the default limit of 20,000, costs ~96 kB per crystal: ~1 GB at 200,000);
  the goal (<= 2 GB, <= 1.25x) is on the training figure;
* the training stream alone, crystals/s at ``data.workers`` = 1 and 2
  (``noisy_nodes.data.workers.FeaturizePool``: CrysGNN's stream supports
  workers; its featurisation is deterministic, no noise);
* with ``--preprocess`` (not in --quick's 5 minutes): ``noisy_nodes.preprocess``
  of the big corpus (README's recipe for an 800K folder), its rate, its
  bytes per crystal on disk (the shards hold the featurised graphs: 41
  Gaussians per edge) and the first batch / step training from the shards.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
CHUNK = 10_000  # crystal.crysgnn.corpus.CHUNK_SIZE


def templates():
  """32 template crystals of 1..144 atoms, labelled by spglib."""
  from ase import build  # pylint: disable=g-import-not-at-top
  from ase.spacegroup import crystal  # pylint: disable=g-import-not-at-top
  from noisy_nodes.data.structures import Structure  # pylint: disable=g-import-not-at-top
  from crystal.crysgnn import symmetry  # pylint: disable=g-import-not-at-top
  base = [build.bulk("Cu", "fcc", 3.61), build.bulk("Fe", "bcc", 2.87),
          build.bulk("Mg", "hcp", 3.21, c=5.21),
          build.bulk("Si", "diamond", 5.43, cubic=True),
          build.bulk("NaCl", "rocksalt", 5.64, cubic=True),
          build.bulk("CsCl", "cesiumchloride", 4.12),
          build.bulk("CaF2", "fluorite", 5.46, cubic=True),
          build.bulk("ZnO", "wurtzite", 3.25, c=5.21),
          crystal(["Sr", "Ti", "O"], [(0, 0, 0), (.5, .5, .5), (.5, .5, 0)],
                  spacegroup=221, cellpar=[3.905] * 3 + [90] * 3),
          crystal(["Ti", "O"], [(0, 0, 0), (.305, .305, 0)], spacegroup=136,
                  cellpar=[4.59, 4.59, 2.96, 90, 90, 90])]
  cells = []
  for a in base:
    cells += [a, a.repeat((2, 2, 2))]
    if len(a) <= 5:
      cells.append(a.repeat((3, 3, 2)))
  for k in (1, 7, 10, 16, 21):  # one atom displaced: low-symmetry labels
    a = cells[k].repeat((1, 1, 2))
    a.positions[0] += (0.11, 0.05, 0.0)
    cells.append(a)
  cells.append(base[6].repeat((2, 2, 3)))
  out = []
  for i, a in enumerate(cells):
    s = Structure.from_ase(a, id=f"template-{i}")
    symmetry.add_symmetry_labels(s)
    out.append(s)
  return out


def _copy(t, rng, ident):
  """An isotropically strained, origin-shifted copy (same space group)."""
  from noisy_nodes.data.structures import Structure  # pylint: disable=g-import-not-at-top
  scale = 1.0 + rng.uniform(-0.02, 0.02)
  cell = t.cell * scale
  frac = np.linalg.solve(t.cell.T, t.positions.T).T + rng.uniform(0, 1, 3)
  info = dict(t.info, source=f"{ident}.cif", source_kind="file")
  return Structure(id=ident, atomic_numbers=t.atomic_numbers,
                   positions=(frac % 1.0) @ cell, cell=cell, pbc=t.pbc,
                   targets=dict(t.targets), info=info)


def write_corpus(folder, n, seed=0):
  """Writes a corpus of ``n`` crystals in chunks of ``CHUNK``; returns
  (manifest path, templates)."""
  from noisy_nodes.data.structures import save_structures  # pylint: disable=g-import-not-at-top
  from crystal.crysgnn import symmetry  # pylint: disable=g-import-not-at-top
  os.makedirs(folder)
  temps = templates()
  rng = np.random.default_rng(seed)
  chunks = []
  for k, start in enumerate(range(0, n, CHUNK)):
    count = min(CHUNK, n - start)
    which = rng.integers(0, len(temps), count)
    structures = [_copy(temps[w], rng, f"crystal-{start + j:07d}")
                  for j, w in enumerate(which)]
    name = f"chunk-{k:05d}.npz"
    save_structures(os.path.join(folder, name), structures)
    chunks.append({"path": name, "count": count})
  manifest = {"seed": seed, "n_requested": 0, "n_inputs": n,
              "symprec": symmetry.SYMPREC,
              "angle_tolerance": symmetry.ANGLE_TOLERANCE, "chunks": chunks,
              "failures": [], "n_structures": n, "n_failures": 0}
  path = os.path.join(folder, "corpus.json")
  with open(path, "w") as f:
    json.dump(manifest, f)
  return path, temps


def check_labels(temps, count=100, seed=1):
  """Copies whose spglib labels differ from their template's (want 0)."""
  from crystal.crysgnn import symmetry  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  bad = 0
  for i in range(count):
    t = temps[i % len(temps)]
    got = symmetry.symmetry_labels(_copy(t, rng, "check"))["space_group"]
    bad += int(got != int(t.targets["space_group"]))
  return bad


def conversion_rate(folder, temps, n_files, cache_dir):
  """Structures/s of the folder -> labelled chunks conversion users run."""
  import ase.io  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from crystal.crysgnn import corpus  # pylint: disable=g-import-not-at-top
  os.makedirs(folder)
  rng = np.random.default_rng(2)
  for i in range(n_files):
    s = _copy(temps[i % len(temps)], rng, f"c{i:06d}")
    ase.io.write(os.path.join(folder, f"c{i:06d}.cif"), s.to_ase())
  cfg = crysgnn_config(folder, 1)
  cfg.data.cache_dir = cache_dir
  t0 = time.time()
  manifest = corpus.CorpusRequest(ml_collections.ConfigDict(cfg.data)).manifest()
  seconds = time.time() - t0
  with open(manifest) as f:
    m = json.load(f)
  return m["n_structures"], m["n_failures"], seconds, m["structures_per_s"]


def crysgnn_config(path, steps, workers=0):
  """configs/crysgnn_pretrain.py:demo on ``path`` (see module docstring)."""
  from configs import crysgnn_pretrain  # pylint: disable=g-import-not-at-top
  c = crysgnn_pretrain.get_config("demo")
  c.data.path = path
  c.data.workers = workers
  c.data.val_fraction = 0.05
  c.data.cache_limit = 0
  c.train.update(num_steps=steps, log_every=max(1, steps // 3), eval_every=0,
                 checkpoint_every=10 ** 9)
  return c


def main(argv=None):
  from benchmarks import data_bench  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser()
  p.add_argument("--quick", action="store_true")
  p.add_argument("--big", type=int, default=0)
  p.add_argument("--small", type=int, default=0)
  p.add_argument("--steps", type=int, default=0)
  p.add_argument("--files", type=int, default=0)
  p.add_argument("--preprocess", action="store_true")
  p.add_argument("--rates_only", action="store_true",
                 help="only the stream's K = 1 vs K = 2 rates (on --big "
                 "crystals, default 20,000), alternated 3 times")
  p.add_argument("--preprocess_only", action="store_true",
                 help="only --preprocess's figures (on --big crystals)")
  p.add_argument("--batches", type=int, default=0,
                 help="batches per rate (default 600; 150 with --quick)")
  args = p.parse_args(argv)
  big = args.big or (20_000 if args.quick or args.rates_only or
                     args.preprocess_only else 200_000)
  small = args.small or (2_000 if args.quick else 5_000)
  steps = args.steps or (30 if args.quick else 1000)
  files = args.files or (200 if args.quick else 1000)
  tmp = tempfile.mkdtemp(prefix="crysgnn_bench_")
  try:
    t0 = time.time()
    big_path, temps = write_corpus(os.path.join(tmp, "big"), big)
    write_s = time.time() - t0
    batches = args.batches or (150 if args.quick else 600)
    if args.preprocess_only:
      preprocessed(big_path, big, steps, os.path.join(tmp, "shards"))
      return
    if args.rates_only:
      r = data_bench.worker_scaling(lambda k: crysgnn_config(big_path, 1, k),
                                    batches)
      print(data_bench.scaling_line(f"CrysGNN training stream ({big:,} "
                                    "crystals)", "crystals", r, batches))
      return
    small_path, _ = write_corpus(os.path.join(tmp, "small"), small, seed=1)
    sizes = [t.num_atoms for t in temps]
    print(f"CrysGNN corpus: wrote {big:,} crystals in {write_s:.0f}s "
          f"({big / write_s:.0f}/s) + {small:,}; {len(temps)} templates of "
          f"{min(sizes)}-{max(sizes)} atoms ({sum(s > 48 for s in sizes)} over "
          f"48); spglib on 100 copies: {check_labels(temps)} labels differ "
          "from their template's", flush=True)
    n, fails, sec, rate = conversion_rate(
        os.path.join(tmp, "cifs"), temps, files, os.path.join(tmp, "cache"))
    print(f"folder of {files:,} CIF files -> labelled chunks (CorpusRequest, "
          f"2 workers, spglib on each): {n:,} structures, {fails} failures, "
          f"{sec:.1f}s with the converter's start-up, {rate:.0f}/s after it: "
          f"200,000 files ~{200_000 / rate / 60:.0f} min, 800,000 "
          f"~{800_000 / rate / 60:.0f} min (once; cached)", flush=True)
    runs = {name: data_bench.run_child(path, steps, task="crysgnn")
            for name, path in (("big", big_path), ("small", small_path))}
    for name, count in (("big", big), ("small", small)):
      r = runs[name]
      print(f"{count:>7,} crystals: first batch {r['first_batch_s']:.1f}s, "
            f"first step {r['first_step_s']:.1f}s (with its compile)")
    b, s = runs["big"], runs["small"]
    ratio = b["rss_last_step_mb"] / s["rss_last_step_mb"]
    print(f"peak RSS at step {steps}: {b['rss_last_step_mb']:.0f} MB with "
          f"{big:,} crystals, {s['rss_last_step_mb']:.0f} MB with {small:,} "
          f"({ratio:.2f}x; goal <= 2048 MB and <= 1.25x); after the final "
          f"validation of 5 %: {b['peak_rss_mb']:.0f} / {s['peak_rss_mb']:.0f}"
          " MB", flush=True)
    small_rate = data_bench.pipeline_rate(crysgnn_config(small_path, 1, 1),
                                          batches)
    r = data_bench.worker_scaling(lambda k: crysgnn_config(big_path, 1, k),
                                  batches)
    print(f"setup before the stream (splits + budget from 2,000 crystals): "
          f"{r['setup1']:.1f}s with {big:,}, {small_rate['setup_s']:.1f}s"
          f" with {small:,}")
    print(data_bench.scaling_line("CrysGNN training stream", "crystals", r,
                                  batches))
    if args.preprocess:
      preprocessed(big_path, big, steps, os.path.join(tmp, "shards"))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def preprocessed(manifest, n, steps, out):
  """``noisy_nodes.preprocess`` of the corpus, then a run from the shards."""
  from benchmarks import data_bench  # pylint: disable=g-import-not-at-top
  from noisy_nodes import preprocess  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  preprocess.preprocess(crysgnn_config(manifest, 1), out, workers=2,
                        shard_size=max(1000, n // 40))
  sec = time.time() - t0
  size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
  r = data_bench.run_child(out, steps, task="crysgnn")
  warm = data_bench.run_child(out, max(3, steps // 10), task="crysgnn")
  print(f"noisy_nodes.preprocess of {n:,} crystals, 2 workers: {sec:.0f}s "
        f"({n / sec:.0f}/s), {size / n / 1e3:.0f} kB per crystal on disk "
        f"(200,000: {size / n * 2e5 / 1e9:.0f} GB, 800,000: "
        f"{size / n * 8e5 / 1e9:.0f} GB); from the shards: first batch "
        f"{r['first_batch_s']:.1f}s, first step {r['first_step_s']:.1f}s, "
        f"peak RSS at step {steps} {r['rss_last_step_mb']:.0f} MB; restarted "
        f"(compilation cache warm): first batch {warm['first_batch_s']:.1f}s, "
        f"first step {warm['first_step_s']:.1f}s (goal <= 10)", flush=True)


if __name__ == "__main__":
  main()
