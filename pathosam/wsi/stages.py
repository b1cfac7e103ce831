"""Run the stages of a pipeline concurrently: a generator produced in a background thread.

``for item in background(source(), depth=2)`` consumes the items of ``source`` in order while a
thread produces the next ones (at most ``depth`` waiting), so reading, model and post-processing
overlap when each runs in its own stage (torch, OpenSlide, numpy and scipy release the GIL in
their heavy parts). An exception in the producer is raised in the consumer; when the consumer
stops early (exception, ``break``) the producer is stopped and joined before ``background``
returns, so no stage is left running (e.g. reading a slide that is being closed).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def background(source: Iterable[T], depth: int = 2, name: str = "pathosam-stage") -> Iterator[T]:
    """Iterate ``source`` in a background thread, at most ``depth`` items ahead of the consumer."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        it = iter(source)
        try:
            for item in it:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            put(_Failure(error))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()  # stops nested stages of a generator source

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()
