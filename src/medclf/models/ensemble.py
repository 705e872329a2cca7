"""An ensemble of networks that predicts the mean of its members' class probabilities
(the fold models of a k-fold run: nnU-Net, Isensee et al. 2021; AUCMEDI's ensembles)."""
from __future__ import annotations

import torch
from torch import nn


class Ensemble(nn.Module):
    """Average of the members' softmax probabilities, returned as logits.

    ``forward`` returns ``log(mean_m softmax(member_m(x)))``, so that the softmax of the
    output is exactly the members' mean probability: every consumer of a network's logits
    (evaluation, ``medclf predict``, the service, ONNX export, Grad-CAM of the ensemble)
    works unchanged, and the ensemble exports as one graph.

    Args:
        members: the networks, each mapping ``(N, C, H, W)`` or ``(N, C, D, H, W)`` to
            logits ``(N, num_classes)``, with the same classes in the same order.

    Raises:
        ValueError: no member given.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` whose softmax is the members' mean probability."""
        log_probs = torch.stack([m(x).float().log_softmax(dim=1) for m in self.members])
        # log of the mean probability, computed in log space (no underflow of tiny probabilities)
        return torch.logsumexp(log_probs, dim=0) - torch.log(torch.tensor(float(len(self.members))))
