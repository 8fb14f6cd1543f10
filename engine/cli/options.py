"""What several ``msfm`` commands share: the band, inference and region options, the progress bar, model loading."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Optional, Sequence

from tqdm import tqdm

from ..errors import SettingsError
from ..models import Encoder, load_model
from ..outputs import check_outputs
from ..raster import Region
from ..settings import PRECISIONS, InferenceSettings
from ..spectral import Overrides, parse_overrides

__all__ = (
    "DEMO_MODEL",
    "DEMO_RASTER",
    "Progress",
    "add_band_options",
    "add_inference_options",
    "add_overwrite_option",
    "add_region_option",
    "band_overrides",
    "check_cli_outputs",
    "class_names",
    "inference_settings",
    "load_model_from",
    "region_from",
)

REPO = Path(__file__).resolve().parents[2]
#: The bundled real Sentinel-2 L1C scene of ``msfm demo`` (CC0).
DEMO_RASTER = REPO / "demo" / "s2_l1c_virginia_13band_10m.tif"
#: The bundled model, the default of every command that takes ``--model``.
DEMO_MODEL = "smarties-demo-tiny"


def band_overrides(items: Optional[Sequence[str]]) -> Optional[Overrides]:
    """The ``--band`` values as the override mapping of :func:`engine.spectral.resolve_bands`, or None.

    ``["3=red_2", "B8=near_infrared_1", "5=842.5"]`` → ``{3: "red_2", "B8": "near_infrared_1", 5: 842.5}``
    (:func:`engine.spectral.parse_overrides`; one ``--band`` may also hold several items separated by ``;`` or ``,``).

    Raises:
        engine.errors.BandResolutionError: A malformed item (the message shows an example).
    """
    return parse_overrides(";".join(items or ())) or None


def class_names(items: Optional[Sequence[str]]) -> Optional[dict[str, str]]:
    """The ``--class-name`` values as a mapping.

    ``["0=background", "255=road"]`` → ``{"0": "background", "255": "road"}``.

    Raises:
        engine.errors.SettingsError: An item without ``=`` or without a name.
    """
    out = {}
    for item in items or ():
        value, sep, name = item.partition("=")
        if not sep or not name:
            raise SettingsError(f"--class-name takes VALUE=NAME, got {item!r}")
        out[value.strip()] = name.strip()
    return out or None


def add_band_options(p: argparse.ArgumentParser) -> None:
    """Add ``--sensor`` and ``--band`` (read with :func:`band_overrides`)."""
    p.add_argument("--sensor", help="sensor preset id (see `msfm sensors`); guessed from band metadata when omitted")
    p.add_argument(
        "--band", action="append", metavar="BAND=KEY",
        help="override one band's mapping: 1-based index or description = range key or central wavelength in nm "
        "(repeatable), e.g. --band 4=red_2 --band 5=842.5",
    )


def add_overwrite_option(p: argparse.ArgumentParser) -> None:
    """Add ``--overwrite`` (read by :func:`check_cli_outputs` and passed to the engine's ``overwrite=``)."""
    p.add_argument("--overwrite", action="store_true",
                   help="replace outputs that already exist (an input is never replaced, whatever this says)")


def check_cli_outputs(args: argparse.Namespace, outputs: Mapping[str, Optional[str]],
                      inputs: Mapping[str, Optional[str]], suffixes: Mapping[str, Sequence[str]]) -> None:
    """Check every output of a command at once, before a model is loaded (:func:`engine.outputs.check_outputs`).

    The engine functions check their own outputs again; this call also catches two outputs of one command that are
    the same file (``--pca`` equal to the output). A ``--model`` that is a file counts as an input.

    Args:
        args: The parsed options (``--overwrite``, ``--model``).
        outputs: Option name (``"output"``, ``"--pca"``) → path or None.
        inputs: Option name → path or None.
        suffixes: Option name → the suffixes its format accepts.

    Raises:
        engine.errors.OutputError: As :func:`engine.outputs.check_outputs`.
    """
    model = getattr(args, "model", None)
    model_file = {"--model": model} if model and Path(model).is_file() else {}
    check_outputs(outputs, {**inputs, **model_file}, overwrite=args.overwrite, suffixes=suffixes)


def add_region_option(p: argparse.ArgumentParser) -> None:
    """Add ``--bounds`` (read with :func:`region_from`)."""
    p.add_argument(
        "--bounds", nargs=4, type=float, metavar=("LEFT", "BOTTOM", "RIGHT", "TOP"),
        help="process only this box, in the raster's CRS units (rounded outward to whole pixels)",
    )


def region_from(args: argparse.Namespace) -> Optional[Region]:
    """The :class:`engine.raster.Region` of ``--bounds``, or None."""
    return Region(bounds=tuple(args.bounds)) if args.bounds else None


def add_inference_options(p: argparse.ArgumentParser, model_default: Optional[str] = DEMO_MODEL,
                          model_help: str = f"(default {DEMO_MODEL})") -> None:
    """Add the band options, the model and backend, and the tiling/device options (:func:`inference_settings`)."""
    add_band_options(p)
    p.add_argument("--model", default=model_default,
                   help=f"model name (`msfm models list`) or .safetensors path {model_help}")
    p.add_argument("--num-heads", type=int, help="attention heads, if the checkpoint does not say")
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                   help="torch, or onnx: ONNX Runtime (a .onnx --model always uses it; a checkpoint is exported once "
                   "into the ONNX cache)")
    p.add_argument("--tile-size-px", type=int, default=224,
                   help="tile side in model-input pixels, multiple of 16, at most 1024 (default 224)")
    p.add_argument(
        "--overlap-px", type=int, default=112,
        help="overlap of neighbouring tiles in model-input pixels, multiple of 16 (default 112 = half a tile: tile "
        "context then averages out and class maps show no tile-shaped boundaries; 32 is 2.9× faster)",
    )
    p.add_argument("--batch-size", type=int,
                   help="tiles per forward pass (default: 8 on a CPU; on CUDA as many as fit in half the free GPU "
                   "memory, at most 128)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--threads", type=int,
                   help="CPU threads of torch or ONNX Runtime (default: one per physical core)")
    p.add_argument("--precision", choices=list(PRECISIONS), default="auto",
                   help="auto (bf16 where the CPU or GPU has native bf16 — AMX, AVX-512 BF16, Arm BF16, CUDA ≥ 8.0 — "
                   "else fp32; the choice and why are logged), fp32, bf16 (torch in bfloat16) or int8 "
                   "(ONNX Runtime with int8 weights, CPU: the fast path on CPUs without bf16)")
    p.add_argument(
        "--scale", type=float,
        help="model-input pixels per native pixel (2 = upsample 2×); default from the sensor preset "
        "(2 for Sentinel-1/2 and Landsat, as SMARTIES was pretrained on upsampled 10 m imagery; 1 otherwise)",
    )
    p.add_argument("--dtype", choices=["float32", "float16", "int8"], default="float32",
                   help="embedding raster data type: float16 halves the file, int8 (values with a per-cell scale, "
                   "read back by every msfm tool) quarters it")
    p.add_argument("--yes", action="store_true",
                   help="run even when the pre-flight estimate exceeds the limit (100 000 tiles, about 1 h at 30 "
                   "tiles/s)")


