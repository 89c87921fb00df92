"""An ASE calculator over ``Predictor.predict``: a direct, force-free model.

The models of this library predict a property of a structure directly (the
relaxed energy from the initial structure for OC20 IS2RE, a crystal's
formation energy...): they are not potentials, so there are no forces (the
energy's gradient with respect to the initial positions is not the physical
force). ``get_forces``, ``get_stress`` and any ASE optimiser or dynamics that
needs them raise ``PropertyNotImplementedError`` saying so, never zeros.

Results of ``calculate``:
  ``energy``            the predicted energy (float, the targets' units: eV
                        for OC20 and the QM9 energies, which are
                        atom-referenced for U0/U/H/G as in training)
  ``positions_relaxed`` IS2RS runs: the predicted relaxed positions [n, 3] Å
                        (``calc.get_property('positions_relaxed', atoms)``)
"""
from __future__ import annotations

from typing import Optional

from ase.calculators import calculator as ase_calculator

# Where a run predicts no key named "energy": QM9 energies, then a
# single-target crystal property.
_ENERGY_KEYS = ("energy", "U0", "U", "H", "G", "U0_atom", "U_atom", "H_atom",
                "G_atom")


class PredictorCalculator(ase_calculator.Calculator):
  """``Predictor.as_ase_calculator()`` (module docstring)."""

  implemented_properties = ["energy", "free_energy", "positions_relaxed"]

  def __init__(self, predictor, energy_key: Optional[str] = None, **kwargs):
    super().__init__(**kwargs)
    self.predictor = predictor
    self.energy_key = energy_key

  def get_property(self, name, atoms=None, allow_calculation=True):
    if name not in self.implemented_properties:
      raise ase_calculator.PropertyNotImplementedError(
          f"{name!r}: {self.predictor!r} is a direct (force-free) predictor "
          "of the energy; it gives no forces or stress, so ASE optimisers "
          "and dynamics cannot use it")
    return super().get_property(name, atoms, allow_calculation)

  def calculate(self, atoms=None, properties=("energy",),
                system_changes=ase_calculator.all_changes):
    super().calculate(atoms, properties, system_changes)
    out = self.predictor.predict([self.atoms])
    value = out[self._energy_key(out)][0]
    if getattr(value, "size", 1) != 1:
      raise ase_calculator.PropertyNotImplementedError(
          f"the run predicts {value.size} targets per structure: pass "
          "energy_key naming a scalar prediction")
    energy = float(value.reshape(-1)[0]) if hasattr(value, "reshape") else (
        float(value))
    self.results = {"energy": energy, "free_energy": energy}
    if "node_positions" in out:
      self.results["positions_relaxed"] = out["node_positions"][0]

  def _energy_key(self, out) -> str:
    if self.energy_key is not None:
      if self.energy_key not in out:
        raise KeyError(f"energy_key {self.energy_key!r} is not a prediction "
                       f"of this run ({sorted(out)})")
      return self.energy_key
    for key in _ENERGY_KEYS + ("target",):
      if key in out:
        return key
    raise ase_calculator.PropertyNotImplementedError(
        f"no energy among the run's predictions {sorted(out)}: pass "
        "energy_key")
