r"""The dynamics networks of continuous mixtures: the right-hand sides :math:`f(h, t, c)`
of their neural ODEs, as an MLP of flat states (:class:`Dynamics`) or a CNN of states in
image shape (:class:`ConvDynamics`)."""

__all__ = [
    "ConvDynamics",
    "Dynamics",
    "Sine",
    "make_activation",
    "reset_linear",
]

import itertools
import math

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from torch import Tensor
from zuko.nn import MLP, Linear


def _uniform(p: Tensor, bound: float, generator: torch.Generator | None = None) -> Tensor:
    r"""Fills ``p`` in place with values drawn uniformly in :math:`[-b, b]` from
    ``generator`` (on its device), or from torch's global generator of ``p``'s device
    when it is :py:`None`."""

    if generator is None or generator.device == p.device:
        return p.uniform_(-bound, bound, generator=generator)

    value = torch.empty(p.shape, dtype=p.dtype, device=generator.device)
    return p.copy_(value.uniform_(-bound, bound, generator=generator))


def reset_linear(mlp: nn.Module, generator: torch.Generator | None = None) -> None:
    r"""Draws the weights and biases of the linear layers of ``mlp`` (those of
    :class:`torch.nn.Linear` or :class:`zuko.nn.Linear`) afresh, uniformly in
    :math:`[-1 / \sqrt{n}, 1 / \sqrt{n}]` for :math:`n` inputs, their default law, from
    ``generator``."""

    for layer in mlp.modules():
        weight, bias = getattr(layer, "weight", None), getattr(layer, "bias", None)
        if isinstance(weight, nn.Parameter) and weight.dim() >= 2:
            bound = weight.shape[-1] ** -0.5
            _uniform(weight.data, bound, generator)
            if isinstance(bias, nn.Parameter):
                _uniform(bias.data, bound, generator)


