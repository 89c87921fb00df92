"""The Noisy Nodes paper (Godwin et al., ICLR 2022) on the shared layer.

``model``     the encode-process-decode GNS with block iteration (§3, App. A);
``noise``     Noisy Nodes corruption and denoising targets (§3.1-3.2);
``features``  its node/edge features (Bessel basis, cell vectors);
``analysis``  the over-smoothing (MAD) analysis of §8.1;
``oc20``      OC20 IS2RE/IS2RS: readers, EMT generator, metrics, submission,
              the task;
``qm9``       QM9: reader, xTB generator, metrics, the task.

Public names (imported on first use): ``GNS``; the tasks ``OC20Task`` and
``QM9Task``; ``noisy_nodes_loss`` (§3.2); ``mad_by_step`` (§8.1).
"""
from noisy_nodes import _lazy

__all__, __getattr__, __dir__ = _lazy.attach(__name__, {
    "noisy_nodes.gns.model": ("GNS",),
    "noisy_nodes.gns.noise": ("noisy_nodes_loss",),
    "noisy_nodes.gns.analysis": ("mad_by_step",),
    "noisy_nodes.gns.oc20.task": ("OC20Task",),
    "noisy_nodes.gns.qm9.task": ("QM9Task",),
})
