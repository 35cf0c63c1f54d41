r"""How a curriculum trains: its schedule of epochs, the optimizer and the loss."""

__all__ = [
    "Callback",
    "Regularizer",
    "Scheduler",
    "Settings",
]

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from torch import Tensor
from torch.distributions import Distribution
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

Callback = Callable[[nn.Module, dict], None]
Regularizer = Callable[[nn.Module, Distribution, Tensor], Tensor]
Scheduler = Callable[[Optimizer, int], LRScheduler]


@dataclass(frozen=True)
class Settings:
    r"""The settings of :meth:`~contmix.curriculum.trainer.Curriculum.train`: the
    schedule of epochs, the optimizer, the noise, the start and the loss.

    The schedule has :math:`T E + F` epochs for :math:`T` spaces: :math:`E` epochs
    (``epochs_per_space``) on each space from :math:`v = 1` to :math:`v = 0`, then
    :math:`F` (``finetune_epochs``) on the data. Each epoch minimizes, batch by batch,

    .. math:: -\frac{1}{|B|} \sum_{n \in B} \log p(u_v(x_n) + \sigma \epsilon_n \mid c_n)
        + R(p, B), \quad \epsilon_n \sim \mathcal{N}(0, I) ,

    with a small noise :math:`\sigma` (``noise``, 0.01 in the paper) on the inputs in
    every space and an optional regularizer :math:`R`. One optimizer runs through the
    whole schedule.

    Arguments:
        epochs_per_space: The number of epochs :math:`E \geq 1` on each space.
        finetune_epochs: The number of epochs :math:`F \geq 0` on the data, after the
            spaces.
        optimizer: An optimizer class or factory, called as
            :py:`optimizer(parameters, lr=lr)`.
        lr: The learning rate.
        batch_size: The minibatch size.
        noise: The standard deviation :math:`\sigma` of the noise on the model's inputs.
        strategy: The strategy passed to :py:`model.initialize` on the Gaussian space,
            or :py:`None` not to initialize.
        regularizer: A term :math:`R` added to the loss of every batch, called as
            :py:`regularizer(model, d, x)` where ``d`` is the model's distribution that
            gave the likelihood of the batch ``x``, e.g.
            :py:`lambda model, d, x: -0.1 * model.entropy(x, d=d)` for the entropy
            across the trajectories of a :class:`~contmix.HierarchicalCPMM`, which the
            paper finds helpful for clustering; or :py:`None`. Inside
            :func:`~contmix.distributed.sharded`, it is computed by each process on its
            part of the batch and its gradients are summed.
        scheduler: A learning-rate schedule, called as :py:`scheduler(optimizer, epochs)`
            with the number of epochs of the whole schedule and stepped after every
            epoch (saved in the checkpoint), e.g.
            :py:`lambda o, n: CosineAnnealingLR(o, n)`; or :py:`None` for a constant
            learning rate.

    Example:
        >>> settings = Settings(epochs_per_space=2, finetune_epochs=3, lr=1e-2)
        >>> settings.plan(spaces=3)  # the index of the space of each epoch
        [0, 0, 1, 1, 2, 2, 2, 2, 2]
    """

    epochs_per_space: int = 1
    finetune_epochs: int = 10
    optimizer: Callable[..., Optimizer] = torch.optim.Adam
    lr: float = 1e-3
    batch_size: int = 256
    noise: float = 0.01
    strategy: str | None = "random"
    regularizer: Regularizer | None = None
    scheduler: Scheduler | None = None

    def __post_init__(self) -> None:
        if self.epochs_per_space < 1 or self.finetune_epochs < 0:
            raise ValueError(
                "epochs_per_space must be at least 1 and finetune_epochs non-negative, got "
                f"{self.epochs_per_space} and {self.finetune_epochs}."
            )

    def plan(self, spaces: int) -> list[int]:
        r"""Returns the index of the space of each epoch of the schedule, for
        ``spaces`` spaces (the last one is the data)."""

        plan = [t for t in range(spaces) for _ in range(self.epochs_per_space)]

        return plan + [spaces - 1] * self.finetune_epochs
