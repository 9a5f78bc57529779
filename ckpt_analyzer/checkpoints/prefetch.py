"""Read the next item in a background thread while the current one is processed."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    pass
from .files import T

R = TypeVar("R")


def prefetch(items: Iterable[T], load: Callable[[T], R], depth: int = 1) -> Iterator[tuple[T, R | BaseException]]:
    """Yield ``(item, load(item))`` while the next ``depth`` items load in a background thread.

    Errors are yielded in place of the result so the caller can skip a bad item."""
    def safe(item: T) -> R | BaseException:
        try:
            return load(item)
        except Exception as exc:  # handed to the consumer
            return exc

    pending: deque[tuple[T, Future[R | BaseException]]] = deque()
    it = iter(items)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-prefetch") as pool:
        for item in it:
            pending.append((item, pool.submit(safe, item)))
            if len(pending) > depth:
                done, fut = pending.popleft()
                yield done, fut.result()
        while pending:
            done, fut = pending.popleft()
            yield done, fut.result()
