r"""Tests for contmix.cluster against scikit-learn and brute force."""

import warnings

import numpy as np
import pytest
import torch

from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from contmix.cluster import assign, kmeans, kmeans_plusplus, random_centers
from contmix.report import ConvergenceWarning


def inertia(x, centers, labels) -> float:
    return (x - centers[labels]).square().sum().item()


@pytest.fixture(scope="module")
def overlapping():
    X, _ = make_blobs(2000, 4, centers=8, cluster_std=1.5, random_state=0)
    return torch.as_tensor(X)


def test_assign(overlapping):
    x = overlapping
    centers = x[:7] + 0.1

    assert torch.equal(assign(x, centers), torch.cdist(x, centers).argmin(dim=-1))


def test_kmeans_vs_sklearn(overlapping):
    r"""Our inertia is within a few percent of scikit-learn's (or lower), single runs on
    average and the best of several runs."""

    x, X = overlapping, overlapping.numpy()
    ours, theirs = [], []

    for seed in range(5):
        torch.manual_seed(seed)
        centers, labels = kmeans(x, 8)
        ours.append(inertia(x, centers, labels))
        theirs.append(KMeans(8, n_init=1, random_state=seed).fit(X).inertia_)

    assert min(ours) <= 1.01 * min(theirs)
    assert np.mean(ours) <= 1.05 * np.mean(theirs)


def test_kmeans_same_start_as_sklearn(overlapping):
    r"""Lloyd's algorithm from given centres reaches scikit-learn's fixed point."""

    x = overlapping
    start = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:8]]

    centers, labels = kmeans(x, 8, iterations=300, centers=start)
    sk = KMeans(8, init=start.numpy(), n_init=1, max_iter=300, tol=0.0, algorithm="lloyd")
    sk.fit(x.numpy())

    assert np.array_equal(labels.numpy(), sk.labels_)
    assert np.allclose(centers.numpy(), sk.cluster_centers_, atol=1e-10)


def test_kmeans_fixed_point(overlapping):
    x = overlapping
    torch.manual_seed(0)
    centers, labels = kmeans(x, 8)

    assert centers.shape == (8, 4) and labels.shape == (2000,)
    assert torch.equal(labels, torch.cdist(x, centers).argmin(dim=-1))
    for k in range(8):
        assert torch.allclose(centers[k], x[labels == k].mean(dim=0), atol=1e-12)


@pytest.mark.parametrize("distinct,k", [(3, 3), (3, 5), (20, 20)])
def test_kmeans_duplicates(distinct, k):
    r"""Duplicated points (quantized data) never leave a cluster empty or a centre NaN."""

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(distinct, 2, generator=generator, dtype=torch.float64).repeat(10, 1)

    for seed in range(5):
        torch.manual_seed(seed)
        with warnings.catch_warnings():  # more clusters than points: they keep emptying
            warnings.simplefilter("ignore" if k > distinct else "error", ConvergenceWarning)
            centers, labels = kmeans(x, k)

        assert torch.isfinite(centers).all()
        assert (torch.bincount(labels, minlength=k) > 0).all()
        if k == distinct:  # every distinct point is its own cluster
            assert inertia(x, centers, labels) < 1e-20


def test_kmeans_plusplus_blobs():
    r"""One centre per well-separated blob, and every centre is a sample."""

    true = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [100.0, 100.0], [50, 50]])
    generator = torch.Generator().manual_seed(0)
    x = true.repeat_interleave(100, 0) + torch.randn(500, 2, generator=generator)

    for seed in range(10):
        torch.manual_seed(seed)
        centers = kmeans_plusplus(x, 5)

        assert centers.shape == (5, 2)
        assert sorted(assign(centers, true).tolist()) == [0, 1, 2, 3, 4]
        assert (centers[:, None] == x).all(dim=-1).any(dim=-1).all()


def test_kmeans_plusplus_duplicates():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [3.0, 3.0]]).repeat(25, 1)

    for seed in range(10):
        torch.manual_seed(seed)
        centers = kmeans_plusplus(x, 4)
        assert len(centers.unique(dim=0)) == 4


def test_random_centers():
    x = torch.arange(40.0).reshape(20, 2)

    torch.manual_seed(0)
    centers = random_centers(x, 5)
    torch.manual_seed(0)
    again = random_centers(x, 5)

    assert centers.shape == (5, 2)
    assert torch.equal(centers, again)
    assert len(centers.unique(dim=0)) == 5  # distinct samples
    assert all((row == x).all(dim=-1).any() for row in centers)


# far from the origin (float32)


@pytest.fixture(scope="module")
def digits32():
    from sklearn.datasets import load_digits

    return torch.as_tensor(load_digits().data, dtype=torch.float32)


def inertia64(x, centers, labels) -> float:
    return (x.double() - centers.double()[labels]).square().sum().item() / len(x)


