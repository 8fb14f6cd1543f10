"""X-STARS training samples and a resumable batch stream (docs/xstars.md §2, §3.1, §4, §5).

One sample is an *anchor* tile (one place seen by one sensor) turned into the DINO multi-crop views, plus the
un-augmented MSAD view of the same place for every MSAD sensor (:func:`training.data.augment.msad_view`). Places
come from :func:`training.data.pairs.pairs_from_folder` (MSC-France layout ``<root>/<Sensor>/<City>/<tile>``, paired on
``(city, filename)``; missing partners are reported, X-STARS bugs B4–B6 fixed there).

- Pretraining: anchors = every tile of every selected sensor (each place once per sensor per epoch); MSAD views of
  every selected sensor, in sensor order (docs/xstars.md §5).
- Continual pretraining: anchors = the tiles of the new sensor only; MSAD views ``(partner sensor, new sensor)``
  (docs/xstars.md §4).

Tiles are read as 8-bit RGB and divided by 255, as X-STARS does with PIL (docs/xstars.md §5); other pixel types are
refused. Randomness: sample ``i`` of epoch ``e`` is augmented with :func:`~training.data.augment.sample_generator`
``(seed, e, i)``, and the order of epoch ``e`` is a permutation seeded with ``(seed, e)``, so batch ``k`` of process
``r`` depends only on ``(seed, r, k)``: :class:`XStarsStream` is resumable exactly (its state is ``k``) and does not
depend on the number of loader workers.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning

from .augment import DINOMultiCrop, MSADNormalization, msad_view, sample_generator

__all__ = ("XStarsSamples", "XStarsStream", "collate_samples", "read_rgb")

logger = logging.getLogger(__name__)

Stats = tuple[Sequence[float], Sequence[float]]


def read_rgb(path: "Path | str") -> torch.Tensor:
    """Read an 8-bit tile as RGB float32 ``[3, H, W]`` in [0, 1] (value / 255).

    One band is repeated three times (grayscale); of 4 or more bands the first three are used (RGBA, as PIL's
    ``convert("RGB")``).

    Raises:
        ValueError: The raster is not 8-bit (X-STARS trains on 8-bit RGB tiles; convert or stretch it first).
        rasterio.errors.RasterioIOError: Unreadable file.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            if ds.dtypes[0] != "uint8":
                raise ValueError(f"{path} is {ds.dtypes[0]}; X-STARS tiles are 8-bit RGB (docs/xstars.md §5): "
                                 "convert it to uint8 first")
            bands = [1, 1, 1] if ds.count < 3 else [1, 2, 3]
            array = ds.read(bands)
    return torch.from_numpy(array).float().div_(255.0)


class XStarsSamples(torch.utils.data.Dataset):
    """Map-style samples addressed by ``(epoch, index)`` keys (so a worker needs no shared RNG).

    Args:
        pairs: Places (:class:`training.data.pairs.Pair`) holding a tile of every sensor used below.
        anchor_sensors: Sensors whose tiles are samples (all selected sensors, or the new sensor in continual).
        msad_sensors: Sensors whose MSAD views each sample carries, in MSAD order (empty = no MSAD views).
        multicrop: The DINO multi-crop transform.
        mean: Joint per-channel mean (the DINO views and the ``joint`` MSAD views).
        std: Joint per-channel std.
        msad_size_px: Side of the MSAD views (224).
        msad_normalization: ``joint`` | ``per_sensor`` | ``double`` (docs/xstars.md §3.5).
        sensor_stats: Sensor → (mean, std), needed by ``per_sensor`` and ``double``.
        seed: Augmentation seed.

    Raises:
        ValueError: A sensor missing from a pair, no anchor sensor, or per-sensor statistics missing.
    """

    def __init__(
        self,
        pairs: Sequence[Any],
        anchor_sensors: Sequence[str],
        msad_sensors: Sequence[str],
        multicrop: DINOMultiCrop,
        mean: Sequence[float],
        std: Sequence[float],
        msad_size_px: int = 224,
        msad_normalization: MSADNormalization = "joint",
        sensor_stats: Optional[Mapping[str, Stats]] = None,
        seed: int = 0,
    ) -> None:
        if not anchor_sensors:
            raise ValueError("anchor_sensors is empty: name the sensors whose tiles are samples")
        needed = list(dict.fromkeys([*anchor_sensors, *msad_sensors]))
        for pair in pairs:
            missing = [s for s in needed if s not in pair.paths]
            if missing:
                raise ValueError(f"place {pair.id!r} has no tile of {missing} (it has {list(pair.paths)})")
        if msad_normalization != "joint":
            absent = [s for s in msad_sensors if s not in (sensor_stats or {})]
            if absent:
                raise ValueError(f"msad normalization {msad_normalization!r} needs statistics of {absent}")
        self.pairs = list(pairs)
        self.items = [(i, s) for s in anchor_sensors for i in range(len(self.pairs))]
        self.msad_sensors = list(msad_sensors)
        self.multicrop = multicrop
        self.mean, self.std = tuple(mean), tuple(std)
        self.msad_size_px = msad_size_px
        self.msad_normalization: MSADNormalization = msad_normalization
        self.sensor_stats = dict(sensor_stats or {})
        self.seed = seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, list[torch.Tensor]]:
        """Sample ``index`` of ``epoch``.

        Returns:
            ``{"crops": [2 + N views [3, S, S]], "msad": [per MSAD sensor [3, M, M]]}``.
        """
        epoch, index = key
        pair_index, sensor = self.items[index]
        pair = self.pairs[pair_index]
        image = read_rgb(pair.paths[sensor])
        crops = self.multicrop(image, sample_generator(self.seed, epoch, index))
        views = []
        for s in self.msad_sensors:
            tile = image if s == sensor else read_rgb(pair.paths[s])
            stats = self.sensor_stats.get(s, (None, None))
            views.append(msad_view(tile, self.mean, self.std, self.msad_size_px, self.msad_normalization, *stats))
        return {"crops": crops, "msad": views}


