r"""The curriculum through spaces: a continuous normalizing flow as the map from the data
to a standard Gaussian, and training back through its intermediate spaces.

A :class:`zuko.flows.CNF` transports the data :math:`x` to its latent
:math:`z \sim \mathcal{N}(0, I)` along the ODE :math:`\dot{u} = g(u, t)`. Integrated only
up to a time :math:`v \in [0, 1]`, it gives the intermediate space :math:`u_v(x)`, with
:math:`u_0(x) = x` and :math:`u_1(x) = z`. A mixture is first fitted on :math:`u_1`, where
the data is a standard Gaussian, then trained on :math:`u_v` for :math:`v` going from 1 to
0 in small steps, each space a small perturbation of the last, and finally fine-tuned on
the data (Bender et al., 2023, Section 3.3).

- :mod:`~contmix.curriculum.spaces`: the data in the intermediate spaces
  (:class:`~contmix.curriculum.spaces.Spaces`);
- :mod:`~contmix.curriculum.settings`: how the training runs
  (:class:`~contmix.curriculum.settings.Settings`);
- :mod:`~contmix.curriculum.run`: the state of a run and its checkpoint
  (:class:`~contmix.curriculum.run.Run`);
- :mod:`~contmix.curriculum.trainer`: the trainer
  (:class:`~contmix.curriculum.trainer.Curriculum`).
"""

from .run import Run
from .settings import Callback, Regularizer, Scheduler, Settings
from .spaces import Spaces
from .trainer import Curriculum, max_norm
from ..distributed import std
