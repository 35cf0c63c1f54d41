import matplotlib

matplotlib.use("Agg")

import matplotlib.image
import pytest
import torch

from contmix import HierarchicalMFA
from contmix.figures import plot_trajectories, trajectory_means
from contmix.transforms import LogitTransform


@pytest.fixture
def model():
    torch.manual_seed(0)
    return HierarchicalMFA(features=12, groups=3, components=5, rank=2)


def test_trajectory_means_are_the_inner_means(model):
    means = trajectory_means(model)
    d = model()

    assert means.shape == (3, 5, 12)
    # the flat mean of the mixture is the weighted average of these means
    eta = d.logits.exp()
    pi = d.base.logits.exp()
    flat = (eta[:, None, None] * pi[..., None] * means).sum(dim=(0, 1))
    assert torch.allclose(flat, d.mean, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 4), (1, 3, 4), (3, 2, 2)])
def test_plot_writes_a_grid(model, tmp_path, shape):
    path = tmp_path / "trajectories.png"
    fig = plot_trajectories(model, shape, path=path, size=0.5)

    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert width / height == pytest.approx(5 / 3, rel=0.05)
    assert len(fig.axes) == 15


def test_plot_order_and_transform(model):
    t = LogitTransform(0.05)
    fig = plot_trajectories(model, (3, 4), transform=t.inv, order=[2, 0, 1])
    means = t.inv(trajectory_means(model))

    drawn = torch.as_tensor(fig.axes[0].images[0].get_array().data)
    assert torch.allclose(drawn, means[2, 0].reshape(3, 4))
    drawn = torch.as_tensor(fig.axes[5 + 4].images[0].get_array().data)
    assert torch.allclose(drawn, means[0, 4].reshape(3, 4))


def test_plot_uses_the_model_shape():
    from contmix import HierarchicalCPMM

    model = HierarchicalCPMM((1, 3, 4), trajectories=2, components=3, hidden_features=(4, 4))
    fig = plot_trajectories(model.eval())
    drawn = torch.as_tensor(fig.axes[1].images[0].get_array().data)
    assert torch.allclose(drawn, trajectory_means(model)[0, 1].reshape(3, 4))

    with pytest.raises(ValueError, match="no image shape"):
        plot_trajectories(HierarchicalMFA(features=12, groups=2, components=3))
