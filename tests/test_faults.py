"""Surviving faults: kill -9, preemption, torn checkpoints, NaN, bad data files.

Every test drives the real CLI (``python -m noisy_nodes.train``) on the toy
task (tests/toy_task.py) in subprocesses and checks what a user relies on:

* kill -9 at seeded random points, once while orbax is writing a checkpoint,
  then SIGTERM (exit 143 after a checkpoint), then a rerun to the end: the
  final parameters and every logged loss equal those of an uninterrupted run
  bit for bit (CPU);
* a non-finite loss stops with exit 3 and a clear message, keeping the last
  good checkpoint; with ``train.skip_nonfinite`` the step is not applied and
  training goes on;
* a data file corrupted (or removed) after a checkpoint was written: exit 2
  with a message naming the file, before any step, the checkpoint untouched.

Subprocesses share a persistent XLA compilation cache so that each restart
costs its start-up, not a recompilation (a cached executable is the same
program, so results stay bitwise identical).
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

import noisy_nodes  # noqa: F401
from noisy_nodes.engine import checkpoint as ckpt_lib
from noisy_nodes.data.structures import save_structures

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import toy_task  # noqa: E402  pylint: disable=g-import-not-at-top

TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax: "<step>.orbax-checkpoint-tmp-<t>"
# A run long enough to be interrupted several times; a checkpoint every 3
# steps (each orbax write takes ~0.1-0.5 s here, the window for a torn write).
RUN = ["--config.train.num_steps=45", "--config.train.log_every=1",
       "--config.train.checkpoint_every=3", "--config.train.eval_every=0",
       "--config.train.max_to_keep=2"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  e = dict(os.environ)
  e.update(PYTHONPATH=HERE + os.pathsep + e.get("PYTHONPATH", ""),
           JAX_PLATFORMS="cpu", OMP_NUM_THREADS="1",
           JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("xla")),
           JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
           JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return e


def _cmd(workdir, *flags):
  return [sys.executable, "-m", "noisy_nodes.train",
          f"--config={HERE}/toy_config.py", f"--workdir={workdir}", *flags]


def _run(env, workdir, *flags, timeout=300):
  return subprocess.run(_cmd(workdir, *flags), env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)


def _logged_steps(workdir):
  """Train steps in metrics.jsonl (written by process 0 after each step)."""
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      lines = f.readlines()
  except FileNotFoundError:
    return []
  out = []
  for line in lines:
    try:
      rec = json.loads(line)
    except json.JSONDecodeError:
      continue  # the line being written
    if rec["split"] == "train":
      out.append(rec)
  return out


def _losses(workdir):
  return {r["step"]: r["loss"] for r in _logged_steps(workdir)}


def _ckpt_dirs(workdir):
  d = os.path.join(workdir, "checkpoints")
  names = os.listdir(d) if os.path.isdir(d) else []
  done = sorted(int(n) for n in names if n.isdigit())
  torn = [n for n in names if TMP_SUFFIX in n]
  return done, torn


def _state(workdir, step, which="checkpoints"):
  """The saved TrainState leaves (numpy, in tree order) of one checkpoint."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, which, str(step), "state")
  with ocp.PyTreeCheckpointer() as c, warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "sharding info not provided": numpy
    tree = c.restore(path)
  return tree, [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _start(env, workdir, log, *flags):
  return subprocess.Popen(_cmd(workdir, *flags), env=env, cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=log,
                          start_new_session=True)


def _wait(pred, proc, what, timeout=240):
  deadline = time.monotonic() + timeout
  while not pred():
    if proc.poll() is not None:
      raise AssertionError(f"run ended (status {proc.returncode}) before "
                           f"{what}")
    if time.monotonic() > deadline:
      proc.kill()
      raise AssertionError(f"timeout waiting for {what}")
    time.sleep(0.001)


def test_kill9_torn_checkpoint_sigterm_then_resume_is_bitwise(env, tmp_path):
  ref, run = str(tmp_path / "reference"), str(tmp_path / "interrupted")
  out = _run(env, ref, *RUN)
  assert out.returncode == 0, out.stderr[-3000:]
  rng = np.random.default_rng(20240611)
  # Kill points in the first 25 of 45 steps, so that the later phases (a
  # checkpoint write after the restart, SIGTERM 4 steps later) still come.
  kill_steps = sorted(int(k) for k in rng.choice(np.arange(4, 26), 2, False))
  delays = rng.uniform(0.0, 0.05, len(kill_steps))
  log = open(tmp_path / "stderr.log", "w")
  history = []

  def newest():  # rows past it can only come from the process just started
    return max(_losses(run), default=0)

  # 1. kill -9 at seeded random points (a step, then a random few ms more).
  for target, delay in zip(kill_steps, delays):
    target = max(target, newest() + 1)
    p = _start(env, run, log, *RUN)
    _wait(lambda t=target: newest() >= t, p, f"step {target}")
    time.sleep(delay)
    p.kill()
    assert p.wait() == -signal.SIGKILL
    history.append(("kill -9", newest()))

  # 2. kill -9 while orbax writes a checkpoint: poll for its temporary
  # directory and kill at once. A write that finished between the poll and
  # the kill leaves no torn directory; then try again (never seen in practice).
  for _ in range(3):
    stale = set(_ckpt_dirs(run)[1])  # torn by a kill above (removed on start)
    p = _start(env, run, log, *RUN)
    _wait(lambda: set(_ckpt_dirs(run)[1]) - stale, p, "a checkpoint write")
    p.kill()
    p.wait()
    done, torn = _ckpt_dirs(run)
    torn = sorted(set(torn) - stale)
    if torn:
      break
  assert torn, "never caught orbax mid-write"
  torn_step = int(torn[0].split(".")[0])
  assert done and max(done) < torn_step
  last_complete = max(done)
  _, leaves = _state(run, max(done))
  assert all(np.all(np.isfinite(x)) for x in leaves if x.dtype.kind == "f")
  history.append(("kill -9 in checkpoint write", torn_step))

  # 3. SIGTERM (preemption): finish the step, checkpoint, exit 143.
  target = max(torn_step + 4, newest() + 1)
  p = _start(env, run, log, *RUN)
  _wait(lambda: newest() >= target, p, f"step {target}")
  p.send_signal(signal.SIGTERM)
  assert p.wait(timeout=120) == 143
  log.flush()
  with open(tmp_path / "stderr.log") as f:
    text = f.read()
  # The restarted CLI ignored the torn directory, resumed from the last
  # complete checkpoint and removed the torn one.
  resumed = re.findall(r"resuming from step (\d+)", text)
  assert int(resumed[-1]) == last_complete
  assert not set(torn) & set(os.listdir(os.path.join(run, "checkpoints")))
  m = re.findall(r"preempted at step (\d+): checkpoint written", text)
  assert m, "no preemption message"
  stopped = int(m[-1])
  done, torn = _ckpt_dirs(run)
  assert max(done) == stopped and not torn
  assert newest() == stopped
  history.append(("SIGTERM", stopped))

  # 4. Rerun the same command: resumes and finishes.
  out = _run(env, run, *RUN)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"resuming from step {stopped}" in out.stderr
  log.close()

  # Bitwise: every logged loss and every parameter/optimiser/BN/RNG leaf.
  assert _losses(run) == _losses(ref), history
  assert sorted(_losses(run)) == list(range(1, 46))  # one consistent history
  tree_a, a = _state(ref, 45)
  tree_b, b = _state(run, 45)
  assert len(a) == len(b) > 10
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  metas = []
  for w in (ref, run):
    c = ckpt_lib.Checkpointer(w)
    metas.append(c.restore_meta()[0])
    c.close()
  assert metas[0]["data_positions"] == metas[1]["data_positions"]


def test_nonfinite_loss_exits_3_or_is_skipped(env, tmp_path):
  flags = ["--config.train.log_every=1", "--config.train.checkpoint_every=1",
           "--config.train.eval_every=0", "--config.train.max_to_keep=20",
           "--config.data.nan_target_ids=ar7"]
  stop = str(tmp_path / "stop")
  out = _run(env, stop, "--config.train.num_steps=12", *flags)
  assert out.returncode == 3, out.stderr[-3000:]
  m = re.search(r"error: non-finite loss or gradients at step (\d+) \(loss "
                r"nan\); the update was not applied; last good checkpoint "
                r"kept in (\S+)\. Set train.skip_nonfinite=True", out.stderr)
  assert m, out.stderr[-2000:]
  bad = int(m.group(1))
  assert bad >= 2 and m.group(2) == stop
  done, torn = _ckpt_dirs(stop)
  assert max(done) == bad - 1 and not torn
  _, good = _state(stop, bad - 1)
  assert all(np.all(np.isfinite(x)) for x in good if x.dtype.kind == "f")

  # skip_nonfinite: the bad step leaves parameters, optimiser and BatchNorm
  # state as they were (only the step counter and RNG advance); training goes
  # on and ends finite.
  skip = str(tmp_path / "skip")
  out = _run(env, skip, f"--config.train.num_steps={bad + 2}", *flags,
             "--config.train.skip_nonfinite=True")
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"non-finite loss or gradients at step {bad}" in out.stderr
  rows = {r["step"]: r for r in _logged_steps(skip)}
  assert rows[bad]["finite"] == 0.0 and np.isnan(rows[bad]["loss"])
  assert all(rows[s]["finite"] == 1.0 for s in rows if s != bad)
  before, _ = _state(skip, bad - 1)
  after, _ = _state(skip, bad)
  later, later_leaves = _state(skip, bad + 2)
  import jax  # pylint: disable=g-import-not-at-top
  for key in ("params", "state", "opt_state", "ema_params"):
    for x, y in zip(jax.tree_util.tree_leaves(before[key]),
                    jax.tree_util.tree_leaves(after[key])):
      np.testing.assert_array_equal(x, y)
  assert int(after["step"]) == bad
  moved = [not np.array_equal(x, y) for x, y in zip(
      jax.tree_util.tree_leaves(after["params"]),
      jax.tree_util.tree_leaves(later["params"]))]
  assert any(moved)
  assert all(np.all(np.isfinite(x)) for x in later_leaves
             if x.dtype.kind == "f")
  # The run before the NaN is the same as the stopped run's.
  _, stop_good = _state(stop, bad - 1)
  _, skip_good = _state(skip, bad - 1)
  for x, y in zip(stop_good, skip_good):
    np.testing.assert_array_equal(x, y)


def test_corrupt_or_missing_data_file_exits_2_and_keeps_checkpoint(
    env, tmp_path):
  data = str(tmp_path / "clusters.npz")
  save_structures(data, toy_task.make_clusters(32, seed=3))
  run = str(tmp_path / "run")
  flags = [f"--config.data.path={data}", "--config.train.eval_every=0",
           "--config.train.checkpoint_every=3", "--config.train.log_every=1"]
  out = _run(env, run, "--config.train.num_steps=6", *flags)
  assert out.returncode == 0, out.stderr[-3000:]
  done, _ = _ckpt_dirs(run)
  assert max(done) == 6
  _, saved = _state(run, 6)
  listing = sorted(os.listdir(os.path.join(run, "checkpoints")))
  metrics_before = open(os.path.join(run, "metrics.jsonl")).read()

  # Corrupt: cut the file in half (as a crashed copy would).
  good = open(data, "rb").read()
  with open(data, "wb") as f:
    f.write(good[:len(good) // 2])
  out = _run(env, run, "--config.train.num_steps=12", *flags)
  assert out.returncode == 2, out.stderr[-3000:]
  err = [l for l in out.stderr.splitlines() if l.startswith("error:")]
  assert len(err) == 1 and err[0].startswith(
      f"error: bad input: {data}: unreadable structure cache"), err
  # Missing: the same clear error naming the file.
  os.remove(data)
  out = _run(env, run, "--config.train.num_steps=12", *flags)
  assert out.returncode == 2
  assert f"error: bad input: {data}: unreadable structure cache" in out.stderr
  assert "No such file" in out.stderr

  # Nothing was trained or written: same checkpoints, same history, and the
  # checkpoint restores to the same values.
  assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == listing
  assert open(os.path.join(run, "metrics.jsonl")).read() == metrics_before
  c = ckpt_lib.Checkpointer(run)
  try:
    assert c.latest_step() == 6
    meta, _ = c.restore_meta()
    assert meta["step"] == 6
  finally:
    c.close()
  _, again = _state(run, 6)
  for x, y in zip(saved, again):
    np.testing.assert_array_equal(x, y)
