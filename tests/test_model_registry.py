"""One way to build a model (noisy_nodes.models) and one variant syntax
(configs.parse_variant)."""
import os

import haiku as hk
import jax
import numpy as np
import pytest

import noisy_nodes  # noqa: F401
from noisy_nodes import models
from noisy_nodes.gns import model as gns
import configs
from configs import crystal_common, oc20, qm9


def _count(config, graph, **overrides):
  f = hk.transform_with_state(
      lambda g: models.build_model(config, **overrides)(g, True))
  params, _ = jax.eval_shape(f.init, jax.random.PRNGKey(0), graph)
  return sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(params))


def test_registered_and_module_names_build_the_same_model():
  from test_gns import _slab_graph  # pylint: disable=g-import-not-at-top
  graph = _slab_graph()
  c = oc20.get_config("tiny").model
  by_name = _count(c, graph)
  assert by_name == _count(dict(c.to_dict(), name="noisy_nodes.gns.model:GNS"),
                           graph)
  direct = hk.transform_with_state(lambda g: gns.GNS(
      latent_size=16, mlp_layers=2, num_message_passing_steps=2,
      num_block_iterations=2, num_basis=8)(g, True))
  params, _ = jax.eval_shape(direct.init, jax.random.PRNGKey(0), graph)
  assert by_name == sum(int(np.prod(v.shape))
                        for v in jax.tree_util.tree_leaves(params))
  # Overrides win over the config's fields.
  assert _count(c, graph, latent_size=8) < by_name
  with pytest.raises(ValueError, match="unknown model 'nope'"):
    models.build_model(dict(name="nope"))
  with pytest.raises(ValueError, match="model.name is missing"):
    models.build_model(dict(latent_size=8))
  with pytest.raises(ValueError, match="already registered"):
    models.register("gns", object)


def test_presets_are_the_configs_models():
  assert oc20.get_config().model.to_dict() == models.presets("gns",
                                                             setting="oc20")
  assert qm9.get_config().model.to_dict() == dict(name="gns",
                                                  **gns.presets("qm9"))
  with pytest.raises(ValueError, match="unknown GNS setting"):
    gns.presets("md17")


def test_one_variant_syntax():
  parse = configs.parse_variant
  assert parse(" demo , tiny,", ("demo", "tiny")) == ["demo", "tiny"]
  assert parse("", ("demo",)) == []
  assert parse("is2rs,10x10", ("is2rs",), patterns={"NxM": r"\d+x\d+"}) == [
      "is2rs", "10x10"]
  with pytest.raises(ValueError, match="unknown oc20 config variant token '1x2x3'"):
    oc20.get_config("1x2x3")
  with pytest.raises(ValueError, match="unknown cgcnn config variant"):
    crystal_common.crystal_config("cgcnn", "demo+tiny")
  from configs import crysgnn_distill  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="crysgnn_distill"):
    crysgnn_distill.get_config("big")


def test_config_paths_resolve_outside_the_repository(tmp_path, monkeypatch):
  from noisy_nodes import train  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(os.path.dirname(os.path.dirname(configs.__file__)))
  argv = ["train", "--config=configs/oc20.py:demo"]
  assert train.installed_config_paths(argv) == argv  # in the repository
  monkeypatch.chdir(tmp_path)
  argv = train.installed_config_paths(
      ["train", "--config=configs/oc20.py:tiny,is2rs", "--workdir=w",
       "--config", "configs/qm9.py", "--config=mine.py:x"])
  want = os.path.join(os.path.dirname(configs.__file__), "oc20.py")
  assert argv[1] == f"--config={want}:tiny,is2rs"
  assert argv[2:4] == ["--workdir=w", "--config"]
  assert argv[4] == os.path.join(os.path.dirname(configs.__file__), "qm9.py")
  assert argv[5] == "--config=mine.py:x"  # not a configs/ file: unchanged
  assert configs.load(argv[1][len("--config="):]).data.task == "is2rs"