def partition_inertia(x, labels, k) -> float:
    r"""The inertia per sample of a partition, around its exact (float64) means: the
    quality of the clusters, whatever the rounding of the centres to float32."""

    x = x.double()
    counts = torch.bincount(labels, minlength=k).double()
    means = torch.zeros(k, x.shape[-1], dtype=x.dtype).index_add_(0, labels, x) / counts[:, None]
    return inertia64(x, means, labels)


@pytest.mark.parametrize("shift,scale", [(1e4, 1.0), (-3e4, 1.0), (5e3, 1024.0), (1e4, 1 / 64)])
def test_kmeans_shift_invariant_float32(digits32, shift, scale):
    r"""k-means of the digits shifted (and scaled) far from the origin, in float32, is
    k-means of the digits: the same clusters, the same inertia per sample (around 650,
    scikit-learn's 652). The pixels are integers and the scales powers of two, so that
    the shifted data is exact in float32 and only the computation differs; the
    distances, expanded around the median of the data, are then the same up to the
    rounding of sums of squares of the spread (relative 1e-6). The returned centres are
    rounded to float32 at the offset: to half a unit in the last place of the shift.
    Expanded around the origin, the distances cancel: the inertia was 1150 at a shift of
    1e4, 1.7 times too high."""

    x = digits32
    far = x * scale + shift
    centers, labels = kmeans(x, 10, generator=torch.Generator().manual_seed(0))
    far_centers, far_labels = kmeans(far, 10, generator=torch.Generator().manual_seed(0))

    expected = partition_inertia(x, labels, 10)
    assert partition_inertia(far, far_labels, 10) / scale**2 == pytest.approx(expected, rel=1e-6)
    assert (far_labels == labels).double().mean() > 0.999
    ulp = torch.finfo(torch.float32).eps * abs(shift)
    unscaled = (far_centers.double() - shift) / scale
    assert torch.allclose(unscaled, centers.double(), rtol=1e-5, atol=ulp / scale)


def test_kmeans_offset_matches_sklearn(digits32):
    r"""The best of 4 runs on the digits offset by 1e4 (float32) is within 1% of
    scikit-learn's best of 4 on the digits (float64)."""

    x = digits32
    sk = KMeans(10, n_init=4, random_state=0).fit(x.double().numpy()).inertia_ / len(x)
    centers, labels = kmeans(x + 1e4, 10, n_init=4, generator=torch.Generator().manual_seed(0))

    assert inertia64(x + 1e4, centers, labels) < 1.01 * sk


@pytest.mark.parametrize("shift", [0.0, 1e4, -1e5])
def test_assign_a_sample_to_itself_far_from_origin(shift):
    r"""A sample's nearest centre is its own copy, with points 0.04 apart at an offset
    up to 1e5 in float32 (grid of 2^-7, exact there): expanded around the origin, the
    distance to itself would carry a rounding error of eps * |x|^2, up to 6e3."""

    g = torch.Generator().manual_seed(0)
    x = shift + torch.round(128 * 0.02 * torch.randn(300, 8, generator=g)) / 128
    x = x.unique(dim=0)
    centers = x[:100]

    assert torch.equal(assign(centers, centers), torch.arange(100))
    brute = (x.double()[:, None] - centers.double()).square().sum(dim=-1)
    # the assignments are those of the exact distances, up to ties within rounding
    chosen = brute.gather(-1, assign(x, centers)[:, None]).squeeze(-1)
    assert torch.allclose(chosen, brute.min(dim=-1).values, rtol=0, atol=1e-6)


def test_kmeans_plusplus_centres_are_samples_far_from_origin():
    x = torch.randn(500, 3, generator=torch.Generator().manual_seed(1)) + 1e4
    centers = kmeans_plusplus(x, 12, torch.Generator().manual_seed(0))

    assert (centers[:, None] == x).all(dim=-1).any(dim=-1).all()  # exactly samples
    assert len(centers.unique(dim=0)) == 12


# greedy k-means++, restarts and generators


def hard_blobs() -> torch.Tensor:
    r"""30 blobs of 5 to 200 samples with overlapping neighbours (2-D)."""

    g = torch.Generator().manual_seed(0)
    centers = 10 * torch.randn(30, 2, generator=g, dtype=torch.float64)
    labels = torch.arange(30).repeat_interleave(torch.randint(5, 200, (30,), generator=g))
    return centers[labels] + torch.randn(len(labels), 2, generator=g, dtype=torch.float64)


def potential(x, centers) -> float:
    return (x[:, None] - centers).square().sum(dim=-1).min(dim=-1).values.sum().item()


