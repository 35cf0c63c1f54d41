r"""Fitting across processes with :mod:`torch.distributed`.

Inside :func:`sharded`, each process holds a shard of the data and the fitting
algorithms (:func:`~contmix.em.fit_gmm`, :func:`~contmix.em.gmm_m_step`,
:func:`~contmix.em.fit_mfa`, :func:`~contmix.cluster.kmeans`,
:func:`~contmix.cluster.kmeans_plusplus`) sum their statistics over the processes of
the group with :func:`torch.distributed.all_reduce`: every process ends with the same
parameters, those of a fit on the concatenation of the shards. The curriculum
(:class:`~contmix.Curriculum`) trains on shards too: it sums the gradients over the
processes (:func:`all_reduce_gradients`) and keeps the same model on every process.
Outside of it, or when :mod:`torch.distributed` is not initialized, the functions of
this module are the identity and nothing is communicated.

The same sums run over batches within a process: every fitting algorithm that takes
:math:`x` also takes an iterable of batches (:data:`Data`, e.g. a
:class:`~torch.utils.data.DataLoader` over a memory-mapped array), sums its statistics
batch by batch (:func:`accumulate`), then over the processes as above. Within
:func:`sharded`, each process iterates over the batches of its own shard.

Sharding is opt-in, rather than on as soon as a process group exists, because the same
functions also run on data that is not sharded (e.g. spectral clustering of the
components, or every process initializing on a full copy of the data before
:class:`~torch.nn.parallel.DistributedDataParallel` training), where a reduction would
be wrong or would wait forever for the other processes.
"""

__all__ = [
    "Data",
    "accumulate",
    "all_reduce",
    "all_reduce_gradients",
    "batches",
    "broadcast",
    "check_batches",
    "is_sharded",
    "mean",
    "rank",
    "samples",
    "sharded",
    "std",
    "world",
]

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from torch import Tensor

_groups: list[dist.ProcessGroup | None] = []


Data = Tensor | Iterable[Tensor]
r"""The samples given to a fit: a tensor with shape :math:`(N, D)`, or a re-iterable of
batches, tensors with shape :math:`(B, D)` (a :class:`~torch.utils.data.DataLoader`
over a memory-mapped array, a list of tensors), through which the fit passes as many
times as it needs, in the same order each time."""


@contextmanager
def sharded(group: dist.ProcessGroup | None = None) -> Iterator[None]:
    r"""Within this context, the data given to the fitting algorithms is a shard and
    their statistics are summed over the processes of ``group``.

    All processes of the group must make the same calls in the same order, with the
    same arguments except the data. Randomized steps (k-means++ seeding, the random
    loadings of :class:`~contmix.mixtures.mfa.MFA`) draw from the global random generator, which
    must therefore be seeded identically on every process (e.g.
    ``torch.manual_seed(0)``). A shard may hold fewer samples than there are
    components, but not zero samples.

    Arguments:
        group: The process group, the default group if :py:`None`.

    Example:
        >>> with sharded():  # without torch.distributed, a single shard
        ...     is_sharded()
        False
    """

    _groups.append(group)

    try:
        yield
    finally:
        _groups.pop()


def is_sharded() -> bool:
    r"""Returns whether the statistics are summed over processes: inside :func:`sharded`
    with :mod:`torch.distributed` initialized.

    Example:
        >>> is_sharded()
        False
    """

    return bool(_groups) and dist.is_available() and dist.is_initialized()


def all_reduce(*tensors: Tensor) -> Tensor | tuple[Tensor, ...]:
    r"""Returns the sums of tensors over the processes, in one reduction.

    The tensors are flattened and concatenated (in the dtype of the first one) before
    the reduction. Outside of :func:`sharded`, they are returned as they are.

    Returns:
        The summed tensor, or a tuple of them when several are given.

    Example:
        >>> all_reduce(torch.ones(2))
        tensor([1., 1.])
    """

    if is_sharded():
        flat = torch.cat([t.reshape(-1).to(tensors[0].dtype) for t in tensors])
        dist.all_reduce(flat, group=_groups[-1])
        sizes = [t.numel() for t in tensors]
        tensors = tuple(
            s.reshape(t.shape).to(t.dtype) for s, t in zip(flat.split(sizes), tensors, strict=True)
        )

    return tensors[0] if len(tensors) == 1 else tensors


