r"""Fits over an iterable of batches (data larger than memory) against the same fits on
the concatenated tensor: same parameters within float tolerance, same iterations and
lower bounds, for every strategy; errors before anything changes."""

import numpy as np
import pytest
import torch

from data import blobs as make_blobs
from torch.utils.data import DataLoader, Dataset

from contmix import GMM, MFA, HierarchicalMFA
from contmix.cluster import kmeans, kmeans_plusplus, labeller, random_centers, reference
from contmix.distributed import accumulate, batches, check_batches, mean, samples
from contmix.em import fit_gmm, fit_mfa, gmm_log_likelihood, gmm_m_step, mfa_log_likelihood
from contmix.report import ConvergenceWarning


def blobs(n: int = 600, d: int = 3, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    r"""Three overlapping blobs far from the origin, in a fixed random order."""

    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[-3.0, 0, 1], [3, 1, -1], [0, 4, 0]])[:, :d] + 100
    x, _ = make_blobs(centers, n // 3, seed=g, dtype=torch.float32)

    return x[torch.randperm(n, generator=g)].to(dtype)


class Rows(Dataset):
    r"""Contiguous batches of the rows of a (memory-mapped) array, one item a batch."""

    def __init__(self, array: np.ndarray, size: int) -> None:
        self.array, self.size = array, size

    def __len__(self) -> int:
        return -(-len(self.array) // self.size)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.array[i * self.size : (i + 1) * self.size]))


def memmap(x: torch.Tensor, path) -> DataLoader:
    r"""A DataLoader over a memory-mapped copy of x on disk, in batches of 128 rows."""

    array = np.lib.format.open_memmap(path / "x.npy", "w+", np.float32, tuple(x.shape))
    array[:] = x.numpy()
    array.flush()

    return DataLoader(Rows(np.load(path / "x.npy", mmap_mode="r"), 128), batch_size=None)


def assert_same_fit(a, b, ra, rb, atol=1e-4) -> None:
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=atol)
    assert (ra.strategy, ra.iterations, ra.converged) == (rb.strategy, rb.iterations, rb.converged)
    np.testing.assert_allclose(ra.lower_bounds, rb.lower_bounds, rtol=1e-5)
    assert ra.lower_bound == pytest.approx(rb.lower_bound, rel=1e-5)


def test_helpers():
    x = blobs(51)
    parts = list(x.split(16))

    assert next(iter(batches(x))) is x and list(batches(parts)) == parts
    assert samples(parts) == 51
    torch.testing.assert_close(mean(parts), x.double().mean(dim=0))
    assert torch.equal(reference(parts), reference(x))
    (total,) = accumulate(lambda b: (b.sum(dim=0, dtype=torch.float64),), parts)
    torch.testing.assert_close(total, x.double().sum(dim=0))
    check_batches(parts)

    with pytest.raises(TypeError, match="re-iterable"):
        check_batches(iter(parts))
    with pytest.raises(TypeError, match="iterable of batches"):
        check_batches(3)
    with pytest.raises(ValueError, match="no batch"):
        accumulate(lambda b: (b,), [])


def test_reference_subsample():
    x = torch.randn(5000, 2) ** 3  # more than 1024 samples: a regular subsample
    assert torch.equal(reference(x.split(333)), reference(x))


@pytest.mark.parametrize("size", [1, 37, 600])
def test_clustering_matches_tensor(size):
    x, g = blobs(), torch.Generator()
    parts = list(x.split(size))

    for f in (
        lambda d: kmeans_plusplus(d, 5, g.manual_seed(1)),
        lambda d: random_centers(d, 5, g.manual_seed(1)),
        lambda d: kmeans(d, 5, n_init=2, generator=g.manual_seed(1))[0],
    ):
        torch.testing.assert_close(f(parts), f(x))

    centers, labels = kmeans(x, 5, generator=g.manual_seed(2))
    assert kmeans(parts, 5, generator=g.manual_seed(2))[1] is None
    label = labeller(parts, centers)
    assert torch.equal(torch.cat([label(b) for b in parts]), labels)


def test_kmeans_reseeds_empty_cluster():
    x = blobs()
    start = torch.cat((x[:2], torch.full((1, 3), 1e3)))  # a centre that no sample is near
    centers, labels = kmeans(x, 3, centers=start)
    assert labels.bincount(minlength=3).min() > 0

    torch.testing.assert_close(kmeans(list(x.split(50)), 3, centers=start)[0], centers)


def test_kmeans_warns_over_batches():
    x = blobs()
    with pytest.warns(ConvergenceWarning, match="k-means did not converge in 1 iteration"):
        kmeans(list(x.split(100)), 3, iterations=1, generator=torch.Generator().manual_seed(0))


@pytest.mark.filterwarnings("ignore::contmix.report.ConvergenceWarning")  # the same either way
@pytest.mark.parametrize("cov", ["full", "diagonal", "spherical"])
@pytest.mark.parametrize("tied", [False, True])
def test_low_level_gmm(cov, tied):
    x = blobs(dtype=torch.float64)
    parts = list(x.split(70))
    weights = torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    soft = lambda b: ((b - 100) @ weights).softmax(dim=-1)
    resp = soft(x)

    m_step = gmm_m_step(parts, soft, cov, tied)
    for p, q in zip(m_step, gmm_m_step(x, resp, cov, tied), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-10)

    expected = fit_gmm(x, *m_step, cov, tied, tol=1e-6)
    actual = fit_gmm(parts, *m_step, cov, tied, tol=1e-6)
    for p, q in zip(actual[:3], expected[:3], strict=True):
        torch.testing.assert_close(p, q, rtol=1e-8, atol=1e-8)
    assert len(actual.history) == len(expected.history) and actual.converged == expected.converged
    torch.testing.assert_close(actual.history, expected.history, rtol=1e-10, atol=0)

    ll = gmm_log_likelihood(parts, *expected[:3], cov)
    torch.testing.assert_close(ll, gmm_log_likelihood(x, *expected[:3], cov))

    with pytest.raises(TypeError, match="function of a batch"):
        gmm_m_step(parts, resp, cov, tied)


@pytest.mark.filterwarnings("ignore::contmix.report.ConvergenceWarning")
def test_low_level_mfa():
    x = blobs(dtype=torch.float64)
    parts = list(x.split(70))
    g = torch.Generator().manual_seed(0)
    start = (
        torch.zeros(3, dtype=torch.float64),
        x[:3].clone(),
        torch.randn(3, 3, 1, generator=g, dtype=torch.float64),
        torch.ones(3, 3, dtype=torch.float64),
    )

    expected, actual = fit_mfa(x, *start, tol=1e-6), fit_mfa(parts, *start, tol=1e-6)
    for p, q in zip(actual[:4], expected[:4], strict=True):
        torch.testing.assert_close(p, q, rtol=1e-8, atol=1e-8)
    assert len(actual.history) == len(expected.history)
    torch.testing.assert_close(actual.history, expected.history, rtol=1e-10, atol=0)
    torch.testing.assert_close(
        mfa_log_likelihood(parts, *expected[:4]), mfa_log_likelihood(x, *expected[:4])
    )

    resp = torch.ones(len(x), 3, dtype=torch.float64) / 3
    with pytest.raises(TypeError, match="function of a batch"):
        fit_mfa(parts, *start, resp=resp)


@pytest.mark.parametrize("strategy", ["random", "kmeans", "kmeans++", "em"])
@pytest.mark.parametrize("cov", ["full", "diagonal", "spherical"])
def test_gmm_initialize(tmp_path, strategy, cov):
    x = blobs()
    a, b = GMM(3, components=3, covariance_type=cov), GMM(3, components=3, covariance_type=cov)
    g = torch.Generator()

    ra = a.initialize(x, strategy, n_init=2, generator=g.manual_seed(0), progress=False)
    rb = b.initialize(memmap(x, tmp_path), strategy, n_init=2, generator=g.manual_seed(0))

    assert_same_fit(a, b, ra, rb)
    assert b.fit_report is rb and rb.n_init == 2 and rb.restart == ra.restart


def test_gmm_em(tmp_path):
    x = blobs()
    a, b = GMM(3, components=3, tied=True), GMM(3, components=3, tied=True)
    a.initialize(x, "random", generator=torch.Generator().manual_seed(3))
    b.load_state_dict(a.state_dict())

    assert_same_fit(a, b, a.em(x), b.em(memmap(x, tmp_path)))

    with pytest.warns(ConvergenceWarning, match="max_iter=1"):
        report = b.em(list(x.split(100)), max_iter=1, progress=True)
    assert not report.converged and report.iterations == 1


@pytest.mark.parametrize("strategy", ["random", "kmeans", "kmeans++", "fa", "em"])
def test_mfa_initialize(tmp_path, strategy):
    x = blobs()
    a, b = MFA(3, components=3, rank=1), MFA(3, components=3, rank=1)
    g = torch.Generator()

    ra = a.initialize(x, strategy, generator=g.manual_seed(0))
    rb = b.initialize(memmap(x, tmp_path), strategy, generator=g.manual_seed(0))

    assert_same_fit(a, b, ra, rb)


def test_mfa_em():
    x = blobs()
    a, b = MFA(3, components=3, rank=2), MFA(3, components=3, rank=2)
    a.initialize(x, "kmeans", generator=torch.Generator().manual_seed(3))
    b.load_state_dict(a.state_dict())

    assert_same_fit(a, b, a.em(x), b.em(DataLoader(x, batch_size=64)))


@pytest.mark.parametrize("model", [GMM(3, components=3), MFA(3, components=3)])
def test_bad_batches_change_nothing(model):
    x = blobs()
    before = [p.detach().clone() for p in model.parameters()]
    nan = x[:100].clone()
    nan[7, 1] = float("nan")

    with pytest.raises(TypeError, match="re-iterable"):
        model.initialize(b for b in x.split(100))
    with pytest.raises(ValueError, match=r"batch 1 of x: x must have shape \(N, 3\)"):
        model.initialize([x[:100], x[:100, :2]])
    with pytest.raises(ValueError, match="batch 2 of x: x contains NaN"):
        model.em([x[:100], x[100:200], nan])
    with pytest.raises(TypeError, match="batch 0 of x: x must be float32 or float64"):
        model.em([x.long()])
    with pytest.raises(ValueError, match="at least 4 are needed"):
        model.initialize([x[:2], x[2:3]])
    with pytest.raises(ValueError, match="The variance of x is at most"):
        model.initialize([torch.ones(10, 3), torch.ones(10, 3)])

    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)


def test_hierarchical_needs_a_tensor():
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        HierarchicalMFA(3, groups=2, components=2).initialize(list(blobs().split(100)))
