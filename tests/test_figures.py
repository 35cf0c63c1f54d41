import matplotlib

matplotlib.use("Agg")

import matplotlib.image
import pytest
import torch

from contmix import CWM, GMM, MFA, HierarchicalMFA
from contmix.figures import (
    ellipse,
    image_grid,
    plot_density,
    plot_trajectories,
    trajectory_means,
)
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


def boundary(e) -> torch.Tensor:
    r"""Points on the boundary of an ellipse patch, in data coordinates."""

    t = torch.linspace(0, 2 * torch.pi, 17, dtype=torch.float64)
    circle = torch.stack((t.cos(), t.sin()), dim=-1).numpy()
    return torch.as_tensor(e.get_patch_transform().transform(circle))


@pytest.mark.parametrize("scale", [1.0, 2.0, 3.0])
def test_ellipse_axes_are_scaled_square_roots_of_eigenvalues(scale):
    torch.manual_seed(0)
    a = torch.randn(2, 2, dtype=torch.float64)
    cov = a @ a.T + 0.1 * torch.eye(2, dtype=torch.float64)
    loc = torch.tensor([1.0, -2.0], dtype=torch.float64)
    e = ellipse(loc, cov, scale, color="red")

    values, vectors = torch.linalg.eigh(cov)
    assert e.width / 2 == pytest.approx(scale * values[1].sqrt().item())
    assert e.height / 2 == pytest.approx(scale * values[0].sqrt().item())
    angle = torch.tensor(e.angle).deg2rad()
    major = torch.stack((angle.cos(), angle.sin())).double()
    assert (major @ vectors[:, 1]).abs() == pytest.approx(1.0)
    assert not e.fill

    # the boundary is the set of points at Mahalanobis distance `scale`
    diff = boundary(e) - loc
    distance = (diff @ torch.linalg.inv(cov) * diff).sum(dim=-1).sqrt()
    assert torch.allclose(distance, torch.full_like(distance, scale))


def test_plot_density_draws_log_prob_and_components():
    torch.manual_seed(0)
    gmm = GMM(features=2, components=3)
    gmm.initialize(torch.randn(300, 2) * torch.tensor([1.0, 3.0]), strategy="em")
    d = gmm()

    ax = plot_density(gmm, extent=(-3, 2, -1, 4), bins=(11, 7), scale=1.5)
    image = torch.as_tensor(ax.images[0].get_array().data)

    # rows are y from bottom to top, columns x from left to right
    assert image.shape == (7, 11)
    assert ax.images[0].get_extent() == [-3, 2, -1, 4]
    for (i, j), point in [((0, 0), [-3.0, -1.0]), ((0, 10), [2.0, -1.0]), ((6, 5), [-0.5, 4.0])]:
        expected = d.log_prob(torch.tensor(point)).exp()
        assert image[i, j] == pytest.approx(expected.item(), rel=1e-5)

    # one ellipse per component, at its mean, its weight relative to the heaviest as alpha
    weights = d.logits.softmax(dim=-1)
    assert len(ax.patches) == 3
    for k, e in enumerate(ax.patches):
        center = torch.tensor(e.center, dtype=torch.float64)
        assert torch.allclose(center, d.base.mean[k].double(), atol=1e-6)
        assert e.get_alpha() == pytest.approx((weights[k] / weights.max()).item())
        assert e.width * e.height / 4 == pytest.approx(
            1.5**2 * torch.linalg.det(d.base.covariance_matrix[k]).sqrt().item(), rel=1e-4
        )

    log = plot_density(d, bins=16, log=True, scale=None)
    assert not log.patches
    assert torch.as_tensor(log.images[0].get_array().data).max() < 0  # log-densities


def test_plot_density_default_window():
    gmm = GMM(features=2, components=2, covariance_type="diagonal")
    d = gmm()
    ax = plot_density(gmm, bins=8)

    x0, _, _, y1 = ax.images[0].get_extent()
    mean, std = d.mean.detach(), d.variance.detach().sqrt()
    assert x0 == pytest.approx((mean[0] - 3 * std[0]).item(), rel=1e-5)
    assert y1 == pytest.approx((mean[1] + 3 * std[1]).item(), rel=1e-5)
    assert len(ax.patches) == 2  # diagonal covariances have ellipses too


