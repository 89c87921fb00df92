"""Tests for noisy_nodes.gns.noise: corruption, relative targets and the loss."""
import ase.build
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

import noisy_nodes  # noqa: F401
from noisy_nodes.gns import noise
from noisy_nodes.data.structures import DataError


def _neighbors(positions, cell, pbc, cutoff):
  """Edge set {(sender, receiver, shift)} (library search, or brute force)."""
  try:
    from noisy_nodes.data.neighbors import neighbor_list  # pylint: disable=g-import-not-at-top
    nl = neighbor_list(positions, cell, pbc, cutoff)
    return {(int(s), int(r), tuple(int(x) for x in sh))
            for s, r, sh in zip(nl.senders, nl.receivers, nl.shifts)}
  except ImportError:
    pass
  shifts = np.array(np.meshgrid(*[np.arange(-1, 2)] * 3,
                                indexing="ij")).reshape(3, -1).T
  out = set()
  for s in range(len(positions)):
    for r in range(len(positions)):
      for sh in shifts:
        d = np.linalg.norm(positions[r] - positions[s] + sh @ cell)
        if 1e-8 < d <= cutoff:
          out.add((s, r, tuple(int(x) for x in sh)))
  return out


def test_corrupt_positions_statistics_and_determinism():
  pos = np.random.RandomState(0).randn(4000, 3)
  noisy, eps = noise.corrupt_positions(pos, 0.3, np.random.default_rng(1))
  np.testing.assert_allclose(noisy - pos, eps, atol=1e-12)
  assert abs(eps.std() - 0.3) < 0.01 and abs(eps.mean()) < 0.01
  # Independent coordinates.
  assert abs(np.corrcoef(eps[:, 0], eps[:, 1])[0, 1]) < 0.05
  again, _ = noise.corrupt_positions(pos, 0.3, np.random.default_rng(1))
  np.testing.assert_array_equal(noisy, again)
  same, zero = noise.corrupt_positions(pos, 0.0, np.random.default_rng(1))
  np.testing.assert_array_equal(same, pos)
  assert not zero.any()
  with pytest.raises(ValueError):
    noise.corrupt_positions(pos, -1.0, np.random.default_rng(1))


def test_fixed_atoms():
  pos = np.random.RandomState(0).randn(10, 3)
  fixed = np.array([1, 1, 0, 0, 1, 0, 0, 0, 0, 1])
  noisy, eps = noise.corrupt_positions(pos, 0.5, np.random.default_rng(2),
                                       fixed=fixed)
  np.testing.assert_array_equal(noisy[fixed == 1], pos[fixed == 1])
  assert np.all(np.abs(eps[fixed == 0]).sum(1) > 0)
  # Default (paper): every atom is noised.
  noisy_all, _ = noise.corrupt_positions(pos, 0.5, np.random.default_rng(2))
  assert np.all(np.abs(noisy_all - pos).sum(1) > 0)
  with pytest.raises(ValueError):
    noise.corrupt_positions(pos, 0.5, np.random.default_rng(2), fixed[:3])


def test_denoising_target_is_clean_minus_noisy():
  pos = np.random.RandomState(3).randn(7, 3) * 2
  smp = noise.denoising_sample(pos, 0.02, np.random.default_rng(0))
  np.testing.assert_allclose(smp.positions + smp.target, pos, atol=1e-12)
  np.testing.assert_allclose(smp.target, -smp.noise, atol=1e-12)
  assert smp.frame == -1
  # Translation invariant: translating the input translates the noisy input
  # and leaves the target unchanged.
  moved = noise.denoising_sample(pos + 5.0, 0.02, np.random.default_rng(0))
  np.testing.assert_allclose(moved.target, smp.target, atol=1e-12)


