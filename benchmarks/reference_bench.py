"""The PyTorch reference DeeperGATGNN on the same data as crystal_bench.py.

Usage:
  python benchmarks/reference_bench.py --checkout PATH/deeperGATGNN
      [--layers 20] [--n 1000] [--batch 100] [--epochs 3] [--repeats 3]
      [--device cuda|cpu] [--json out.json]
  python benchmarks/reference_bench.py --dry     # data only, no torch needed

The reference code is not shipped with this project: ``--checkout`` is a
user-supplied clone of usccolumbia/deeperGATGNN (its
``matdeeplearn/models/deep_gatgnn.py`` is imported from there); it needs
torch and torch_geometric (``torch_scatter`` is only imported by the
reference, so a shim over ``torch_geometric.utils.scatter`` stands in when it
is missing). Data: the same ``n`` EMT Pt10 clusters
(``crystal.generators.pt10_clusters``, seed 0) featurised by this library's
reference graph settings (``configs/deeper_gatgnn.py``, without the
reverse-edge pairing, which the reference does not have): one-hot Z + degree
node features, 50 Gaussians per edge, the composition vector per node.
Model: ``DEEP_GATGNN`` with the reference config.yml settings (dim 64,
``--layers`` AGAT layers, DiffGroupNorm, softplus, global add pool), AdamW
0.005, L1 loss, batch 100, shuffled. Timing as crystal_bench.py: one warm-up
epoch, then ``repeats`` runs of ``epochs`` epochs (synchronised), best and
median graphs/s for training and inference, peak device memory
(``torch.cuda.max_memory_allocated``) or peak RSS on CPU.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPOSITION = 108  # the reference's composition vector length


def featurised(n: int, seed: int):
  """[(x [n, F], edge_index [2, E], edge_attr [E, 50], comp [C], y)]."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, ROOT)
  from crystal import generators, tasks  # pylint: disable=g-import-not-at-top
  import configs  # pylint: disable=g-import-not-at-top
  config = configs.load("deeper_gatgnn")
  config.data.graph.pair_edges = False
  structures = generators.pt10_clusters(n, seed)
  task = tasks.CrystalPropertyTask(config)
  task.featurizer = task.featurizer.fit(structures)
  task.num_targets = 1
  out = []
  for s in structures:
    g = task.featurize(s, None, False)
    comp = np.zeros(COMPOSITION, np.float32)
    c = np.asarray(g.globals["composition"][0], np.float32)[:COMPOSITION]
    comp[:c.shape[0]] = c
    out.append((np.asarray(g.nodes["features"], np.float32),
                np.stack([g.receivers, g.senders]).astype(np.int64),
                np.asarray(g.edges["features"], np.float32), comp,
                float(np.asarray(g.globals["target"]).reshape(-1)[0])))
  return out


def _torch_scatter_shim():
  """``torch_scatter`` names the reference imports, over torch_geometric."""
  from torch_geometric.utils import scatter  # pylint: disable=g-import-not-at-top
  shim = types.ModuleType("torch_scatter")
  for reduce in ("mean", "add", "max", "sum"):
    setattr(shim, f"scatter_{reduce}",
            lambda src, index, dim=0, reduce=reduce, **kw: scatter(
                src, index, dim=dim, reduce=reduce))
  shim.scatter = lambda src, index, dim=0, reduce="sum", **kw: scatter(
      src, index, dim=dim, reduce=reduce)
  sys.modules["torch_scatter"] = shim


