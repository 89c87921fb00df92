"""Tests of the launch scripts (launch/*.sh, slurm.sbatch) and launch.local.

Shell scripts are checked with `bash -n`, shellcheck, their --dry-run output
(parsed back with shlex) and, for the control flow that decides what to run
(TPU restart loop, SLURM requeue), with fake `gcloud`/`srun`/`scontrol`
executables on PATH that log their arguments. launch.local really starts
processes: two JAX processes psum their ids through jax.distributed on
loopback.
"""
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from launch import local

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch")
SCRIPTS = ["tpu_pod.sh", "tpu_eval.sh", "multinode.sh", "slurm.sbatch"]


def _run(args, env=None, timeout=60):
  full_env = dict(os.environ)
  full_env.update(env or {})
  return subprocess.run(args, capture_output=True, text=True, env=full_env,
                        cwd=REPO, timeout=timeout)


def _commands(stdout):
  """The printed commands as argv lists (comment lines dropped)."""
  return [shlex.split(line) for line in stdout.splitlines()
          if line.strip() and not line.startswith("#")]


def _remote(arg):
  """Tokens of a `--command=...` string as the worker's shell splits them."""
  assert arg.startswith("--command=")
  lexer = shlex.shlex(arg[len("--command="):], posix=True,
                      punctuation_chars=True)
  lexer.whitespace_split = True
  return list(lexer)


def _script(path, text):
  with open(path, "w") as f:
    f.write(textwrap.dedent(text))
  os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)


# ----------------------------------------------------------------- syntax ---

@pytest.mark.parametrize("name", SCRIPTS)
def test_bash_syntax(name):
  r = _run(["bash", "-n", os.path.join(LAUNCH, name)])
  assert r.returncode == 0, r.stderr


def test_shellcheck():
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck not installed (apt-get install -y shellcheck)")
  r = _run(["shellcheck", "--shell=bash",
            *[os.path.join(LAUNCH, n) for n in SCRIPTS]])
  assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------- TPU pod ---

TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
LOC = ["--zone=us-central2-b", "--project=proj"]


def _tpu_train_dry_run():
  return _run(["bash", "launch/tpu_pod.sh", "--dry-run", "--name=nn-v4",
            "--zone=us-central2-b", "--project=proj",
            "--accelerator-type=v4-32", "--spot",
            "--workdir=gs://bkt/run1", "--config=configs/oc20.py:demo",
            "--restart-on-preemption", "--config.train.num_steps=100", "--",
            "--config.name=it's x"])


def test_tpu_pod_dry_run_prints_every_command():
  r = _tpu_train_dry_run()
  assert r.returncode == 0, r.stderr
  cmds = _commands(r.stdout)
  assert cmds[0] == TPU + ["describe", "nn-v4", *LOC,
                           "--format=value(state)"]
  assert cmds[1] == TPU + ["create", "nn-v4", *LOC, "--accelerator-type=v4-32",
                           "--version=tpu-ubuntu2204-base", "--spot"]
  assert cmds[2][:2] == ["tar", "-czf"] and cmds[2][-3:] == ["-C", REPO, "."]
  tarball = cmds[2][2]
  assert cmds[3] == TPU + ["scp", tarball, "nn-v4:nn_src.tgz", *LOC,
                           "--worker=all"]
  # Install on all workers: unpack, venv, jax[tpu], editable project.
  assert cmds[4][:len(TPU) + 5] == TPU + ["ssh", "nn-v4", *LOC, "--worker=all"]
  install_words = _remote(cmds[4][-1])
  assert "jax[tpu]" in install_words
  assert "tar" in install_words and "nn_src.tgz" in install_words
  assert install_words[-5:] == ["nn_venv/bin/pip", "install", "-q", "-e",
                                "noisy_nodes"]
  # Training, on all workers at once; the quoting survives the remote shell.
  assert cmds[5][:-1] == TPU + ["ssh", "nn-v4", *LOC, "--worker=all"]
  train = _remote(cmds[5][-1])
  assert train == ["cd", "noisy_nodes", "&&", "PYTHONUNBUFFERED=1",
                   "~/nn_venv/bin/python", "-m", "noisy_nodes.train",
                   "--distributed=on", "--config=configs/oc20.py:demo", "--workdir=gs://bkt/run1",
                   "--config.train.num_steps=100", "--config.name=it's x"]
  assert len(cmds) == 6
  assert "rerun the same command" in r.stdout  # The restart loop is announced.


