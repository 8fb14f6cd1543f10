"""A batch run: every scene of a catalogue through one command, on Dask, resumable.

:func:`batch_embed` reads the catalogue (:func:`engine.batch.read_catalogue`), skips the scenes the manifest says are
done (:class:`engine.batch.Manifest`), sends one task per remaining scene to the cluster
(:func:`engine.batch.dask_client`; the model is held per worker), records each result as it arrives, and then writes
the mosaics and the STAC collection (:mod:`engine.batch.products`) over every finished scene. A scene that fails
(unreadable, bands that cannot be mapped…) is recorded with its error and does not stop the others.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from ..atomic import atomic_output, scratch_folder
from ..callbacks import CancelFn, ProgressFn
from ..errors import InferenceCancelled, OutputError, SettingsError
from ..maps import embed_raster
from ..models import open_reader
from ..outputs import check_outputs
from ..raster import open_raster, tile_grid
from ..segmentation import segment_raster
from ..settings import InferenceSettings
from ..spectral import Overrides
from .catalogue import Scene, read_catalogue
from .cluster import ModelPlugin, dask_client, worker_model
from .manifest import Manifest, run_key
from .products import Product, file_digest, write_cog, write_mosaics, write_stac, write_vrt

__all__ = ("BatchReport", "Session", "batch_embed", "batch_segment", "embed_scene", "embed_scenes", "grid_rows",
           "open_folder", "run_batch", "run_scenes", "scene_task", "segment_scene", "split")

log = logging.getLogger(__name__)

#: How often the client looks for finished scenes and polls ``is_canceled`` (seconds).
_POLL_S = 0.2


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
        unpaired: Runs over pairs of scenes (:func:`engine.batch.batch_change`): id → the one catalogue that holds
            a scene without its partner in the other (``"before"`` or ``"after"``); such scenes are not processed.
    """

    outputs: list[Product] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    mosaics: list[Path] = field(default_factory=list)
    stac: Optional[Path] = None
    seconds: float = 0.0
    workers: int = 0
    unpaired: dict[str, str] = field(default_factory=dict)


def embed_scene(scene: Scene, folder: str, settings: InferenceSettings, sensor: Optional[str],
                overrides: Optional[Overrides]) -> dict[str, Any]:
    """The task of one scene on a Dask worker: embed it with the worker's model and write ``<id>.tif`` as a COG.

    A scene with :attr:`~engine.batch.Scene.rows` is one block of a split raster (``embed_raster(rows=...)``).

    Returns:
        The manifest record: ``status`` ``"done"`` (with ``output``, ``bytes``, ``sha256``, ``tiles``, ``seconds``,
        ``model``, ``worker``, ``finished``) or ``"failed"`` (with ``error``: the exception's type and message).
    """
    def embed(path: Path, progress: ProgressFn) -> tuple[int, str]:
        model, _ = worker_model()
        res = embed_raster(scene.href, path, model, settings=settings, sensor=sensor, overrides=overrides,
                           rows=scene.rows, progress=progress)
        return res.tiles, model.provenance.label

    return scene_task(scene, folder, embed)


def segment_scene(scene: Scene, folder: str, settings: InferenceSettings, sensor: Optional[str],
                  overrides: Optional[Overrides]) -> dict[str, Any]:
    """The task of one scene of ``batch_segment``: its class map with the worker's head, as ``<id>.tif`` (COG).

    The class map keeps its colour table and class names; its QGIS style goes beside it (``<id>.qml``).

    Returns:
        The manifest record, as :func:`embed_scene`.
    """
    def segment(path: Path, progress: ProgressFn) -> tuple[int, str]:
        model, head = worker_model()
        res = segment_raster(scene.href, path, head, model, settings=settings, sensor=sensor, overrides=overrides,
                             progress=progress)
        return res.tiles, head.card.head_type + " head"

    return scene_task(scene, folder, segment)


