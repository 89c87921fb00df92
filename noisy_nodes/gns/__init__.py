"""The Noisy Nodes paper (Godwin et al., ICLR 2022) on the shared layer.

``model``     the encode-process-decode GNS with block iteration (§3, App. A);
``noise``     Noisy Nodes corruption and denoising targets (§3.1-3.2);
``features``  its node/edge features (Bessel basis, cell vectors);
``analysis``  the over-smoothing (MAD) analysis of §8.1;
``oc20``      OC20 IS2RE/IS2RS: readers, EMT generator, metrics, submission,
              the task;
``qm9``       QM9: reader, xTB generator, metrics, the task.
"""
from noisy_nodes.gns.model import GNS

__all__ = ["GNS"]