def test_tpu_pod_remote_command_runs_in_a_shell(tmp_path):
  # Execute the worker command for real, with HOME = tmp_path and a stub
  # venv python, so quoting and `~` expansion are checked by bash itself.
  command = _commands(_tpu_train_dry_run().stdout)[-1][-1]
  command = command[len("--command="):]
  (tmp_path / "noisy_nodes").mkdir()
  (tmp_path / "nn_venv" / "bin").mkdir(parents=True)
  _script(tmp_path / "nn_venv" / "bin" / "python", f"""\
      #!{sys.executable}
      import json, os, sys
      print(json.dumps([os.getcwd(), os.environ["PYTHONUNBUFFERED"]]
                       + sys.argv[1:]))
      """)
  r = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                     cwd=tmp_path, env={**os.environ, "HOME": str(tmp_path)},
                     timeout=30)
  assert r.returncode == 0, r.stderr
  assert json.loads(r.stdout) == [
      str(tmp_path / "noisy_nodes"), "1", "-m", "noisy_nodes.train",
      "--distributed=on", "--config=configs/oc20.py:demo", "--workdir=gs://bkt/run1",
      "--config.train.num_steps=100", "--config.name=it's x"]


def test_tpu_pod_git_repo_preemptible_existing_slice():
  r = _run(["bash", "launch/tpu_pod.sh", "--dry-run", "--name=t", "--zone=z",
            "--preemptible", "--accelerator-type=v5litepod-16",
            "--version=v2-alpha-tpuv5-lite", "--workdir=gs://b/r",
            "--config=configs/qm9.py", "--ref=dev",
            "--repo=https://github.com/me/noisy_nodes.git",
            "--create-arg=--network=n1", "--delete-after"])
  assert r.returncode == 0, r.stderr
  cmds = _commands(r.stdout)
  assert cmds[1] == TPU + ["create", "t", "--zone=z",
                           "--accelerator-type=v5litepod-16",
                           "--version=v2-alpha-tpuv5-lite", "--preemptible",
                           "--network=n1"]
  install = _remote(cmds[2][-1])
  i = install.index("clone")
  assert install[i - 1:i + 6] == [
      "git", "clone", "-q", "--depth=1", "--branch=dev",
      "https://github.com/me/noisy_nodes.git", "noisy_nodes"]
  assert not any(c[0] == "tar" for c in cmds)  # Nothing copied from here.
  assert cmds[-1] == TPU + ["delete", "t", "--zone=z", "--quiet"]


def test_tpu_eval_dry_run():
  r = _run(["bash", "launch/tpu_eval.sh", "--dry-run", "--name=t", "--zone=z",
            "--workdir=gs://b/r", "--split=test", "--checkpoint=best",
            "--skip-install"])
  assert r.returncode == 0, r.stderr
  cmds = _commands(r.stdout)
  # No --accelerator-type: the slice must exist, nothing is created.
  assert [c[4] for c in cmds] == ["describe", "ssh"]
  assert _remote(cmds[1][-1])[4:] == [
      "~/nn_venv/bin/python", "-m", "noisy_nodes.evaluate",
      "--distributed=on", "--workdir=gs://b/r", "--split=test", "--checkpoint=best"]
  assert "--worker=all" in cmds[1]
  assert "tpu_eval.sh" in _run(["bash", "launch/tpu_eval.sh", "--help"]).stdout


@pytest.mark.parametrize("bad", [
    [],                                               # no --config
    ["--config=c.py", "--spot", "--preemptible"],
    ["--config=c.py", "--bogus"],
    ["--config=c.py", "--split=test"],                # eval-only flag
    ["--config=c.py", "--repo=/nonexistent/dir"],
])
def test_tpu_pod_rejects_bad_arguments(bad):
  r = _run(["bash", "launch/tpu_pod.sh", "--dry-run", "--name=t", "--zone=z",
            "--workdir=gs://b/r", *bad])
  assert r.returncode == 2 and r.stdout == ""


