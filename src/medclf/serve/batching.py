"""Micro-batching of concurrent prediction requests: requests that arrive within a short
window are predicted in one forward pass (the dynamic batching of Triton, TorchServe and
BentoML, here with an :class:`asyncio.Queue`)."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class _Item:
    images: np.ndarray
    future: asyncio.Future


@dataclass
class MicroBatcher:
    """Collects the images of concurrent requests and predicts them together.

    The first waiting request opens a window of ``window_ms`` milliseconds; every request
    that arrives in it joins the batch until it holds ``max_batch`` images; then
    ``predict`` runs once, in a worker thread, on the concatenated images, and each request
    gets its own rows back. While a batch is predicted, the next one fills up. A request
    with more than ``max_batch`` images is predicted alone.

    Args:
        predict: ``(N, C, *spatial)`` float32 images -> ``(N, num_classes)`` probabilities.
        window_ms: how long the first request of a batch waits for others, milliseconds.
        max_batch: most images in one forward pass.
        on_batch: called with the size of every batch predicted (for the metrics).
    """

    predict: Callable[[np.ndarray], np.ndarray]
    window_ms: float = 5.0
    max_batch: int = 32
    on_batch: Callable[[int], None] | None = None
    _queue: asyncio.Queue | None = field(default=None, init=False, repr=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False, repr=False)
    _task: asyncio.Task | None = field(default=None, init=False, repr=False)

    async def submit(self, images: np.ndarray) -> np.ndarray:
        """Probabilities ``(n, num_classes)`` of ``images`` ``(n, C, *spatial)``; raises what
        ``predict`` raised for the batch."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():  # a new event loop (tests)
            self._loop, self._queue = loop, asyncio.Queue()
            self._task = loop.create_task(self._worker())
        future = loop.create_future()
        await self._queue.put(_Item(np.asarray(images, dtype=np.float32), future))
        return await future

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        carried: _Item | None = None
        while True:
            first = carried or await queue.get()
            carried = None
            items, count = [first], len(first.images)
            deadline = loop.time() + self.window_ms / 1000
            while count < self.max_batch:
                remaining = deadline - loop.time()
                try:
                    item = queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(queue.get(), remaining)
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                if count + len(item.images) > self.max_batch:
                    carried = item  # opens the next batch
                    break
                items.append(item)
                count += len(item.images)
            await self._run(items)

    async def _run(self, items: list[_Item]) -> None:
        images = np.concatenate([item.images for item in items])
        try:
            probabilities = await asyncio.to_thread(self.predict, images)
        except Exception as err:  # noqa: BLE001  (handed to every waiting request)
            for item in items:
                if not item.future.done():
                    item.future.set_exception(err)
            return
        if self.on_batch is not None:
            self.on_batch(len(images))
        start = 0
        for item in items:
            n = len(item.images)
            if not item.future.done():
                item.future.set_result(probabilities[start:start + n])
            start += n
