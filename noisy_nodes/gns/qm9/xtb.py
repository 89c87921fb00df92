"""A QM9-like molecule set with real (semi-empirical) physics: GFN2-xTB.

Pipeline per molecule (QM9 did the same with B3LYP/6-31G(2df,p)):

  1. SMILES of a small neutral closed-shell CHONF molecule: a built-in list
     of QM9's smallest molecules, then random molecules grown atom by atom
     (valences C4 N3 O2 F1, random bond orders and ring closures), at most
     ``max_heavy`` heavy atoms; everything is drawn from ``seed``.
  2. 3-D embedding with RDKit (ETKDG, seeded) and an MMFF pre-relaxation.
  3. GFN2-xTB geometry optimisation (tblite's ASE calculator, BFGS, fmax
     ``FMAX`` eV/Å). Molecules whose bond graph changes during relaxation
     (QM9's "uncharacterized" case) or that do not reach a minimum (an
     imaginary frequency below ``MAX_IMAGINARY`` cm^-1) are skipped, and the
     next candidate is taken.
  4. Properties at the xTB minimum, written in QM9's file units:

  ========  ==============================================================
  A, B, C   rotational constants h / (8 pi^2 I) from the principal moments
            of inertia (GHz); for a linear molecule A (I = 0) is written 0.
  mu        |dipole| of the xTB density (Debye).
  alpha     isotropic polarisability by finite field: alpha_kk =
            d mu_k / d F_k, central differences at F = 0.002 a.u. (bohr^3).
            xTB's minimal basis gives smaller values than B3LYP.
  homo      highest occupied orbital energy (Ha).
  lumo      lowest unoccupied orbital energy (Ha).
  gap       lumo - homo (Ha).
  r2        APPROXIMATION: tblite gives no <r^2> integrals, so <R^2> is
            sum_i N_i |r_i - c|^2 over atom-centred electron populations
            N_i = Z_i - q_i (q_i the xTB charges) about their centre c
            (bohr^2). It lacks each atom's own extent, so it is far smaller
            than the DFT <R^2> (methane: ~17 vs 35.4 bohr^2).
  zpve      sum_k h nu_k / 2 over the harmonic frequencies (Ha); the
            Hessian is a central finite difference of xTB gradients
            (step 0.005 bohr), mass weighted, with translations and
            rotations projected out.
  U0        E_xTB + zpve (Ha); QM9's U0 is the 0 K internal energy.
  U, H, G   ideal-gas rigid-rotor harmonic-oscillator thermochemistry at
            298.15 K and 1 atm (ase.thermochemistry.IdealGasThermo);
            U = H - kT (Ha). Rotational symmetry number 1 by default, as
            QM9's own G implies (methane, gdb 1: G - H = -0.02348 Ha, i.e.
            S = 206.8 J/(mol K) = 186.1 + R ln 12, the sigma = 1 entropy);
            ``point_group_symmetry=True`` uses the true symmetry number from
            pymatgen's point-group analysis instead.
  Cv        3/2 R (translation) + 3/2 R (R if linear) (rotation) + harmonic
            vibrational heat capacities (cal/(mol K)).
  ========  ==============================================================

Per-atom charges are xTB's (Mulliken-type) partial charges. Energies are
GFN2-xTB total energies, not DFT: this is a QM9-*like* set to exercise the
pipeline with physically consistent labels, not a replacement for QM9.
No property is left "nan" by this generator, but ``read_qm9_dir(...,
allow_nan=True)`` accepts files where one is.

Command line::

  python -m noisy_nodes.gns.qm9.xtb --out=DIR --n=100 --seed=0 --workers=2
"""
from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
from typing import List, Optional, Sequence

import numpy as np

from noisy_nodes.errors import MissingExtraError
from noisy_nodes.gns.qm9 import reader