def test_is2rs_target_is_delta_minus_sigma():
  rs = np.random.RandomState(4)
  initial = rs.randn(6, 3) * 3
  relaxed = initial + rs.randn(6, 3) * 0.4
  smp = noise.is2rs_sample(initial, relaxed, 0.3, np.random.default_rng(5))
  delta = relaxed - initial
  np.testing.assert_allclose(smp.positions, initial + smp.noise, atol=1e-12)
  np.testing.assert_allclose(smp.target, delta - smp.noise, atol=1e-12)
  np.testing.assert_allclose(smp.positions + smp.target, relaxed, atol=1e-12)
  assert smp.frame == -1 and np.abs(smp.noise).max() > 0


def test_is2re_samples_frames_and_wraps_minimum_image():
  rs = np.random.RandomState(6)
  cell = np.diag([6.0, 7.0, 20.0])
  # A relaxation: frames move atoms by fractions of an Å.
  frames = rs.rand(4, 3) * 5 + rs.randn(5, 4, 3) * 0.3
  relaxed = frames[-1] + 0.05
  # Atom 0 of the relaxed structure was wrapped across the a boundary.
  relaxed_wrapped = relaxed.copy()
  relaxed_wrapped[0] += cell[0]
  seen = set()
  for seed in range(30):
    smp = noise.is2re_sample(frames[0], relaxed_wrapped, frames, 0.3,
                             np.random.default_rng(seed), cell=cell,
                             pbc=np.array([True, True, False]))
    f = smp.frame
    seen.add(f)
    np.testing.assert_allclose(smp.positions, frames[f] + smp.noise,
                               atol=1e-12)
    # Target = relaxed - noisy, taken to the nearest image.
    np.testing.assert_allclose(smp.target, relaxed - smp.positions,
                               atol=1e-9)
  assert seen == set(range(5))
  with pytest.raises(DataError, match="frames_positions"):
    noise.is2re_sample(frames[0], relaxed, frames[:, :3], 0.3,
                       np.random.default_rng(0), sample="sid_42")
  with pytest.raises(DataError, match="sid_7"):
    noise.is2rs_sample(frames[0], relaxed[:2], 0.3, np.random.default_rng(0),
                       sample="sid_7")


def test_noise_changes_the_graph():
  atoms = ase.build.fcc111("Pt", size=(2, 2, 3), vacuum=6.0)
  atoms.pbc = True
  pos, cell = atoms.positions, np.array(atoms.cell)
  cutoff = 3.0  # between the 1st (2.77 Å) and 2nd (3.92 Å) shells
  clean = _neighbors(pos, cell, atoms.pbc, cutoff)
  noisy, _ = noise.corrupt_positions(pos, 0.3, np.random.default_rng(0))
  corrupted = _neighbors(noisy, cell, atoms.pbc, cutoff)
  assert clean != corrupted
  assert len(clean ^ corrupted) >= 4
  # Zero noise gives back the same graph.
  same, _ = noise.corrupt_positions(pos, 0.0, np.random.default_rng(0))
  assert _neighbors(same, cell, atoms.pbc, cutoff) == clean


def test_random_rotation():
  r = noise.random_rotation(np.random.default_rng(0))
  np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
  assert abs(np.linalg.det(r) - 1) < 1e-12


# -- loss ----------------------------------------------------------------------
def _loss_batch():
  """Two real graphs (3 + 2 nodes), one padding graph with 2 padding nodes."""
  rs = np.random.RandomState(8)
  n_node = np.array([3, 2, 2], np.int32)
  nodes = {
      "position_target": rs.randn(7, 3).astype(np.float32),
      "target_mask": np.array([1, 0, 1, 1, 1, 1, 1], bool),
      "mask": np.array([1, 1, 1, 1, 1, 0, 0], bool),
  }
  nodes["position_target"][5:] = np.nan  # padding garbage must not leak
  target = rs.randn(3, 2).astype(np.float32)
  target[2] = np.nan
  globals_ = {"target": target, "mask": np.array([True, True, False])}
  graph = jraph.GraphsTuple(nodes=nodes, edges={}, senders=np.zeros(0, int),
                            receivers=np.zeros(0, int), n_node=n_node,
                            n_edge=np.zeros(3, np.int32), globals=globals_)
  outputs = {"per_block_graph": rs.randn(4, 3, 2).astype(np.float32),
             "per_block_node": rs.randn(4, 7, 3).astype(np.float32)}
  outputs["per_block_graph"][:, 2] = 1e6
  outputs["per_block_node"][:, 5:] = -1e6
  outputs["graph"] = outputs["per_block_graph"][-1]
  outputs["node"] = outputs["per_block_node"][-1]
  return outputs, graph


