r"""The assignments of Lloyd's algorithm that Elkan's bounds do not leave in doubt.

Between two iterations of Lloyd's algorithm the centres move little, and a sample's nearest
centre rarely changes. Elkan's bounds follow the distances without computing them: an upper
bound :math:`u_n \geq \|x_n - c_{a_n}\|` on the distance to the sample's centre and a lower
bound :math:`l_{nk} \leq \|x_n - c_k\|` on the distance to each centre, which the triangle
inequality keeps valid when the centres move by :math:`p_k`,

.. math:: u_n \gets u_n + p_{a_n}, \quad l_{nk} \gets l_{nk} - p_k .

A sample whose upper bound lies below all its lower bounds keeps its centre; the others
have all their distances computed, as the dense assignment computes them
(:func:`_expanded`), which makes their bounds exact again. (Computing first the distance
to the sample's own centre, as Elkan does, cost more than it saved in 784-D: 3.1 s of a
10.4 s run on Fashion-MNIST with 250 centres.) The bounds hold a margin for the rounding
of those float32 distances, so that a sample keeps its centre only where the dense
assignment would keep it too. The margin of a sample grows with the
norm of the farthest centre: a centre at a far outlier makes every assignment dense.

References:
    | Using the Triangle Inequality to Accelerate k-Means (Elkan, 2003)
    | https://cdn.aaai.org/ICML/2003/ICML03-022.pdf
"""

import torch

from torch import Tensor

from .distances import _expanded, _rounding

DENSE = 2  # where more than 1 / DENSE of the samples are in doubt, all are assigned densely
# (Fashion-MNIST, 250 centres: 6.9 s at 1 / 2, 7.4 s at 1 / 4, 9.6 s at 1 / 8, 7.2 s never)
ROUND = 2**-20  # a relative margin for the float32 rounding of the lower bounds (16 ulps)


class Elkan:
    r"""Elkan's bounds of the distances between centred samples and centres, and the
    nearest centre of each sample.

    The :math:`N \times K` lower bounds are kept in float32, rounded down: each is lowered
    by :data:`ROUND` of itself where it is set, and the test that rules a centre out
    raises the upper bound by :data:`ROUND` of itself per iteration since, more than the
    rounding of the updates. The bound of a sample on its own centre is infinite, so that
    the test is one minimum over each row.

    Arguments:
        x: The centred samples, with shape :math:`(N, D)`.
        squares: Their squared norms, with shape :math:`(N,)`.

    Example:
        >>> x = torch.cat((torch.randn(50, 2) - 9, torch.randn(50, 2) + 9))
        >>> bounds = Elkan(x, x.square().sum(dim=-1))
        >>> labels = bounds.labels(x[[0, -1]])
        >>> torch.equal(bounds.labels(x[[0, -1]] + 0.01), labels), bounds.computed
        (True, 0)
    """

    def __init__(self, x: Tensor, squares: Tensor):
        self.x, self.squares = x, squares
        self.norms = squares.double().sqrt()
        self.centers = None
        self.calls = 0
        self.computed = 0  # the samples whose distances the last call computed

    def labels(self, centers: Tensor) -> Tensor:
        r"""Returns the nearest centre of each sample, with shape :math:`(N,)`: those of the
        dense assignment, computed for the samples that the bounds leave in doubt."""

        largest = centers.double().norm(dim=-1).amax()
        margin = _rounding(self.norms, largest, self.x.shape[-1], self.x.dtype)
        self.calls += 1

        first = self.centers is None
        if not first:
            moved = (centers.double() - self.centers).norm(dim=-1)
            self.upper += moved[self.label]
            self.lower.sub_(moved.to(self.lower.dtype) * (1 + ROUND))
            doubt = self._doubt(self.lower, self.upper, margin).nonzero()[:, 0]

        self.centers = centers.double()
        if first or DENSE * len(doubt) > len(self.x):
            self.computed = len(self.x)
            self.label, self.upper, self.lower = self._assign(self.x, self.squares, margin)
            return self.label

        self.computed = len(doubt)
        if len(doubt) > 0:
            label, upper, lower = self._assign(self.x[doubt], self.squares[doubt], margin[doubt])
            self.label[doubt], self.upper[doubt], self.lower[doubt] = label, upper, lower

        return self.label

    def _doubt(self, lower: Tensor, upper: Tensor, margin: Tensor) -> Tensor:
        r"""Returns whether the upper bound of each sample, with the rounding margin, fails
        to lie below the lower bounds of all the other centres, with shape :math:`(N,)`."""

        reach = (upper.square() + 2 * margin).sqrt() * (1 + ROUND * self.calls)

        return lower.amin(dim=-1) < reach.to(lower.dtype)  # lower is infinite at the label

    def _assign(self, x: Tensor, squares: Tensor, margin: Tensor) -> tuple[Tensor, ...]:
        r"""Returns the nearest centres of the samples ``x`` by their dense distances, and
        their bounds."""

        distances = _expanded(x, squares, self.centers.to(x.dtype))
        label = distances.argmin(dim=-1)
        own = distances.gather(-1, label.unsqueeze(-1)).squeeze(-1)
        upper = (own.double() + margin).sqrt()
        below = (margin * (1 + ROUND)).to(distances.dtype).unsqueeze(-1)
        lower = distances.sub_(below).clamp_(min=0).sqrt_().mul_(1 - ROUND)
        lower.scatter_(-1, label.unsqueeze(-1), torch.inf)  # no bound on its own centre

        return label, upper, lower
