r"""Information criteria of a fitted model, from its log-likelihood and its number of free
parameters, as scikit-learn's mixtures offer them."""

__all__ = ["InformationCriteria"]

import math

from torch import Tensor

from ..utils import check_samples


class InformationCriteria:
    r"""The Bayesian and Akaike information criteria of a model, for choosing, e.g., the
    number of components: the methods :meth:`bic` and :meth:`aic` of
    :class:`~contmix.GMM`, :class:`~contmix.MFA` and :class:`~contmix.HierarchicalMFA`.

    A model that inherits them has a number of ``features``, a forward pass that
    returns its distribution given a context, and a method ``free_parameters()`` that
    counts its free parameters :math:`P`.

    References:
        | Estimating the Dimension of a Model (Schwarz, 1978)
        | https://doi.org/10.1214/aos/1176344136

        | A new look at the statistical model identification (Akaike, 1974)
        | https://doi.org/10.1109/TAC.1974.1100705
    """

    def bic(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        r"""Returns the Bayesian information criterion on :math:`x` (lower is better).

        .. math:: \text{BIC} = -2 \sum_n \log p(x_n) + P \log N

        where :math:`P` is the number of free parameters (``free_parameters()``).

        Example:
            >>> import torch
            >>> from contmix import GMM
            >>> gmm, x = GMM(features=2, components=3), torch.randn(50, 2)
            >>> bool(gmm.bic(x) > gmm.aic(x))  # log 50 > 2
            True
        """

        check_samples(x, self.features)
        return -2 * self(c).log_prob(x).sum() + self.free_parameters() * math.log(len(x))

    def aic(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        r"""Returns the Akaike information criterion on :math:`x` (lower is better).

        .. math:: \text{AIC} = -2 \sum_n \log p(x_n) + 2 P

        Example:
            >>> import torch
            >>> from contmix import MFA
            >>> mfa, x = MFA(features=3, components=2), torch.randn(50, 3)
            >>> bool(mfa.aic(x) > -2 * mfa().log_prob(x).sum())
            True
        """

        check_samples(x, self.features)
        return -2 * self(c).log_prob(x).sum() + 2 * self.free_parameters()