def test_plot_density_of_mixtures_of_mixtures_and_others():
    torch.manual_seed(0)
    h = HierarchicalMFA(features=2, groups=2, components=3, rank=1)
    d = h()
    ax = plot_density(h, bins=8)

    # C x G components, weighted by eta_c pi_{c,k}
    weights = (d.logits.softmax(-1)[:, None] * d.base.logits.softmax(-1)).flatten()
    assert len(ax.patches) == 6
    alphas = torch.tensor([e.get_alpha() for e in ax.patches])
    assert torch.allclose(alphas, (weights / weights.max()).float(), atol=1e-6)

    # low-rank components: the ellipses of their covariance matrices
    mfa = MFA(features=2, components=2, rank=1)
    e = plot_density(mfa, bins=8, scale=1.0).patches[1]
    values = torch.linalg.eigvalsh(mfa().base.covariance_matrix[1].detach())
    assert e.height / 2 == pytest.approx(values[0].sqrt().item(), rel=1e-5)

    # a CWM is not a Gaussian mixture, a function has no window
    cwm = CWM(features=2, components=2)
    assert plot_density(cwm, extent=(-2, 2, -2, 2), bins=8, scale=None).images
    with pytest.raises(ValueError, match="scale=None"):
        plot_density(cwm, extent=(-2, 2, -2, 2), bins=8)
    with pytest.raises(ValueError, match="extent"):
        plot_density(cwm, scale=None)
    ring = lambda x: -((x.norm(dim=-1) - 2) / 0.2).square()
    image = plot_density(ring, extent=(-3, 3, -3, 3), bins=5, scale=None).images[0]
    assert image.get_array()[2, 2] == pytest.approx(torch.tensor(-100.0).exp().item())
    with pytest.raises(ValueError, match="extent"):
        plot_density(ring, scale=None)

    with pytest.raises(ValueError, match="one 2-D distribution"):
        plot_density(GMM(features=3, components=2))


def test_image_grid_tiles_the_images():
    images = torch.rand(7, 12)
    ax = image_grid(images, (3, 4), nrow=3, padding=2)
    grid = torch.as_tensor(ax.images[0].get_array().data)

    # 3 rows of 3 images of 3 x 4, 2 pixels apart and around
    assert grid.shape == (3 * 5 + 2, 3 * 6 + 2)
    for n in range(7):
        i, j = divmod(n, 3)
        tile = grid[2 + 5 * i : 5 + 5 * i, 2 + 6 * j : 6 + 6 * j]
        assert torch.equal(tile, images[n].reshape(3, 4))
    assert grid.isnan().sum() == grid.numel() - 7 * 12  # the rest is blank

    # without padding, one row is the images side by side
    row = image_grid(images[:3], (3, 4), nrow=3, padding=0).images[0].get_array()
    assert torch.equal(torch.as_tensor(row), torch.cat(list(images[:3].reshape(3, 3, 4)), dim=1))


def test_image_grid_shapes_channels_and_labels():
    rgb = torch.rand(4, 3, 2, 5)  # already shaped, 3 channels
    ax = image_grid(rgb, nrow=2, padding=1)
    grid = torch.as_tensor(ax.images[0].get_array().data)
    assert grid.shape == (2 * 3 + 1, 2 * 6 + 1, 3)
    assert torch.equal(grid[4:6, 7:12], rgb[3].movedim(0, -1))

    gray = torch.rand(2, 2, 1 * 3 * 3)  # (rows, columns, D) flattened in the grid's order
    ax = image_grid(gray, (1, 3, 3), nrow=2, transform=lambda x: 1 - x, labels=["a", "b"])
    grid = torch.as_tensor(ax.images[0].get_array().data)
    assert torch.equal(grid[5:8, 1:4], 1 - gray[1, 0].reshape(3, 3))
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    assert ax.get_yticks().tolist() == [2.0, 6.0]  # the middles of the rows

    fig = image_grid(torch.rand(6, 4), (2, 2), nrow=3, size=0.5).figure
    assert fig.get_size_inches().tolist() == [1.5, 1.0]
