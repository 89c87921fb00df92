"""The package map of docs/design.md, checked statically (an import linter).

Imports are read with ``ast`` from the source files (nothing is imported,
so the test takes well under a second): every ``import`` and ``from ...
import``, at module level or inside a function. The shared layer
(``noisy_nodes`` except ``noisy_nodes.gns``) may name no paper package,
and no two packages import each other, directly or through others.
"""
import ast
import importlib.metadata
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP = ("noisy_nodes", "crystal", "launch")
PAPERS = ("noisy_nodes.gns", "crystal")


def _module_name(path):
  rel = os.path.relpath(path, ROOT)[:-len(".py")].split(os.sep)
  if rel[-1] == "__init__":
    rel = rel[:-1]
  return ".".join(rel)


def _modules():
  """{module name: source path} of every library module."""
  out = {}
  for top in TOP:
    for folder, _, files in os.walk(os.path.join(ROOT, top)):
      for f in files:
        if f.endswith(".py"):
          path = os.path.join(folder, f)
          out[_module_name(path)] = path
  return out


def _imports(source, name, is_package=False):
  """The library modules (and names in them) that a module imports."""
  tree = ast.parse(source)
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      if node.level:  # relative: resolve against this module's package
        base = name.split(".")
        base = base[:len(base) - node.level + (1 if is_package else 0)]
        module = ".".join(base + ([node.module] if node.module else []))
      else:
        module = node.module or ""
      found.add(module)
      found.update(f"{module}.{a.name}" for a in node.names)
  return {m for m in found if m.split(".")[0] in TOP}


def _package(name):
  """The node of the package map a module belongs to: its sub-package
  (``noisy_nodes.data.graphs`` -> ``noisy_nodes.data``; a package's
  ``__init__`` is the package), or itself for a module at the top of
  ``noisy_nodes`` / ``crystal`` (``noisy_nodes.nn``, ``crystal.tasks``)."""
  if name in _PACKAGES:
    return name
  parent = name.rpartition(".")[0]
  return name if parent in TOP else parent


_MODULES = _modules()
_PACKAGES = {n for n, p in _MODULES.items() if p.endswith("__init__.py")}
_GRAPH = {n: _imports(open(p).read(), n, p.endswith("__init__.py"))
          for n, p in _MODULES.items()}


def _is_under(module, package):
  return module == package or module.startswith(package + ".")


def test_the_shared_layer_names_no_paper():
  bad = [f"{n} imports {m}" for n, deps in sorted(_GRAPH.items())
         if _is_under(n, "noisy_nodes") and not _is_under(n, "noisy_nodes.gns")
         for m in sorted(deps) if any(_is_under(m, p) for p in PAPERS)]
  assert not bad, "the shared layer imports a paper package:\n" + (
      "\n".join(bad))


def _resolve(name):
  """The library module behind an imported name (``crystal.models.GATGNN``
  -> ``crystal.models``)."""
  while name and name not in _MODULES:
    name = name.rpartition(".")[0]
  return name


def _package_graph():
  """{package: packages it imports}."""
  edges = {}
  for n, deps in _GRAPH.items():
    src = _package(n)
    for m in deps:
      dst = _package(_resolve(m))
      # A package importing its own sub-packages (re-exports in an
      # ``__init__``) or a parent's ``__init__`` (``import noisy_nodes``, the
      # jraph shim) is not a dependency between packages.
      if dst and dst != src and not (
          _is_under(dst, src) and src in _PACKAGES or
          _is_under(src, dst) and dst in _PACKAGES):
        edges.setdefault(src, set()).add(dst)
  return edges


def _cycles(edges):
  """One cycle through each strongly connected component (Tarjan)."""
  index, low, stack, on, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in sorted(edges.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(edges):
    if v not in index:
      visit(v)
  return out


def test_no_import_cycle_between_packages():
  cycles = _cycles(_package_graph())
  assert not cycles, "packages import each other in a cycle: " + (
      "; ".join(" <-> ".join(c) for c in cycles))


def test_the_linter_sees_imports_of_every_form():
  # It can fail: a toy graph with a cycle is caught, and so is a module
  # naming a paper inside a function or relatively.
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [
      ["a", "b", "c"]]
  source = ("import noisy_nodes.nn\n"
            "def f():\n  from noisy_nodes.gns import analysis\n"
            "from ..gns import noise\n")
  got = _imports(source, "noisy_nodes.engine.trainer")
  assert {"noisy_nodes.nn", "noisy_nodes.gns.analysis",
          "noisy_nodes.gns.noise"} <= got
  assert _package(_resolve("crystal.models.GATGNN")) == "crystal.models"
  # The real graph is read: the engine imports the data layer.
  assert "noisy_nodes.data" in _package_graph()["noisy_nodes.engine"]


# -- the task registry (the shared layer names no task) ----------------------
def test_tasks_resolve_by_module_path_and_by_entry_point(monkeypatch):
  from noisy_nodes.tasks import base  # pylint: disable=g-import-not-at-top
  import toy_task  # pylint: disable=g-import-not-at-top
  assert base.resolve_task("toy_task:ToyTask") is toy_task.ToyTask
  entry = importlib.metadata.EntryPoint(
      name="toy", value="toy_task:ToyTask", group=base.ENTRY_POINT_GROUP)
  seen = []

  def entry_points(group):
    seen.append(group)
    return [entry] if group == base.ENTRY_POINT_GROUP else []
  monkeypatch.setattr(base.importlib.metadata, "entry_points", entry_points)
  assert base.resolve_task("toy") is toy_task.ToyTask
  assert seen == [base.ENTRY_POINT_GROUP]
  with pytest.raises(ValueError, match=r"'nope'.*\['toy'\]"):
    base.resolve_task("nope")


def test_setup_registers_the_short_names_of_existing_runs():
  # Run directories saved before configs named module:Class hold these.
  tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
  groups = [n for n in ast.walk(tree) if isinstance(n, ast.keyword)
            and n.arg == "entry_points"]
  (group,) = groups
  points = ast.literal_eval(group.value)["noisy_nodes.tasks"]
  names = {}
  for line in points:
    name, _, value = (x.strip() for x in line.partition("="))
    names[name] = value
  assert sorted(names) == ["crysgnn_distill", "crysgnn_pretrain", "crystal",
                           "oc20", "qm9"]
  for value in names.values():
    module, _, cls = value.partition(":")
    path = os.path.join(ROOT, *module.split(".")) + ".py"
    assert f"class {cls}(" in open(path).read(), value