BOHR = 0.529177210903             # Å
HARTREE_EV = reader.HARTREE_TO_EV
DEBYE_PER_AU = 2.541746473        # e·bohr in Debye
KB_EV = 8.617333262e-5            # eV/K
R_CAL = 1.98720425864083          # cal/(mol K)
TEMPERATURE = 298.15
PRESSURE = 101325.0               # Pa
FMAX = 0.002                      # eV/Å for the xTB relaxation
FIELD = 0.002                     # a.u. for finite-field polarisability
HESSIAN_STEP = 0.005              # bohr
MAX_IMAGINARY = -30.0             # cm^-1
# Frequency (cm^-1) of sqrt(eigenvalue) for a mass-weighted Hessian in
# Ha / (bohr^2 amu): sqrt(Ha / (bohr^2 amu)) / (2 pi c).
_HA_J, _BOHR_M, _AMU_KG, _C_CM = (4.3597447222071e-18, 0.529177210903e-10,
                                  1.66053906660e-27, 2.99792458e10)
AU_TO_CM = np.sqrt(_HA_J / (_BOHR_M**2 * _AMU_KG)) / (2 * np.pi * _C_CM)
CM_TO_EV = 1.239841984e-4
CM_TO_HA = CM_TO_EV / HARTREE_EV
# h / (8 pi^2 I) in GHz for I in amu·Å^2.
ROT_GHZ = 6.62607015e-34 / (8 * np.pi**2 * _AMU_KG * 1e-20) / 1e9

# QM9's first molecules (by GDB index) and a few other small ones.
BUILTIN_SMILES = (
    "C", "N", "O", "C=O", "CC", "CO", "CC=O", "CN", "NC=O", "CCO", "COC",
    "C1CC1", "C1CO1", "CC(C)=O", "CC(N)=O", "OC=O", "CCC", "NCCO", "CF",
    "FC(F)F", "C1CN1", "CC#N", "O=C1CC1", "OCC=O", "CNC=O", "C1COC1",
)
_VALENCE = {6: 4, 7: 3, 8: 2, 9: 1}
_SYMBOL = {1: "H", 6: "C", 7: "N", 8: "O", 9: "F"}


_NEEDS = ("generating QM9-like molecules with GFN2-xTB (configs/qm9.py without "
          "data.path) needs {}: pip install -e \".[generate]\", or set "
          "--config.data.path to a QM9 folder")


def _require():
  """Imports tblite and RDKit or fails with a clear message."""
  try:
    import tblite.interface  # noqa: F401  pylint: disable=g-import-not-at-top
    import tblite.ase  # noqa: F401  pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise MissingExtraError(_NEEDS.format("tblite")) from e
  try:
    import rdkit  # noqa: F401  pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise MissingExtraError(_NEEDS.format("RDKit")) from e


# -- molecule enumeration ----------------------------------------------------
def random_smiles(rng: np.random.Generator, max_heavy: int = 7) -> str:
  """One random neutral CHONF molecule (canonical, non-isomeric SMILES).

  Grows a tree of heavy atoms, each attached to a random atom with free
  valence by a single, double or triple bond, then may close one ring; RDKit
  fills the hydrogens. Returns "" when the draw is not a valid molecule.
  """
  from rdkit import Chem  # pylint: disable=g-import-not-at-top
  k = int(rng.integers(2, max_heavy + 1))
  zs = rng.choice([6, 7, 8, 9], size=k, p=[0.6, 0.15, 0.2, 0.05])
  zs[0] = 6  # a carbon root keeps most draws chemically sensible
  mol = Chem.RWMol()
  free = []
  for i, z in enumerate(zs):
    mol.AddAtom(Chem.Atom(int(z)))
    free.append(_VALENCE[int(z)])
    if i == 0:
      continue
    cands = [j for j in range(i) if free[j] > 0 and _allowed(zs[j], z)]
    if not cands:
      return ""
    j = int(rng.choice(cands))
    order = 1
    maxo = min(free[j], free[i], 3)
    if maxo > 1 and rng.random() < 0.25:
      order = int(rng.integers(2, maxo + 1))
    mol.AddBond(i, j, {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE,
                       3: Chem.BondType.TRIPLE}[order])
    free[i] -= order
    free[j] -= order
  if k >= 3 and rng.random() < 0.3:
    dist = Chem.GetDistanceMatrix(mol)
    pairs = [(a, b) for a in range(k) for b in range(a + 1, k)
             if free[a] > 0 and free[b] > 0 and 2 <= dist[a, b] <= 5
             and _allowed(zs[a], zs[b])]
    if pairs:
      a, b = pairs[int(rng.integers(len(pairs)))]
      mol.AddBond(a, b, Chem.BondType.SINGLE)
  try:
    m = mol.GetMol()
    Chem.SanitizeMol(m)
  except Exception:  # pylint: disable=broad-except
    return ""
  return Chem.MolToSmiles(m, isomericSmiles=False)


