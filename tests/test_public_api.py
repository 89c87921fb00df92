"""The public API: the README's Python example runs, every exported name
resolves, and ``import noisy_nodes`` / ``import crystal`` stay light."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_example():
  text = open(os.path.join(ROOT, "README.md")).read()
  section = text[text.index("### The library's API"):]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs(capsys):
  scope = {}
  exec(compile(_readme_example(), "README.md", "exec"), scope)  # pylint: disable=exec-used
  assert capsys.readouterr().out.strip() == "(3, 1)"
  out, batch = scope["out"], scope["batch"]
  # Two real crystals of the same structure: equal, finite predictions.
  graph = np.asarray(out["graph"])
  assert np.all(np.isfinite(graph[:2])) and graph[0, 0] == graph[1, 0]
  assert list(batch.globals["mask"]) == [True, True, False]


@pytest.mark.parametrize("package", ["noisy_nodes", "noisy_nodes.data",
                                     "noisy_nodes.engine", "noisy_nodes.gns",
                                     "crystal", "crystal.models"])
def test_every_exported_name_resolves(package):
  module = __import__(package, fromlist=["__all__"])
  missing = [n for n in module.__all__ if getattr(module, n, None) is None]
  assert not missing
  assert set(module.__all__) <= set(dir(module))
  with pytest.raises(AttributeError, match="no attribute"):
    getattr(module, "not_a_name")


def test_importing_the_packages_stays_light():
  code = ("import sys, noisy_nodes, crystal, noisy_nodes.data, "
          "noisy_nodes.gns, noisy_nodes.engine; print(sorted(m for m in "
          "('haiku', 'optax', 'orbax', 'jraph', 'vesin', 'ase') "
          "if m in sys.modules))")
  env = dict(os.environ, PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, env=env, check=True, cwd=ROOT)
  assert out.stdout.strip() == "[]"


def test_task_hooks_of_evaluate():
  # ``noisy_nodes.evaluate --submission / --analysis`` ask the run's task
  # class: OC20 writes the server's file, the GNS tasks have MAD, a task
  # without a submission format refuses with a ConfigError (one line, exit 2).
  import noisy_nodes  # pylint: disable=g-import-not-at-top
  from noisy_nodes.gns import analysis  # pylint: disable=g-import-not-at-top
  from noisy_nodes.gns.oc20.task import OC20Task  # pylint: disable=g-import-not-at-top
  from noisy_nodes.gns.qm9.task import QM9Task  # pylint: disable=g-import-not-at-top
  import toy_task  # pylint: disable=g-import-not-at-top
  assert OC20Task.analyses == QM9Task.analyses == {"mad": analysis.write_mad}
  assert OC20Task.write_submission is not noisy_nodes.Task.write_submission
  assert toy_task.ToyTask.analyses == {}
  with pytest.raises(noisy_nodes.ConfigError, match="ToyTask has no "
                     "submission format"):
    toy_task.ToyTask.write_submission("w", "x.npz", "test", "best", None)
