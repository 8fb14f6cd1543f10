"""The ``msfm`` command line: band mapping, models, embeddings, maps, segmentation, ONNX export and the offline demo.

Examples::

    msfm bands scene.tif                       # how each band maps onto SMARTIES' spectral ranges
    msfm models list
    msfm embed scene.tif emb.tif --model smarties-vit-b --device cuda
    msfm cluster scene.tif classes.tif --k 8 --resolution pixel --quicklook classes.png
    msfm embed scene.tif emb.tif --bounds 440000 4160000 445000 4165000 --pca pca.tif
    msfm similarity scene.tif sim.tif --point 444345 4168545 --embeddings emb.tif
    msfm train-head scene.tif head.safetensors --polygons labels.gpkg --class-field cover --head upernet
    msfm segment scene.tif head.safetensors classes.tif --polygons classes.gpkg
    msfm classify scene.tif classes.tif --polygons labels.gpkg --class-field cover   # random forest, no model file
    msfm export-onnx demo.onnx --model smarties-demo-tiny   # one graph for every band combination
    msfm export-onnx classes.onnx --head head.safetensors    # encoder + head: segment with onnxruntime alone
    msfm batch embed tiles/ out/ --workers 2   # every scene on Dask: COGs, mosaic VRTs, STAC, resumable
    msfm demo                                  # bundled Sentinel-2 scene + bundled model, fully offline
    msfm train smarties-mae CONFIG             # provided by the training package (entry point, see below)
    msfm eval knn DATASET                      # frozen-encoder kNN / linear-probe / retrieval (training package)

One module per command group: :mod:`~engine.cli.bands` (``bands``, ``sensors``), :mod:`~engine.cli.models`
(``models``, ``versions``), :mod:`~engine.cli.maps` (``embed``, ``cluster``, ``similarity``),
:mod:`~engine.cli.segmentation` (``train-head``, ``segment``), :mod:`~engine.cli.export` (``export-onnx``),
:mod:`~engine.cli.batch` (``batch embed``), :mod:`~engine.cli.demo` (``demo``); the options they share are in
:mod:`~engine.cli.options`. Building the parser never imports torch.

Other installed packages add sub-commands through the ``msfm.commands`` entry-point group (:func:`add_plugin_commands`):
msfm's own ``training`` package registers ``train`` and ``eval`` that way, so the engine never imports it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import signal
import sys
import traceback
from importlib.metadata import entry_points
from typing import Any, Iterator, Optional, Sequence

from .. import __version__
from ..errors import EngineError
from . import bands, batch, classify, demo, export, maps, models, segmentation
from .options import DEMO_MODEL, add_band_options, band_overrides

__all__ = ("DEMO_MODEL", "PLUGIN_COMMANDS", "PLUGIN_GROUP", "add_band_options", "add_plugin_commands",
           "band_overrides", "build_parser", "main")

#: Entry-point group of sub-commands contributed by other packages.
PLUGIN_GROUP = "msfm.commands"
#: Sub-commands known to come from a plugin package, and what provides them (for the "not installed" message).
PLUGIN_COMMANDS = {
    "train": "the msfm training package (training/, SMARTIES MAE / X-STARS pretraining)",
    "eval": "the msfm training package (training/, kNN / linear-probe / cross-sensor retrieval evaluation)",
}
_INSTALL_HINT = (
    "install msfm from a source checkout with its training dependencies: `make setup`, or "
    "`pip install -r requirements.txt && pip install -e '.[train]'`"
)
#: The command groups, in the order ``msfm --help`` lists them.
_GROUPS = (bands, models, maps, segmentation, classify, export, batch, demo)


def _unavailable(sub: Any, name: str, message: str) -> None:
    """Make ``msfm NAME ...`` print ``message`` and exit with status 2 (plugin missing or broken)."""

    def run(args: argparse.Namespace) -> int:
        print(f"msfm {name}: {message}", file=sys.stderr)
        return 2

    parser = sub.choices.get(name)
    if parser is None:  # (a plugin that failed half-way may have added its parser already: reuse it)
        parser = sub.add_parser(name, help="(not available) " + message.split(";")[0], add_help=False)
        parser.add_argument("_rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def _entry_points(group: str) -> list[Any]:
    try:
        return list(entry_points(group=group))
    except TypeError:  # Python 3.9: entry_points() returns a dict of groups
        return list(entry_points().get(group, []))


def add_plugin_commands(sub: Any) -> None:
    """Add the sub-commands registered under the ``msfm.commands`` entry-point group.

    An entry point ``NAME = "module:function"`` (in the providing package's ``pyproject.toml``, e.g. ``train =
    "training.cli:register"``) is loaded and called as ``function(subparsers)``; it adds the sub-command ``NAME``
    with ``set_defaults(func=...)`` (a callable ``func(args) → exit status``) and should import nothing heavy. An entry
    point that fails to load, or a name of :data:`PLUGIN_COMMANDS` nobody provides, becomes a sub-command that says
    why and how to install it (exit status 2). Built-in sub-commands cannot be replaced.

    Args:
        sub: The ``argparse`` sub-parsers action of the ``msfm`` parser.
    """
    for ep in sorted(_entry_points(PLUGIN_GROUP), key=lambda e: e.name):
        if ep.name in sub.choices:
            logging.getLogger(__name__).warning("entry point %s = %s ignored: `msfm %s` already exists", ep.name,
                                                ep.value, ep.name)
            continue
        try:
            ep.load()(sub)
        except Exception as exc:  # a broken plugin must not break the other commands
            _unavailable(sub, ep.name, f"its provider {ep.value} failed to load ({type(exc).__name__}: {exc}); "
                         + _INSTALL_HINT)
    for name, what in PLUGIN_COMMANDS.items():
        if name not in sub.choices:
            _unavailable(sub, name, f"comes with {what}, which is not installed here; {_INSTALL_HINT}")


def build_parser() -> argparse.ArgumentParser:
    """The ``msfm`` argument parser: every command group, then the plugin commands."""
    parser = argparse.ArgumentParser(prog="msfm", description="Multi-sensor foundation models for GIS rasters.")
    parser.add_argument("--version", action="version", version=f"msfm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    parser.add_argument("--debug", action="store_true", help="print the Python traceback of errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in _GROUPS:
        group.register(sub)
    add_plugin_commands(sub)
    return parser


class _Stopped(BaseException):
    """A termination signal (``SIGTERM``, ``SIGHUP``) raised as an exception, so that partial outputs are removed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _signals_stop_cleanly() -> Iterator[None]:
    """Turn ``SIGTERM``/``SIGHUP`` (``kill``, ``timeout``, SLURM, systemd, a closed terminal) into :class:`_Stopped`.

    The exception unwinds like Ctrl-C does, through every :func:`engine.atomic.atomic_output`, so nothing half-written
    stays behind. A second signal during that clean-up is ignored. Handlers are restored on exit.
    """

    def stop(signum: int, frame: Any) -> None:
        signal.signal(signum, signal.SIG_IGN)
        raise _Stopped(signum)

    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)  # (Windows has no SIGHUP)
        if signum is not None:
            with contextlib.suppress(ValueError):  # not the main thread: leave signals to the host
                previous[signum] = signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _user_error(exc: BaseException) -> Optional[str]:
    """The one-line message of an error the user can cause and fix, or None for a bug."""
    if isinstance(exc, EngineError):
        return str(exc)
    text = str(exc)
    chain: list[BaseException] = []
    link: Optional[BaseException] = exc
    while link is not None and link not in chain:  # GDAL reports ENOSPC in the exception before "Write failed"
        chain.append(link)
        link = link.__cause__ or link.__context__
    if any((isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in str(e) for e in chain):
        return ("no space left on the device; free some space or write the outputs to another disk (partial outputs "
                "were removed)")
    if isinstance(exc, OSError):
        what = exc.strerror or text
        return f"{what}: {exc.filename}" if exc.filename else what
    if type(exc).__module__.partition(".")[0] == "rasterio":  # RasterioError and GDAL's CPLE_* errors
        return f"GDAL could not read or write a raster: {text}"
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``msfm`` console script; returns the exit status.

    Exit status: 0 success; 2 an error the user can fix (bad option, input or output; one line on stderr, the
    traceback only with ``--debug``); 1 an internal error (a bug: please report it with the ``--debug`` output);
    130 Ctrl-C, 128 + N a termination signal N (partial outputs removed in both cases); 141 the reader of the output
    went away (``msfm bands x | head``).
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        with _signals_stop_cleanly():
            return int(args.func(args))
    except KeyboardInterrupt:
        print("msfm: interrupted; partial outputs were removed", file=sys.stderr)
        return 130
    except _Stopped as stop:
        print(f"msfm: stopped by {signal.Signals(stop.signum).name}; partial outputs were removed", file=sys.stderr)
        return 128 + stop.signum
    except BrokenPipeError:
        # the reader stopped reading (`| head`): silence the final flush of stdout, exit as a SIGPIPE'd tool would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        message = _user_error(exc)
        if message is not None:
            print(f"msfm: error: {message}", file=sys.stderr)
            return 2
        print(f"msfm: internal error ({type(exc).__name__}: {exc}); rerun with --debug for the traceback and please "
              "report it", file=sys.stderr)
        return 1