def collate_samples(samples: Sequence[Mapping[str, list[torch.Tensor]]]) -> dict[str, list[torch.Tensor]]:
    """Stack samples view by view: ``{"crops": [[B, 3, S, S] per view], "msad": [[B, 3, M, M] per sensor]}``."""
    return {key: [torch.stack(views) for views in zip(*(s[key] for s in samples))] for key in ("crops", "msad")}


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    state = int(np.random.SeedSequence([seed, epoch, 0x5EED]).generate_state(1, dtype=np.uint64)[0])
    return torch.randperm(n, generator=torch.Generator().manual_seed(state))


class XStarsStream:
    """Endless, resumable batch stream of one process (the runner's ``TrainTask.data``).

    Every epoch is a seeded permutation of the samples; process ``rank`` of ``world`` takes every ``world``-th index
    (as a distributed sampler) and cuts it into batches of ``batch_size``, dropping the incomplete last batch (DINO's
    ``drop_last``). Batch ``k`` is batch ``k mod n`` of epoch ``k // n`` with ``n`` = :attr:`batches_per_epoch`.

    Args:
        samples: The samples.
        batch_size: Samples per batch (per process).
        seed: Seed of the epoch orders.
        rank: Process index.
        world: Number of processes.
        num_workers: ``torch.utils.data.DataLoader`` workers (0 = load in the training process).

    Raises:
        ValueError: Fewer samples than one batch on every process.
    """

    def __init__(self, samples: XStarsSamples, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1,
                 num_workers: int = 0) -> None:
        self.samples, self.batch_size, self.seed = samples, batch_size, seed
        self.rank, self.world, self.num_workers = rank, world, num_workers
        self.batches_per_epoch = len(samples) // (batch_size * world)
        if self.batches_per_epoch < 1:
            raise ValueError(f"{len(samples)} samples do not fill one batch of {batch_size} on each of {world} "
                             "process(es); lower data.batch_size or add tiles")
        self.position = 0
        self._iter: Optional[Iterator[Any]] = None

    def batch_keys(self, k: int) -> list[tuple[int, int]]:
        """The ``(epoch, index)`` keys of batch ``k`` of this process."""
        epoch, j = divmod(k, self.batches_per_epoch)
        mine = _epoch_order(len(self.samples), self.seed, epoch)[self.rank::self.world]
        return [(epoch, int(i)) for i in mine[j * self.batch_size:(j + 1) * self.batch_size]]

    def _keys_from(self, start: int) -> Iterator[list[tuple[int, int]]]:
        k = start
        while True:
            yield self.batch_keys(k)
            k += 1

    def __iter__(self) -> "XStarsStream":
        loader = torch.utils.data.DataLoader(
            self.samples, batch_sampler=self._keys_from(self.position), num_workers=self.num_workers,
            collate_fn=collate_samples,
        )
        self._iter = iter(loader)
        return self

    def __next__(self) -> dict[str, list[torch.Tensor]]:
        if self._iter is None:
            iter(self)
        assert self._iter is not None
        batch = next(self._iter)
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        """``{"position": batches handed out}``."""
        return {"position": self.position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue at ``state["position"]`` (the next ``iter()`` restarts the loader there)."""
        self.position = int(state["position"])
        self._iter = None

    def close(self) -> None:
        """Drop the loader (and its workers)."""
        self._iter = None
