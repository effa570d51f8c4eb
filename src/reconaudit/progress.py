"""One progress hook for the whole library.

Library code never prints.  Long loops call :func:`track` (for iterables) or open a
:func:`task` (for manual advancing).  By default both are silent; the command line installs a
rich-based renderer with :func:`set_progress_factory`, so every long step shows a progress bar.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, TypeVar

T = TypeVar("T")


class ProgressTask(Protocol):
    """A handle on one running progress bar."""

    def advance(self, n: float = 1.0) -> None: ...

    def update(self, *, description: str | None = None, total: float | None = None) -> None: ...


class _Silent:
    def advance(self, n: float = 1.0) -> None:  # noqa: D401 - protocol
        return None

    def update(self, *, description: str | None = None, total: float | None = None) -> None:
        return None


ProgressFactory = Callable[[str, float | None], contextlib.AbstractContextManager[ProgressTask]]


@contextlib.contextmanager
def _silent_factory(description: str, total: float | None) -> Iterator[ProgressTask]:
    yield _Silent()


_factory: ProgressFactory = _silent_factory


def set_progress_factory(factory: ProgressFactory | None) -> None:
    """Install a renderer: ``factory(description, total)`` returns a context manager yielding a task.

    Pass ``None`` to restore the silent default.
    """
    global _factory
    _factory = factory if factory is not None else _silent_factory


def task(description: str, total: float | None = None) -> contextlib.AbstractContextManager[ProgressTask]:
    """Open a progress bar named ``description`` with ``total`` units (``None``: unknown)."""
    return _factory(description, total)


def track(iterable: Iterable[T], description: str, total: float | None = None) -> Iterator[T]:
    """Yield from ``iterable`` while advancing a progress bar by one per item."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with task(description, total) as t:
        for item in iterable:
            yield item
            t.advance(1)