FAKE_GCLOUD = """\
#!{python}
# Logs argv; `describe` answers the next state of STATES (then READY), and
# the training ssh returns the next status of RCS (then 0).
import json, os, sys
d = os.environ["FAKE_DIR"]
with open(os.path.join(d, "log"), "a") as f:
  f.write(json.dumps(sys.argv[1:]) + "\\n")
def pop(name, default):
  path = os.path.join(d, name)
  lines = open(path).read().split() if os.path.exists(path) else []
  open(path, "w").write("\\n".join(lines[1:]))
  return lines[0] if lines else default
if "describe" in sys.argv:
  state = pop("STATES", "READY")
  if state == "NOT_FOUND":
    sys.exit(1)
  print(state)
elif "ssh" in sys.argv and any("noisy_nodes.train" in a for a in sys.argv):
  sys.exit(int(pop("RCS", "0")))
"""


def _fake_gcloud(tmp_path, states, rcs):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _script(bin_dir / "gcloud", FAKE_GCLOUD.format(python=sys.executable))
  (tmp_path / "STATES").write_text("\n".join(states))
  (tmp_path / "RCS").write_text("\n".join(map(str, rcs)))
  src = tmp_path / "src"
  src.mkdir()
  (src / "setup.py").write_text("# tiny checkout to tar\n")
  env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_DIR": str(tmp_path),
         "TMPDIR": str(tmp_path)}
  return env, str(src)


def _log_actions(tmp_path):
  """(subcommand, detail) per gcloud call: ssh calls tell install/train."""
  out = []
  for line in (tmp_path / "log").read_text().splitlines():
    argv = json.loads(line)
    action = argv[3]
    if action == "ssh":
      action = "train" if "noisy_nodes.train" in argv[-1] else "install"
    out.append(action)
  return out


def test_tpu_pod_recreates_preempted_slice_and_resumes(tmp_path):
  # First run: no slice → create; the run dies (ssh 255) because the spot
  # slice was preempted → delete, create, install again, rerun → success.
  env, src = _fake_gcloud(tmp_path, ["NOT_FOUND", "PREEMPTED", "PREEMPTED"],
                          [255, 0])
  r = _run(["bash", "launch/tpu_pod.sh", "--name=s", "--zone=z",
            "--accelerator-type=v4-8", "--spot", "--workdir=gs://b/r",
            "--config=c.py", f"--repo={src}", "--restart-on-preemption"],
           env=env)
  assert r.returncode == 0, r.stderr
  assert _log_actions(tmp_path) == [
      "describe", "create", "scp", "install", "train",
      "describe",                       # after the failed run: PREEMPTED
      "describe", "delete", "create", "scp", "install", "train"]
  assert "restart 1/20" in r.stderr
  assert os.path.exists(tmp_path / "nn_src_s.tgz")


def test_tpu_pod_sigterm_on_ready_slice_reruns_without_reinstall(tmp_path):
  env, src = _fake_gcloud(tmp_path, ["READY"], [143, 143, 0])
  r = _run(["bash", "launch/tpu_pod.sh", "--name=s", "--zone=z",
            "--workdir=gs://b/r", "--config=c.py", f"--repo={src}",
            "--restart-on-preemption", "--delete-after"], env=env)
  assert r.returncode == 0, r.stderr
  assert _log_actions(tmp_path) == [
      "describe", "scp", "install", "train", "describe",
      "describe", "train", "describe", "describe", "train", "delete"]


def test_tpu_pod_real_failure_is_not_retried(tmp_path):
  env, src = _fake_gcloud(tmp_path, ["READY"], [1])
  r = _run(["bash", "launch/tpu_pod.sh", "--name=s", "--zone=z",
            "--workdir=gs://b/r", "--config=c.py", f"--repo={src}",
            "--restart-on-preemption", "--skip-install"], env=env)
  assert r.returncode == 1
  assert _log_actions(tmp_path) == ["describe", "train", "describe"]
  # Without the restart option even a preemption ends the script.
  (tmp_path / "log").unlink()
  (tmp_path / "RCS").write_text("143")
  r = _run(["bash", "launch/tpu_pod.sh", "--name=s", "--zone=z",
            "--workdir=gs://b/r", "--config=c.py", f"--repo={src}",
            "--skip-install", "--max-restarts=0"], env=env)
  assert r.returncode == 143
  assert _log_actions(tmp_path) == ["describe", "train"]


# ------------------------------------------------------------------ SLURM ---