def batches(x: Data) -> Iterable[Tensor]:
    r"""Returns the batches of :math:`x`: a tensor is one batch, an iterable its own.

    Example:
        >>> [b.shape for b in batches(torch.randn(10, 2))]
        [torch.Size([10, 2])]
        >>> [len(b) for b in batches(torch.randn(10, 2).split(4))]
        [4, 4, 2]
    """

    return (x,) if isinstance(x, Tensor) else x


def check_batches(x: Data) -> None:
    r"""Raises a :class:`TypeError` unless :math:`x` is a tensor or a re-iterable of
    batches (:data:`Data`): an iterator (a generator, :py:`iter(loader)`) is used up by
    the first of the passes a fit makes through the data.

    Example:
        >>> check_batches(torch.randn(10, 2).split(4))
        >>> check_batches(b for b in torch.randn(10, 2).split(4))
        Traceback (most recent call last):
            ...
        TypeError: x must be a tensor or a re-iterable of batches (...), got a generator, ...
    """

    if isinstance(x, Tensor):
        return
    if not isinstance(x, Iterable):
        raise TypeError(
            "x must be a tensor or an iterable of batches (e.g. a DataLoader), got "
            f"{type(x).__name__}."
        )
    if iter(x) is x:
        raise TypeError(
            "x must be a tensor or a re-iterable of batches (e.g. a DataLoader or a list of "
            f"tensors), got a {type(x).__name__}, which one pass would use up: a fit makes "
            "several passes through the data."
        )


def accumulate(f: Callable[[Tensor], tuple[Tensor, ...]], x: Data) -> tuple[Tensor, ...]:
    r"""Returns the sums of the statistics :math:`f(x_b)` over the batches :math:`x_b`
    of :math:`x` and over the processes (:func:`all_reduce`, one reduction).

    .. math:: S = \sum_r \sum_b f(x_{r b})

    Arguments:
        f: A function of a batch that returns a tuple of tensors (float64 ones, where
            the sums must be exact).
        x: The samples or batches (:data:`Data`).

    Example:
        >>> x = torch.arange(6.0).reshape(3, 2)
        >>> accumulate(lambda b: (b.sum(dim=0), torch.tensor(len(b))), x.split(2))
        (tensor([6., 9.]), tensor(3))
    """

    sums = None

    for batch in batches(x):
        stats = f(batch)
        sums = stats if sums is None else tuple(a + b for a, b in zip(sums, stats, strict=True))

    if sums is None:
        raise ValueError("x holds no batch: pass at least one batch of samples.")

    reduced = all_reduce(*sums)

    return reduced if isinstance(reduced, tuple) else (reduced,)


def samples(x: Data) -> int:
    r"""Returns the number of samples :math:`N = \sum_r N_r` of all shards (of all the
    batches of an iterable, in one pass).

    Example:
        >>> samples(torch.randn(10, 2))
        10
        >>> samples(torch.randn(10, 2).split(4))
        10
    """

    if not isinstance(x, Tensor):
        return int(accumulate(lambda b: (torch.tensor(len(b), device=b.device),), x)[0])
    if is_sharded():
        return int(all_reduce(torch.tensor(len(x), device=x.device)))

    return len(x)


