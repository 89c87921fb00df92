"""Multi-host training on one machine: N jax.distributed processes == 1 process.

``launch.local`` starts 2 processes on 127.0.0.1 (jax.distributed, gloo
collectives on loopback), each owning 1 or 2 CPU devices, and every process
runs the training CLI's ``main`` (``noisy_nodes.train``) on the toy task. The
batching gives each *global* device its own data shard, so 2 processes x D
devices see exactly the batches of 1 process x 2D devices. Checked:

* every device of every process holds the same parameters after each
  checkpoint (the replicated state never diverges between hosts);
* those equal the single-process run's checkpoint on the same global
  batches: bitwise for 2 devices (a sum of two terms does not depend on the
  order), to float32 round-off for 4 (gloo and the in-process all-reduce may
  add four terms in different orders);
* metrics.jsonl, config.json and data_report.json are written once (process
  0), orbax writes one complete checkpoint per step into the shared local
  directory (no torn or duplicated steps), and it restores in a fresh process;
* SIGTERM to one host only (one preempted node) stops every host at the same
  step with a checkpoint and exit 143, instead of a deadlock between one
  host's checkpoint barrier and the others' next step.
"""
import json
import os
import re
import signal
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest

from launch import local

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
STEPS = 6
FLAGS = [f"--config={HERE}/toy_config.py", f"--config.train.num_steps={STEPS}",
         "--config.train.checkpoint_every=3", "--config.train.eval_every=3",
         "--config.train.log_every=1", "--config.optim.ema_decay=0.9",
         # The plateau rewrites the lr scale on the host after every
         # evaluation: it must stay one global array that orbax can save.
         "--config.optim.plateau.enabled=True"]

# The CLI's main, with the checkpointer wrapped so that each process also
# dumps every addressable copy of the state it just saved (one per local
# device), to compare hosts with each other.
WRAPPER = textwrap.dedent("""
    import os
    import sys
    import jax
    import numpy as np
    from absl import app
    import noisy_nodes
    from noisy_nodes import train
    from noisy_nodes.engine import checkpoint as ckpt_lib

    _save = ckpt_lib.Checkpointer.save

    def name(path):  # NamedTuple fields and dict keys alike, as orbax saves
      return "/".join(str(getattr(k, "name", getattr(k, "key", getattr(
          k, "idx", k)))) for k in path)

    def save(self, step, state, meta, which="latest"):
      _save(self, step, state, meta, which)
      copies = {}
      for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
        for shard in x.addressable_shards:
          copies[f"dev{shard.device.id}:{name(path)}"] = np.asarray(shard.data)
      np.savez(os.path.join(self.workdir, f"copies_p{jax.process_index()}_"
                            f"{which}_{step}.npz"), **copies)

    ckpt_lib.Checkpointer.save = save
    workdir = [a.split("=", 1)[1] for a in sys.argv if a.startswith(
        "--workdir=")][0]
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "pid_" + os.environ.get(
        "NN_PROCESS_ID", "0")), "w") as f:
      f.write(str(os.getpid()))
    app.run(train.main)
""")


