r"""Training a model with :class:`~torch.nn.parallel.DistributedDataParallel` (DDP).

A model's forward returns a distribution, in which DDP finds no tensor. :class:`LogProb`
wraps it into a module whose forward returns the log-densities, which DDP sees with the
graph behind them. (Within :func:`~contmix.distributed.sharded`, the fits and the
:class:`~contmix.Curriculum` sum their statistics and gradients themselves, without DDP.)
"""

__all__ = [
    "LogProb",
]

import torch.nn as nn

from torch import Tensor
from zuko.lazy import LazyDistribution


class LogProb(nn.Module):
    r"""Wraps a lazy distribution into a module whose forward returns log-densities.

    .. math:: (x, c) \mapsto \log p_\phi(x \mid c)

    A model's own forward returns a distribution, in which
    :class:`~torch.nn.parallel.DistributedDataParallel` finds no tensor: with
    ``find_unused_parameters=True``, DDP then takes every parameter for unused and
    fails in the backward pass ("Expected to mark a variable ready only once"). Through
    this wrapper, DDP sees the log-densities and the graph behind them. Without
    ``find_unused_parameters``, the model can be wrapped in DDP directly.

    Arguments:
        model: The lazy distribution, available as :py:`self.model` (save its
            :py:`state_dict`, without the wrapper's prefix).

    Example:
        >>> import torch
        >>> from contmix import GMM
        >>> net = LogProb(GMM(features=2, components=3))
        >>> net(torch.randn(5, 2)).shape  # with DDP: DistributedDataParallel(net, ...)
        torch.Size([5])
    """

    def __init__(self, model: LazyDistribution) -> None:
        super().__init__()

        self.model = model

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        return self.model(c).log_prob(x)
