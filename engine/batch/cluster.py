"""Dask for batch runs: the cluster a run uses, and the model each worker holds.

A run uses an existing scheduler (``scheduler`` or ``DASK_SCHEDULER_ADDRESS``) or starts a ``LocalCluster`` of worker
processes sized to the machine so that the model's threads never oversubscribe the cores: ``workers × threads =
physical cores``, one task at a time per worker (:func:`local_layout`). The model is loaded once per worker by a
worker plugin (:class:`ModelPlugin`) from its name or path; tasks find it with :func:`worker_model`, so a model is
never pickled into a task. Rasters are opened inside the tasks (datasets do not pickle). Tasks lost with a worker are
rerun by the scheduler on another one (``distributed.scheduler.allowed-failures``).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import sys
from typing import Any, Iterator, Optional, Sequence

from ..errors import DependencyError
from ..host import python_interpreter
from ..models import load_model
from ..segmentation import OnnxSegmenter, encoder_source, load_head

try:
    from distributed import WorkerPlugin
except ImportError:  # Dask is needed only when a run starts (dask_client says how to install it)
    WorkerPlugin = object  # type: ignore[misc,assignment]

__all__ = ("ModelPlugin", "dask_client", "local_gpus", "local_layout", "worker_model")

log = logging.getLogger(__name__)

#: Name the model plugin is registered under on every worker.
PLUGIN_NAME = "msfm-model"


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise DependencyError("batch runs need Dask: pip install 'distributed' (requirements.txt pins it)") from exc
    return distributed


def physical_cores() -> int:
    """Physical CPU cores of this machine (logical ones where the count is unknown), at least 1."""
    import psutil

    return max(1, psutil.cpu_count(logical=False) or os.cpu_count() or 1)


def local_layout(workers: Optional[int] = None, cores: Optional[int] = None, gpus: int = 0) -> tuple[int, int]:
    """``(workers, threads per worker)`` of a local cluster: every core used once.

    Default: one worker per GPU where the run uses GPUs; else one worker per 2 physical cores, and at least 2 workers
    where there are 2 cores. Scenes in parallel use the cores better than threads inside one scene (reading, blending
    and writing are partly serial): on 2 cores, 2 workers × 1 thread embedded 1.4× the scenes/s of 1 worker × 2
    threads (docs/scale.md, "Measured"); 2 threads per worker keep the copies of the model (and their memory) at half
    the cores.

    Args:
        workers: Worker processes asked for (None: the default).
        cores: Physical cores (None: :func:`physical_cores`).
        gpus: GPUs the local cluster gives its workers (:func:`local_gpus`).

    Returns:
        ``(workers, threads)`` with ``workers × threads ≤ cores`` (and threads ≥ 1).
    """
    cores = cores or physical_cores()
    workers = workers or gpus or max(min(cores, 2), cores // 2)
    return workers, max(1, cores // workers)


def local_gpus(device: str) -> list[str]:
    """The GPUs a local cluster gives one worker each: those torch sees, for a run on ``"auto"`` or ``"cuda"``.

    Args:
        device: The run's device; ``"cpu"`` or one chosen GPU (``"cuda:1"``) gives none.

    Returns:
        CUDA device ids as ``CUDA_VISIBLE_DEVICES`` names them (``["0", "1"]``; the entries of this process's
        ``CUDA_VISIBLE_DEVICES`` where it is set); empty without torch or a GPU.
    """
    if device not in ("auto", "cuda"):
        return []
    try:
        import torch
    except ImportError:  # an ONNX-only installation: CPU workers
        return []
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return (visible or [str(i) for i in range(count)])[:count]


class ModelPlugin(WorkerPlugin):
    """A Dask worker plugin that loads the model (and a segmentation head) once when the worker starts.

    Pickled to the workers with names and paths only. A model that cannot be loaded is kept as the error, which every
    task on that worker then raises with the loader's message.

    Args:
        model: Registry name or file (:func:`engine.load_model`); with a head, None takes the encoder its card names.
        backend: ``"torch"`` or ``"onnx"``.
        num_heads: Attention heads, if the checkpoint does not say.
        threads: CPU threads of the model on each worker (torch and ONNX Runtime).
        device: The run's device (a torch model loads on the CPU, and each run moves it; ONNX Runtime loads on it).
        head: A segmentation head file (``.safetensors`` with its card, loaded with its encoder) or an exported
            segmenter (``.onnx``, which holds its encoder), for segmentation runs.
    """

    name = PLUGIN_NAME

    def __init__(self, model: Optional[str], backend: str = "torch", num_heads: Optional[int] = None,
                 threads: Optional[int] = None, device: str = "cpu", head: Optional[str] = None) -> None:
        self.path_or_name, self.backend, self.num_heads, self.threads = model, backend, num_heads, threads
        self.device, self.head_path = device, head
        self.model: Any = None
        self.head: Any = None
        self.error: Optional[BaseException] = None

    def key(self) -> str:
        """What identifies the model of a run (:func:`engine.batch.run_key`): name or path, head, backend."""
        return f"{self.path_or_name} {self.head_path} {self.backend}"

    def setup(self, worker: Any = None) -> None:
        """Load the model and head (called by Dask on each worker)."""
        try:
            if self.threads and self.backend == "torch":
                import torch

                torch.set_num_threads(self.threads)
            if self.head_path is not None and self.head_path.lower().endswith(".onnx"):
                self.head = OnnxSegmenter(self.head_path, device=self.device, threads=self.threads)
                return
            if self.head_path is not None:
                self.head = load_head(self.head_path)
            name = self.path_or_name or encoder_source(self.head.card, self.head_path)
            self.model = load_model(name, num_heads=self.num_heads, backend=self.backend, threads=self.threads,
                                    device=self.device if self.backend == "onnx" else "cpu")
        except Exception as exc:  # kept: each task reports it, the client does not hang on a worker that cannot start
            self.error = exc

    def teardown(self, worker: Any = None) -> None:
        """Release the model and head."""
        self.model = self.head = None


def worker_model() -> tuple[Any, Any]:
    """The model and head of the current Dask worker (:class:`ModelPlugin`): ``(encoder or None, head or None)``.

    Raises:
        Exception: The error that loading them raised on this worker.
    """
    plugin = _distributed().get_worker().plugins[PLUGIN_NAME]
    if plugin.error is not None:
        raise plugin.error
    return plugin.model, plugin.head


def _worker_environ(threads: int) -> dict[str, Any]:
    """Dask configuration of the environment a local worker process starts with.

    Dask sets ``MALLOC_TRIM_THRESHOLD_=65536`` in its workers (to return freed memory to the system at once); glibc then
    maps and unmaps every large array anew, and ``embed_raster`` ran 1.7× slower (0.93 vs 0.54 s for the demo scene
    with the demo model, docs/scale.md): it is left unset. The OpenMP / BLAS pools get the worker's threads (Dask's
    default is 1).
    """
    environ = "distributed.nanny.pre-spawn-environ"
    return {f"{environ}.MALLOC_TRIM_THRESHOLD_": None,
            **{f"{environ}.{name}": threads for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}


@contextlib.contextmanager
def dask_client(scheduler: Optional[str] = None, workers: Optional[int] = None, device: str = "cpu",
                gpus: Optional[Sequence[str]] = None) -> Iterator[tuple[Any, Optional[int]]]:
    """A Dask client: to ``scheduler`` (or ``DASK_SCHEDULER_ADDRESS``), else to a new local cluster.

    Args:
        scheduler: Scheduler address (``tcp://host:8786``); None: ``DASK_SCHEDULER_ADDRESS``, else a local cluster.
        workers: Worker processes of a local cluster (:func:`local_layout`).
        device: The run's device, which decides the GPUs of a local cluster (:func:`local_gpus`).
        gpus: CUDA device ids of a local cluster (None: :func:`local_gpus`): worker i sees GPU ``gpus[i % len(gpus)]``
            alone (``CUDA_VISIBLE_DEVICES``, as dask-cuda's ``LocalCUDACluster`` does), so each worker's model runs
            on its own GPU as ``cuda:0``; one task at a time per worker.

    Yields:
        ``(client, threads per worker)`` (threads None for an existing cluster: each worker's own default).
    """
    distributed = _distributed()
    import dask

    address = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        with distributed.Client(address) as client:
            log.info("Dask scheduler %s (dashboard %s)", address, client.dashboard_link)
            yield client, None
        return
    gpus = local_gpus(device) if gpus is None else list(gpus)
    n, threads = local_layout(workers, gpus=len(gpus))
    python = python_interpreter()
    if python != sys.executable:  # an embedding program (QGIS, qgis_process): workers start from its Python
        multiprocessing.set_executable(python)
    with dask.config.set(_worker_environ(threads)), _local_cluster(distributed, n, gpus) as cluster, \
            distributed.Client(cluster) as client:
        log.info("Dask local cluster: %d workers × %d threads%s (dashboard %s)", n, threads,
                 f", GPUs {', '.join(gpus)}" if gpus else "", client.dashboard_link)
        yield client, threads


def _local_cluster(distributed: Any, workers: int, gpus: list[str]) -> Any:
    """A cluster of ``workers`` processes on this machine, one thread each; pinned to ``gpus`` where given."""
    if not gpus:
        return distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                        dashboard_address=":0", silence_logs=logging.ERROR)
    spec = {f"gpu{i}": {"cls": distributed.Nanny, "options": {
        "nthreads": 1, "host": "127.0.0.1", "env": {"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]}}}
        for i in range(workers)}
    return distributed.SpecCluster(spec, scheduler={"cls": distributed.Scheduler, "options": {
        "host": "127.0.0.1", "dashboard_address": ":0"}}, silence_logs=logging.ERROR)