@pytest.fixture(scope="module")
def wrapper(tmp_path_factory):
  d = tmp_path_factory.mktemp("wrapper")
  (d / "train_and_dump.py").write_text(WRAPPER)
  env = {"PYTHONPATH": os.pathsep.join([HERE, REPO]), "OMP_NUM_THREADS": "1",
         "JAX_COMPILATION_CACHE_DIR": str(d / "xla"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  return str(d / "train_and_dump.py"), env


def _train(wrapper, workdir, processes, devices, flags=FLAGS, timeout=400,
           check=True):
  script, env = wrapper
  results = local.launch_local(script, [f"--workdir={workdir}", *flags],
                               num_processes=processes,
                               devices_per_process=devices, timeout=timeout,
                               env=env, echo=False, cwd=REPO)
  if not check:
    return results
  for i, (code, out) in enumerate(results):
    assert code == 0, f"process {i}: {out[-3000:]}"
  return [out for _, out in results]


def _name(path):
  return "/".join(str(getattr(k, "name", getattr(k, "key", getattr(
      k, "idx", k)))) for k in path)


def _checkpoint(workdir, step, which="checkpoints"):
  """{leaf name: array} of a saved TrainState, restored in this process.

  The checkpoint was written by processes that own other devices, so it is
  restored as numpy (orbax would otherwise look for the saved shardings).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, which, str(step), "state")
  with ocp.PyTreeCheckpointer() as c, warnings.catch_warnings():
    warnings.simplefilter("ignore")
    tree = c.metadata(path).item_metadata
    tree = getattr(tree, "tree", tree)
    args = jax.tree_util.tree_map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    restored = c.restore(path, restore_args=args)
  return {_name(p): np.asarray(x) for p, x in
          jax.tree_util.tree_flatten_with_path(restored)[0]}


def _copies(workdir, processes, which, step):
  """{(process, device): {leaf name: array}} dumped by the wrapper."""
  out = {}
  for p in range(processes):
    with np.load(os.path.join(workdir, f"copies_p{p}_{which}_{step}.npz")) as z:
      for key in z.files:
        dev, leaf = key.split(":", 1)
        out.setdefault((p, dev), {})[leaf] = z[key]
  return out


def _assert_equal(a, b, exact=True):
  assert sorted(a) == sorted(b) and len(a) > 10
  for k in a:
    if exact:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    else:
      np.testing.assert_allclose(a[k], b[k], rtol=2e-5, atol=1e-6,
                                 err_msg=k)


def _check_written_once(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  keys = [(r["step"], r["split"]) for r in rows]
  assert len(keys) == len(set(keys))
  assert [s for s, sp in keys if sp == "train"] == list(range(1, STEPS + 1))
  for name in ("config.json", "data_report.json"):
    with open(os.path.join(workdir, name)) as f:
      json.load(f)  # complete, not two writers interleaved
  names = os.listdir(os.path.join(workdir, "checkpoints"))
  assert sorted(names) == ["3", "6"], names  # complete steps, no tmp dirs


@pytest.mark.parametrize("devices", [1, 2])
def test_two_processes_equal_one_process_with_as_many_devices(
    wrapper, tmp_path, devices):
  multi, single = str(tmp_path / "multi"), str(tmp_path / "single")
  outs = _train(wrapper, multi, 2, devices)
  assert f"process 0/2, {devices} local / {2 * devices} global" in outs[0]
  assert f"process 1/2, {devices} local / {2 * devices} global" in outs[1]
  _train(wrapper, single, 1, 2 * devices)
  _check_written_once(multi)

  best = os.listdir(os.path.join(multi, "best"))
  assert best == os.listdir(os.path.join(single, "best")) and len(best) == 1
  for which, step in (("latest", 3), ("latest", STEPS), ("best", best[0])):
    copies = _copies(multi, 2, which, step)
    assert len(copies) == 2 * devices  # every device of every process
    first = next(iter(copies.values()))
    for leaves in copies.values():  # hosts never diverge: bitwise
      _assert_equal(first, leaves)
    folder = "checkpoints" if which == "latest" else "best"
    saved = _checkpoint(multi, step, folder)
    _assert_equal(first, saved)
    # 2 devices: a two-term sum is order-independent, hence bitwise.
    _assert_equal(_checkpoint(single, step, folder), saved,
                  exact=devices == 1)

  # Both wrote identical histories (losses are global means).
  def losses(w):
    with open(os.path.join(w, "metrics.jsonl")) as f:
      return [(r["step"], r["loss"]) for r in map(json.loads, f)
              if r["split"] == "train"]
  if devices == 1:
    assert losses(multi) == losses(single)
  else:
    np.testing.assert_allclose(losses(multi), losses(single), rtol=1e-5)
  # The engine's own restore (evaluation, fine-tuning) reads the multi-host
  # checkpoint in a single process on one device.
  from noisy_nodes.engine import trainer  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  _, ts, meta, _, step = trainer.restore_run(multi, "latest")
  assert step == STEPS and len(meta["data_positions"]) == 2 * devices
  restored = {_name(p): np.asarray(x) for p, x in
              jax.tree_util.tree_flatten_with_path(jax.device_get(ts))[0]}
  _assert_equal(_checkpoint(multi, STEPS), restored)


def test_sigterm_to_one_host_stops_all_at_the_same_step(wrapper, tmp_path):
  workdir = str(tmp_path / "run")
  flags = FLAGS[:1] + ["--config.train.num_steps=5000",
                       "--config.train.checkpoint_every=1000",
                       "--config.train.eval_every=0",
                       "--config.train.log_every=1"]
  results = []
  launcher = threading.Thread(target=lambda: results.extend(_train(
      wrapper, workdir, 2, 1, flags, timeout=150, check=False)))
  launcher.start()
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.monotonic() + 140
  while not (os.path.exists(metrics) and
             len(open(metrics).readlines()) >= 10):
    assert launcher.is_alive() and time.monotonic() < deadline
    time.sleep(0.05)
  with open(os.path.join(workdir, "pid_1")) as f:
    os.kill(int(f.read()), signal.SIGTERM)  # only process 1 is preempted
  launcher.join()
  (code0, out0), (code1, out1) = results
  steps = [re.findall(r"preempted at step (\d+): checkpoint written", o)
           for o in (out0, out1)]
  assert steps[0] and steps[0] == steps[1], (out0[-2000:], out1[-2000:])
  assert code1 == 143
  # Process 0 exits 143 too, unless the launcher, seeing process 1 exit,
  # stopped it first (SIGTERM, then SIGKILL if jax.distributed's shutdown
  # waits for the departed peer) - after its checkpoint and message above.
  assert code0 in (143, -signal.SIGTERM, -signal.SIGKILL)
  step = int(steps[0][0])
  assert 10 <= step < 5000
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [
      str(step)]
  saved = _checkpoint(workdir, step)
  assert int(saved["step"]) == step
  copies = _copies(workdir, 2, "latest", step)
  assert len(copies) == 2
  for leaves in copies.values():
    _assert_equal(leaves, saved)
