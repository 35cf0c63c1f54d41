r"""The models as clusterings of samples: the posterior of a model's latent variable
and its most probable value, as scikit-learn's mixtures offer them."""

__all__ = ["Clustering"]

from torch import Tensor


class Clustering:
    r"""The methods :meth:`predict_proba` and :meth:`predict` of every model: the
    posterior of the latent variable of the model's outer mixture, by Bayes' rule,

    .. math:: p(k \mid x) = \frac{\pi_k \, p_k(x)}{\sum_j \pi_j \, p_j(x)}

    and its most probable value. The latent variable :math:`k` is the component of a
    :class:`~contmix.GMM`, :class:`~contmix.MFA` or :class:`~contmix.CPMM`, the group
    of a :class:`~contmix.HierarchicalMFA` and the trajectory of a
    :class:`~contmix.HierarchicalCPMM`, each :math:`p_k` a mixture of its own. For a
    :class:`~contmix.CWM`, whose weights depend on the sample, :math:`\pi_k p_k(x)` is
    the joint density of the sample and the map that drew it
    (:meth:`~contmix.distributions.cwm.CWMDistribution.posterior`).

    A model that inherits them has a forward pass that returns, given a context, a
    distribution with the methods ``posterior`` (the log-posterior) and ``predict``
    (:class:`~contmix.distributions.GaussianMixture`,
    :class:`~contmix.distributions.cwm.CWMDistribution`).
    """

    def predict_proba(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        r"""Returns the posterior :math:`p(k \mid x)` of the latent variable, with
        shape :math:`(*, K)`, whose rows sum to one, as scikit-learn's
        ``predict_proba``: the exponential of the distribution's ``posterior``, which
        returns :math:`\log p(k \mid x)`.

        Arguments:
            x: The samples, with shape :math:`(*, D)`.
            c: The context, with shape :math:`(*, C)`, for a conditional model.

        Example:
            >>> import torch
            >>> from contmix import GMM
            >>> gmm = GMM(features=2, components=3)
            >>> gmm.predict_proba(torch.randn(5, 2)).sum(dim=-1).allclose(torch.ones(5))
            True
        """

        return self(c).posterior(x).exp()

    def predict(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        r"""Returns the most probable value :math:`\arg\max_k p(k \mid x)` of the
        latent variable for each sample, with shape :math:`(*)`, as scikit-learn's
        ``predict``.

        Arguments:
            x: The samples, with shape :math:`(*, D)`.
            c: The context, with shape :math:`(*, C)`, for a conditional model.

        Example:
            >>> import torch
            >>> from contmix import HierarchicalMFA
            >>> hmfa = HierarchicalMFA(features=3, groups=2, components=2)
            >>> hmfa.predict(torch.randn(5, 3)).shape
            torch.Size([5])
        """

        return self(c).predict(x)
