r"""Continuously parameterized mixture models: mixtures whose components ride a neural ODE.

A CPMM keeps the parameters of a mixture of factor analyzers (MFA) component in a state

.. math:: h(t) = [\mu(t), \operatorname{vec}(A(t)), \log d(t), (\log \pi(t)), \alpha(t)]

that evolves by a learned ODE :math:`\dot{h} = f(h, t)` from a learnable initial state
:math:`h(0)`. Its components are the states at :math:`G` pseudotimes in :math:`[0, 1]`.
Once trained, :meth:`CPMM.extract` returns a plain :class:`~contmix.MFA` (or
:class:`~contmix.HierarchicalMFA`) holding the components: the ODE is gone.
"""

__all__ = [
    "CPMM",
    "HierarchicalCPMM",
]

import math

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn as nn

from torch import Tensor
from zuko.nn import MLP

from .continuous import _ContinuousMixture
from .hierarchical import HierarchicalMFA
from .mfa import MFA
from .solver import Solver
from ..distributions import GaussianMixture
from ..report import FitReport
from ..utils import check_context


class CPMM(_ContinuousMixture):
    r"""Creates a continuously parameterized mixture model (CPMM).

    A mixture of :math:`G` factor analyzers whose parameters are the states of one
    neural-ODE trajectory at pseudotimes :math:`t_1 < \dots < t_G` in :math:`[0, 1]`,

    .. math:: p(x \mid c) = \sum_{j = 1}^G \pi(t_j) \,
        \mathcal{N}(x \mid \mu(t_j), D(t_j) + A(t_j) A(t_j)^T) ,
        \quad \frac{dh}{dt} = f(h, t, c), \quad h(0) = h_0(c) ,

    with the state :math:`h = [\mu, \operatorname{vec}(A), \log d, (\log \pi), \alpha]`
    (:class:`~contmix.mixtures.state.StateLayout`), :math:`D = \operatorname{diag}(\exp(m +
    \operatorname{softplus}(\log d - m)) + \epsilon)` with :math:`\log d` soft-clipped
    from below at :math:`m` (``log_diag_min``), and :math:`\alpha` an augmented part
    that the mixture never reads. The weights are constant, :math:`\pi = 1 / G`, unless
    ``learn_weights``. The dynamics :math:`f` are an MLP of :math:`[h, t, c]`
    (:class:`~contmix.nn.Dynamics`) and the initial state :math:`h_0` is a learnable parameter, or
    an MLP of the context.

    With image-shaped features :math:`(C, H, W)`, the state is kept in image shape: the
    means, each column of the loadings, the log-diagonals and the augmented part are
    image channels (:meth:`~contmix.mixtures.state.StateLayout.image`), and the
    dynamics are a CNN with the pseudotime (and the context) as extra constant channels
    (:class:`~contmix.nn.ConvDynamics`: three convolutions with 64 hidden channels and
    sine activations by default, as in the paper). The state is flattened only to
    evaluate the likelihood: samples are flat, with shape :math:`(N, C H W)`
    (``x.flatten(1)``), and the weights constant.

    The components sit at the fixed grid :math:`t_j = (j - 1)/(G - 1)`, in training
    and evaluation modes alike, solved once and cached until the parameters change
    (however they change); gradients flow in both modes. With ``random_times``,
    training mode instead draws sorted uniform pseudotimes at every call, as in the
    paper. The ODE is solved by Euler steps between the pseudotimes by default (one
    evaluation of the dynamics per component): the trajectory is then that of the
    discrete map, the same in training, evaluation and :meth:`extract`, which returns a
    plain :class:`~contmix.MFA` with the components.

    Training: :meth:`initialize` with its default ``"em"`` start, then Adam at a
    learning rate of :math:`3 \times 10^{-4}` on the negative log-likelihood, in a plain
    loop (``benchmarks/cpmm_training.py``: on the two circles, the spiral and the
    digits, the test log-likelihood never falls by more than 0.05 nats between
    checkpoints 100 steps apart). :math:`10^{-3}` oscillates on the 2-D sets. Where
    each component has few samples per feature (the 8x8 digits: about 14 samples per
    component in 64 dimensions), add :meth:`penalty` to the loss: maximum likelihood
    otherwise halves the diagonals as the model overfits. To cluster images,
    ``spherical`` trades likelihood for clusters (on 10,000 Fashion-MNIST images,
    :class:`HierarchicalCPMM` from the ``"kmeans"`` start, three seeds: 57.7% accuracy
    against 48.5% for k-means, 6.18 bits/dim against 5.08 with diagonals).

    References:
        | Continuously Parameterized Mixture Models (Bender et al., 2023)
        | https://proceedings.mlr.press/v202/bender23a.html

        | Neural Ordinary Differential Equations (Chen et al., 2018)
        | https://arxiv.org/abs/1806.07366

    Arguments:
        features: The number of features :math:`M`, or an image shape :math:`(C, H, W)`
            with :math:`M = C H W`.
        context: The number of context features.
        components: The number of components :math:`G`.
        rank: The rank :math:`R` of the loadings.
        solver: The settings of the ODE solver (:class:`~contmix.mixtures.solver.Solver`):
            Euler steps from one pseudotime to the next by default.
        augment: The size of the augmented part :math:`\alpha`, as a multiple of the
            mixture part of the state (the paper uses 2 to 4), rounded up to whole
            channels for images.
        hidden_features: The widths of the hidden layers of the dynamics (and of the
            context MLP): :py:`(256, 256)` by default, or the hidden channels of the
            CNN, :py:`(64, 64)` by default, for images.
        activation: The activation of the dynamics, ``"sin"`` or ``"tanh"``.
        learn_weights: Whether :math:`\log \pi` is in the state (learned weights).
        spherical: Whether the diagonals are spherical, :math:`D = d I` with one
            :math:`\log d` per component in the state (the paper's "constant diagonal",
            its Table 2), for flat features. The start takes the mean of the start's
            diagonals over the features.
        log_diag_min: The soft lower bound :math:`m` of :math:`\log d`, in the units of
            :math:`x^2`: -10 by default, a standard deviation of 0.007; the paper uses -6
            (0.05) on images in logit space, which floors the narrow components of
            data at the scale of the 2-D sets (0.02 noise on the circles).
        epsilon: A numerical stability term added to the diagonal.
        random_times: The number of sorted uniform pseudotimes that training mode draws
            at every call (the paper's scheme, e.g. :math:`G`); 0, the default, keeps the
            grid.

    Example:
        >>> model = CPMM(features=2, components=8, rank=1, hidden_features=(32,))
        >>> x = torch.randn(64, 2)
        >>> report = model.initialize(x, steps=5)  # the "em" start
        >>> model().log_prob(x).shape
        torch.Size([64])
        >>> mfa = model.eval().extract()
        >>> torch.allclose(mfa().log_prob(x), model().log_prob(x))
        True

        An image-shaped CPMM, with CNN dynamics:

        >>> model = CPMM(features=(1, 8, 8), components=4, hidden_features=(16, 16))
        >>> model().log_prob(torch.randn(5, 1, 8, 8).flatten(1)).shape
        torch.Size([5])
    """

    def __init__(
        self,
        features: int | Sequence[int],
        context: int = 0,
        components: int = 25,
        rank: int = 2,
        solver: Solver | None = None,
        **kwargs,
    ):
        super().__init__(features, context, 1, components, rank, solver, **kwargs)

    def forward(self, c: Tensor | None = None) -> GaussianMixture:
        c = check_context(c, self.context, self._reference(), ignore=True)
        return self._inner(self.states(c).squeeze(-3))

    def initialize(
        self,
        x: Tensor,
        strategy: Literal["random", "kmeans", "em"] = "em",
        steps: int | None = None,
        lr: float | None = None,
        *,
        n_init: int = 1,
        generator: torch.Generator | None = None,
        progress: bool | None = None,
    ) -> FitReport:
        r"""Initializes the trajectory from data.

        ``"em"`` (the default): an :class:`~contmix.MFA` with :math:`G` components is
        fitted to :math:`x` by EM, its components are ordered along a path and their
        loadings aligned along it (:func:`~contmix.mixtures.paths.path_components`); the initial
        state gets the first component, the dynamics are drawn afresh with their last
        layer scaled down, and the trajectory is regressed on the components at the
        evaluation grid for ``steps`` Adam steps (1000 by default), by the
        Kullback-Leibler divergence from each component to the trajectory's: training
        starts where a direct fit ends (the weights along the trajectory are equal, as
        the MFA's are not).
        ``"kmeans"`` (the paper's heuristic, extended): the data is split by k-means
        into :math:`G` clusters whose centres are ordered along a path
        (:func:`~contmix.mixtures.groups.order_path`); the initial state gets the first
        centre, the log-variances of its cluster as :math:`\log d`, small random
        loadings and a zero augmented part; the dynamics are drawn afresh with their
        last layer scaled down, so that the trajectory starts slow, and then, for
        ``steps`` Adam steps, the trajectory is regressed on the ordered centres and
        log-variances at the evaluation grid. ``"random"``: the initial state starts at
        a random sample with the log-variances of the data, the dynamics drawn afresh
        and scaled down, no regression. With one component (:math:`G = 1`), it is the
        Gaussian of the data (diagonal, with small loadings). For a conditional model,
        the context MLP starts out producing that initial state whatever the context,
        and there is no regression.

        Of ``n_init`` sets of clusters, each from its own centres, the one whose
        mixture of the clusters' diagonal Gaussians has the highest mean log-likelihood
        on :math:`x` is kept. Every random draw comes from ``generator``: the same seed
        gives the same parameters, whatever the model was before, and the global seed
        is left alone.

        Nothing changes if an error is raised.

        Arguments:
            x: The samples, with shape :math:`(N, M)`.
            strategy: ``"em"``, ``"kmeans"`` or ``"random"``.
            steps: The number of regression steps (0 to skip): 1000 for ``"em"``, 100
                for ``"kmeans"`` by default.
            lr: The initial learning rate of the regression (Adam, cosine decay to a
                hundredth of it for ``"em"``, a tenth for ``"kmeans"``): by default
                :math:`10^{-2}`, times :math:`2048 / n` when the first layer of the
                dynamics has :math:`n > 2048` inputs (see :meth:`regression_lr`).
            n_init: The number of sets of clusters, of which the best is kept.
            generator: The random generator (torch's global generator if :py:`None`).
            progress: Whether to show progress bars (:py:`None`: only in a terminal, see
                :func:`~contmix.report.progress_bar`).

        Returns:
            The :class:`~contmix.report.FitReport` of the fit, also kept as
            ``fit_report``: the strategy and the mean log-likelihood of :math:`x` at the
            grid once initialized (for a conditional model, at a zero context).

        Example:
            >>> x = torch.randn(64, 2)
            >>> a = CPMM(2, components=4, rank=1, hidden_features=(8,))
            >>> b = CPMM(2, components=4, rank=1, hidden_features=(8,))
            >>> _ = a.initialize(x, steps=3, n_init=2, generator=torch.Generator().manual_seed(0))
            >>> report = b.initialize(x, 'em', steps=3, n_init=2,
            ...     generator=torch.Generator().manual_seed(0))
            >>> report is b.fit_report and report.strategy
            'em'
            >>> all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
            True
        """

        return self._initialize(x, strategy, None, steps, lr, n_init, generator, progress)[1]

    @torch.no_grad()
    def extract(self, components: int | None = None, c: Tensor | None = None) -> MFA:
        r"""Returns a :class:`~contmix.MFA` holding the components at the evaluation grid
        (or at ``components`` evenly spaced pseudotimes): no ODE in its forward, the same
        :meth:`log_prob` as the CPMM in evaluation mode, saved and loaded on its own.
        With a fixed-step solver (Euler by default), another number of components is
        another discretization: its states follow the ODE to the order of the step, not
        of a tolerance.

        Arguments:
            components: The number of components :math:`G'` (:math:`G` by default).
            c: For a conditional model, one context, with shape :math:`(C_{tx},)`.
        """

        h = self._extracted_states(components, c).squeeze(-3)
        mfa = MFA(self.features, components=h.shape[-2], rank=self.rank, epsilon=self.epsilon)
        mfa = mfa.to(h)

        for p, value in zip(mfa.phi, self.parameters_of(h), strict=True):
            p.copy_(value)

        return mfa