def _numpy_loss(outputs, graph, w_pos, mean, std):
  ys, xs = outputs["per_block_graph"], outputs["per_block_node"]
  t = (graph.globals["target"] - mean) / std
  xt = graph.nodes["position_target"]
  tm = graph.nodes["target_mask"]
  total = 0.0
  for g, nodes in enumerate([[0, 1, 2], [3, 4]]):
    per_block = []
    for b in range(ys.shape[0]):
      lg = np.mean((ys[b, g] - t[g]) ** 2)
      sel = [i for i in nodes if tm[i]]
      ln = np.mean([np.mean((xs[b, i] - xt[i]) ** 2) for i in sel])
      per_block.append(lg + w_pos * ln)
    total += np.mean(per_block)
  return total


def test_loss_matches_numpy_and_ignores_padding():
  outputs, graph = _loss_batch()
  mean, std = np.array([0.5, -1.0]), np.array([2.0, 0.5])
  loss, weight, metrics = noise.noisy_nodes_loss(
      {k: jnp.asarray(v) for k, v in outputs.items()}, graph,
      position_loss_weight=0.1, target_mean=mean, target_std=std)
  assert float(weight) == 2.0
  np.testing.assert_allclose(float(loss),
                             _numpy_loss(outputs, graph, 0.1, mean, std),
                             rtol=1e-5)
  assert float(metrics["num_target_nodes"]) == 4.0
  # graph_mae is in target units, last block, real graphs only.
  pred = outputs["graph"][:2] * std + mean
  np.testing.assert_allclose(
      float(metrics["graph_mae"]),
      np.abs(pred - graph.globals["target"][:2]).mean(1).sum(), rtol=1e-5)
  np.testing.assert_allclose(float(jnp.mean(metrics["loss_per_block"])),
                             float(loss), rtol=1e-5)
  # Changing anything on padding rows leaves the loss unchanged.
  out2 = dict(outputs)
  out2["per_block_graph"] = outputs["per_block_graph"].copy()
  out2["per_block_graph"][:, 2] = -7.0
  loss2, _, _ = noise.noisy_nodes_loss(out2, graph, 0.1, target_mean=mean,
                                       target_std=std)
  assert float(loss2) == float(loss)
  # Masked (fixed) atoms do not count: changing their prediction is free.
  out3 = dict(outputs)
  out3["per_block_node"] = outputs["per_block_node"].copy()
  out3["per_block_node"][:, 1] += 100.0
  loss3, _, _ = noise.noisy_nodes_loss(out3, graph, 0.1, target_mean=mean,
                                       target_std=std)
  np.testing.assert_allclose(float(loss3), float(loss), rtol=1e-6)


def test_loss_terms_can_be_switched_off():
  outputs, graph = _loss_batch()
  nodes_only, _, m = noise.noisy_nodes_loss(outputs, graph, 1.0,
                                            graph_loss_weight=0.0)
  assert "graph_mse" not in m
  graph_only, _, m = noise.noisy_nodes_loss(outputs, graph, 0.0)
  assert "node_mse" not in m
  both, _, _ = noise.noisy_nodes_loss(outputs, graph, 1.0)
  np.testing.assert_allclose(float(both), float(nodes_only + graph_only),
                             rtol=1e-6)
  # Evaluation outputs (no per-block stack) use the last block only.
  last = {"graph": outputs["graph"], "node": outputs["node"]}
  loss_last, _, m = noise.noisy_nodes_loss(last, graph, 1.0)
  np.testing.assert_allclose(float(loss_last),
                             float(m["graph_mse"] + m["node_mse"]), rtol=1e-6)
  # Padding rows hold NaN targets; they must not reach the loss.
  assert np.isfinite(float(loss_last)) and np.isfinite(float(both))
