"""Runs N cooperating JAX processes on this machine (127.0.0.1).

Usage:

  python -m launch.local --num_processes=2 [--devices_per_process=1] \
      [--port=auto] [--timeout=3600] [--platform=cpu|gpu] \
      -- noisy_nodes.train --config=configs/oc20.py:demo --workdir=/tmp/w

The part after ``--`` is a module (run as ``python -m MODULE``) or a path to a
``.py`` file, followed by its arguments. Every process gets the multi-host
contract of the CLIs in its environment:

  NN_COORDINATOR_ADDRESS=127.0.0.1:PORT  NN_NUM_PROCESSES=N  NN_PROCESS_ID=i

which the trainer passes to ``jax.distributed.initialize``. With
``--platform=cpu`` (default) each process also gets ``JAX_PLATFORMS=cpu`` and
``XLA_FLAGS=--xla_force_host_platform_device_count=D`` so that it owns D CPU
devices; cross-process collectives then go through gloo on loopback. With
``--platform=gpu`` process i sees GPUs [i*D, (i+1)*D) via CUDA_VISIBLE_DEVICES.

Output of every process is streamed line by line, prefixed with ``[i]``. When
any process exits non-zero, the others get a grace period to end on their own
(e.g. a preemption every host agreed on), then they — or all processes, when
the timeout passes — are terminated (SIGTERM to their process group, SIGKILL
after a grace period) so a crashed
peer never leaves the rest blocked in a collective. The launcher exits with
the first non-zero status, 0 if all succeeded. SIGTERM to the launcher is
passed on to every process (the trainer checkpoints and exits 143), and the
launcher then exits 143 too: rerunning the same command resumes.
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

ENV_COORDINATOR = "NN_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "NN_NUM_PROCESSES"
ENV_PROCESS_ID = "NN_PROCESS_ID"
_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
# Seconds between SIGTERM and SIGKILL when stopping peers. The trainer needs
# a moment to finish its step and checkpoint on SIGTERM (exit status 143).
_GRACE_S = 10.0


def free_port(host: str = "127.0.0.1") -> int:
  """A TCP port that is free right now on `host` (the OS picks it)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind((host, 0))
    return s.getsockname()[1]


def distributed_env(process_id: int, num_processes: int,
                    coordinator_address: str) -> Dict[str, str]:
  """The NN_* environment of one process of a multi-process run."""
  if not 0 <= process_id < num_processes:
    raise ValueError(f"process_id {process_id} not in [0, {num_processes})")
  return {ENV_COORDINATOR: coordinator_address,
          ENV_NUM_PROCESSES: str(num_processes),
          ENV_PROCESS_ID: str(process_id)}


def read_distributed_env(
    environ: Optional[Mapping[str, str]] = None
) -> Optional[Tuple[str, int, int]]:
  """Parses NN_* variables → (coordinator_address, num_processes, process_id).

  Returns None when none of them is set (single process, or a TPU pod/SLURM
  run where `jax.distributed.initialize()` auto-detects everything). Raises
  ValueError when only some are set or they are malformed, because starting
  with a half-specified cluster would hang at the first collective.
  """
  environ = os.environ if environ is None else environ
  names = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)
  values = [environ.get(n) for n in names]
  if all(v is None for v in values):
    return None
  missing = [n for n, v in zip(names, values) if v is None]
  if missing:
    raise ValueError(f"incomplete distributed environment, missing {missing}")
  address, count, index = values
  host, sep, port = address.rpartition(":")
  if not sep or not host or not port.isdigit():
    raise ValueError(f"{ENV_COORDINATOR}={address!r} is not HOST:PORT")
  try:
    count, index = int(count), int(index)
  except ValueError as e:
    raise ValueError(f"non-integer {ENV_NUM_PROCESSES}/{ENV_PROCESS_ID}: "
                     f"{values[1]!r}/{values[2]!r}") from e
  if not 0 <= index < count:
    raise ValueError(f"{ENV_PROCESS_ID}={index} not in [0, {count})")
  return address, count, index


def _with_device_count(xla_flags: str, count: int) -> str:
  """XLA_FLAGS with the host device count set to `count` (others kept)."""
  kept = [f for f in xla_flags.split() if not f.startswith(_DEVICE_COUNT_FLAG)]
  return " ".join(kept + [f"{_DEVICE_COUNT_FLAG}={count}"])