def test_sbatch_directives_come_first_and_request_one_gpu_per_task():
  lines = open(os.path.join(LAUNCH, "slurm.sbatch")).read().splitlines()
  assert lines[0].startswith("#!")
  first_command = next(i for i, l in enumerate(lines)
                       if l.strip() and not l.startswith("#"))
  directives = [l.split(None, 1)[1] for l in lines if l.startswith("#SBATCH")]
  # sbatch stops reading #SBATCH lines at the first command.
  assert all(i < first_command for i, l in enumerate(lines)
             if l.startswith("#SBATCH"))
  for d in ["--gpus-per-task=1", "--signal=TERM@120", "--requeue",
            "--open-mode=append"]:
    assert d in directives
  assert any(d.startswith("--ntasks-per-node=") for d in directives)


def test_sbatch_dry_run(tmp_path):
  r = _run(["bash", "launch/slurm.sbatch", "--dry-run",
            "--config.train.batch_size=64"],
           env={"CONFIG": "configs/qm9.py:base", "WORKDIR": "/scratch/w x",
                "REPO_DIR": str(tmp_path)})
  assert r.returncode == 0, r.stderr
  cmds = _commands(r.stdout)
  assert cmds == [
      ["cd", str(tmp_path)],
      ["export", "JAX_LOCAL_DEVICE_IDS=0"],
      ["srun", "--kill-on-bad-exit=1", "python", "-m", "noisy_nodes.train",
       "--config=configs/qm9.py:base", "--workdir=/scratch/w x",
       "--config.train.batch_size=64"]]
  r = _run(["bash", "launch/slurm.sbatch", "--dry-run", "--split=test"],
           env={"ENTRY": "evaluate", "WORKDIR": "/w"})
  assert _commands(r.stdout)[-1][2:] == [
      "python", "-m", "noisy_nodes.evaluate", "--workdir=/w", "--split=test"]


def test_sbatch_requires_slurm_outside_dry_run():
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  r = subprocess.run(["bash", "launch/slurm.sbatch"], capture_output=True,
                     text=True, env=env, cwd=REPO, timeout=30)
  assert r.returncode == 2 and "sbatch" in r.stderr


@pytest.mark.parametrize("srun_rc,requeued", [(143, True), (0, False),
                                              (1, False)])
def test_sbatch_requeues_after_sigterm_checkpoint(tmp_path, srun_rc, requeued):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  log = tmp_path / "log"
  _script(bin_dir / "srun", f"""\
      #!/bin/bash
      echo "srun JAX_LOCAL_DEVICE_IDS=$JAX_LOCAL_DEVICE_IDS $PWD $*" >> {log}
      exit {srun_rc}
      """)
  _script(bin_dir / "scontrol", f"""\
      #!/bin/bash
      echo "scontrol $*" >> {log}
      """)
  r = _run(["bash", "launch/slurm.sbatch", "--config.x=1"],
           env={"PATH": f"{bin_dir}:{os.environ['PATH']}",
                "SLURM_JOB_ID": "4242", "SLURM_SUBMIT_DIR": str(tmp_path),
                "CONFIG": "c.py", "WORKDIR": "/w"})
  assert r.returncode == srun_rc
  calls = log.read_text().splitlines()
  assert calls[0] == (f"srun JAX_LOCAL_DEVICE_IDS=0 {tmp_path} "
                      "--kill-on-bad-exit=1 python -m noisy_nodes.train "
                      "--config=c.py --workdir=/w --config.x=1")
  assert calls[1:] == (["scontrol requeue 4242"] if requeued else [])


# -------------------------------------------------------------- multinode ---

def test_multinode_dry_run_and_recipe():
  r = _run(["bash", "launch/multinode.sh", "--dry-run",
            "--coordinator_address=10.0.0.1:1234", "--num_processes=2",
            "--process_id=1", "--", "--config=configs/oc20.py:demo",
            "--workdir=/shared/run"])
  assert r.returncode == 0, r.stderr
  assert _commands(r.stdout) == [[
      "NN_COORDINATOR_ADDRESS=10.0.0.1:1234", "NN_NUM_PROCESSES=2",
      "NN_PROCESS_ID=1", "python", "-m", "noisy_nodes.train",
      "--config=configs/oc20.py:demo", "--workdir=/shared/run"]]
  r = _run(["bash", "launch/multinode.sh", "--hosts=h0,h1,h2", "--port=99",
            "--entry=evaluate", "--", "--workdir=/w"])
  cmds = _commands(r.stdout)
  assert cmds == [["NN_COORDINATOR_ADDRESS=h0:99", "NN_NUM_PROCESSES=3",
                   f"NN_PROCESS_ID={i}", "python", "-m",
                   "noisy_nodes.evaluate", "--workdir=/w"] for i in range(3)]
  assert r.stdout.splitlines()[2] == "# on h1:"


