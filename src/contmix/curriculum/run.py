r"""A training run of a curriculum: its state, saved to and restored from a checkpoint."""

__all__ = [
    "Run",
    "epoch_batches",
]

import math
import os

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from torch import Tensor
from zuko.lazy import LazyDistribution

from .settings import Callback, Settings
from .spaces import Spaces
from .. import distributed


def epoch_batches(
    x: Tensor, samples: int, batch_size: int
) -> tuple[tuple[Tensor, ...], Tensor, Any]:
    r"""Returns the indices of the batches of one epoch in this shard, the sizes of the
    whole batches (over all shards, when sharded) and the random generator of the epoch.

    There are :math:`\lceil N / B \rceil` batches, for :math:`N` samples in all
    (``samples``) and a batch size :math:`B`; each shard is split evenly into as many
    of them, in a random order drawn from a generator seeded from the global one and
    the rank of the process. Batches empty on every shard are dropped.

    Example:
        >>> indices, sizes, _ = epoch_batches(torch.randn(10, 2), 10, batch_size=4)
        >>> sizes
        tensor([4, 3, 3])
    """

    seed = torch.randint(2**62, ()).item() + distributed.rank()
    generator = torch.Generator(x.device).manual_seed(seed)

    order = torch.randperm(len(x), generator=generator, device=x.device)
    indices = order.tensor_split(math.ceil(samples / batch_size))
    sizes = distributed.all_reduce(torch.tensor([len(i) for i in indices], device=x.device))
    keep = sizes > 0  # a batch is empty on every shard when they all are small
    indices = tuple(i for i, k in zip(indices, keep.tolist(), strict=True) if k)

    return indices, sizes[keep], generator


class Run:
    r"""A run of :meth:`~contmix.curriculum.trainer.Curriculum.train`: the model, its
    optimizer and learning-rate schedule, the position in the schedule, the losses and
    the random states, saved to and restored from a checkpoint.

    Arguments:
        model: The lazy distribution trained.
        spaces: The spaces, of this process's shard inside
            :func:`~contmix.distributed.sharded`.
        settings: The schedule, the optimizer and the loss.
        checkpoint: A file to save to and resume from, or :py:`None`.
    """

    def __init__(
        self,
        model: LazyDistribution,
        spaces: Spaces,
        settings: Settings,
        checkpoint: str | os.PathLike | None = None,
    ) -> None:
        self.model = model
        self.spaces = spaces
        self.settings = settings
        self.plan = settings.plan(len(spaces))
        self.path = None if checkpoint is None else Path(checkpoint)
        self.v = spaces.v.tolist()
        self.epoch = 0
        self.step = 0
        self.history = []
        self.optimizer = None
        self.lr_scheduler = None
        self.samples = distributed.samples(spaces.u[0])  # of all shards
        self.signature = [len(spaces), self.samples, spaces.u.shape[-1], len(self.plan)]

    @property
    def done(self) -> bool:
        r"""Whether every epoch of the schedule has run."""

        return self.epoch >= len(self.plan)

    def start(self) -> None:
        r"""Resumes from the checkpoint if there is one (on the process of rank 0), or
        initializes the model on the Gaussian space."""

        exists = self.path is not None and self.path.exists() and distributed.rank() == 0
        exists = distributed.all_reduce(self.spaces.u.new_tensor(float(exists))) > 0

        if exists:
            self.make_optimizer()
            self.load()
            return

        strategy = self.settings.strategy
        if strategy is not None and hasattr(self.model, "initialize"):
            reference = next(self.model.parameters())
            self.model.initialize(self.spaces.u[0].to(reference), strategy=strategy)

        distributed.broadcast(*self.model.state_dict().values())

        self.make_optimizer()
        self.save()

    def make_optimizer(self) -> None:
        r"""Creates the optimizer and, if any, its learning-rate schedule."""

        settings = self.settings
        self.optimizer = settings.optimizer(self.model.parameters(), lr=settings.lr)
        if settings.scheduler is not None:
            self.lr_scheduler = settings.scheduler(self.optimizer, len(self.plan))

    def run_epoch(self, callbacks: Iterable[Callback] = ()) -> float:
        r"""Runs one epoch on the space of the current position, then saves, and returns
        the mean loss of the epoch."""

        space = self.plan[self.epoch]
        u, c = self.spaces.u[space], self.spaces.c
        noise, regularizer = self.settings.noise, self.settings.regularizer
        reference = next(self.model.parameters())
        total = torch.zeros((), dtype=reference.dtype, device=reference.device)
        indices, sizes, generator = epoch_batches(u, self.samples, self.settings.batch_size)

        self.model.train()

        for index, size in zip(indices, sizes.to(reference), strict=True):
            xb = u[index].to(reference)
            cb = None if c is None else c[index].to(reference)

            if noise > 0:
                epsilon = torch.randn(
                    xb.shape, generator=generator, dtype=xb.dtype, device=u.device
                )
                xb = xb + noise * epsilon.to(xb.device)

            d = self.model(cb)
            loss = -d.log_prob(xb).sum() / size
            if regularizer is not None:
                loss = loss + regularizer(self.model, d, xb)

            self.optimizer.zero_grad()
            loss.backward()
            (loss,) = distributed.all_reduce_gradients(self.model.parameters(), loss.detach())
            self.optimizer.step()

            total = total + loss * size

            info = {
                "step": self.step,
                "epoch": self.epoch,
                "space": space,
                "v": self.v[space],
                "loss": loss,
            }

            for callback in callbacks:
                callback(self.model, info)

            self.step += 1

        mean = (total / self.samples).item()

        if not torch.isfinite(total):
            raise FloatingPointError(
                f"The loss is not finite at epoch {self.epoch} (space v = {self.v[space]:.3f}):"
                " lower the learning rate or raise the noise, and resume from the checkpoint."
            )

        self.history.append(mean)
        self.epoch += 1
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        self.save()

        return mean

    def save(self) -> None:
        r"""Writes the checkpoint (atomically: a temporary file, then a rename), on the
        process of rank 0 only."""

        if self.path is None or distributed.rank() != 0:
            return

        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.lr_scheduler is None else self.lr_scheduler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "history": self.history,
            "signature": self.signature,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        }

        temporary = self.path.with_name(self.path.name + ".tmp")
        torch.save(state, temporary)
        os.replace(temporary, self.path)

    def load(self) -> None:
        r"""Restores the state from the checkpoint."""

        reference = next(self.model.parameters())
        state = torch.load(self.path, map_location=reference.device, weights_only=True)

        if state["signature"] != self.signature:
            raise ValueError(
                f"The checkpoint {self.path} is of another run: (spaces, samples, features, "
                f"epochs) = {tuple(state['signature'])}, not {tuple(self.signature)}. Pass "
                "the same data and schedule, or another checkpoint path."
            )

        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_scheduler is not None and state.get("scheduler") is not None:
            self.lr_scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step, self.history = state["epoch"], state["step"], state["history"]

        torch.set_rng_state(state["rng"].cpu())
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