def run(args) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  from torch_geometric.data import Data  # pylint: disable=g-import-not-at-top
  from torch_geometric.loader import DataLoader  # pylint: disable=g-import-not-at-top
  try:
    import torch_scatter  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    _torch_scatter_shim()
  sys.path.insert(0, os.path.abspath(args.checkout))
  from matdeeplearn.models.deep_gatgnn import DEEP_GATGNN  # pylint: disable=g-import-not-at-top

  device = torch.device(args.device)
  data = []
  for x, ei, ea, comp, y in featurised(args.n, args.seed):
    data.append(Data(x=torch.from_numpy(x), edge_index=torch.from_numpy(ei),
                     edge_attr=torch.from_numpy(ea),
                     glob_feat=torch.from_numpy(comp).repeat(x.shape[0], 1),
                     y=torch.tensor([y], dtype=torch.float32)))

  class Dataset(list):  # what DEEP_GATGNN reads off its ``data`` argument
    num_features = data[0].x.shape[1]
    num_edge_features = data[0].edge_attr.shape[1]

  model = DEEP_GATGNN(Dataset(data), dim1=64, dim2=64, pre_fc_count=1,
                      gc_count=args.layers, post_fc_count=1,
                      pool="global_add_pool", pool_order="early",
                      batch_norm="True", batch_track_stats="True",
                      act="softplus", dropout_rate=0.0).to(device)
  optimizer = torch.optim.AdamW(model.parameters(), lr=0.005)
  loader = DataLoader(data, batch_size=args.batch, shuffle=True)
  batches = [b.to(device) for b in loader]  # resident, as ours are

  def sync():
    if device.type == "cuda":
      torch.cuda.synchronize()

  def train_epochs(k):
    model.train()
    for _ in range(k):
      for b in batches:
        optimizer.zero_grad()
        loss = torch.nn.functional.l1_loss(model(b), b.y)
        loss.backward()
        optimizer.step()
    sync()

  def infer_epochs(k):
    model.eval()
    with torch.no_grad():
      for _ in range(k):
        for b in batches:
          model(b)
    sync()

  train_epochs(1)
  infer_epochs(1)
  per = len(data) * args.epochs
  train, infer = [], []
  for _ in range(args.repeats):
    t = time.perf_counter()
    train_epochs(args.epochs)
    train.append(per / (time.perf_counter() - t))
    t = time.perf_counter()
    infer_epochs(args.epochs)
    infer.append(per / (time.perf_counter() - t))
  peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
          else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
  return {"layers": args.layers, "device": str(device),
          "device_name": (torch.cuda.get_device_name() if device.type ==
                          "cuda" else "cpu"),
          "params": sum(p.numel() for p in model.parameters()),
          "train_best": max(train), "train_median": statistics.median(train),
          "infer_best": max(infer), "infer_median": statistics.median(infer),
          "peak_mb": peak, "torch": torch.__version__}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--checkout", default=os.environ.get("DEEPERGATGNN_CHECKOUT",
                                                      ""))
  p.add_argument("--layers", type=int, default=20)
  p.add_argument("--n", type=int, default=1000)
  p.add_argument("--batch", type=int, default=100)
  p.add_argument("--epochs", type=int, default=3)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--device", default="cuda")
  p.add_argument("--dry", action="store_true",
                 help="featurise 20 clusters and print their shapes only")
  p.add_argument("--json", default="")
  args = p.parse_args()
  if args.dry:
    rows = featurised(20, args.seed)
    x, ei, ea, comp, _ = rows[0]
    print(f"reference data ok: {len(rows)} graphs, x {x.shape}, edge_index "
          f"{ei.shape}, edge_attr {ea.shape}, composition {comp.shape}")
    return
  if not args.checkout or not os.path.exists(os.path.join(
      args.checkout, "matdeeplearn", "models", "deep_gatgnn.py")):
    sys.exit("--checkout must be a clone of usccolumbia/deeperGATGNN "
             "(matdeeplearn/models/deep_gatgnn.py not found)")
  r = run(args)
  print(f"reference DeeperGATGNN ({r['params']:,} params, torch "
        f"{r['torch']}, {r['device_name']}), {args.layers} layers, batch "
        f"{args.batch}: train {r['train_best']:.1f} ({r['train_median']:.1f})"
        f" g/s, infer {r['infer_best']:.1f} ({r['infer_median']:.1f}) g/s, "
        f"peak {r['peak_mb']:.0f} MB")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(r, f, indent=2)


if __name__ == "__main__":
  main()
