r"""Mixtures of factor analyzers."""

__all__ = [
    "MFA",
]

from math import prod

import torch
import torch.nn as nn

from torch import Size, Tensor
from zuko.lazy import LazyDistribution
from zuko.nn import MLP
from zuko.utils import unpack

from .distributions import GaussianMixture, LowRankNormal
from .utils import check_context


def mfa_shapes(components: int, features: int, rank: int) -> list[Size]:
    r"""The shapes of the parameters: logits, means, loadings and log-diagonals."""

    return [
        Size((components,)),
        Size((components, features)),
        Size((components, features, rank)),
        Size((components, features)),
    ]


class MFA(LazyDistribution):
    r"""Creates a mixture of factor analyzers (MFA).

    .. math:: p(X \mid c) = \sum_{k = 1}^K \pi_k(c) \,
        \mathcal{N}(X \mid \mu_k(c), D_k(c) + A_k(c) A_k(c)^T)

    where :math:`A_k` is a :math:`M \times R` loading matrix of rank :math:`R \ll M`
    and :math:`D_k = \operatorname{diag}(\exp(\phi_k) + \epsilon)`. The components are
    a batch of :class:`~contmix.distributions.LowRankNormal`, evaluated in
    :math:`O(N K M R)`.

    References:
        | The EM Algorithm for Mixtures of Factor Analyzers (Ghahramani et al., 1996)
        | http://mlg.eng.cam.ac.uk/zoubin/papers/tr-96-1.pdf

        | On GANs and GMMs (Richardson et al., 2018)
        | https://arxiv.org/abs/1805.12462

    Arguments:
        features: The number of features :math:`M`.
        context: The number of context features.
        components: The number of components :math:`K`.
        rank: The rank :math:`R` of the loadings.
        epsilon: A numerical stability term added to the diagonal.
        kwargs: Keyword arguments passed to :class:`zuko.nn.MLP`.

    Example:
        >>> mfa = MFA(features=5, components=3, rank=2)
        >>> mfa().log_prob(torch.randn(10, 5)).shape
        torch.Size([10])
    """

    def __init__(
        self,
        features: int,
        context: int = 0,
        components: int = 2,
        rank: int = 1,
        epsilon: float = 1e-6,
        **kwargs,
    ) -> None:
        super().__init__()

        self.features = features
        self.context = context
        self.components = components
        self.rank = rank
        self.epsilon = epsilon

        self.shapes = mfa_shapes(components, features, rank)
        self.total = sum(prod(s) for s in self.shapes)

        if context > 0:
            self.hyper = MLP(context, self.total, **kwargs)
        else:
            self.phi = nn.ParameterList(
                [
                    nn.Parameter(torch.zeros(components)),
                    nn.Parameter(torch.randn(components, features)),
                    nn.Parameter(torch.randn(components, features, rank) / rank**0.5),
                    nn.Parameter(torch.zeros(components, features)),
                ]
            )

    def forward(self, c: Tensor | None = None) -> GaussianMixture:
        check_context(c, self.context)

        if c is None:
            logits, loc, factor, log_diag = self.phi
        else:
            logits, loc, factor, log_diag = unpack(self.hyper(c), self.shapes)

        base = LowRankNormal(loc, factor, log_diag.exp() + self.epsilon)

        return GaussianMixture(base, logits)