def inference_settings(args: argparse.Namespace) -> InferenceSettings:
    """The :class:`engine.InferenceSettings` of the inference options (``--yes``: no tile limit, ``max_tiles=None``).

    Raises:
        engine.errors.SettingsError: A value the settings reject.
    """
    settings = InferenceSettings(
        tile_size_px=args.tile_size_px, overlap_px=args.overlap_px, batch_size=args.batch_size,
        device=args.device, threads=args.threads, scale=args.scale, output_dtype=args.dtype, precision=args.precision,
    )
    return replace(settings, max_tiles=None) if getattr(args, "yes", False) else settings


def load_model_from(args: argparse.Namespace) -> Encoder:
    """The model of ``--model``/``--num-heads``/``--backend`` (a torch model loads on the CPU; the run moves it).

    Raises:
        engine.errors.EngineError: As :func:`engine.models.load_model`.
    """
    backend = getattr(args, "backend", "torch")
    return load_model(args.model, num_heads=args.num_heads, device=args.device if backend == "onnx" else "cpu",
                      backend=backend, threads=getattr(args, "threads", None))


class Progress:
    """A tqdm bar fed with completed fractions (the engine's ``progress`` callback).

    Args:
        desc: The bar's label.
    """

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self.bar: Optional[tqdm] = None  # shown at the first report, so errors found before any work print alone

    def __call__(self, fraction: float) -> None:
        """Move the bar to ``fraction`` (0..1)."""
        if self.bar is None:
            self.bar = tqdm(total=100, desc=self.desc, unit="%", bar_format="{l_bar}{bar}| {elapsed}<{remaining}")
        self.bar.update(round(fraction * 100) - self.bar.n)

    def close(self) -> None:
        """Close the bar."""
        if self.bar is not None:
            self.bar.close()
