"""CrysGNN (Das et al.): pre-training corpus, symmetry labels, connectivity
targets, decoder heads, pre-training losses and distillation.

See /work/shared/papers/crysgnn.md and SPEC.md "CrysGNN reference".
"""