def mean(x: Data) -> Tensor:
    r"""Returns the mean of the samples of all shards, with shape :math:`(D,)` (of all
    the batches of an iterable, in one pass, summed in float64 and returned in float64).

    .. math:: \bar{x} = \frac{\sum_r \sum_{n \in r} x_n}{\sum_r N_r}

    Example:
        >>> mean(torch.tensor([[1.0], [3.0]]))
        tensor([2.])
        >>> mean(torch.tensor([[1.0], [3.0], [5.0]]).split(2))
        tensor([3.], dtype=torch.float64)
    """

    if not isinstance(x, Tensor):
        sums, counts = accumulate(lambda b: (b.double().sum(dim=0), b.new_tensor(len(b))), x)
        return sums / counts.double()
    if is_sharded():
        total = all_reduce(torch.cat((x.sum(dim=0), x.new_tensor([len(x)]))))
        return total[:-1] / total[-1]

    return x.mean(dim=0)


def std(x: Tensor) -> Tensor:
    r"""Returns the standard deviation of each feature of the samples of all shards,
    with shape :math:`(D,)`.

    .. math:: \sigma = \sqrt{\frac{\sum_r \sum_{n \in r} (x_n - \bar{x})^2}{N - 1}}

    Example:
        >>> std(torch.tensor([[1.0], [3.0]]))
        tensor([1.4142])
    """

    if not is_sharded():
        return x.std(dim=0)

    squares = all_reduce((x - mean(x)).square().sum(dim=0))

    return (squares / (samples(x) - 1)).sqrt()


def rank() -> int:
    r"""Returns the rank of this process in the group (0 outside of :func:`sharded`).

    Example:
        >>> rank()
        0
    """

    return dist.get_rank(_groups[-1]) if is_sharded() else 0


def world() -> int:
    r"""Returns the number of processes in the group (1 outside of :func:`sharded`).

    Example:
        >>> world()
        1
    """

    return dist.get_world_size(_groups[-1]) if is_sharded() else 1


def gather(value: Tensor) -> Tensor:
    r"""Returns the values of all processes stacked, with shape :math:`(W, *)`, by one
    sum in which each process fills its own row."""

    stacked = value.new_zeros(world(), *value.shape)
    stacked[rank()] = value

    return all_reduce(stacked)


@torch.no_grad()
def broadcast(*tensors: Tensor) -> None:
    r"""Overwrites the tensors, in place, with those of the process of rank 0 in the
    group (nothing outside of :func:`sharded`).

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> broadcast(*model.state_dict().values())  # the same model on every process
    """

    if is_sharded():
        group = _groups[-1]
        for t in tensors:
            dist.broadcast(t, group=group, group_src=0)


def all_reduce_gradients(parameters: Iterable[Tensor], *tensors: Tensor) -> tuple[Tensor, ...]:
    r"""Sums the gradients of the parameters over the processes, in place, in one
    reduction with the other ``tensors``, whose sums are returned.

    A parameter without a gradient counts as a zero gradient. When each process
    back-propagates its part of a loss over all the shards, e.g.

    .. math:: \ell_r = -\frac{1}{|B|} \sum_{n \in B_r} \log p(x_n) ,
        \quad B = \bigcup_r B_r ,

    the summed gradients are those of the whole loss :math:`\sum_r \ell_r`, whatever
    the sizes of the shards' batches :math:`B_r`. Outside of :func:`sharded`, nothing
    changes and the tensors are returned as they are.

    Returns:
        The sums of ``tensors``, as a tuple.

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> loss = model(torch.randn(8, 2)).square().mean()
        >>> loss.backward()
        >>> all_reduce_gradients(model.parameters(), torch.tensor(8.0))
        (tensor(8.),)
    """

    if not is_sharded():
        return tensors

    parameters = [p for p in parameters if p.requires_grad]
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in parameters]
    summed = all_reduce(*grads, *tensors)
    summed = summed if isinstance(summed, tuple) else (summed,)

    for p, g in zip(parameters, summed, strict=False):
        p.grad = g

    return summed[len(parameters) :]


def __getattr__(name: str):
    r"""Keeps :class:`~contmix.ddp.LogProb`, which moved to :mod:`contmix.ddp`,
    importable from here."""

    if name == "LogProb":
        from .ddp import LogProb

        return LogProb

    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
