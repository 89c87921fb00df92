"""Test-wide settings: CPU only, deterministic, tests/ importable."""
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests run many small subprocesses; keep BLAS from oversubscribing 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# No persistent compilation cache in tests: every test compiles what it runs
# (tests/test_runtime.py checks the cache itself).
os.environ["NN_COMPILATION_CACHE"] = "off"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The repository root: ``configs`` (a package) under any pytest invocation.
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