def _allowed(za, zb) -> bool:
  # No peroxides (O-O) or F on a heteroatom: GDB-17 filters such unstable
  # groups out of QM9's chemical space.
  za, zb = int(za), int(zb)
  return not ((za == 8 and zb == 8) or (9 in (za, zb) and 6 not in (za, zb)))


def candidate_smiles(seed: int, max_heavy: int = 7):
  """Endless deterministic stream of distinct SMILES: built-ins, then random."""
  from rdkit import Chem  # pylint: disable=g-import-not-at-top
  seen = set()
  for smi in BUILTIN_SMILES:
    can = Chem.MolToSmiles(Chem.MolFromSmiles(smi), isomericSmiles=False)
    seen.add(can)
    yield can
  rng = np.random.default_rng(seed)
  while True:
    smi = random_smiles(rng, max_heavy)
    if smi and smi not in seen:
      seen.add(smi)
      yield smi


# -- physics ---------------------------------------------------------------
def _calculator(z, pos_bohr, field=None):
  from tblite.interface import Calculator  # pylint: disable=g-import-not-at-top
  from tblite.library import ffi  # pylint: disable=g-import-not-at-top
  calc = Calculator("GFN2-xTB", z, pos_bohr)
  calc.set("verbosity", 0)
  if field is not None:
    # tblite's Python wrapper passes the field straight to C: needs a buffer.
    calc.add("electric-field", ffi.new("double[]", [float(f) for f in field]))
  return calc


def _hessian(z, pos_bohr) -> np.ndarray:
  """Central-difference Hessian [3n, 3n] of the xTB energy (Ha/bohr^2)."""
  calc = _calculator(z, pos_bohr)
  n3 = pos_bohr.size
  hess = np.zeros((n3, n3))
  res = None
  for k in range(n3):
    grads = []
    for sign in (1.0, -1.0):
      p = pos_bohr.copy().reshape(-1)
      p[k] += sign * HESSIAN_STEP
      calc.update(p.reshape(-1, 3))
      res = calc.singlepoint(res)
      grads.append(res.get("gradient").reshape(-1))
    hess[k] = (grads[0] - grads[1]) / (2 * HESSIAN_STEP)
  return 0.5 * (hess + hess.T)


def _is_linear(pos: np.ndarray, masses: np.ndarray) -> bool:
  inertia = _principal_moments(pos, masses)
  return len(pos) == 2 or inertia[0] < 1e-3 * inertia[2]


def _principal_moments(pos: np.ndarray, masses: np.ndarray) -> np.ndarray:
  """Principal moments of inertia (amu·Å^2), ascending."""
  c = pos - masses @ pos / masses.sum()
  tensor = (np.eye(3) * np.sum(masses * np.sum(c * c, 1))
            - (masses[:, None] * c).T @ c)
  return np.linalg.eigvalsh(tensor)


def harmonic_frequencies(z, pos_ang, masses) -> np.ndarray:
  """Harmonic frequencies (cm^-1; negative = imaginary), 3n-6 or 3n-5."""
  pos_bohr = pos_ang / BOHR
  hess = _hessian(z, pos_bohr)
  n = len(z)
  sqm = np.repeat(np.sqrt(masses), 3)
  hmw = hess / np.outer(sqm, sqm)
  # Project out rigid translations and rotations (Eckart conditions).
  com = masses @ pos_bohr / masses.sum()
  x = pos_bohr - com
  vecs = []
  for a in range(3):
    t = np.zeros((n, 3))
    t[:, a] = 1.0
    vecs.append(t.reshape(-1) * sqm)
    r = np.cross(np.eye(3)[a], x)
    vecs.append(r.reshape(-1) * sqm)
  basis, s, _ = np.linalg.svd(np.array(vecs).T, full_matrices=False)
  basis = basis[:, s > 1e-6 * s.max()]
  proj = np.eye(3 * n) - basis @ basis.T
  lam = np.linalg.eigvalsh(proj @ hmw @ proj)
  n_modes = 3 * n - basis.shape[1]
  # The projector adds exact zeros for the rigid modes: drop the entries
  # closest to zero.
  lam = np.sort(lam[np.argsort(np.abs(lam))][3 * n - n_modes:])
  return np.sign(lam) * np.sqrt(np.abs(lam)) * AU_TO_CM


