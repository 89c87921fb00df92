r"""Latent-space analysis of a trained crystal model (DeeperGATGNN paper §3.5).

  python -m crystal.analysis --workdir=DIR [--splits=train,val,test] \
      [--checkpoint=best|latest] [--out=DIR/analysis] [--perplexity=30]

Restores the run, computes every crystal's embedding (the pooled vector the
output head reads: ``outputs['pooled']``, [F]) for the chosen
splits and writes

  embeddings.npz   ids [n], split [n], target [n, T], prediction [n, T],
                   embedding [n, F], tsne [n, 2]
  tsne.png         the 2-d t-SNE (scikit-learn) of the embeddings, coloured
                   by the (first) target

The reference's Analysis mode does the same with its model's last pooled
features.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Sequence

from absl import app
from absl import flags
import numpy as np

from noisy_nodes import plots
from noisy_nodes.data.structures import DataError

FLAGS = flags.FLAGS


def _define_flags():
  """The CLI's flags, defined only when run as a script (so importing this
  module next to ``noisy_nodes.train``, which has a ``--workdir`` too, is
  fine)."""
  flags.DEFINE_string("workdir", None, "the trained run")
  flags.DEFINE_list("splits", ["train", "val", "test"], "splits to embed")
  flags.DEFINE_enum("checkpoint", "best", ["best", "latest"],
                    "checkpoint to restore (latest when the run kept no best)")
  flags.DEFINE_string("out", None, "output folder (default WORKDIR/analysis)")
  flags.DEFINE_float("perplexity", 30.0, "t-SNE perplexity (capped below the "
                     "number of crystals)")


def embed_run(workdir: str, splits: Sequence[str] = ("train", "val", "test"),
              which: str = "best") -> Dict[str, np.ndarray]:
  """{'ids', 'split', 'target' [n, T], 'prediction' [n, T], 'embedding'
  [n, F]} for the crystals of ``splits`` of a saved run."""
  from noisy_nodes.engine import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from noisy_nodes.engine import trainer  # pylint: disable=g-import-not-at-top
  ckpt = ckpt_lib.Checkpointer(workdir)
  try:
    if which == "best" and ckpt.latest_step("best") is None:
      which = "latest"
  finally:
    ckpt.close()
  exp, ts, _, budget, _ = trainer.restore_run(workdir, which,
                                              example_split="train")
  if not hasattr(exp.task, "predict_embeddings"):
    raise DataError(workdir, f"task {exp.config.task!r} has no crystal "
                    "embeddings to analyse")
  exp.task.predict_embeddings = True
  params = ts.ema_params if exp.config.optim.get("ema_decay", 0) else (
      ts.params)
  cols = {"ids": [], "split": [], "target": [], "prediction": [],
          "embedding": []}
  for split in splits:
    structures = exp.splits.get(split) or []
    if not structures:
      continue
    preds = exp.predict(params, ts.state, split, budget)
    cols["ids"] += [s.id for s in structures]
    cols["split"] += [split] * len(structures)
    cols["target"] += [np.atleast_1d(s.targets["target"]) for s in structures]
    cols["prediction"] += [np.atleast_1d(p) for p in preds["target"]]
    cols["embedding"] += list(preds["pooled"])
  if not cols["ids"]:
    raise DataError(workdir, f"no crystals in splits {list(splits)}")
  return {k: np.asarray(v) if k in ("ids", "split") else
          np.stack(v).astype(np.float64) for k, v in cols.items()}


def tsne(embedding: np.ndarray, perplexity: float = 30.0,
         seed: int = 0) -> np.ndarray:
  """[n, F] -> [n, 2] with scikit-learn's TSNE (PCA initialisation)."""
  from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top
  n = embedding.shape[0]
  if n < 3:
    raise DataError("embeddings", f"t-SNE needs >= 3 crystals, got {n}")
  perplexity = min(perplexity, (n - 1) / 3.0)
  return TSNE(n_components=2, perplexity=perplexity, init="pca",
              random_state=seed).fit_transform(embedding)


def plot_tsne(path: str, xy: np.ndarray, target: np.ndarray,
              title: str = "") -> str:
  plt = plots._pyplot()  # pylint: disable=protected-access
  fig, ax = plt.subplots(figsize=(5.6, 4.8))
  sc = ax.scatter(xy[:, 0], xy[:, 1], c=target, s=12, cmap="viridis")
  fig.colorbar(sc, ax=ax, label="target")
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title(title or f"t-SNE of {len(xy)} crystal embeddings")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def analyse(workdir: str, out_dir: str = "", splits=("train", "val", "test"),
            which: str = "best", perplexity: float = 30.0) -> Dict[str, str]:
  """Writes embeddings.npz and tsne.png (module docstring); their paths."""
  out_dir = out_dir or os.path.join(workdir, "analysis")
  os.makedirs(out_dir, exist_ok=True)
  cols = embed_run(workdir, splits, which)
  cols["tsne"] = tsne(cols["embedding"], perplexity)
  npz = os.path.join(out_dir, "embeddings.npz")
  np.savez(npz, **{k: v.astype(str) if v.dtype.kind in "OU" else v
                   for k, v in cols.items()})
  with open(os.path.join(workdir, "config.json")) as f:
    model = json.load(f).get("model", {})
  png = plot_tsne(os.path.join(out_dir, "tsne.png"), cols["tsne"],
                  cols["target"][:, 0],
                  f"{model.get('name', 'model')}: t-SNE of "
                  f"{len(cols['ids'])} crystal embeddings")
  return {"npz": npz, "png": png}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  try:
    paths = analyse(FLAGS.workdir, FLAGS.out or "", FLAGS.splits,
                    FLAGS.checkpoint, FLAGS.perplexity)
  except DataError as e:
    print(f"error: bad input: {e}", flush=True)
    raise SystemExit(2) from e
  print(json.dumps(paths))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