def test_multinode_runs_the_command_and_validates(tmp_path):
  # Without --dry-run the command is exec'd; a stub stands in for python.
  stub = tmp_path / "py"
  _script(stub, f"""\
      #!{sys.executable}
      import json, os, sys
      print(json.dumps([os.environ[k] for k in ("NN_COORDINATOR_ADDRESS",
                        "NN_NUM_PROCESSES", "NN_PROCESS_ID")] + sys.argv[1:]))
      """)
  r = _run(["bash", "launch/multinode.sh", f"--python={stub}",
            "--coordinator_address=h:1", "--num_processes=3",
            "--process_id=2", "--", "--workdir=/w x"])
  assert r.returncode == 0, r.stderr
  assert json.loads(r.stdout) == ["h:1", "3", "2", "-m", "noisy_nodes.train",
                                  "--workdir=/w x"]
  for bad in (["--num_processes=2", "--process_id=2"],
              ["--num_processes=0", "--process_id=0"],
              ["--num_processes=2", "--process_id=-1"]):
    r = _run(["bash", "launch/multinode.sh", "--dry-run",
              "--coordinator_address=h:1", *bad])
    assert r.returncode == 2 and r.stdout == "", bad
  r = _run(["bash", "launch/multinode.sh", "--dry-run", "--num_processes=1",
            "--process_id=0", "--coordinator_address=nohostport"])
  assert r.returncode == 2


# ------------------------------------------------------------ launch.local ---

def test_read_distributed_env():
  assert local.read_distributed_env({}) is None
  env = local.distributed_env(1, 4, "10.1.2.3:555")
  assert local.read_distributed_env(env) == ("10.1.2.3:555", 4, 1)
  with pytest.raises(ValueError, match="missing"):
    local.read_distributed_env({"NN_PROCESS_ID": "0"})
  with pytest.raises(ValueError, match="HOST:PORT"):
    local.read_distributed_env({**env, "NN_COORDINATOR_ADDRESS": "host"})
  with pytest.raises(ValueError, match="not in"):
    local.read_distributed_env({**env, "NN_PROCESS_ID": "4"})
  with pytest.raises(ValueError):
    local.distributed_env(2, 2, "h:1")


def test_process_env():
  base = {"XLA_FLAGS": "--xla_foo=1 --xla_force_host_platform_device_count=8",
          "KEEP": "me"}
  e = local.process_env(1, 2, 5555, devices_per_process=3, base=base,
                        env={"KEEP": "you"})
  assert e["NN_COORDINATOR_ADDRESS"] == "127.0.0.1:5555"
  assert (e["NN_NUM_PROCESSES"], e["NN_PROCESS_ID"]) == ("2", "1")
  assert e["JAX_PLATFORMS"] == "cpu" and e["KEEP"] == "you"
  assert e["XLA_FLAGS"].split() == [
      "--xla_foo=1", "--xla_force_host_platform_device_count=3"]
  g = local.process_env(1, 2, 5555, devices_per_process=2, platform="gpu",
                        base={})
  assert g["CUDA_VISIBLE_DEVICES"] == "2,3"
  assert g["JAX_LOCAL_DEVICE_IDS"] == "0,1" and "JAX_PLATFORMS" not in g
  assert local.exit_status([(0, ""), (-15, ""), (3, "")]) == 3
  assert local.exit_status([(0, ""), (-9, "")]) == 137
  assert local.exit_status([(0, ""), (0, "")]) == 0


PSUM_SCRIPT = """\
import os
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

jax.distributed.initialize(
    coordinator_address=os.environ["NN_COORDINATOR_ADDRESS"],
    num_processes=int(os.environ["NN_NUM_PROCESSES"]),
    process_id=int(os.environ["NN_PROCESS_ID"]))
mesh = jax.make_mesh((jax.device_count(),), ("d",))
# Global device k (process p, local device j) holds p*D + j + 1.
shards = [jax.device_put(np.array(
              [jax.process_index() * jax.local_device_count() + j + 1],
              np.int32), d) for j, d in enumerate(jax.local_devices())]
x = jax.make_array_from_single_device_arrays(
    (jax.device_count(),), NamedSharding(mesh, P("d")), shards)
total = jax.jit(jax.shard_map(lambda v: jax.lax.psum(v, "d"), mesh=mesh,
                              in_specs=P("d"), out_specs=P()))(x)
print("RESULT", jax.process_index(), jax.process_count(),
      jax.local_device_count(), int(np.asarray(total.addressable_data(0))[0]))
"""


