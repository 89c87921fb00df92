"""QM9 task: raw files in, atom references, denoising Noisy Nodes, training."""
import os
import sys

import numpy as np
import pytest

import noisy_nodes  # noqa: F401
from noisy_nodes.engine import trainer
from noisy_nodes.gns.qm9 import reader
from noisy_nodes.gns.qm9.task import QM9Task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from configs import qm9 as qm9_config  # noqa: E402  pylint: disable=g-import-not-at-top


@pytest.fixture(scope="module")
def raw_folder(tmp_path_factory):
  """Eight molecules in the raw dsgdb9nsd format, labelled by GFN2-xTB."""
  pytest.importorskip("tblite")
  pytest.importorskip("rdkit")
  from noisy_nodes.gns.qm9 import xtb  # pylint: disable=g-import-not-at-top
  out = str(tmp_path_factory.mktemp("qm9raw"))
  xtb.generate(out, n=8, seed=0)
  return out


def _config(folder, tmp_path, target="U0"):
  c = qm9_config.get_config("tiny")
  c.data.path = folder
  c.data.cache_dir = str(tmp_path / "cache")
  c.data.target = target
  c.data.num_val, c.data.num_test = 2, 1
  return c


def test_atom_references_and_normalised_targets(raw_folder, tmp_path):
  task = QM9Task(_config(raw_folder, tmp_path, "U0,gap"))
  splits = task.load_splits()
  assert [len(splits[k]) for k in ("train", "val", "test")] == [5, 2, 1]
  train = splits["train"]
  task.setup(train)
  # U0 gets a least-squares per-element reference fitted on train; gap none.
  assert set(task.atom_refs) == {"U0"}
  counts = reader.element_counts(train)
  u0 = np.array([float(s.targets["U0"]) for s in train])
  present = counts.sum(0) > 0
  fit = np.linalg.lstsq(counts[:, present], u0, rcond=None)[0]
  refs = np.array([task.atom_refs["U0"][z] for z in reader.REFERENCE_ELEMENTS])
  np.testing.assert_allclose(refs[present], fit, rtol=1e-9)
  referenced = u0 - counts @ refs
  assert task.mean[0] == pytest.approx(referenced.mean())
  assert task.std[0] == pytest.approx(referenced.std())
  s = splits["val"][0]
  g = task.featurize(s, None, False)
  want_u0 = (float(s.targets["U0"]) - reader.atom_reference_sum(
      s, task.atom_refs["U0"]) - task.mean[0]) / task.std[0]
  want_gap = (float(s.targets["gap"]) - task.mean[1]) / task.std[1]
  np.testing.assert_allclose(g.globals["target"], [[want_u0, want_gap]],
                             rtol=1e-5)
  # State round trip (what a checkpoint carries).
  other = QM9Task(_config(raw_folder, tmp_path, "U0,gap"))
  other.load_state_dict(task.state_dict())
  assert other.atom_refs == task.atom_refs
  np.testing.assert_array_equal(other.mean, task.mean)


def test_denoising_featurisation(raw_folder, tmp_path):
  task = QM9Task(_config(raw_folder, tmp_path))
  splits = task.load_splits()
  task.setup(splits["train"])
  s = max(splits["train"], key=lambda m: m.num_atoms)
  clean = task.featurize(s, None, False)
  np.testing.assert_array_equal(clean.nodes["position_target"], 0.0)
  g = task.featurize(s, np.random.default_rng(0), True)
  noisy = g.nodes["position_target"]
  # Denoising target: clean - noisy = -σ, σ ~ N(0, 0.02²).
  np.testing.assert_allclose(g.nodes["positions"] + noisy, s.positions,
                             atol=1e-5)
  assert 0.005 < np.std(noisy) < 0.05
  np.testing.assert_array_equal(g.globals["target"], clean.globals["target"])


