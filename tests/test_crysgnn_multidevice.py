"""CrysGNN loss under shard_map on 2 CPU devices equals the single-device
loss on the concatenated batch (NT-Xent all-gathers crystal embeddings)."""
import os
import subprocess
import sys

_SCRIPT = r"""
import jax
jax.config.update("jax_num_cpu_devices", 2)
import sys
import numpy as np
import jax.numpy as jnp
from jax.sharding import PartitionSpec as Ps
sys.path.insert(0, "tests")
import test_crysgnn_losses as t
from noisy_nodes import nn as nn_lib
from crystal.crysgnn import losses

# Same padded shapes on both shards: 3 real graphs, 12 node slots each.
shards = [t._batch([3, 4, 1], seed=1, systems=[0, 1, 0], pad_nodes=4),
          t._batch([2, 4, 1], seed=2, systems=[1, 0, 1], pad_nodes=5)]
params = t._heads.init(jax.random.PRNGKey(0), shards[0])
outs = [t._heads.apply(params, g) for g in shards]
cat = lambda *xs: np.concatenate([np.asarray(x) for x in xs])
g_all = jax.tree_util.tree_map(cat, *shards)
o_all = jax.tree_util.tree_map(cat, *outs)
ls, w, m = losses.crysgnn_pretrain_loss(o_all, g_all)
single = float(ls / w)

stack = lambda *xs: np.stack([np.asarray(x) for x in xs])
g_st = jax.tree_util.tree_map(stack, *shards)
o_st = jax.tree_util.tree_map(stack, *outs)
mesh = jax.make_mesh((2,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))

def step(o, g):
  o = jax.tree_util.tree_map(lambda x: x[0], o)
  g = jax.tree_util.tree_map(lambda x: x[0], g)
  with nn_lib.data_parallel_axis("d"):
    ls, w, _ = losses.crysgnn_pretrain_loss(o, g)
  return (jax.lax.psum(ls, "d") / jax.lax.psum(w, "d"))[None]

f = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(Ps("d"), Ps("d")),
                          out_specs=Ps("d")))
multi = np.asarray(f(o_st, g_st))
print("RESULT", single, multi.tolist())
np.testing.assert_allclose(multi, single, rtol=1e-5)
"""


def test_shard_map_matches_single_device():
  env = dict(os.environ, OMP_NUM_THREADS="1", JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  r = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=root, env=env,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
  assert "RESULT" in r.stdout