#: ``write(temporary path, progress) → (tiles or None, model label)``: what a scene task makes (:func:`scene_task`).
WriteFn = Callable[[Path, ProgressFn], tuple[Optional[int], str]]
#: Dask event topic on which tasks report the fraction of their scene done (:func:`run_scenes` follows it).
PROGRESS_TOPIC = "msfm-progress"
#: Least seconds between two progress events of a task.
_EVENT_S = 0.5


def scene_task(scene: Scene, folder: str, write: WriteFn, companions: Sequence[str] = ()) -> dict[str, Any]:
    """One scene's task: ``write`` the output, then ``<id>.tif`` (COG), and its companions beside it.

    The style ``<id>.qml`` goes beside it where ``write`` made one. ``write`` reports its progress, which reaches the
    client as Dask events (:data:`PROGRESS_TOPIC`, at most every 0.5 s), so a run's progress moves within scenes.

    Args:
        scene: The scene.
        folder: The output folder.
        write: Writes the scene's GeoTIFF at the temporary path it is given (in a scratch folder).
        companions: Name endings of further outputs ``write`` makes beside that path (``"_mask.tif"``,
            ``"_changes.gpkg"``): each becomes ``<id><ending>`` in ``folder`` (a GeoTIFF as a COG, with its
            ``.qml`` where ``write`` made one), after the main output, and is recorded with its size and SHA-256
            (``companions`` of the record), so a rerun redoes a scene whose companion is missing or altered.

    Returns:
        The manifest record (a failure is recorded, never raised; a companion ``write`` did not make is one).
    """
    started = time.perf_counter()
    output = Path(folder) / f"{scene.id}.tif"
    record: dict[str, Any] = {"source": scene.href, "output": output.name, "datetime": scene.datetime,
                              "properties": scene.properties}
    extras = [output.with_name(output.stem + ending) for ending in companions]
    try:
        check_outputs({"output": output, **{f"companion {p.name}": p for p in extras}}, {"input raster": scene.href},
                      overwrite=True)
        with scratch_folder(output) as scratch:
            tiles, label = write(scratch / output.name, _events(scene.id))
            for target in (output, *extras):
                made = scratch / target.name
                if not made.is_file():
                    raise OutputError(f"the task made no {target.name} (an msfm bug: please report it)")
                if made.suffix.lower() in (".tif", ".tiff"):
                    write_cog(made, target)
                else:
                    with atomic_output(target, sidecars=()) as tmp:
                        shutil.copyfile(made, tmp)
                style = made.with_suffix(".qml")  # QGIS applies <name>.qml to <name>.tif
                if style.is_file():
                    with atomic_output(target.with_suffix(".qml")) as tmp:
                        shutil.copyfile(style, tmp)
    except Exception as exc:  # reported in the manifest; the other scenes go on
        return {**record, "status": "failed", "error": f"{type(exc).__name__}: {exc}",
                "seconds": time.perf_counter() - started}
    size, sha256 = file_digest(output)
    if extras:
        record["companions"] = {p.name: dict(zip(("bytes", "sha256"), file_digest(p))) for p in extras}
    return {**record, "status": "done", "bytes": size, "sha256": sha256, "tiles": tiles, "model": label,
            "seconds": time.perf_counter() - started, "worker": _worker_name(),
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")}


def grid_rows(scene: Scene, settings: InferenceSettings, sensor: Optional[str],
               overrides: Optional[Overrides]) -> dict[str, Any]:
    """The planning task of a raster to split (on a worker, which has the model): its output grid's cell rows.

    Args:
        scene: The raster.
        settings: Tile size, overlap and scale of the run (the grid is :func:`engine.raster.tile_grid`'s).
        sensor: Sensor preset (None: guessed), as :func:`engine.embed_raster`.
        overrides: Band overrides, as :func:`engine.embed_raster`.

    Returns:
        ``{"rows": N}``, or ``{"error": "..."}`` for a raster that cannot be read or mapped.
    """
    try:
        model, _ = worker_model()
        with open_raster(scene.href) as dataset:
            reader, _ = open_reader(dataset, model, settings, sensor=sensor, overrides=overrides)
            with reader:
                grid = tile_grid(reader.height_px, reader.width_px, settings.tile_size_px, settings.overlap_px,
                                 model.patch_size)
                return {"rows": grid.height_cells}
    except Exception as exc:  # reported as the scene's failure
        return {"error": f"{type(exc).__name__}: {exc}"}


def split(scene: Scene, rows: int, block_rows: int) -> list[Scene]:
    """The blocks of ``block_rows`` cell rows (the last one shorter) of a raster whose grid has ``rows`` rows.

    Args:
        scene: The raster.
        rows: Cell rows of its output grid (:func:`grid_rows`).
        block_rows: Cell rows per block (≥ 1).

    Returns:
        Scenes named ``<scene>_rows<first>`` (6 digits) with :attr:`~engine.batch.Scene.rows` set; a raster of at most
        ``block_rows`` rows stays one scene.
    """
    if rows <= block_rows:
        return [scene]
    return [replace(scene, id=f"{scene.id}_rows{first:06d}", rows=(first, min(first + block_rows, rows)))
            for first in range(0, rows, block_rows)]


def _events(scene_id: str) -> ProgressFn:
    """A progress callback that sends ``{"scene", "fraction"}`` events to the client (none outside a Dask worker)."""
    import distributed

    try:
        worker = distributed.get_worker()
    except ValueError:  # called outside a worker (a task run directly)
        return lambda fraction: None
    last = [-_EVENT_S]

    def report(fraction: float) -> None:
        now = time.monotonic()
        if now - last[0] >= _EVENT_S:
            last[0] = now
            worker.log_event(PROGRESS_TOPIC, {"scene": scene_id, "fraction": float(fraction)})

    return report


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
    block_rows: Optional[int] = None,
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
        block_rows: Split rasters whose output grid has more cell rows than this into blocks of ``block_rows`` rows,
            each a task of its own (:func:`split`): one very large raster then runs on every worker. A block encodes
            the tiles that touch its rows, overlap included, so the blocks equal one run over the raster
            (``embed_raster(rows=...)``); each block is a COG ``<scene>_rows<first>.tif``, and ``<scene>.vrt``
            joins them. None: one task per raster.
        progress: Called with the fraction done: finished scenes, and the tiles done in running ones.
        is_canceled: Polled every 0.2 s; True stops the run (:func:`run_scenes`).

    Returns:
        :class:`BatchReport`.

    Raises:
        engine.errors.InputRasterError: An empty or unreadable catalogue.
        engine.errors.OutputError: The folder holds another run's outputs (without ``overwrite``) or is not writable.
        engine.errors.InferenceCancelled: ``is_canceled`` returned True (finished scenes stay recorded).
        engine.errors.DependencyError: Dask (or pystac, for a STAC catalogue) is not installed.
    """
    settings = settings or InferenceSettings()
    if block_rows is not None and block_rows < 1:
        raise SettingsError(f"block_rows must be ≥ 1 (cell rows per block), got {block_rows}")
    folder, scenes = open_folder(catalogue, output_folder, asset)
    plugin = ModelPlugin(str(model), backend, num_heads, device=settings.device)
    with Session(settings, scheduler, workers) as session:
        return embed_scenes(session, plugin, scenes, folder, sensor=sensor, overrides=overrides, block_rows=block_rows,
                            overwrite=overwrite, progress=progress, is_canceled=is_canceled,
                            description=f"msfm batch embed of {catalogue} with {model}")


def embed_scenes(session: "Session", plugin: ModelPlugin, scenes: Sequence[Scene], folder: Path, *,
                 sensor: Optional[str], overrides: Optional[Overrides], block_rows: Optional[int] = None,
                 overwrite: bool = False, progress: Optional[ProgressFn] = None,
                 is_canceled: Optional[CancelFn] = None, description: str) -> BatchReport:
    """The embedding step of a batch run into ``folder`` (which exists), on the session's cluster.

    :func:`batch_embed`, and the first step of :func:`engine.batch.batch_cluster` and
    :func:`engine.batch.batch_similarity`; arguments as :func:`batch_embed`.

    Returns:
        :class:`BatchReport`.

    Raises:
        engine.errors.OutputError: ``folder`` holds another run's outputs (without ``overwrite``).
        engine.errors.InferenceCancelled: ``is_canceled`` returned True.
    """
    key = run_key("embed", plugin.key(), {**asdict(session.requested), "sensor": sensor, "overrides": overrides,
                                          "block_rows": block_rows})
    return run_batch(session, embed_scene, scenes, Manifest(folder, key, "embed", overwrite=overwrite), plugin=plugin,
                     sensor=sensor, overrides=overrides, block_rows=block_rows, progress=progress,
                     is_canceled=is_canceled, description=description, title="embeddings")


def batch_segment(
    catalogue: Union[str, Path, Sequence[str]],
    output_folder: Union[str, Path],
    head: Union[str, Path],
    model: Optional[str] = None,
    *,
    settings: Optional[InferenceSettings] = None,
    sensor: Optional[str] = None,
    overrides: Optional[Overrides] = None,
    asset: Optional[str] = None,
    workers: Optional[int] = None,
    scheduler: Optional[str] = None,
    overwrite: bool = False,
    progress: Optional[ProgressFn] = None,
    is_canceled: Optional[CancelFn] = None,
) -> BatchReport:
    """Segment every scene of a catalogue with one head: a class-map COG per scene, mosaics, a STAC collection.

    As :func:`batch_embed`, with :func:`engine.segmentation.segment_raster` per scene: the head (and its encoder) is
    loaded once per worker; every class map has the head's classes, colours and ``.qml`` style, so the mosaics are one
    map. Rasters are not split (``block_rows``): a class map is on the input's pixel grid.

    Args:
        catalogue: As :func:`batch_embed`.
        output_folder: As :func:`batch_embed`.
        head: A head file (``.safetensors`` with its card) or an exported segmenter (``.onnx``).
        model: The encoder; None: the one the head's card names (none for an exported segmenter).
        settings: As :func:`engine.segmentation.segment_raster` (the scale defaults to the card's).
        sensor: Sensor preset of every scene (None: the card's).
        overrides: Band overrides of every scene.
        asset: STAC asset key.
        workers: As :func:`batch_embed`.
        scheduler: As :func:`batch_embed`.
        overwrite: As :func:`batch_embed`.
        progress: As :func:`batch_embed`.
        is_canceled: As :func:`batch_embed`.

    Returns:
        :class:`BatchReport`.

    Raises:
        As :func:`batch_embed`; a head that cannot be loaded fails every scene with the loader's message.
    """
    settings = settings or InferenceSettings()
    folder, scenes = open_folder(catalogue, output_folder, asset)
    plugin = ModelPlugin(model, device=settings.device, head=str(Path(head).resolve()))
    key = run_key("segment", plugin.key(), {**asdict(settings), "sensor": sensor, "overrides": overrides})
    manifest = Manifest(folder, key, "segment", overwrite=overwrite)
    with Session(settings, scheduler, workers) as session:
        return run_batch(session, segment_scene, scenes, manifest, plugin=plugin, sensor=sensor, overrides=overrides,
                         progress=progress, is_canceled=is_canceled,
                         description=f"msfm batch segment of {catalogue} with {Path(head).name}", title="class map")


def open_folder(catalogue: Union[str, Path, Sequence[str]], output_folder: Union[str, Path],
                asset: Optional[str]) -> tuple[Path, list[Scene]]:
    """The output folder of a batch run (created) and the catalogue's scenes, less those inside that folder.

    Raises:
        engine.errors.InputRasterError: An empty or unreadable catalogue.
        engine.errors.OutputError: The folder cannot be created.
    """
    folder = Path(output_folder)
    scenes = [s for s in read_catalogue(catalogue, asset) if not _inside(s.href, folder)]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder {folder} ({exc}); choose a folder you can write to") \
            from exc
    return folder, scenes


class Session:
    """The Dask client of a batch run, started on first use (a run whose scenes are all done starts no cluster).

    One session serves every step of a run (``batch_cluster`` embeds, samples and classifies on the same workers).

    Args:
        settings: The run's inference settings; ``threads`` None becomes the local cluster's threads per worker.
        scheduler: Address of an existing scheduler (:func:`engine.batch.dask_client`).
        workers: Worker processes of a local cluster.

    Attributes:
        requested: The settings as given (they decide the run's key).
        settings: The settings tasks run with (threads filled in once connected).
        workers: Dask workers seen when the client connected (0 before).
    """

    def __init__(self, settings: InferenceSettings, scheduler: Optional[str] = None,
                 workers: Optional[int] = None) -> None:
        self.requested = self.settings = settings
        self.workers = 0
        self._scheduler, self._workers = scheduler, workers
        self._stack = contextlib.ExitStack()
        self._client: Any = None
        self._plugin: Optional[ModelPlugin] = None

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def client(self, plugin: Optional[ModelPlugin] = None) -> Any:
        """The ``distributed.Client``, connected on first call; ``plugin`` (once) loads a model on every worker."""
        if self._client is None:
            self._client, threads = self._stack.enter_context(
                dask_client(self._scheduler, self._workers, self.settings.device))
            self.workers = len(self._client.scheduler_info()["workers"])
            if not self.settings.threads and threads is not None:
                self.settings = replace(self.settings, threads=threads)
        if plugin is not None and plugin is not self._plugin:
            plugin.threads = self.settings.threads
            self._client.register_plugin(plugin)
            self._plugin = plugin
        return self._client


def run_batch(session: Session, task: Callable[..., dict[str, Any]], scenes: Sequence[Scene], manifest: Manifest, *,
              plugin: Optional[ModelPlugin] = None, sensor: Optional[str] = None,
              overrides: Optional[Overrides] = None, block_rows: Optional[int] = None,
              progress: Optional[ProgressFn] = None, is_canceled: Optional[CancelFn] = None,
              description: str, title: str) -> BatchReport:
    """The body of every batch command: skip finished scenes, run the others, then the mosaics and the STAC collection.

    Args:
        session: The run's cluster.
        task: ``task(scene, folder, settings, sensor, overrides) → manifest record`` (:func:`embed_scene`…).
        scenes: The catalogue's scenes (:func:`open_folder`).
        manifest: The output folder's manifest, opened with the run's key.
        plugin: The model the workers hold for ``task`` (None: the task needs none).
        sensor: Sensor preset of every scene.
        overrides: Band overrides of every scene.
        block_rows: Split large rasters into blocks of rows (:func:`split`; embeddings only).
        progress: Called with the fraction done: finished scenes, and the tiles done in running ones.
        is_canceled: Polled every 0.2 s (:func:`run_scenes`).
        description: The STAC collection's description.
        title: What each output is, for its STAC asset ("embeddings", "class map"…).

    Returns:
        :class:`BatchReport`.
    """
    started = time.perf_counter()
    folder = manifest.path.parent
    report = BatchReport()
    blocks: dict[str, list[Scene]] = {}
    if block_rows is not None:
        client = session.client(plugin)
        plans = client.gather(client.map(grid_rows, scenes, settings=session.settings, sensor=sensor,
                                         overrides=overrides, pure=False))
        for scene, plan in zip(scenes, plans):
            if "error" in plan:
                report.failed[scene.id] = plan["error"]
                manifest.update(scene.id, {"source": scene.href, "status": "failed", "error": plan["error"]})
            else:
                blocks[scene.id] = split(scene, plan["rows"], block_rows)
        scenes = [block for parts in blocks.values() for block in parts]
    todo = []
    for scene in scenes:
        if manifest.finished(scene.id):
            report.skipped.append(scene.id)
        else:
            todo.append(scene)
    log.info("%s: %d scenes, %d to do, %d already done", title, len(scenes), len(todo), len(report.skipped))
    if todo:
        client = session.client(plugin)
        report.done, failed = run_scenes(client, todo, task, str(folder.resolve()), session.settings, sensor,
                                         overrides, manifest=manifest, progress=progress, is_canceled=is_canceled)
        report.failed.update(failed)
    report.workers = session.workers
    for scene in scenes:
        record = manifest.scenes.get(scene.id, {})
        if record.get("status") == "done" and (folder / record["output"]).is_file():
            report.outputs.append(Product(scene.id, folder / record["output"], scene.href, record))
    if report.outputs:
        finished = {p.id: p for p in report.outputs}
        for name, parts in blocks.items():  # a VRT per split raster, once all its blocks are done
            if len(parts) > 1 and all(part.id in finished for part in parts):
                write_vrt([finished[part.id] for part in parts], folder / f"{name}.vrt")
        report.mosaics = write_mosaics(report.outputs, folder)
        report.stac = write_stac(report.outputs, folder, report.mosaics, description=description, title=title)
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
        progress: Called with the fraction of the run done: finished scenes, and the tiles done in running ones.
        is_canceled: Polled every 0.2 s; True cancels the tasks not finished (a local cluster stops with the run, so
            its running scenes stop too; their partial files go at the next run).

    Returns:
        ``(done ids, failed id → error)``, in the order they finished.

    Raises:
        engine.errors.InferenceCancelled: ``is_canceled`` returned True.
    """
    run = uuid.uuid4().hex[:8]
    pending = {client.submit(task, s, *args, key=f"msfm-{run}-{s.id}", pure=False): s for s in scenes}
    done: list[str] = []
    failed: dict[str, str] = {}
    total = len(pending)
    partial: dict[str, float] = {}  # scene id → fraction done, from the tasks' events

    def on_event(event: tuple[float, Any]) -> None:
        message = event[1]
        if isinstance(message, dict) and "scene" in message:
            partial[message["scene"]] = float(message["fraction"])

    reported = 0.0
    client.subscribe_topic(PROGRESS_TOPIC, on_event)
    try:
        while pending:
            if is_canceled is not None and is_canceled():
                client.cancel(list(pending))
                raise InferenceCancelled(f"batch run cancelled after {total - len(pending)} of {total} scenes "
                                         "(finished ones are kept: run it again to resume)")
            finished = [f for f in pending if f.done()]
            if not finished:
                time.sleep(_POLL_S)
            for future in finished:
                scene = pending.pop(future)
                record = future.result()
                manifest.update(scene.id, record)
                if record["status"] == "done":
                    done.append(scene.id)
                else:
                    failed[scene.id] = record["error"]
                    log.error("%s failed: %s", scene.href, record["error"])
            running = sum(min(1.0, partial.get(s.id, 0.0)) for s in pending.values())
            fraction = (total - len(pending) + running) / total
            if progress is not None and (finished or fraction > reported):  # after every scene recorded, too
                reported = max(reported, fraction)  # never backwards (a lost worker's scene restarts)
                progress(reported)
    finally:
        client.unsubscribe_topic(PROGRESS_TOPIC)
    return done, failed


def _inside(href: str, folder: Path) -> bool:
    """Whether a local raster lies in ``folder`` (an earlier run's output met by a folder catalogue)."""
    try:
        return Path(href).resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError):
        return False