def molecule_properties(z, pos_ang, point_group_symmetry: bool = False
                        ) -> dict:
  """All QM9 properties at a given (relaxed) geometry, in QM9 file units."""
  from ase import Atoms  # pylint: disable=g-import-not-at-top
  from ase.thermochemistry import IdealGasThermo  # pylint: disable=g-import-not-at-top
  z = np.asarray(z, np.int32)
  pos_ang = np.asarray(pos_ang, np.float64)
  atoms = Atoms(numbers=z, positions=pos_ang)
  masses = atoms.get_masses()
  pos_bohr = pos_ang / BOHR
  res = _calculator(z, pos_bohr).singlepoint()
  energy = float(res.get("energy"))
  charges = np.asarray(res.get("charges"), np.float64)
  dipole = np.asarray(res.get("dipole"))
  occ = np.asarray(res.get("orbital-occupations"))
  eps = np.asarray(res.get("orbital-energies"))
  n_occ = int(round(occ.sum() / 2))  # closed shell: doubly occupied
  homo, lumo = float(eps[n_occ - 1]), float(eps[n_occ])

  alpha = np.zeros(3)
  for k in range(3):
    mus = []
    for sign in (1.0, -1.0):
      field = np.zeros(3)
      field[k] = sign * FIELD
      mus.append(np.asarray(
          _calculator(z, pos_bohr, field).singlepoint().get("dipole"))[k])
    alpha[k] = (mus[0] - mus[1]) / (2 * FIELD)

  pop = z - charges
  centre = pop @ pos_bohr / pop.sum()
  r2 = float(np.sum(pop * np.sum((pos_bohr - centre)**2, 1)))

  inertia = _principal_moments(pos_ang, masses)
  linear = _is_linear(pos_ang, masses)
  rot = ROT_GHZ / np.maximum(inertia, 1e-30)
  if linear:
    rot[0] = 0.0  # no rotation about the axis

  freqs = harmonic_frequencies(z, pos_ang, masses)
  # Soft modes within MAX_IMAGINARY of zero are finite-difference noise on
  # flat torsions: use |nu| (deeper imaginary modes are rejected by the
  # caller as non-minima).
  real = np.maximum(np.abs(freqs), 1.0)
  zpve = 0.5 * np.sum(real) * CM_TO_HA
  sym = _symmetry_number(z, pos_ang) if point_group_symmetry else 1
  thermo = IdealGasThermo(vib_energies=real * CM_TO_EV,
                          geometry="linear" if linear else "nonlinear",
                          potentialenergy=energy * HARTREE_EV, atoms=atoms,
                          symmetrynumber=sym, spin=0, ignore_imag_modes=True)
  h_ev = thermo.get_enthalpy(TEMPERATURE, verbose=False)
  g_ev = thermo.get_gibbs_energy(TEMPERATURE, PRESSURE, verbose=False)
  x = real * CM_TO_EV / (KB_EV * TEMPERATURE)
  cv_vib = np.sum(x**2 * np.exp(x) / np.expm1(x)**2)
  cv = R_CAL * (1.5 + (1.0 if linear else 1.5) + cv_vib)
  return {
      "A": rot[0], "B": rot[1], "C": rot[2],
      "mu": float(np.linalg.norm(dipole)) * DEBYE_PER_AU,
      "alpha": float(alpha.mean()), "homo": homo, "lumo": lumo,
      "gap": lumo - homo, "r2": r2, "zpve": zpve, "U0": energy + zpve,
      "U": (h_ev - KB_EV * TEMPERATURE) / HARTREE_EV, "H": h_ev / HARTREE_EV,
      "G": g_ev / HARTREE_EV, "Cv": cv,
      "charges": charges, "frequencies": freqs, "energy": energy,
      "symmetry_number": sym,
  }


