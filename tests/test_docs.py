r"""Every Python block of the documentation runs: the blocks of each page, in order, in
one namespace (as a reader pastes them), in a temporary folder. A block that cannot run
in a test is marked so in the page, ``<!-- not run: reason -->`` above it, and counted
here, page by page."""

import re
import socket

import matplotlib

matplotlib.use("Agg")  # the pages that draw figures write them to files

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from helpers import fenced_blocks, run_python_blocks

# contmix imports zuko, which turns off torch's argument validation for the whole process
# (guide/troubleshooting.md checks it): imported here, before a test records the setting
# that it restores, so that every page starts from that state, whichever test runs first
import contmix  # noqa: F401

DOCS = Path(__file__).parents[1] / "docs"
PAGES = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))

# The blocks marked "not run", page by page (every other page: none)
NOT_RUN = {"guide/getting_started.md": 1}

# Pages that take minutes, run with -m slow
SLOW = {
    "tutorials/cpmm_spiral.md": "2000 steps of a neural-ODE model (about 40 s on 1 CPU core)",
}


def check_index(ns: dict) -> None:
    # Fitted and trained: the posteriors are distributions over the 8 components
    assert ns["log_r"].shape == (1024, 8)
    assert torch.allclose(ns["log_r"].exp().sum(dim=-1), torch.ones(1024), atol=1e-5)
    assert ns["samples"].shape == (64, 2)


def check_getting_started(ns: dict) -> None:
    # EM with regularization generalizes: test log-likelihood within 15 nats of train
    assert ns["train"] - ns["test"] < 15
    assert ns["clusters"].shape == (360,)


def check_curriculum(ns: dict) -> None:
    # The conditional student is trained on the spaces of the conditional teacher
    assert ns["spaces"].u.shape == (51, 512, 2) and ns["spaces"].c.shape == (512, 1)
    assert torch.isfinite(ns["gmm"](ns["c"]).log_prob(ns["x"])).all()


def check_troubleshooting(ns: dict) -> None:
    # The number of components that BIC picks on data drawn from 3 Gaussians
    assert ns["best"] == 3


CHECKS: dict[str, Callable[[dict], None]] = {
    "index.md": check_index,
    "guide/getting_started.md": check_getting_started,
    "tutorials/curriculum.md": check_curriculum,
    "guide/troubleshooting.md": check_troubleshooting,
}


@pytest.fixture
def one_process(monkeypatch) -> Iterator[None]:
    r"""The environment of ``torchrun --nproc-per-node 1``, and no process group after."""

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
    for key, value in {**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)

    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def marks(page: str) -> list:
    return [pytest.mark.slow] if page in SLOW else []


@pytest.mark.parametrize("page", [pytest.param(p, marks=marks(p)) for p in PAGES])
def test_page_runs(page, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)  # the files the blocks write
    validate = torch.distributions.Distribution._validate_args  # a page may switch it
    monkeypatch.setattr(torch.distributions.Distribution, "_validate_args", validate)
    if page == "guide/distributed.md":
        request.getfixturevalue("one_process")

    ns, skipped = run_python_blocks(DOCS / page)

    assert len(skipped) == NOT_RUN.get(page, 0), [b.line for b in skipped]
    assert all(b.reason for b in skipped)

    if page in CHECKS:
        CHECKS[page](ns)


def test_the_lists_name_pages():
    assert set(NOT_RUN) | set(SLOW) | set(CHECKS) <= set(PAGES)
    assert "guide/troubleshooting.md" in PAGES


IMAGE = re.compile(r"!\[[^\]\n]*\]\((?P<target>[^()\s]+)\)")


@pytest.mark.parametrize("page", PAGES)
def test_images_are_whole_and_exist(page):
    # An image cut by an edit ("![...](../_static/na" followed by other text) is not an
    # image for Markdown, but text: Sphinx builds it without a warning
    for number, line in enumerate((DOCS / page).read_text().splitlines(), 1):
        images = list(IMAGE.finditer(line))
        assert line.count("![") == len(images), f"{page}, line {number}: an image cut short"
        for image in images:
            target = (DOCS / page).parent / image["target"]
            assert target.is_file(), f"{page}, line {number}: {image['target']} is missing"


def test_fenced_blocks(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# A page\n\n"
        "```python\nx = 1\n```\n\n"
        "<!-- not run: it waits for a server -->\n\n"
        "```python\nwait()\n```\n\n"
        "```console\npip install contmix\n```\n\n"
        "```{code-cell} python\n:tags: [hide-output]\ny = x + 1\n```\n\n"
        "```python\nundefined()\n```\n"
    )

    blocks = fenced_blocks(page)
    python = [b for b in blocks if b.python]

    assert [b.info for b in blocks[:4]] == ["python", "python", "console", "{code-cell} python"]
    assert [b.code for b in python] == ["x = 1\n", "wait()\n", "y = x + 1\n", "undefined()\n"]
    assert [b.reason for b in python] == [None, "it waits for a server", None, None]
    assert [b.line for b in python] == [4, 10, 19, 23]

    with pytest.raises(NameError, match="undefined"):
        run_python_blocks(page)

    page.write_text(page.read_text().replace("undefined()", "z = y"))
    ns, skipped = run_python_blocks(page)
    assert ns["z"] == 2 and [b.code for b in skipped] == ["wait()\n"]


def test_errors_name_the_page_and_line(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n```python\nx = 1\nundefined\n```\n")

    with pytest.raises(NameError) as info:
        run_python_blocks(page)

    frame = info.traceback[-1]
    assert Path(frame.path) == page and frame.lineno + 1 == 5