def test_local_two_processes_psum(tmp_path, capsys):
  script = tmp_path / "psum_ids.py"
  script.write_text(PSUM_SCRIPT)
  results = local.launch_local(str(script), [], num_processes=2,
                               devices_per_process=2, timeout=120)
  assert [code for code, _ in results] == [0, 0], results
  for i, (_, out) in enumerate(results):
    line = [l for l in out.splitlines() if l.startswith("RESULT")]
    # 2 processes × 2 CPU devices: 1 + 2 + 3 + 4.
    assert line == [f"RESULT {i} 2 2 10"]
  streamed = capsys.readouterr().out.splitlines()
  assert "[0] RESULT 0 2 2 10" in streamed
  assert "[1] RESULT 1 2 2 10" in streamed


FAIL_SCRIPT = """\
import os, subprocess, sys, time
# Each process starts a child that would outlive it: both must be stopped,
# also the child of the process that failed on its own.
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open(sys.argv[1] + os.environ["NN_PROCESS_ID"], "w").write(str(child.pid))
if os.environ["NN_PROCESS_ID"] == "1":
  time.sleep(0.5)
  print("process 1 fails", flush=True)
  sys.exit(3)
# Process 0 would wait for its peer forever.
print("process 0 waits", flush=True)
time.sleep(120)
"""


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  # A zombie is dead for our purposes.
  with open(f"/proc/{pid}/stat") as f:
    return f.read().split(")")[-1].split()[0] != "Z"


def test_local_failure_stops_the_others(tmp_path):
  script = tmp_path / "fail.py"
  script.write_text(FAIL_SCRIPT)
  pid_file = tmp_path / "child.pid"
  start = time.monotonic()
  results = local.launch_local(str(script), [str(pid_file)], num_processes=2,
                               timeout=60, echo=False, grace=2.0)
  assert time.monotonic() - start < 20
  (code0, out0), (code1, out1) = results
  assert code1 == 3 and "process 1 fails" in out1
  assert code0 < 0 and "process 0 waits" in out0  # Stopped by a signal.
  for i in range(2):
    assert not _alive(int((tmp_path / f"child.pid{i}").read_text())), i
  assert local.exit_status(results) == 3


def test_local_cli_exit_status_and_prefixes(tmp_path):
  script = tmp_path / "fail.py"
  script.write_text(FAIL_SCRIPT)
  r = _run([sys.executable, "-m", "launch.local", "--num_processes=2",
            "--timeout=60", "--", str(script), str(tmp_path / "pid")])
  assert r.returncode == 3
  assert "[1] process 1 fails" in r.stdout.splitlines()
  assert "process 1 exited with 3" in r.stdout
  r = _run([sys.executable, "-m", "launch.local", "--num_processes=2"])
  assert r.returncode == 2  # Missing '-- MODULE'.


def test_local_timeout_and_module_form(tmp_path):
  (tmp_path / "sleeper_mod.py").write_text(
      "import os, time\nprint('id', os.environ['NN_PROCESS_ID'], flush=True)"
      "\ntime.sleep(120)\n")
  start = time.monotonic()
  results = local.launch_local("sleeper_mod", [], num_processes=2,
                               timeout=1.0, echo=False, grace=1.0,
                               env={"PYTHONPATH": str(tmp_path)})
  assert time.monotonic() - start < 15
  assert all(code < 0 for code, _ in results)
  assert [out.split() for _, out in results] == [["id", "0"], ["id", "1"]]


SIGTERM_SCRIPT = """\
import os, signal, sys, time
def on_term(*_):
  print("checkpoint and exit", flush=True)
  sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
time.sleep(120)
"""


def test_local_cli_passes_sigterm_on(tmp_path):
  script = tmp_path / "term.py"
  script.write_text(SIGTERM_SCRIPT)
  p = subprocess.Popen([sys.executable, "-m", "launch.local",
                        "--num_processes=2", "--", str(script)], cwd=REPO,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)
  lines = []
  while sum(l.endswith("] ready\n") for l in lines) < 2:
    line = p.stdout.readline()
    assert line, "".join(lines)
    lines.append(line)
  p.terminate()
  out, _ = p.communicate(timeout=30)
  assert p.returncode == 143
  assert "[0] checkpoint and exit" in out and "[1] checkpoint and exit" in out
