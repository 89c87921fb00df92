"""Very deep graph neural networks on atoms (Noisy Nodes, DeeperGATGNN,
CrysGNN) in JAX / Haiku / Jraph / Optax."""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.4.30",
    "jaxlib",
    "dm-haiku>=0.0.12",
    "jraph>=0.0.6.dev0",
    "optax>=0.2.2",
    "ml-collections>=0.1.1",
    "orbax-checkpoint>=0.5",
    "numpy>=1.24",
    "absl-py",
    "pymatgen>=2024.1.1",
    "ase>=3.23",
    "spglib>=2.0",
    "vesin>=0.3",  # periodic neighbour search (noisy_nodes/data/neighbors.py)
    "pyxtal",  # CrysGNN's pre-training corpus (random symmetric crystals)
    "matplotlib",
    "lmdb",
    "orjson",
    "tensorboardX",
    "scikit-learn",  # t-SNE of crystal embeddings (crystal.analysis)
]

EXTRAS = {
    # Data generation only (not needed to train on existing data): GFN2-xTB
    # molecules for the QM9-like set.
    "generate": ["tblite", "rdkit"],
}
# The tests exercise the generators too, so that none of them is skipped.
EXTRAS["test"] = ["pytest>=7", "pytest-xdist"] + EXTRAS["generate"]
EXTRAS["all"] = sorted({p for v in EXTRAS.values() for p in v})

setup(
    name="noisy-nodes",
    version="0.1.0",
    description=__doc__,
    # configs/ too: ``--config=configs/NAME.py`` also runs outside the
    # repository (noisy_nodes/train.py) and configs import each other.
    packages=find_packages(include=["noisy_nodes*", "crystal*", "launch*",
                                    "configs"]),
    # The fused AGAT kernels' source, compiled on first use (agat_cpu.py).
    package_data={"crystal.models": ["agat_cpu.cc"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    # Short task names (config.task = "oc20"): the shared layer names no
    # paper package (noisy_nodes.tasks.resolve_task reads this group).
    entry_points={
        "noisy_nodes.tasks": [
            "oc20 = noisy_nodes.gns.oc20.task:OC20Task",
            "qm9 = noisy_nodes.gns.qm9.task:QM9Task",
            "crystal = crystal.tasks:CrystalPropertyTask",
            "crysgnn_pretrain = crystal.crysgnn.tasks:CrysGNNPretrainTask",
            "crysgnn_distill = crystal.crysgnn.tasks:CrysGNNDistillTask",
        ],
    },
)