def process_env(process_id: int, num_processes: int, port: int,
                devices_per_process: int = 1, platform: str = "cpu",
                base: Optional[Mapping[str, str]] = None,
                env: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
  """Full environment of local process `process_id` (base ← ours ← env)."""
  out = dict(os.environ if base is None else base)
  out.update(distributed_env(process_id, num_processes, f"127.0.0.1:{port}"))
  out["PYTHONUNBUFFERED"] = "1"  # Lines must reach us as they are printed.
  if platform == "cpu":
    out["JAX_PLATFORMS"] = "cpu"
    out["XLA_FLAGS"] = _with_device_count(out.get("XLA_FLAGS", ""),
                                          devices_per_process)
  elif platform == "gpu":
    first = process_id * devices_per_process
    out["CUDA_VISIBLE_DEVICES"] = ",".join(
        str(first + k) for k in range(devices_per_process))
    # Inside a SLURM allocation JAX would otherwise pick the device with
    # ordinal SLURM_LOCALID; ours are renumbered from 0 by CUDA_VISIBLE_DEVICES.
    out["JAX_LOCAL_DEVICE_IDS"] = ",".join(
        str(k) for k in range(devices_per_process))
  else:
    raise ValueError(f"unknown platform {platform!r} (cpu or gpu)")
  out.update(env or {})
  return out


def _command(module: str, args: Sequence[str]) -> List[str]:
  if module.endswith(".py"):
    return [sys.executable, module, *args]
  return [sys.executable, "-m", module, *args]


def _wait_all(procs: Sequence[subprocess.Popen], seconds: float) -> None:
  """Waits up to `seconds` for every process in `procs` to exit."""
  deadline = time.monotonic() + seconds
  while time.monotonic() < deadline and any(p.poll() is None for p in procs):
    time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
  """Whether process group `pgid` still has a member that is not a zombie.

  A zombie (exited, not yet reaped by whoever adopted it) holds no resources
  and cannot be signalled away, so it does not count. Where /proc is missing
  (macOS) any member counts.
  """
  try:
    os.killpg(pgid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  if not os.path.isdir("/proc/self"):
    return True
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      with open(f"/proc/{entry}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
      continue  # Exited while we looked.
    # Fields after the command: state, ppid, pgrp, ...
    if int(fields[2]) == pgid and fields[0] != "Z":
      return True
  return False


def _stop(procs: Sequence[subprocess.Popen], grace: float) -> None:
  """SIGTERM then SIGKILL the process groups of `procs`.

  Every group is stopped, also that of a process that has already exited:
  its children (data workers, a shell's command) live on in its group. We
  wait for each group to be empty, not only for its leader: signals reach
  the members in no particular order, and a loaded machine may run the
  leader's exit long before a child's.
  """
  groups = [p.pid for p in procs]  # start_new_session: pgid == pid.
  for sig in (signal.SIGTERM, signal.SIGKILL):
    live = [g for g in groups if _group_alive(g)]
    for g in live:
      try:
        os.killpg(g, sig)
      except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and (
        any(p.poll() is None for p in procs)
        or any(_group_alive(g) for g in live)):
      time.sleep(0.05)
    if all(p.poll() is not None for p in procs) and not any(
        _group_alive(g) for g in groups):
      return


def launch_local(module: str, args: Sequence[str], num_processes: int,
                 devices_per_process: int = 1, timeout: float = 3600.0,
                 env: Optional[Mapping[str, str]] = None, *,
                 port: Optional[int] = None, platform: str = "cpu",
                 echo: bool = True, stream=None, grace: float = _GRACE_S,
                 cwd: Optional[str] = None) -> List[Tuple[int, str]]:
  """Runs `module args` as `num_processes` cooperating local processes.

  Args:
    module: module name (``python -m``) or path of a ``.py`` file.
    args: its command-line arguments.
    num_processes: N ≥ 1.
    devices_per_process: D, CPU devices (or GPUs) owned by each process.
    timeout: seconds for the whole run; then every process is stopped.
    env: extra variables for every process (override ours).
    port: coordinator port, or None to pick a free one.
    platform: 'cpu' or 'gpu' (see module docstring).
    echo: whether to echo every line, prefixed with ``[i] ``.
    stream: where lines are echoed (default: sys.stdout at call time).
    grace: seconds between SIGTERM and SIGKILL when stopping processes.
    cwd: working directory of the processes.

  Returns:
    [(returncode, output)] per process id; output is the process' combined
    stdout+stderr. A process stopped by us has a negative returncode
    (−signal), as in `subprocess`.
  """
  if num_processes < 1 or devices_per_process < 1:
    raise ValueError("num_processes and devices_per_process must be >= 1")
  port = free_port() if port is None else port
  stream = (sys.stdout if stream is None else stream) if echo else None
  lock = threading.Lock()
  outputs: List[List[str]] = [[] for _ in range(num_processes)]
  procs, readers = [], []

  def pump(i: int, pipe) -> None:
    for line in iter(pipe.readline, ""):
      outputs[i].append(line)
      if stream is not None:
        with lock:
          stream.write(f"[{i}] {line.rstrip(chr(10))}\n")
          stream.flush()
    pipe.close()

  try:
    for i in range(num_processes):
      p = subprocess.Popen(
          _command(module, args), cwd=cwd, text=True, bufsize=1,
          env=process_env(i, num_processes, port, devices_per_process,
                          platform, env=env),
          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
          # Own process group: stopping a peer also stops its children.
          start_new_session=True)
      procs.append(p)
      t = threading.Thread(target=pump, args=(i, p.stdout), daemon=True)
      t.start()
      readers.append(t)
    deadline = time.monotonic() + timeout
    while True:
      codes = [p.poll() for p in procs]
      if any(c not in (None, 0) for c in codes):
        bad = [i for i, c in enumerate(codes) if c not in (None, 0)]
        _note(stream, lock, f"process {bad[0]} exited with {codes[bad[0]]}; "
              "stopping the others")
        # Peers often end on their own at the same step (a preemption all
        # hosts agreed on, or the same data error): let them finish their
        # checkpoint and exit with their own status before we signal them.
        _wait_all(procs, grace)
        break
      if all(c == 0 for c in codes):
        break
      if time.monotonic() > deadline:
        _note(stream, lock, f"timeout after {timeout:g} s; stopping all")
        break
      time.sleep(0.05)
  finally:
    # Also runs on KeyboardInterrupt/SIGTERM: never leave orphans behind,
    # and let the readers drain what the stopped processes printed last.
    _stop(procs, grace)
    for t in readers:
      t.join(timeout=5.0)
  return [(p.returncode, "".join(out)) for p, out in zip(procs, outputs)]


def _note(stream, lock, text: str) -> None:
  with lock:
    print(f"[launch.local] {text}", file=sys.stderr if stream is None
          else stream, flush=True)


def exit_status(results: Sequence[Tuple[int, str]]) -> int:
  """0 if all succeeded, else a non-zero status as a shell would report it.

  The first process that exited with its own non-zero status wins over
  processes killed by a signal (reported as 128+signal), because those are
  usually the peers we stopped after that failure.
  """
  codes = [code for code, _ in results]
  for code in codes:
    if code and code > 0:
      return code
  for code in codes:
    if code:
      return 128 - code
  return 0


class _Terminated(Exception):
  """SIGTERM reached the launcher (e.g. the job was preempted)."""


def _raise_terminated(signum, frame):
  del signum, frame
  raise _Terminated()


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--" not in argv:
    argv_ours, command = argv, []
  else:
    cut = argv.index("--")
    argv_ours, command = argv[:cut], argv[cut + 1:]
  parser = argparse.ArgumentParser(
      prog="python -m launch.local",
      description="Start N local JAX processes wired for "
                  "jax.distributed: ... -- MODULE [ARGS...]")
  parser.add_argument("--num_processes", type=int, required=True)
  parser.add_argument("--devices_per_process", type=int, default=1)
  parser.add_argument("--port", default="auto",
                      help="coordinator port, or 'auto' for a free one")
  parser.add_argument("--timeout", type=float, default=3600.0,
                      help="seconds before all processes are stopped")
  parser.add_argument("--platform", choices=("cpu", "gpu"), default="cpu")
  flags = parser.parse_args(argv_ours)
  if not command:
    parser.error("missing '-- MODULE [ARGS...]'")
  port = None if flags.port == "auto" else int(flags.port)
  # SIGTERM to the launcher is passed on (launch_local's cleanup sends SIGTERM
  # first): the trainers checkpoint and exit 143, and so do we.
  signal.signal(signal.SIGTERM, _raise_terminated)
  try:
    results = launch_local(command[0], command[1:], flags.num_processes,
                           flags.devices_per_process, flags.timeout,
                           port=port, platform=flags.platform)
  except _Terminated:
    print("[launch.local] SIGTERM: stopped all processes", flush=True)
    return 143
  return exit_status(results)


if __name__ == "__main__":
  sys.exit(main())