def _symmetry_number(z, pos) -> int:
  from pymatgen.core import Molecule  # pylint: disable=g-import-not-at-top
  from pymatgen.symmetry.analyzer import PointGroupAnalyzer  # pylint: disable=g-import-not-at-top
  mol = Molecule([_SYMBOL[int(a)] for a in z], pos)
  try:
    return int(PointGroupAnalyzer(mol, tolerance=0.1)
               .get_rotational_symmetry_number())
  except Exception:  # pylint: disable=broad-except
    return 1


def relax_smiles(smiles: str, embed_seed: int):
  """RDKit embedding + GFN2-xTB relaxation; (z, positions Å, relaxed SMILES)."""
  from ase import Atoms  # pylint: disable=g-import-not-at-top
  from ase.optimize import BFGS  # pylint: disable=g-import-not-at-top
  from rdkit import Chem  # pylint: disable=g-import-not-at-top
  from rdkit.Chem import AllChem  # pylint: disable=g-import-not-at-top
  from tblite.ase import TBLite  # pylint: disable=g-import-not-at-top
  mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
  params = AllChem.ETKDGv3()
  params.randomSeed = int(embed_seed)
  if AllChem.EmbedMolecule(mol, params) != 0:
    return None
  if AllChem.MMFFHasAllMoleculeParams(mol):
    AllChem.MMFFOptimizeMolecule(mol, maxIters=500)
  z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], np.int32)
  atoms = Atoms(numbers=z, positions=mol.GetConformer().GetPositions())
  atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
  opt = BFGS(atoms, logfile=None)
  if not opt.run(fmax=FMAX, steps=500):
    return None
  pos = atoms.get_positions()
  return z, pos - pos.mean(0), _smiles_from_xyz(z, pos)


def _smiles_from_xyz(z, pos) -> str:
  """Isomeric SMILES perceived from a geometry ("" if perception fails)."""
  from rdkit import Chem  # pylint: disable=g-import-not-at-top
  from rdkit.Chem import rdDetermineBonds  # pylint: disable=g-import-not-at-top
  block = f"{len(z)}\n\n" + "\n".join(
      f"{_SYMBOL[int(a)]} {x:.8f} {y:.8f} {w:.8f}" for a, (x, y, w)
      in zip(z, pos))
  try:
    m = Chem.MolFromXYZBlock(block)
    rdDetermineBonds.DetermineBonds(m, charge=0)
    return Chem.MolToSmiles(Chem.RemoveHs(m))
  except Exception:  # pylint: disable=broad-except
    return ""


# -- writing the raw QM9 format ----------------------------------------------
def format_number(x: float) -> str:
  """QM9/Mathematica style: plain decimals, "*^" exponent for tiny/huge."""
  x = float(x)
  if np.isnan(x):
    return "nan"
  if x == 0.0:
    return "0."
  if 1e-4 <= abs(x) < 1e7:
    return f"{x:.10g}" if "." in f"{x:.10g}" else f"{x:.10g}."
  mant, exp = f"{x:.9e}".split("e")
  mant = mant.rstrip("0")
  return f"{mant}*^{int(exp)}"


def format_qm9(index: int, z, pos, props: dict, smiles: str,
               smiles_relaxed: str) -> str:
  """Text of one raw QM9 file (layout of dsgdb9nsd_*.xyz)."""
  from rdkit import Chem  # pylint: disable=g-import-not-at-top
  head = "\t".join([f"gdb {index}"] + [format_number(props[k])
                                       for k in reader.PROPERTY_NAMES])
  lines = [str(len(z)), head + "\t"]
  for a, p, q in zip(z, pos, props["charges"]):
    lines.append("\t".join([_SYMBOL[int(a)]] + [format_number(v) for v in p]
                           + [format_number(q)]))
  lines.append("\t".join(f"{f:.4f}" for f in props["frequencies"]))
  lines.append(f"{smiles}\t{smiles_relaxed or smiles}")
  inchi = Chem.MolToInchi(Chem.MolFromSmiles(smiles))
  relaxed = Chem.MolFromSmiles(smiles_relaxed) if smiles_relaxed else None
  inchi_r = Chem.MolToInchi(relaxed) if relaxed is not None else inchi
  lines.append(f"{inchi}\t{inchi_r}")
  return "\n".join(lines) + "\n"


