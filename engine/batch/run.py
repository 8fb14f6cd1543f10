"""A batch run: every scene of a catalogue through one command, on Dask, resumable.

:func:`batch_embed` reads the catalogue (:func:`engine.batch.read_catalogue`), skips the scenes the manifest says are
done (:class:`engine.batch.Manifest`), sends one task per remaining scene to the cluster
(:func:`engine.batch.dask_client`; the model is held per worker), records each result as it arrives, and then writes
the mosaics and the STAC collection (:mod:`engine.batch.products`) over every finished scene. A scene that fails
(unreadable, bands that cannot be mapped…) is recorded with its error and does not stop the others.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from ..atomic import scratch_folder
from ..callbacks import CancelFn, ProgressFn
from ..errors import InferenceCancelled, OutputError
from ..maps import embed_raster
from ..outputs import check_outputs
from ..settings import InferenceSettings
from ..spectral import Overrides
from .catalogue import Scene, read_catalogue
from .cluster import ModelPlugin, dask_client, worker_model
from .manifest import Manifest, run_key
from .products import Product, file_digest, write_cog, write_mosaics, write_stac

__all__ = ("BatchReport", "batch_embed", "embed_scene", "run_scenes")

log = logging.getLogger(__name__)


@dataclass
class BatchReport:
    """What a batch run did.

    Attributes:
        outputs: Every finished scene (this run's and earlier runs'), in catalogue order.
        done: Ids of the scenes this run processed.
        skipped: Ids of the scenes an earlier run had finished (output intact).
        failed: Id → error of the scenes that failed in this run.
        mosaics: The mosaic VRTs.
        stac: The STAC collection file (None when no scene is finished).
        seconds: Wall time of the run.
        workers: Dask workers that took part.
    """

    outputs: list[Product] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    mosaics: list[Path] = field(default_factory=list)
    stac: Optional[Path] = None
    seconds: float = 0.0
    workers: int = 0


def embed_scene(scene: Scene, folder: str, settings: InferenceSettings, sensor: Optional[str],
                overrides: Optional[Overrides]) -> dict[str, Any]:
    """The task of one scene on a Dask worker: embed it with the worker's model and write ``<id>.tif`` as a COG.

    Returns:
        The manifest record: ``status`` ``"done"`` (with ``output``, ``bytes``, ``sha256``, ``tiles``, ``seconds``,
        ``model``, ``worker``, ``finished``) or ``"failed"`` (with ``error``: the exception's type and message).
    """
    started = time.perf_counter()
    output = Path(folder) / f"{scene.id}.tif"
    record: dict[str, Any] = {"source": scene.href, "output": output.name, "datetime": scene.datetime,
                              "properties": scene.properties}
    try:
        model = worker_model()
        check_outputs({"output": output}, {"input raster": scene.href}, overwrite=True)
        with scratch_folder(output) as scratch:
            res = embed_raster(scene.href, scratch / output.name, model, settings=settings, sensor=sensor,
                               overrides=overrides)
            write_cog(res.path, output)
    except Exception as exc:  # reported in the manifest; the other scenes go on
        return {**record, "status": "failed", "error": f"{type(exc).__name__}: {exc}",
                "seconds": time.perf_counter() - started}
    size, sha256 = file_digest(output)
    return {**record, "status": "done", "bytes": size, "sha256": sha256, "tiles": res.tiles,
            "model": model.provenance.label, "seconds": time.perf_counter() - started, "worker": _worker_name(),
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def _worker_name() -> str:
    import distributed

    return str(distributed.get_worker().address)


def batch_embed(
    catalogue: Union[str, Path, Sequence[str]],
    output_folder: Union[str, Path],
    model: str = "smarties-demo-tiny",
    *,
    settings: Optional[InferenceSettings] = None,
    sensor: Optional[str] = None,
    overrides: Optional[Overrides] = None,
    backend: str = "torch",
    num_heads: Optional[int] = None,
    asset: Optional[str] = None,
    workers: Optional[int] = None,
    scheduler: Optional[str] = None,
    overwrite: bool = False,
    progress: Optional[ProgressFn] = None,
    is_canceled: Optional[CancelFn] = None,
) -> BatchReport:
    """Embed every scene of a catalogue into ``output_folder``: a COG per scene, mosaics, a STAC collection.

    Args:
        catalogue: Folder, glob, text file of paths/URLs, STAC JSON, or a list of paths (:func:`read_catalogue`).
        output_folder: Created if missing; holds ``<scene id>.tif``, ``mosaic_<CRS>.vrt``, ``stac/`` and
            ``manifest.jsonl``.
        model: Registry name or file, loaded once per worker (never pickled into tasks).
        settings: As :func:`engine.embed_raster` (``threads`` None: the local cluster's threads per worker).
        sensor: Sensor preset of every scene, as :func:`engine.embed_raster` (None: guessed per scene).
        overrides: Band overrides of every scene, as :func:`engine.embed_raster`.
        backend: ``"torch"`` or ``"onnx"``.
        num_heads: Attention heads, if the checkpoint does not say.
        asset: STAC asset key.
        workers: Worker processes of the local cluster (:func:`engine.batch.local_layout`).
        scheduler: Address of an existing Dask scheduler (else ``DASK_SCHEDULER_ADDRESS``, else a local cluster).
        overwrite: Redo every scene (else scenes whose outputs are intact are skipped).
        progress: Called with the fraction of scenes finished.
        is_canceled: Polled as results arrive; True cancels the remaining tasks (running ones finish their scene).

    Returns:
        :class:`BatchReport`.

    Raises:
        engine.errors.InputRasterError: An empty or unreadable catalogue.
        engine.errors.OutputError: The folder holds another run's outputs (without ``overwrite``) or is not writable.
        engine.errors.InferenceCancelled: ``is_canceled`` returned True (finished scenes stay recorded).
        engine.errors.DependencyError: Dask (or pystac, for a STAC catalogue) is not installed.
    """
    started = time.perf_counter()
    settings = settings or InferenceSettings()
    folder = Path(output_folder)
    scenes = [s for s in read_catalogue(catalogue, asset) if not _inside(s.href, folder)]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder {folder} ({exc}); choose a folder you can write to") \
            from exc
    command = "embed"
    key = run_key(command, str(model), {**asdict(settings), "sensor": sensor, "overrides": overrides,
                                        "backend": backend})
    manifest = Manifest(folder, key, command, overwrite=overwrite)
    report = BatchReport()
    todo = []
    for scene in scenes:
        if manifest.finished(scene.id):
            report.skipped.append(scene.id)
        else:
            todo.append(scene)
    log.info("%d scenes: %d to embed, %d already done", len(scenes), len(todo), len(report.skipped))
    if todo:
        with dask_client(scheduler, workers) as (client, threads):
            report.workers = len(client.scheduler_info()["workers"])
            run_settings = settings if settings.threads or threads is None else replace(settings, threads=threads)
            client.register_plugin(ModelPlugin(str(model), backend, num_heads, run_settings.threads, settings.device))
            report.done, report.failed = run_scenes(client, todo, embed_scene, str(folder.resolve()), run_settings,
                                                    sensor, overrides, manifest=manifest, progress=progress,
                                                    is_canceled=is_canceled)
    by_id = {s.id: s for s in scenes}
    for scene in scenes:
        record = manifest.scenes.get(scene.id, {})
        if record.get("status") == "done" and (folder / record["output"]).is_file():
            report.outputs.append(Product(scene.id, folder / record["output"], by_id[scene.id].href, record))
    if report.outputs:
        report.mosaics = write_mosaics(report.outputs, folder)
        report.stac = write_stac(report.outputs, folder, report.mosaics,
                                 description=f"msfm batch embed of {catalogue} with {model}")
    report.seconds = time.perf_counter() - started
    return report


def run_scenes(client: Any, scenes: Sequence[Scene], task: Callable[..., dict[str, Any]], *args: Any,
               manifest: Manifest, progress: Optional[ProgressFn] = None,
               is_canceled: Optional[CancelFn] = None) -> tuple[list[str], dict[str, str]]:
    """Run ``task(scene, *args)`` for every scene on a Dask cluster and record each result as it arrives.

    The one loop of every batch command: one task per scene (keys unique to this run, so an earlier run's tasks on
    a shared cluster are never reused), results appended to the manifest in the order they finish.

    Args:
        client: A ``distributed.Client``.
        scenes: The scenes to run.
        task: A module-level function (workers import it) returning the scene's manifest record, with ``status``
            ``"done"`` or ``"failed"`` (and then ``error``).
        *args: The task's other arguments (pickled once per task: keep them small; a model is held per worker).
        manifest: Where records go.
        progress: Called with the fraction of scenes finished.
        is_canceled: Polled after each result; True cancels the remaining tasks (running ones finish their scene).

    Returns:
        ``(done ids, failed id → error)``, in the order they finished.

    Raises:
        engine.errors.InferenceCancelled: ``is_canceled`` returned True.
    """
    import distributed

    run = uuid.uuid4().hex[:8]
    futures = {client.submit(task, s, *args, key=f"msfm-{run}-{s.id}", pure=False): s for s in scenes}
    done: list[str] = []
    failed: dict[str, str] = {}
    total = len(futures)
    for n, future in enumerate(distributed.as_completed(futures), 1):
        scene = futures[future]
        record = future.result()
        manifest.update(scene.id, record)
        if record["status"] == "done":
            done.append(scene.id)
        else:
            failed[scene.id] = record["error"]
            log.error("%s failed: %s", scene.href, record["error"])
        if progress is not None:
            progress(n / total)
        if is_canceled is not None and is_canceled():
            for other in futures:
                other.cancel()
            raise InferenceCancelled(f"batch run cancelled after {n} of {total} scenes (finished ones are kept)")
    return done, failed


def _inside(href: str, folder: Path) -> bool:
    """Whether a local raster lies in ``folder`` (an earlier run's output met by a folder catalogue)."""
    try:
        return Path(href).resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError):
        return False