class HierarchicalCPMM(_ContinuousMixture):
    r"""Creates a hierarchical CPMM: a mixture of :math:`C` CPMM trajectories.

    .. math:: p(x \mid c) = \sum_{k = 1}^C \eta_k \sum_{j = 1}^G \pi_k(t_j) \,
        \mathcal{N}(x \mid \mu_k(t_j), D_k(t_j) + A_k(t_j) A_k(t_j)^T)

    The :math:`C` trajectories start from :math:`C` learnable initial states and share
    one ODE (or, with ``separate``, each has its own, as in the paper's ablation). The
    outer weights :math:`\eta = \operatorname{softmax}(\text{logits})` are learnable:
    a parameter, or for a conditional model an MLP of the context, so that the
    proportions of the groups :math:`\eta_k(c)` change with :math:`c`.
    Its distribution is the mixture family nested once: a
    :class:`~contmix.distributions.GaussianMixture` over :math:`C` trajectories whose
    components are mixtures with batch shape :math:`(C,)` over
    :class:`~contmix.distributions.LowRankNormal` with batch shape :math:`(C, G)`.
    Bayes' rule gives :math:`p(k \mid x)` for clustering (:meth:`predict`,
    :meth:`predict_proba`) and :meth:`joint_log_prob` the supervised likelihood.

    When training for clustering, the paper finds it helpful to regularize the entropy
    across trajectories (:meth:`entropy`).

    References:
        | Continuously Parameterized Mixture Models (Bender et al., 2023), Section 3.2
        | https://proceedings.mlr.press/v202/bender23a.html

    Arguments:
        features: The number of features :math:`M`, or an image shape (see
            :class:`CPMM`).
        context: The number of context features.
        trajectories: The number of trajectories :math:`C`.
        components: The number of components :math:`G` per trajectory.
        rank: The rank :math:`R` of the loadings.
        separate: Whether each trajectory has its own ODE.
        solver: The settings of the ODE solver (see :class:`CPMM`).
        kwargs: The other arguments of :class:`CPMM`.

    Example:
        >>> model = HierarchicalCPMM(2, trajectories=3, components=5, hidden_features=(32,))
        >>> x = torch.randn(64, 2)
        >>> report = model.initialize(x, steps=5)  # the "em" start
        >>> model().log_prob(x).shape
        torch.Size([64])
        >>> model.predict_proba(x).shape
        torch.Size([64, 3])
    """

    def __init__(
        self,
        features: int | Sequence[int],
        context: int = 0,
        trajectories: int = 10,
        components: int = 25,
        rank: int = 2,
        separate: bool = False,
        solver: Solver | None = None,
        **kwargs,
    ):
        super().__init__(
            features, context, trajectories, components, rank, solver, separate=separate, **kwargs
        )

        if context > 0:
            self.logits = MLP(context, trajectories, self.hidden_features)
        else:
            self.logits = nn.Parameter(torch.zeros(trajectories))

    def outer_logits(self, c: Tensor | None = None) -> Tensor:
        r"""Returns the logits of the outer weights :math:`\eta(c)`, with shape
        :math:`(*, C)`: a parameter, or an MLP of the context."""

        return self.logits if c is None else self.logits(c)

    def forward(self, c: Tensor | None = None) -> GaussianMixture:
        c = check_context(c, self.context, self._reference(), ignore=True)
        inner = self._inner(self.states(c))
        return GaussianMixture(inner, self.outer_logits(c).expand(inner.batch_shape))

    def joint_log_prob(self, x: Tensor, y: Tensor, c: Tensor | None = None) -> Tensor:
        r"""Returns the joint log-likelihood of samples and labels (trajectories), for
        supervised training.

        .. math:: \log p(x, y) = \log \eta_y + \log p(x \mid y)

        Arguments:
            x: The samples, with shape :math:`(*, M)`.
            y: The labels in :math:`[0, C)`, with shape :math:`(*)`.
            c: The context, if any.
        """

        if y.is_floating_point() or y.is_complex() or ((y < 0) | (y >= self.trajectories)).any():
            raise ValueError(
                f"y must hold integer labels in [0, {self.trajectories}), one per sample."
            )

        joint = self(c).joint(x)
        return joint.gather(-1, y.unsqueeze(-1).expand(*joint.shape[:-1], 1)).squeeze(-1)

    def entropy(
        self, x: Tensor, c: Tensor | None = None, d: GaussianMixture | None = None
    ) -> Tensor:
        r"""Returns the entropy of the average posterior over trajectories,

        .. math:: H(\bar{p}) = -\sum_{k = 1}^C \bar{p}_k \log \bar{p}_k , \quad
            \bar{p}_k = \frac{1}{N} \sum_{n = 1}^N p(k \mid x_n) ,

        which is :math:`\log C` when the batch spreads evenly over the trajectories and
        :math:`0` when a single trajectory takes it all. The opt-in regularized loss
        :math:`-\frac{1}{N} \sum_n \log p(x_n) - \lambda H(\bar{p})` keeps every
        trajectory in use.

        Arguments:
            x: A batch of samples, with shape :math:`(N, M)`.
            c: The context, if any.
            d: The model's distribution :py:`model(c)` when it is already at hand: in
                training mode, passing the one that gives the likelihood saves an ODE
                solve (and uses the same pseudotimes).

        Example:
            >>> model = HierarchicalCPMM(2, trajectories=3, components=4, hidden_features=(8,))
            >>> x = torch.randn(32, 2)
            >>> d = model()
            >>> loss = -d.log_prob(x).mean() - 0.1 * model.entropy(x, d=d)
            >>> bool(model.entropy(x) <= math.log(3))
            True
        """

        if x.dim() < 2 or x.shape[0] == 0:
            raise ValueError(
                "entropy() is that of the average posterior over a batch: x must have shape "
                f"(N, {self.features}) with N >= 1, got {tuple(x.shape)}."
            )

        log_p = (self(c) if d is None else d).posterior(x)
        log_mean = torch.logsumexp(log_p, dim=0) - math.log(log_p.shape[0])

        return -(log_mean.exp() * log_mean).sum(dim=-1)

    def initialize(
        self,
        x: Tensor,
        strategy: Literal["random", "kmeans", "em"] = "em",
        y: Tensor | None = None,
        steps: int | None = None,
        lr: float | None = None,
        *,
        n_init: int = 1,
        generator: torch.Generator | None = None,
        progress: bool | None = None,
    ) -> FitReport:
        r"""Initializes the trajectories from data.

        The samples are split into :math:`C` groups: by the labels ``y`` when given
        (supervised), else, for ``"em"``, by Ward's agglomeration of :math:`C G` k-means
        clusters (:func:`~contmix.mixtures.paths.path_groups`), by k-means for
        ``"kmeans"`` or around :math:`C` random samples (``"random"``); the trajectories
        keep the groups of their start. For ``"em"`` (the default), each group gets its
        own MFA fitted by EM, laid along its path, and the trajectories are regressed on
        them all at once, as in :meth:`CPMM.initialize`; otherwise each group is split
        into :math:`G` sub-clusters (k-means, or random samples) ordered along a path,
        and as in :meth:`CPMM.initialize` each initial state gets its group's first
        centre and log-variances, small random loadings, a zero augmented part, the
        dynamics are drawn afresh and scaled down and, for ``"kmeans"``, regressed for
        ``steps`` Adam steps on the ordered centres of every group at once. The outer
        weights are set to the group sizes. As in
        :meth:`CPMM.initialize`, the best of ``n_init`` sets of clusters is kept and
        every random draw comes from ``generator``.

        Nothing changes if an error is raised.

        Arguments:
            x: The samples, with shape :math:`(N, M)`.
            strategy: ``"em"``, ``"kmeans"`` or ``"random"``.
            y: Optional labels in :math:`[0, C)`, with shape :math:`(N,)`.
            steps: The number of regression steps (0 to skip): 1000 for ``"em"``, 100
                for ``"kmeans"`` by default.
            lr: The initial learning rate of the regression (Adam, cosine decay to a
                hundredth of it for ``"em"``, a tenth for ``"kmeans"``): by default
                :math:`10^{-2}`, times :math:`2048 / n` when the first layer of the
                dynamics has :math:`n > 2048` inputs (see :meth:`regression_lr`).
            n_init: The number of sets of clusters, of which the best is kept.
            generator: The random generator (torch's global generator if :py:`None`).
            progress: Whether to show progress bars (:py:`None`: only in a terminal).

        Returns:
            The :class:`~contmix.report.FitReport` of the fit, also kept as
            ``fit_report`` (see :meth:`CPMM.initialize`).

        Example:
            >>> x = torch.randn(64, 2)
            >>> model = HierarchicalCPMM(2, trajectories=2, components=3, hidden_features=(8,))
            >>> state = torch.random.get_rng_state()
            >>> _ = model.initialize(x, steps=3, generator=torch.Generator().manual_seed(0))
            >>> torch.equal(torch.random.get_rng_state(), state)  # the global seed is left alone
            True
        """

        logits, report = self._initialize(x, strategy, y, steps, lr, n_init, generator, progress)

        with torch.no_grad():
            if self.context > 0:  # the group sizes, whatever the context at first
                self.logits[-1].bias.copy_(logits)
            else:
                self.logits.copy_(logits)

        return report

    @torch.no_grad()
    def extract(self, components: int | None = None, c: Tensor | None = None) -> HierarchicalMFA:
        r"""Returns a :class:`~contmix.HierarchicalMFA` holding the :math:`C \times G`
        components at the evaluation grid (or :math:`G'` = ``components`` evenly spaced
        pseudotimes) and the outer weights: no ODE in its forward, the same
        :meth:`log_prob` and :meth:`predict` as the model in evaluation mode.

        Arguments:
            components: The number of components :math:`G'` per trajectory.
            c: For a conditional model, one context, with shape :math:`(C_{tx},)`.
        """

        h = self._extracted_states(components, c)
        C, G = h.shape[-3:-1]
        model = HierarchicalMFA(
            self.features, groups=C, components=G, rank=self.rank, epsilon=self.epsilon
        ).to(h)

        logits = self.outer_logits(c)
        for p, value in zip(model.phi, (logits, *self.parameters_of(h)), strict=True):
            p.copy_(value)

        return model
