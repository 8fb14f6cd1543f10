"""The batch stream every sampler-based recipe trains on: endless, resumable exactly, optionally prefetched.

:class:`SamplerStream` turns a sampler (:class:`training.data.rasters.PretrainSampler`,
:class:`training.data.pairs.PairedCropSampler`) into the runner's data (:class:`training.runner.TrainTask`): batch
``k`` of process ``rank`` is drawn from the sampler's RNG re-seeded with ``(seed, rank, k)``, so the stream's state is
one position and resuming gives the same batches whatever was prefetched. ``smarties-mae`` and ``smarties-align`` use
it; X-STARS has its own map-style stream (:class:`training.data.xstars.XStarsStream`).
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator, Mapping, Optional

__all__ = ("SamplerStream",)


class SamplerStream:
    """Endless, resumable stream of sampler batches, optionally prefetched.

    ``sampler`` is any object drawing batches with ``sampler.batch(batch_size)`` from its own ``random.Random`` at
    ``sampler.rng`` (:class:`training.data.rasters.PretrainSampler`, :class:`training.data.pairs.PairedCropSampler`).
    Batch ``k`` of process ``rank`` is drawn after re-seeding that RNG with ``"{seed}:{rank}:{k}"``, so it depends only
    on ``(seed, rank, k)``: the state is the position ``k`` (:meth:`state_dict`), resuming is exact even though a
    background thread builds batches ahead, and processes draw different batches.

    Args:
        sampler: The sampler (used only by this stream).
        batch_size: Samples per batch.
        seed: Stream seed.
        rank: Process index.
        prefetch: Batches built ahead in a background thread (rasterio/numpy release the GIL); 0 = none.
        overfit_one_batch: Always yield batch 0.
        transform: Optional function applied to each sampler batch (e.g. to the recipe's batch contract).
    """

    def __init__(self, sampler: Any, batch_size: int, seed: int = 0, rank: int = 0, prefetch: int = 2,
                 overfit_one_batch: bool = False, transform: Optional[Callable[[Any], Any]] = None) -> None:
        self.sampler, self.batch_size, self.seed, self.rank = sampler, batch_size, seed, rank
        self.prefetch, self.overfit_one_batch, self.transform = prefetch, overfit_one_batch, transform
        self.position = 0
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._queue: "queue.Queue[Any]" = queue.Queue()
        self._fixed: Any = None

    def make_batch(self, k: int) -> Any:
        """Batch number ``k`` of this process (deterministic; not to be called while the stream is prefetching)."""
        if self.overfit_one_batch:
            if self._fixed is None:
                self._fixed = self._draw(0)
            return self._fixed
        return self._draw(k)

    def _draw(self, k: int) -> Any:
        self.sampler.rng.seed(f"{self.seed}:{self.rank}:{k}")
        batch = self.sampler.batch(self.batch_size)
        return self.transform(batch) if self.transform is not None else batch

    def _produce(self, start: int, q: "queue.Queue[Any]", stop: threading.Event) -> None:
        k = start
        try:
            while not stop.is_set():
                item = (k, self.make_batch(k))
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                k += 1
        except BaseException as exc:  # surfaced by __next__
            q.put((k, exc))

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=30)
            self._thread = None

    def __iter__(self) -> Iterator[Any]:
        self._stop_thread()
        if self.prefetch > 0:
            self._stop = threading.Event()
            self._queue = queue.Queue(maxsize=self.prefetch)
            self._thread = threading.Thread(target=self._produce, args=(self.position, self._queue, self._stop),
                                            daemon=True)
            self._thread.start()
        return self

    def __next__(self) -> Any:
        if self._thread is None:
            batch = self.make_batch(self.position)
        else:
            k, batch = self._queue.get()
            assert k == self.position, (k, self.position)
            if isinstance(batch, BaseException):
                raise batch
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        """``{"position": batches handed out}``."""
        return {"position": self.position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue at ``state["position"]`` (the next ``iter()`` restarts the prefetcher there)."""
        self._stop_thread()
        self.position = int(state["position"])

    def close(self) -> None:
        """Stop the prefetch thread and close the sampler's rasters (when it has a ``close``)."""
        self._stop_thread()
        if callable(getattr(self.sampler, "close", None)):
            self.sampler.close()
