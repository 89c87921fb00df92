"""CrysGNN (Das et al.): pre-training corpus, symmetry labels, connectivity
targets, decoder heads, pre-training losses and distillation.

Modules (Das et al., AAAI 2023; reference code kdmsit/crysgnn):
  encoder   the reference's encoder and student: Xie & Grossman's original
            CGCNN (``OriginalCGCNN``, model name ``original_cgcnn``).
  symmetry  spglib space group (1..230) and crystal system (0..6) labels
            with pymatgen's SpacegroupAnalyzer tolerances.
  corpus    the untagged pre-training corpus (CLI: python -m
            crystal.crysgnn.corpus --out=FILE --n=N --seed=S --workers=2)
            and its cache for the pre-training task.
  chunks    ``CorpusSource``: the corpus read on demand from memory-mapped
            npz chunks (a ``noisy_nodes.data.sources.Source``).
  synthetic the corpus's crystal generators (pyxtal, prototypes, bulk,
            known structures).
  targets   12-NN periodic connectivity targets + per-sample label arrays.
  heads     ``CrysGNNHeads`` / ``CrysGNNPretrainModel`` decoders.
  losses    ``crysgnn_pretrain_loss`` (eq. 2) and its components.
  distill   frozen-teacher knowledge distillation (eqs. 3–4): the KD loss,
            the teacher's restore, its edges in the student's batch and the
            fine-tuning baseline's parameter copy.
  tasks     the two engine tasks, ``crysgnn_pretrain`` / ``crysgnn_distill``.
  alloys    bulk alloy crystals with EMT formation energies (experiment data).

Submodules are imported on demand (``from crystal.crysgnn import losses``) so
that the corpus CLI does not import JAX.
"""