def plain_plusplus(x, k, generator) -> torch.Tensor:
    r"""k-means++ with one candidate per step (Arthur et al., 2007), written directly."""

    index = [int(torch.randint(len(x), (1,), generator=generator))]
    nearest = (x - x[index[0]]).square().sum(dim=-1)
    for _ in range(1, k):
        index.append(int(torch.multinomial(nearest, 1, generator=generator)))
        nearest = torch.minimum(nearest, (x - x[index[-1]]).square().sum(dim=-1))
    return x[index]


def test_greedy_kmeans_plusplus_potential():
    r"""Over 30 seeds on a hard case, greedy k-means++ has a lower mean potential than
    plain k-means++ (measured 5255 against 6821, standard errors 61 and 120) and the
    mean potential of scikit-learn's greedy seeding (5147, standard error 60)."""

    from sklearn.cluster import kmeans_plusplus as sklearn_plusplus

    x, k, seeds = hard_blobs(), 30, range(30)
    ours = [potential(x, kmeans_plusplus(x, k, torch.Generator().manual_seed(s))) for s in seeds]
    plain = [potential(x, plain_plusplus(x, k, torch.Generator().manual_seed(s))) for s in seeds]
    sk = [
        potential(x, torch.as_tensor(sklearn_plusplus(x.numpy(), k, random_state=s)[0]))
        for s in seeds
    ]

    assert np.mean(ours) < 0.85 * np.mean(plain)
    assert np.mean(ours) == pytest.approx(np.mean(sk), rel=0.06)


def test_generator_reproducible_and_global_state_untouched(overlapping):
    x = overlapping.float()
    state = torch.get_rng_state()
    fits = {
        "random": lambda g: random_centers(x, 8, g),
        "kmeans++": lambda g: kmeans_plusplus(x, 8, g),
        "kmeans": lambda g: kmeans(x, 8, n_init=2, generator=g)[0],
    }

    for name, fit in fits.items():
        a = fit(torch.Generator().manual_seed(3))
        b = fit(torch.Generator().manual_seed(3))
        c = fit(torch.Generator().manual_seed(4))
        assert torch.equal(a, b), name  # the same code path, the same numbers
        assert not torch.equal(a, c), name

    assert torch.equal(torch.get_rng_state(), state)


def test_n_init_keeps_the_lowest_inertia():
    r"""``n_init=5`` draws the seeds of 5 single runs from the same stream and keeps
    the one of the lowest inertia."""

    x = hard_blobs()
    generator = torch.Generator().manual_seed(0)
    singles = [inertia(x, *kmeans(x, 30, generator=generator)) for _ in range(5)]
    best = inertia(x, *kmeans(x, 30, n_init=5, generator=torch.Generator().manual_seed(0)))

    assert len(set(np.round(singles, 6))) > 1  # the runs differ
    assert best == pytest.approx(min(singles), rel=1e-12)
    assert all(best <= s * (1 + 1e-12) for s in singles)


def test_bad_arguments():
    x = torch.randn(20, 2)

    with pytest.raises(ValueError, match="n_init must be an integer of at least 1"):
        kmeans(x, 2, n_init=0)
    with pytest.raises(ValueError, match="centers are given"):
        kmeans(x, 2, centers=x[:2], n_init=2)
    with pytest.raises(TypeError, match=r"torch\.Generator"):
        kmeans_plusplus(x, 2, generator=0)
    with pytest.raises(ValueError, match="k must be an integer"):
        kmeans_plusplus(x, 0)


def test_fits_build_no_graph():
    x = torch.randn(50, 2, requires_grad=True)

    assert not assign(x, x[:3]).requires_grad
    assert not kmeans_plusplus(x, 3).requires_grad
    assert not random_centers(x, 3).requires_grad
    assert not any(t.requires_grad for t in kmeans(x, 3))


def test_kmeans_not_converged_warns(overlapping):
    r"""Assignments still changing at ``iterations`` warn and say what to raise; a run
    that converges does not warn."""

    x = torch.as_tensor(overlapping)
    with pytest.warns(ConvergenceWarning, match=r"k-means .* \(iterations=1\): raise iterations"):
        kmeans(x, 8, iterations=1, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        kmeans(x, 8, iterations=300, generator=torch.Generator().manual_seed(0))


def test_kmeans_more_clusters_than_points_says_so():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, generator=generator, dtype=torch.float64).repeat(10, 1)
    with pytest.warns(ConvergenceWarning, match=r"lower k \(now 5\) .* fewer distinct samples"):
        kmeans(x, 5, generator=torch.Generator().manual_seed(0))


def test_kmeans_progress(capsys):
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    kmeans(x, 3, n_init=2, progress=True)
    err = capsys.readouterr().err
    assert "k-means restarts" in err and "k-means:" in err

    kmeans(x, 3, n_init=2, progress=False)
    kmeans(x, 3, n_init=2)  # None: not a terminal here
    assert capsys.readouterr().err == ""
    with pytest.raises(TypeError, match="progress must be"):
        kmeans(x, 3, progress="no")