class Sine(nn.Module):
    r"""The sine activation :math:`x \mapsto \sin(x)`."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(x)


ACTIVATIONS = {"sin": Sine, "tanh": nn.Tanh}


def make_activation(name: str) -> nn.Module:
    r"""Returns the activation ``"sin"`` or ``"tanh"`` of the dynamics."""

    if name not in ACTIVATIONS:
        raise ValueError(f"Unknown activation '{name}': choose one of {list(ACTIVATIONS)}.")

    return ACTIVATIONS[name]()


class Dynamics(nn.Module):
    r"""Creates the dynamics :math:`f(h, t, c)` of a CPMM: an MLP of the state, the
    pseudotime and the context.

    .. math:: \frac{dh}{dt} = f([h, t, c]; \theta)

    The context is carried in the ODE state with zero derivative, so that gradients
    reach it with the adjoint method too: :meth:`forward` takes :math:`y = [h, c]` and
    returns :math:`[f, 0]`. With ``copies > 1`` (one ODE per trajectory), each of
    :math:`C` trajectories along the second to last dimension of :math:`y` has its own
    weights. The network is :class:`zuko.nn.MLP` (with ``stack=copies``).

    State dicts of contmix 0.1.0, whose weights were ``weights.i`` with shape
    :math:`(C, n_{in}, n_{out})` and ``biases.i``, load as they are.

    Arguments:
        state: The size of the state :math:`h`.
        context: The number of context features.
        hidden_features: The widths of the hidden layers.
        activation: ``"sin"`` or ``"tanh"``.
        copies: The number of independent dynamics.

    Example:
        >>> f = Dynamics(state=5, hidden_features=(16,))
        >>> f(torch.tensor(0.5), torch.randn(3, 5)).shape
        torch.Size([3, 5])
    """

    def __init__(
        self,
        state: int,
        context: int = 0,
        hidden_features: Sequence[int] = (256, 256),
        activation: Literal["sin", "tanh"] = "sin",
        copies: int = 1,
    ) -> None:
        super().__init__()

        self.state, self.context, self.copies = state, context, copies
        make_activation(activation)  # checks the name

        with torch.device("meta"):  # drawn once, by reset_parameters
            network = MLP(
                state + 1 + context,
                state,
                hidden_features,
                ACTIVATIONS[activation],
                stack=None if copies == 1 else copies,
            )
        self.network = network.to_empty(device=torch.get_default_device())
        self.reset_parameters()
        self.register_load_state_dict_pre_hook(_load_0_1_0)

    def linears(self) -> list[Linear]:
        r"""Returns the linear layers of the network, first to last."""

        return [layer for layer in self.network if isinstance(layer, Linear)]

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        r"""Draws the weights and biases of each layer uniformly in
        :math:`[-1 / \sqrt{n}, 1 / \sqrt{n}]`, for :math:`n` inputs, from
        ``generator`` (torch's global generator if :py:`None`), as
        :class:`zuko.nn.Linear` does; the draws fill the weights input by input, so
        that a seed gives the parameters it gave in contmix 0.1.0.

        Example:
            >>> f, g = Dynamics(3, hidden_features=(8,)), Dynamics(3, hidden_features=(8,))
            >>> f.reset_parameters(torch.Generator().manual_seed(0))
            >>> g.reset_parameters(torch.Generator().manual_seed(0))
            >>> torch.equal(f.network[0].weight, g.network[0].weight)
            True
        """

        with torch.no_grad():
            for layer in self.linears():
                weight, bias = layer.weight, layer.bias
                bound = layer.in_features**-0.5
                drawn = weight.new_empty(self.copies, layer.in_features, layer.out_features)
                weight.copy_(_uniform(drawn, bound, generator).mT.reshape(weight.shape))
                _uniform(bias, bound, generator)

    def output_layer(self) -> tuple[nn.Parameter, nn.Parameter]:
        r"""Returns the weight and the bias of the last layer."""

        last = self.linears()[-1]
        return last.weight, last.bias

    def extra_repr(self) -> str:
        return f"state={self.state}, context={self.context}, copies={self.copies}"

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        t = t.to(y).expand(*y.shape[:-1], 1)
        x = torch.cat((y[..., : self.state], t, y[..., self.state :]), dim=-1)

        return F.pad(self.network(x), (0, self.context))


def _load_0_1_0(module: Dynamics, state_dict: dict, prefix: str, *args) -> None:
    r"""Maps the keys of a :class:`Dynamics` state dict of contmix 0.1.0 (``weights.i``
    with shape :math:`(C, n_{in}, n_{out})`, ``biases.i`` with shape :math:`(C,
    n_{out})`) onto those of its :class:`zuko.nn.MLP`, in place."""

    linears = [(n, m) for n, m in module.network.named_children() if isinstance(m, Linear)]

    for i, (name, layer) in enumerate(linears):
        weight, bias = f"{prefix}weights.{i}", f"{prefix}biases.{i}"
        if weight in state_dict:
            new = f"{prefix}network.{name}"
            state_dict[f"{new}.weight"] = state_dict.pop(weight).mT.reshape(layer.weight.shape)
            state_dict[f"{new}.bias"] = state_dict.pop(bias).reshape(layer.bias.shape)


class ConvDynamics(nn.Module):
    r"""Creates the dynamics :math:`f(h, t, c)` of an image-shaped CPMM: a CNN over the
    state kept in image shape.

    The state :math:`h` is a stack of image channels
    (:meth:`~contmix.mixtures.state.StateLayout.image`); the pseudotime and the context
    features enter as constant extra channels, and
    convolutions with ``kernel_size`` and "same" padding, separated by the activation,
    map the :math:`S + 1 + C_{tx}` input channels through the hidden channels to the
    :math:`S` channels of :math:`dh/dt`. As in :class:`Dynamics`, :meth:`forward` takes
    the flat :math:`y = [h, c]` and returns :math:`[f, 0]`, and ``copies > 1`` gives
    each trajectory (second to last dimension of :math:`y`) its own weights (a grouped
    convolution).

    The paper uses three convolutions (``hidden_channels=(64, 64)``) with sine
    activations.

    Arguments:
        shape: The image shape of the state, :math:`(S, H, W)` channels.
        context: The number of context features.
        hidden_channels: The channels of the hidden layers.
        activation: ``"sin"`` or ``"tanh"``.
        copies: The number of independent dynamics.
        kernel_size: The size of the (odd) convolution kernels.

    Example:
        >>> f = ConvDynamics(shape=(6, 8, 8), hidden_channels=(16, 16))
        >>> f(torch.tensor(0.5), torch.randn(3, 6 * 8 * 8)).shape
        torch.Size([3, 384])
    """

    def __init__(
        self,
        shape: Sequence[int],
        context: int = 0,
        hidden_channels: Sequence[int] = (64, 64),
        activation: Literal["sin", "tanh"] = "sin",
        copies: int = 1,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()

        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}.")

        self.shape, self.context, self.copies = tuple(shape), context, copies
        self.state = math.prod(self.shape)
        self.activation = make_activation(activation)

        sizes = (self.shape[0] + 1 + context, *hidden_channels, self.shape[0])
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()

        for before, after in itertools.pairwise(sizes):
            weight = torch.empty(copies * after, before, kernel_size, kernel_size)
            self.weights.append(nn.Parameter(weight))
            self.biases.append(nn.Parameter(torch.empty(copies * after)))

        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        r"""Draws the weights and biases of each convolution uniformly in
        :math:`[-1 / \sqrt{n}, 1 / \sqrt{n}]`, for :math:`n = C_{in} k^2` inputs, from
        ``generator`` (torch's global generator if :py:`None`).

        Example:
            >>> f = ConvDynamics(shape=(2, 4, 4), hidden_channels=(8,))
            >>> f.reset_parameters(torch.Generator().manual_seed(0))
            >>> bool(f.weights[0].abs().max() <= (3 * 3 * 3) ** -0.5)
            True
        """

        with torch.no_grad():
            for weight, bias in zip(self.weights, self.biases, strict=True):
                bound = weight[0].numel() ** -0.5
                _uniform(weight, bound, generator)
                _uniform(bias, bound, generator)

    def output_layer(self) -> tuple[nn.Parameter, nn.Parameter]:
        r"""Returns the weight and the bias of the last convolution."""

        return self.weights[-1], self.biases[-1]

    def extra_repr(self) -> str:
        channels = [w.shape[1] for w in self.weights] + [self.shape[0]]
        kernel = self.weights[0].shape[-1]
        return (
            f"shape={self.shape}, channels={channels}, kernel_size={kernel}, "
            f"activation={self.activation}, copies={self.copies}"
        )

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        batch, (_, H, W) = y.shape[:-1], self.shape
        h = y[..., : self.state].unflatten(-1, self.shape)
        t = t.to(y).expand(*batch, 1, H, W)
        c = y[..., self.state :, None, None].expand(*batch, self.context, H, W)
        x = torch.cat((h, t, c), dim=-3)

        if self.copies > 1:  # the trajectories' channels side by side, one group each
            x = x.flatten(-4, -3)
        x = x.reshape(-1, *x.shape[-3:])

        for i, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            if i > 0:
                x = self.activation(x)
            x = F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2, groups=self.copies)

        return F.pad(x.reshape(*batch, self.state), (0, self.context))
