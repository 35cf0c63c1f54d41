r"""Tests for contmix.curriculum."""

from typing import ClassVar

import pytest
import torch
import zuko

from torch.distributions import Distribution, constraints

from contmix import GMM, MFA, Curriculum
from contmix.curriculum import Settings, Spaces


@pytest.fixture(autouse=True)
def one_thread():
    r"""Tiny networks run faster on one thread (and the seeds fix the results)."""

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_cnf(features=2, context=0, atol=1e-5, rtol=1e-4, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    cnf = zuko.flows.CNF(features, context, hidden_features=(16, 16), atol=atol, rtol=rtol)
    return cnf.to(dtype)


def bound(atol, rtol, u):
    r"""Ten times the solver's local tolerance at the scale of the solution."""

    return 10 * (atol + rtol * u.abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ends_are_latent_and_data(dtype):
    cnf = make_cnf(dtype=dtype)
    x = 2 * torch.randn(50, 2, dtype=dtype)
    spaces = Curriculum(cnf).spaces(x, steps=6)

    assert spaces.u.shape == (6, 50, 2) and spaces.u.dtype == dtype
    assert torch.equal(spaces.v, torch.linspace(1, 0, 6, dtype=dtype))
    assert torch.equal(spaces.u[-1], x)

    with torch.no_grad():
        z = cnf().transform(x)

    assert (spaces.u[0] - z).abs().max() < bound(1e-5, 1e-4, z)
    assert (z - x).abs().max() > 0.1  # the map does something


def test_one_solve_equals_separate_solves():
    x = 2 * torch.randn(60, 2, dtype=torch.float64)
    errors = []

    for atol, rtol in [(1e-6, 1e-5), (1e-8, 1e-7)]:
        curriculum = Curriculum(make_cnf(atol=atol, rtol=rtol, dtype=torch.float64))
        spaces = curriculum.spaces(x, steps=11, chunk_size=25)
        separate = torch.stack([curriculum.transform(x, v) for v in spaces.v.tolist()])
        error = (spaces.u - separate).abs().max()

        assert error < bound(atol, rtol, separate)
        errors.append(error)

    assert errors[1] < errors[0] / 10  # both converge to the same solution


def test_augmentation_is_shared_across_spaces():
    cnf = make_cnf()
    x = torch.randn(400, 2) * torch.tensor([1.0, 5.0])
    curriculum = Curriculum(cnf)
    spaces = curriculum.spaces(x, steps=3, jitter=0.1)
    noise = (spaces.u[-1] - x) / x.std(dim=0)

    assert torch.allclose(noise.std(dim=0), torch.full((2,), 0.1), rtol=0.15)

    latent = curriculum.transform(spaces.u[-1], 1.0)  # the spaces are those of x + noise

    assert (spaces.u[0] - latent).abs().max() < bound(1e-5, 1e-4, latent)


class Probe(zuko.lazy.LazyDistribution):
    r"""A unit Gaussian with a learnable mean that records the inputs of its log_prob."""

    def __init__(self, features=2):
        super().__init__()
        self.loc = torch.nn.Parameter(torch.zeros(features))
        self.inputs = []

    def forward(self, c=None):
        return Recorder(self)


class Recorder(Distribution):
    arg_constraints: ClassVar[dict] = {}
    support = constraints.real_vector

    def __init__(self, probe):
        super().__init__(event_shape=probe.loc.shape, validate_args=False)
        self.probe = probe

    def log_prob(self, x):
        self.probe.inputs.append(x.detach().clone())
        return -((x - self.probe.loc) ** 2).sum(dim=-1) / 2


def test_schedule_visits_spaces_in_order_and_ends_on_data():
    cnf = make_cnf()
    x = torch.randn(40, 2)
    spaces = Curriculum(cnf).spaces(x, steps=5)
    probe, visits = Probe(), []

    Curriculum(cnf).train(
        probe,
        spaces,
        settings=Settings(epochs_per_space=2, finetune_epochs=3, batch_size=16, noise=0.0),
        callbacks=[lambda model, info: visits.append((info["epoch"], info["space"]))],
        progress=False,
    )

    epochs = [[] for _ in range(5 * 2 + 3)]
    for (epoch, space), batch in zip(visits, probe.inputs, strict=True):
        epochs[epoch].append((space, batch))

    order = [space for space in range(5) for _ in range(2)] + [4, 4, 4]

    for expected, batches in zip(order, epochs, strict=True):
        assert {space for space, _ in batches} == {expected}
        seen = torch.cat([batch for _, batch in batches])  # one pass over that space
        target = spaces.u[expected]
        assert torch.equal(seen[seen[:, 0].argsort()], target[target[:, 0].argsort()])

    assert torch.equal(spaces.u[order[-1]], x)


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_noise_on_inputs(noise):
    spaces = Spaces(torch.linspace(1, 0, 3), torch.arange(3.0)[:, None, None].expand(3, 500, 2))
    probe = Probe()

    settings = Settings(finetune_epochs=0, batch_size=500, noise=noise)
    Curriculum(make_cnf()).train(probe, spaces, settings=settings, progress=False)

    for t, batch in enumerate(probe.inputs):
        assert torch.allclose(batch.mean(), torch.tensor(float(t)), atol=0.01)
        assert torch.allclose(batch.std(), torch.tensor(noise), atol=0.005)


def run(spaces, path=None, callbacks=(), model_seed=1, scheduler=None):
    torch.manual_seed(model_seed)
    gmm = GMM(features=2, components=3)
    torch.manual_seed(0)
    settings = Settings(finetune_epochs=3, lr=1e-2, batch_size=16, noise=0.01, scheduler=scheduler)
    history = Curriculum(make_cnf()).train(
        gmm, spaces, settings=settings, callbacks=callbacks, checkpoint=path, progress=False
    )
    return gmm, history


def cosine(optimizer, epochs):
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs, eta_min=1e-4)


def test_regularizer_is_added_to_the_loss():
    # a heavy pull of the means to (5, 5) moves them there; the history includes it
    x = torch.randn(3, 64, 2)
    spaces = Spaces(torch.linspace(1, 0, 3), x)
    seen = []

    def pull(model, d, xb):
        seen.append((model, d.event_shape, xb.shape))
        return 100 * (d.base.loc - 5).square().sum()

    gmm, free = run(spaces)
    torch.manual_seed(1)
    pulled = GMM(features=2, components=3)
    settings = Settings(finetune_epochs=20, lr=1e-1, batch_size=16, regularizer=pull)
    history = Curriculum(make_cnf()).train(pulled, spaces, settings=settings, progress=False)

    assert all(m is pulled and e == (2,) and s[-1] == 2 for m, e, s in seen)
    assert len(seen) == (3 + 20) * 4  # every step
    assert torch.allclose(pulled.phi[1], torch.tensor(5.0), atol=0.5)
    assert not torch.allclose(gmm.phi[1], torch.tensor(5.0), atol=1.0)
    assert history[-1] > free[-1] + 3  # the likelihood of data around 0, means at 5


def test_learning_rate_schedule():
    spaces = Curriculum(make_cnf()).spaces(torch.randn(40, 2), steps=4)
    state = {}

    def spy(optimizer, epochs):
        state["optimizer"], state["epochs"] = optimizer, epochs
        return cosine(optimizer, epochs)

    constant, _ = run(spaces)
    scheduled, _ = run(spaces, scheduler=spy)

    assert state["epochs"] == 4 + 3  # the whole schedule
    assert state["optimizer"].param_groups[0]["lr"] == pytest.approx(1e-4)  # at its floor
    assert not torch.equal(constant.phi[1], scheduled.phi[1])


@pytest.mark.parametrize("scheduler", [None, cosine])
def test_resume_gives_the_same_model(tmp_path, scheduler):
    cnf = make_cnf()
    spaces = Curriculum(cnf).spaces(torch.randn(40, 2), steps=4)
    reference, history = run(spaces, scheduler=scheduler)

    def interrupt(model, info):
        if info["step"] == 10:  # in the fourth epoch (three batches per epoch)
            raise KeyboardInterrupt

    path = tmp_path / "checkpoint.pt"
    with pytest.raises(KeyboardInterrupt):
        run(spaces, path, callbacks=[interrupt], scheduler=scheduler)

    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 3

    # another start, overwritten by the checkpoint
    resumed, resumed_history = run(spaces, path, model_seed=2, scheduler=scheduler)

    assert resumed_history == history
    for a, b in zip(reference.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)

    torch.manual_seed(1)
    other = GMM(features=2, components=3)
    assert not torch.equal(other.phi[1], reference.phi[1])  # training changed the model


def test_checkpoint_of_another_run(tmp_path):
    curriculum = Curriculum(make_cnf())
    path = tmp_path / "checkpoint.pt"
    run(curriculum.spaces(torch.randn(40, 2), steps=3), path)

    with pytest.raises(ValueError, match="another run"):
        run(curriculum.spaces(torch.randn(40, 2), steps=4), path)


def test_context():
    torch.manual_seed(0)
    c = torch.randint(0, 2, (200, 1)).float()
    x = 0.3 * torch.randn(200, 2) + 3 * c * torch.tensor([1.0, -1.0])
    cnf = make_cnf(context=1)
    curriculum = Curriculum(cnf, context=1)
    spaces = curriculum.spaces(x, c, steps=5)

    with torch.no_grad():
        z = cnf(c).transform(x)

    assert torch.equal(spaces.c, c) and torch.equal(spaces.u[-1], x)
    assert (spaces.u[0] - z).abs().max() < bound(1e-5, 1e-4, z)
    assert (spaces.u[2] - curriculum.transform(x, 0.5, c)).abs().max() < bound(1e-5, 1e-4, z)

    torch.manual_seed(0)
    gmm = GMM(features=2, context=1, components=2, hidden_features=(16,))
    settings = Settings(finetune_epochs=30, lr=1e-2, batch_size=50)
    curriculum.train(gmm, spaces, settings=settings, progress=False)

    with torch.no_grad():
        right = gmm(c).log_prob(x).mean()
        wrong = gmm(1 - c).log_prob(x).mean()

    assert right > -0.5  # the truth: -log(2 pi e) - 2 log 0.3 ~ -0.43
    assert right > wrong + 3  # the context is used


@pytest.mark.parametrize(
    "make_student",
    [
        lambda: MFA(features=2, components=4),
        lambda: zuko.flows.NSF(2, transforms=1, hidden_features=(16,)),
    ],
)
def test_any_lazy_distribution_as_student(make_student):
    torch.manual_seed(0)
    x = torch.randn(200, 2) * torch.tensor([2.0, 0.5]) + 1
    curriculum = Curriculum(make_cnf())
    spaces = curriculum.spaces(x, steps=6)
    student = make_student()

    with torch.no_grad():
        before = student().log_prob(x).mean()

    settings = Settings(finetune_epochs=20, lr=1e-2, batch_size=50)
    history = curriculum.train(student, spaces, settings=settings, progress=False)

    with torch.no_grad():
        after = student().log_prob(x).mean()

    assert len(history) == 26
    assert after > before + 0.5
    assert after > -3.0  # the truth: -log(2 pi e) - log(2 * 0.5) ~ -2.84


def test_gaussian_space_initialization():
    torch.manual_seed(0)
    spaces = Spaces(
        torch.linspace(1, 0, 2), torch.randn(2, 300, 2) + torch.tensor([[[5.0]], [[0.0]]])
    )
    gmm = GMM(features=2, components=2)
    curriculum = Curriculum(make_cnf())

    seen = []

    def first_step(model, info):
        if info["step"] == 0:
            with torch.no_grad():
                seen.append(model().mean.clone())

    settings = Settings(finetune_epochs=0, lr=1e-6, batch_size=300)
    curriculum.train(gmm, spaces, settings=settings, callbacks=[first_step], progress=False)

    assert torch.allclose(seen[0], torch.full((2,), 5.0), atol=0.2)  # fitted on u_1, not u_0


def test_save_and_load(tmp_path):
    c = torch.randn(30, 3)
    curriculum = Curriculum(make_cnf(context=3), context=3)
    spaces = curriculum.spaces(torch.randn(30, 2), c, steps=4, jitter=0.01)
    spaces.save(tmp_path / "spaces.pt")
    loaded = Spaces.load(tmp_path / "spaces.pt")

    assert torch.equal(loaded.v, spaces.v) and torch.equal(loaded.u, spaces.u)
    assert torch.equal(loaded.c, spaces.c) and loaded.meta == spaces.meta

    torch.save({"u": spaces.u}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="lacks"):
        Spaces.load(tmp_path / "other.pt")


def test_fit_teacher():
    torch.manual_seed(0)
    x = torch.randn(256, 2) * 0.5 + torch.tensor([2.0, -1.0])
    cnf = make_cnf(atol=1e-4, rtol=1e-3)

    with torch.no_grad():
        before = cnf().log_prob(x).mean()

    history = Curriculum(cnf).fit_teacher(x, epochs=5, batch_size=64, lr=1e-2, progress=False)

    with torch.no_grad():
        after = cnf().log_prob(x).mean()

    assert len(history) == 5 and after > before + 1


def test_fit_teacher_resumes(tmp_path):
    r"""A teacher trained with the Hutchinson trace (random draws at every step) and
    interrupted, then resumed from its checkpoint, is the teacher of an uninterrupted
    run."""

    x = torch.randn(96, 2)

    def fit(checkpoint=None, optimizer=torch.optim.Adam, seed=0):
        cnf = make_cnf(seed=seed)
        cnf.transform.exact = False
        torch.manual_seed(1)
        curriculum = Curriculum(cnf)
        history = curriculum.fit_teacher(
            x,
            epochs=4,
            batch_size=32,
            lr=1e-2,
            optimizer=optimizer,
            progress=False,
            checkpoint=checkpoint,
        )
        return cnf, history

    class Interrupted(torch.optim.Adam):
        def step(self, closure=None):
            self.steps = getattr(self, "steps", 0) + 1
            if self.steps == 8:  # in the third epoch (three batches per epoch)
                raise KeyboardInterrupt
            return super().step(closure)

    reference, history = fit()
    path = tmp_path / "teacher.pt"
    with pytest.raises(KeyboardInterrupt):
        fit(path, Interrupted)

    assert torch.load(path, weights_only=True)["epoch"] == 2

    resumed, resumed_history = fit(path, seed=2)  # another start, overwritten

    assert resumed_history == history and len(history) == 4
    for a, b in zip(reference.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(next(make_cnf().parameters()), next(reference.parameters()))


def test_spaces_in_half_precision():
    r"""Spaces stored in float16 are the float32 spaces rounded, and training on them
    casts each batch to the model's dtype: the same model up to that rounding."""

    torch.manual_seed(0)
    x = torch.randn(60, 2) * torch.tensor([1.0, 3.0])
    curriculum = Curriculum(make_cnf())
    full = curriculum.spaces(x, steps=4)
    half = curriculum.spaces(x, steps=4, dtype=torch.float16)

    assert half.u.dtype == torch.float16 and half.v.dtype == torch.float32
    assert torch.allclose(half.u.float(), full.u, rtol=2**-11, atol=2**-25)

    models = [run(spaces)[0] for spaces in (full, half)]
    for a, b in zip(*(m.parameters() for m in models), strict=True):
        assert a.dtype == torch.float32 and torch.allclose(a, b, atol=1e-2)

    with pytest.raises(TypeError, match="floating-point"):
        curriculum.spaces(x, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"range of torch\.float16"):
        Curriculum(make_cnf()).spaces(x * 1e5, steps=3, dtype=torch.float16)


def test_errors():
    curriculum = Curriculum(make_cnf())

    with pytest.raises(TypeError, match=r"zuko\.flows\.CNF"):
        Curriculum(zuko.flows.NSF(2))
    with pytest.raises(ValueError, match="shape"):
        curriculum.spaces(torch.randn(10, 3))
    with pytest.raises(TypeError, match="float64"):
        curriculum.spaces(torch.randn(10, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="no context"):
        curriculum.spaces(torch.randn(10, 2), torch.randn(10, 1))
    with pytest.raises(ValueError, match="at least 2"):
        curriculum.spaces(torch.randn(10, 2), steps=1)
    with pytest.raises(ValueError, match="decrease"):
        Spaces(torch.linspace(0, 1, 3), torch.randn(3, 10, 2))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        curriculum.transform(torch.randn(10, 2), 1.5)
    with pytest.raises(TypeError, match="LazyDistribution"):
        curriculum.train(torch.nn.Linear(2, 2), torch.randn(10, 2))
    with pytest.raises(TypeError, match=r"settings=Settings"):
        curriculum.train(GMM(features=2, components=2), torch.randn(10, 2), Settings())
    with pytest.raises(TypeError, match=r"settings must be a contmix.curriculum.Settings"):
        curriculum.train(GMM(features=2, components=2), torch.randn(10, 2), settings={})
    with pytest.raises(ValueError, match=r"epochs_per_space must be at least 1"):
        Settings(epochs_per_space=0)


@pytest.mark.parametrize("built, given", [(0, 2), (2, 0), (2, 3)])
def test_context_is_checked_by_a_call(built, given):
    with pytest.raises(ValueError, match=rf"does not take 2 features and {given} context"):
        Curriculum(make_cnf(context=built), context=given)


def test_augment_is_the_former_name_of_jitter():
    curriculum = Curriculum(make_cnf())
    x = torch.randn(40, 2)

    torch.manual_seed(0)
    with pytest.warns(FutureWarning, match=r"now spaces\(jitter=a\)"):
        old = curriculum.spaces(x, steps=3, augment=0.1)
    torch.manual_seed(0)
    new = curriculum.spaces(x, steps=3, jitter=0.1)

    assert torch.equal(old.u, new.u) and old.meta == new.meta == {**new.meta, "jitter": 0.1}
