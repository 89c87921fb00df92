"""CrysGNN (Das et al.): pre-training corpus, symmetry labels, connectivity
targets, decoder heads, pre-training losses and distillation.

Modules (see /work/shared/papers/crysgnn.md, SPEC.md "CrysGNN reference"):
  symmetry  spglib space group (1..230) and crystal system (0..6) labels.
  corpus    the untagged pre-training corpus (CLI: python -m
            crystal.crysgnn.corpus --out=FILE --n=N --seed=S --workers=2).
  targets   12-NN periodic connectivity targets + per-sample label arrays.
  heads     ``CrysGNNHeads`` / ``CrysGNNPretrainModel`` decoders.
  losses    ``crysgnn_pretrain_loss`` (eq. 2) and its components.
  distill   frozen-teacher knowledge distillation (eqs. 3–4).

Submodules are imported on demand (``from crystal.crysgnn import losses``) so
that the corpus CLI does not import JAX.
"""
