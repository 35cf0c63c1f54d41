r"""Helpers shared by the test modules (importable as ``helpers``: pytest puts the
folder of the tests on the path)."""

import re

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from torch import Tensor


def snapshot(module: torch.nn.Module) -> dict[str, Tensor]:
    r"""A copy of the module's state."""

    return {k: v.clone() for k, v in module.state_dict().items()}


def changed(module: torch.nn.Module, before: dict[str, Tensor]) -> list[str]:
    r"""The entries of the module's state that differ from a :func:`snapshot`."""

    after = module.state_dict()
    assert after.keys() == before.keys(), "the module's state has other entries"
    return [k for k, v in after.items() if not torch.equal(v, before[k])]


@contextmanager
def unchanged(*modules: torch.nn.Module) -> Iterator[None]:
    r"""Asserts that the state of the modules after the block is the one before it:
    e.g. ``with unchanged(model), pytest.raises(ValueError): model.initialize(bad)``."""

    before = [snapshot(module) for module in modules]
    yield
    for module, state in zip(modules, before, strict=True):
        assert not changed(module, state), f"{type(module).__name__} changed"


def train(module: torch.nn.Module, loss: Callable[[], Tensor], steps: int, lr: float) -> Tensor:
    r"""Takes ``steps`` steps of Adam on ``loss()`` over the module's parameters and
    returns the last loss (that of the parameters before the last step)."""

    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    for _ in range(steps):
        value = loss()
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    return value


# A fenced block of Markdown (MyST): ```info, its options (":key: value" lines of a
# directive), its code and the closing fence; an HTML comment "<!-- not run: reason -->"
# on the lines just above it marks a block that the tests do not run, visibly.
FENCE = re.compile(
    r"^(?:<!--\s*not run:\s*(?P<reason>.*?)\s*-->\s*\n)?"
    r"```(?P<info>[^\n]*)\n(?P<code>.*?)^```[ \t]*$",
    re.DOTALL | re.MULTILINE,
)

# The info strings of Python blocks: a plain fence, MyST's code-block and code-cell
PYTHON = re.compile(r"^(?:python|\{code-block\}\s+python|\{code-cell\}\s+(?:python|ipython3?))$")


@dataclass(frozen=True)
class Block:
    r"""A fenced code block of a Markdown page."""

    info: str  # what follows the opening fence, e.g. "python" or "{code-cell} python"
    code: str  # the code, without the options of a directive
    line: int  # the line of the page where the code starts (1-based)
    reason: str | None  # why it is not run, when marked so

    @property
    def python(self) -> bool:
        return PYTHON.match(self.info) is not None


def fenced_blocks(path: Path) -> list[Block]:
    r"""Returns the fenced code blocks of a Markdown file, in order."""

    text = path.read_text()
    found = []

    for match in FENCE.finditer(text):
        code = match["code"]
        if match["info"].startswith("{"):  # a directive: drop its ":option:" lines
            code = re.sub(r"\A(?:[ \t]*:[\w-]+:[^\n]*\n)+", "", code)
        line = text.count("\n", 0, match.end("code") - len(code)) + 1
        found.append(Block(match["info"].strip(), code, line, match["reason"]))

    return found


def run_python_blocks(path: Path, seed: int = 0) -> tuple[dict, list[Block]]:
    r"""Runs the Python blocks of a Markdown file that are not marked "not run", one
    after the other in one namespace, as a reader would paste them; returns the namespace
    and the blocks left out. An error names the page and the line of the block."""

    torch.manual_seed(seed)
    namespace = {"__name__": "__main__"}
    skipped = []

    for block in filter(lambda b: b.python, fenced_blocks(path)):
        if block.reason is not None:
            skipped.append(block)
            continue
        # blank lines up to the code, so that tracebacks give the page's line numbers
        source = "\n" * (block.line - 1) + block.code
        exec(compile(source, str(path), "exec"), namespace)

    return namespace, skipped