def _one(args):
  """Worker: relax + properties for one candidate; None if it is rejected."""
  smiles, embed_seed, point_group_symmetry = args
  from rdkit import Chem  # pylint: disable=g-import-not-at-top
  relaxed = relax_smiles(smiles, embed_seed)
  if relaxed is None:
    return None
  z, pos, smi_relaxed = relaxed
  flat = Chem.MolToSmiles(Chem.MolFromSmiles(smi_relaxed),
                          isomericSmiles=False) if smi_relaxed else ""
  if flat != smiles:  # bonds rearranged during the relaxation
    return None
  props = molecule_properties(z, pos, point_group_symmetry)
  if props["frequencies"].min() < MAX_IMAGINARY:  # not a minimum
    return None
  return z, pos, props, smi_relaxed


def _init_worker():
  os.environ["OMP_NUM_THREADS"] = "1"
  from rdkit import RDLogger  # pylint: disable=g-import-not-at-top
  RDLogger.DisableLog("rdApp.*")  # stereo warnings of perceived SMILES


def generate(out_dir: str, n: int, seed: int = 0, workers: int = 1,
             max_heavy: int = 7, point_group_symmetry: bool = False
             ) -> List[str]:
  """Writes ``n`` QM9-format files ``dsgdb9nsd_%06d.xyz`` (index 1..n).

  Deterministic for a given (n, seed, max_heavy) whatever ``workers`` is:
  candidates are tried in a fixed order and the first ``n`` accepted ones
  are kept. Worker processes are spawned with OMP_NUM_THREADS=1.
  ``point_group_symmetry``: see ``molecule_properties``.

  Returns:
    The written file paths, in index order.
  """
  _require()
  from rdkit import RDLogger  # pylint: disable=g-import-not-at-top
  RDLogger.DisableLog("rdApp.*")
  if n <= 0:
    raise ValueError(f"n must be positive, got {n}")
  os.makedirs(out_dir, exist_ok=True)
  stream = candidate_smiles(seed, max_heavy)
  results = []
  batch = max(1, 2 * workers)
  tried = 0
  pool = None
  if workers > 1:
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the spawned workers
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker)
    if old is None:
      del os.environ["OMP_NUM_THREADS"]
    else:
      os.environ["OMP_NUM_THREADS"] = old
  try:
    while len(results) < n:
      if tried > 20 * n + 100:
        raise RuntimeError(f"only {len(results)} of {n} molecules accepted "
                           f"after {tried} candidates")
      cands = [next(stream) for _ in range(batch)]
      tasks = [(smi, (seed * 1_000_003 + tried + i) % 2**31,
                point_group_symmetry) for i, smi in enumerate(cands)]
      tried += len(tasks)
      outs = pool.map(_one, tasks) if pool else map(_one, tasks)
      for smi, out in zip(cands, outs):
        if out is not None and len(results) < n:
          results.append((smi,) + out)
  finally:
    if pool:
      pool.shutdown()
  paths = []
  for i, (smi, z, pos, props, smi_relaxed) in enumerate(results, 1):
    path = os.path.join(out_dir, f"dsgdb9nsd_{i:06d}.xyz")
    with open(path, "w") as f:
      f.write(format_qm9(i, z, pos, props, smi, smi_relaxed))
    paths.append(path)
  return paths


def main(argv: Optional[Sequence[str]] = None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--n", type=int, default=100, help="molecules")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workers", type=int, default=1)
  parser.add_argument("--max_heavy", type=int, default=7,
                      help="max heavy atoms of random molecules (QM9: 9)")
  parser.add_argument("--point_group_symmetry", action="store_true",
                      help="true rotational symmetry numbers (QM9 uses 1)")
  args = parser.parse_args(argv)
  paths = generate(args.out, args.n, args.seed, args.workers, args.max_heavy,
                   args.point_group_symmetry)
  print(f"wrote {len(paths)} QM9-format files to {args.out}")


if __name__ == "__main__":
  os.environ.setdefault("OMP_NUM_THREADS", "1")
  main()