def test_uncharacterized_molecules_are_excluded(raw_folder, tmp_path):
  path = tmp_path / "uncharacterized.txt"
  path.write_text(" Index  GDB17-SMILES  Relaxed-SMILES\n 3  C  C\n 5  O  O\n")
  c = _config(raw_folder, tmp_path)
  c.data.uncharacterized_path = str(path)
  c.data.num_val, c.data.num_test = 1, 1
  splits = QM9Task(c).load_splits()
  indices = sorted(s.info["index"] for v in splits.values() for s in v)
  assert indices == [1, 2, 4, 6, 7, 8]


def test_trains_a_few_steps_and_reports_qm9_metrics(raw_folder, tmp_path):
  c = _config(raw_folder, tmp_path)
  workdir = str(tmp_path / "run")
  final = trainer.train(c, workdir)
  assert final["num_targets"] == 1.0
  assert final["std_mae"] > 0 and np.isfinite(final["log_mae"])
  assert final["log_mae"] == pytest.approx(np.log(final["std_mae"]))
  # std. MAE divides by σ_m: the std of the ground-truth U0 (atomization
  # energy) over the TRAINING split (App. 8.3), not of the evaluated split.
  task = QM9Task(c)
  splits = task.load_splits()
  task.setup(splits["train"])
  sigma = np.std([float(s.targets["U0"]) - reader.atom_reference_sum(
      s, reader.QM9_ATOM_REFS_U0_EV) for s in splits["train"]])
  assert final["sigma_m/U0"] == pytest.approx(sigma, rel=1e-12)
  assert final["std_mae/U0"] == pytest.approx(final["mae/U0"] / sigma)
  again = noisy_nodes.load(workdir, "latest").evaluate("val")
  assert again["mae/U0"] == pytest.approx(final["mae/U0"], rel=1e-6)
  # The Python API on the same molecules, unlabelled, as ase.Atoms and as
  # pymatgen Molecules: the evaluation's MAE, in referenced eV.
  from pymatgen.io.ase import AseAtomsAdaptor  # pylint: disable=g-import-not-at-top
  model = noisy_nodes.load(workdir, "latest")
  atoms = [s.to_ase() for s in splits["val"]]
  pred = model.predict(atoms)
  assert sorted(pred) == ["U0"] and pred["U0"].shape == (2,)
  true = np.array([task._referenced(s)[0] for s in splits["val"]])
  assert np.mean(np.abs(pred["U0"] - true)) == pytest.approx(final["mae/U0"],
                                                            rel=1e-5)
  molecules = [AseAtomsAdaptor.get_molecule(a) for a in atoms]
  np.testing.assert_allclose(model.predict(molecules)["U0"], pred["U0"],
                             rtol=1e-6)
  calc = model.as_ase_calculator()
  assert calc.get_potential_energy(atoms[0]) == pytest.approx(pred["U0"][0])


def test_twenty_molecules_train_through_their_first_evaluation(raw_folder,
                                                               tmp_path):
  """Issue 20, case 9: a 1-molecule validation split must not make σ zero."""
  folder = tmp_path / "qm9_20"
  folder.mkdir()
  files = sorted(f for f in os.listdir(raw_folder) if f.endswith(".xyz"))
  for i in range(20):  # 20 valid files: the 8 molecules under new indices
    lines = open(os.path.join(raw_folder, files[i % len(files)])).read(
        ).split("\n")
    head = lines[1].split("\t")
    head[0] = f"gdb {i + 1}"
    lines[1] = "\t".join(head)
    (folder / f"dsgdb9nsd_{i + 1:06d}.xyz").write_text("\n".join(lines))
  c = qm9_config.get_config("tiny")
  c.data.path, c.data.cache_dir = str(folder), str(tmp_path / "cache")
  c.train.update(num_steps=3, eval_every=3)
  final = trainer.train(c, str(tmp_path / "run20"))
  assert final["num_structures"] == 1  # the paper's split scaled to 20
  assert final["sigma_m/U0"] > 0 and np.isfinite(final["std_mae"])
