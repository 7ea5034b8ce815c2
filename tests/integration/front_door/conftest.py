"""One private stack (`make up`'s whole stack, tests/stack_support.py) for the front
door's modules instead of one each: it comes up before the first and goes down right
after the last (package scope: this folder is a package for that), a `make up` saved
per module.

What a module leaves behind must not change what another sees, so they run in an order
fixed here (the rest in the order collected):
- test_readme.py first: it runs the README's walkthrough against a fresh stack (alice's
  exact cash and position, the first trades' candles) and checks that nothing traded
  before it;
- test_webapp.py last: its browsers halt ITC, re-open it and close it (new orders refused
  until a resume), and its simulator leaves TCS's book full of quotes.
In between, each module trades symbols or users of its own or cancels what it leaves
resting, and after each the stack must be whole again (test_client kills gateways).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stack_support import PrivateStack, brought_up

HERE = Path(__file__).parent
FIRST, LAST = "test_readme.py", "test_webapp.py"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """This package's tests together, where the first of them was (one stack-up, even
    when a hook before this one interleaved them), FIRST's module first, LAST's last."""
    ours = [item for item in items if item.path.parent == HERE]
    if not ours:
        return
    at = items.index(ours[0])
    rest = [item for item in items if item.path.parent != HERE]
    rank = {FIRST: 0, LAST: 2}
    ours.sort(key=lambda item: rank.get(item.path.name, 1))  # stable: each module's own order
    items[:] = rest[:at] + ours + rest[at:]


@pytest.fixture(scope="package")
def shared_stack() -> Iterator[PrivateStack]:
    """The package's private stack, brought up from nothing once."""
    yield from brought_up()


@pytest.fixture(name="stack_up", scope="module")
def stack_up_fixture(shared_stack: PrivateStack) -> Iterator[PrivateStack]:
    """The shared stack for one module, whole again when the module is done (its killed
    or restarted processes back and ready) before the next module gets it."""
    yield shared_stack
    shared_stack.whole()
