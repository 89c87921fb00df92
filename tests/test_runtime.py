"""engine.runtime: restarting a process with glibc's huge-page tunable."""
import os
import subprocess
import sys
import textwrap

from noisy_nodes.engine import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_reexec_command_keeps_arguments_and_other_tunables():
  exe, argv, env = runtime.reexec_command(
      {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "X": "1"})
  assert exe == sys.executable and argv[0] == sys.executable
  assert argv[1:] == sys.orig_argv[1:]
  assert env["GLIBC_TUNABLES"] == ("glibc.malloc.arena_max=2:"
                                   "glibc.malloc.hugetlb=1")
  assert env["X"] == "1"
  assert runtime.reexec_command({})[2]["GLIBC_TUNABLES"] == runtime.TUNABLE


def _run(tmp_path, env_extra, wanted=True):
  script = tmp_path / "child.py"
  script.write_text(textwrap.dedent(f"""
      import os, sys
      sys.path.insert(0, {ROOT!r})
      from noisy_nodes.engine import runtime
      print("start", os.getpid(), flush=True)
      runtime.reexec_with_hugepages({wanted})
      print("tunables", os.environ.get("GLIBC_TUNABLES", ""), sys.argv[1:])
  """))
  env = {k: v for k, v in os.environ.items()
         if k not in ("GLIBC_TUNABLES", "NN_HUGEPAGES")}
  env.update(env_extra)
  out = subprocess.run([sys.executable, str(script), "--flag", "a b"],
                       env=env, capture_output=True, text=True, check=True)
  return out.stdout.splitlines()


def test_reexec_restarts_once_with_the_tunable_and_same_arguments(tmp_path):
  lines = _run(tmp_path, {})
  starts = [l for l in lines if l.startswith("start")]
  last = lines[-1]
  assert last.endswith("['--flag', 'a b']")
  if runtime.hugepages_supported():
    # Same PID twice: the process image was replaced, not forked.
    assert len(starts) == 2 and starts[0] == starts[1]
    assert "glibc.malloc.hugetlb=1" in last
  else:
    assert len(starts) == 1 and "hugetlb" not in last


def test_reexec_opt_outs(tmp_path):
  for env, wanted in (({"NN_HUGEPAGES": "0"}, True), ({}, False)):
    lines = _run(tmp_path, env, wanted)
    assert len([l for l in lines if l.startswith("start")]) == 1
    assert "hugetlb" not in lines[-1]


def test_release_free_memory_returns_heap_to_the_os():
  import ctypes  # pylint: disable=g-import-not-at-top
  if runtime._malloc_trim() is None:  # pylint: disable=protected-access
    assert runtime.release_free_memory() is False
    return

  def resident_kb():
    with open("/proc/self/status") as f:
      return int([l for l in f if l.startswith("VmRSS:")][0].split()[1])
  libc = ctypes.CDLL(None)
  libc.malloc.restype = ctypes.c_void_p
  libc.malloc.argtypes = [ctypes.c_size_t]
  libc.free.argtypes = [ctypes.c_void_p]
  # Many small blocks come from the heap (not mmap), touched, then freed:
  # glibc keeps them mapped until trimmed.
  blocks = [libc.malloc(16 * 1024) for _ in range(12000)]
  sentinel = libc.malloc(64)  # keeps the freed blocks off the heap's top,
  for b in blocks:            # where free() itself would trim them
    ctypes.memset(b, 1, 16 * 1024)
  for b in blocks:
    libc.free(b)
  before = resident_kb()
  assert runtime.release_free_memory() is True
  after = resident_kb()
  libc.free(sentinel)
  assert after < before - 100_000, (before, after)  # 190 MB freed, >100 back


def test_compilation_cache_folder_setting(monkeypatch):
  monkeypatch.delenv("NN_COMPILATION_CACHE", raising=False)
  assert runtime.compilation_cache_dir("/x/y") == "/x/y"
  assert runtime.compilation_cache_dir("off") == ""
  assert runtime.compilation_cache_dir("~/c") == os.path.expanduser("~/c")
  monkeypatch.setenv("NN_COMPILATION_CACHE", "/z")
  assert runtime.compilation_cache_dir("/x/y") == "/z"
  monkeypatch.setenv("NN_COMPILATION_CACHE", "off")
  assert runtime.compilation_cache_dir("/x/y") == ""


def test_compilation_cache_is_written_once_and_read_back(tmp_path):
  """Two processes compile the same program: the second reads the first's."""
  script = tmp_path / "compile.py"
  script.write_text(textwrap.dedent(f"""
      import sys
      sys.path.insert(0, {ROOT!r})
      import jax, jax.numpy as jnp
      from jax._src import monitoring
      from noisy_nodes.engine import runtime
      hits = []
      monitoring.register_event_listener(
          lambda name, **kw: hits.append(name) if "cache_hits" in name
          else None)
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
      print("dir", runtime.enable_compilation_cache({str(tmp_path / "c")!r}))
      f = jax.jit(lambda x: jnp.sin(x) @ x.T + 1.0)
      print("value", float(f(jnp.ones((3, 3))).sum()))
      print("hits", len(hits))
  """))
  env = {k: v for k, v in os.environ.items() if k != "NN_COMPILATION_CACHE"}
  env["JAX_PLATFORMS"] = "cpu"
  outs = [subprocess.run([sys.executable, str(script)], env=env,
                         capture_output=True, text=True, check=True).stdout
          for _ in range(2)]
  first, second = (dict(l.split(" ", 1) for l in o.splitlines())
                   for o in outs)
  assert first["dir"] == second["dir"] == str(tmp_path / "c")
  assert first["value"] == second["value"]
  assert int(first["hits"]) == 0 and int(second["hits"]) >= 1
  assert any(tmp_path.joinpath("c").iterdir())
  env["NN_COMPILATION_CACHE"] = "off"
  off = subprocess.run([sys.executable, str(script)], env=env,
                       capture_output=True, text=True, check=True).stdout
  assert "dir \n" in off
