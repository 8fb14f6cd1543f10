"""``msfm export-onnx``: an encoder, or an encoder with its segmentation head, as an ONNX file."""

from __future__ import annotations

import argparse
from typing import Any

from .. import export, segmentation
from ..errors import SettingsError
from ..models import Encoder, load_model, read_metadata
from ..segmentation import encoder_source
from ..settings import InferenceSettings
from .options import DEMO_MODEL, add_overwrite_option, check_cli_outputs, load_model_from

__all__ = ("register",)


def cmd_export_onnx(args: argparse.Namespace) -> int:
    """Export, then print what the file holds."""
    if args.int8 and args.fp16:
        raise SettingsError("choose --int8 (CPU) or --fp16 (CUDA), not both")
    check_cli_outputs(args, {"output": args.output}, {"--head": args.head}, {"output": (".onnx",)})
    if args.tile_size_px is not None:
        InferenceSettings(tile_size_px=args.tile_size_px, overlap_px=0)  # the tile-size limits of every run
    head = None
    model: Encoder
    if args.head:
        head = segmentation.load_head(args.head)
        model = load_model(args.model or encoder_source(head.card, args.head), num_heads=args.num_heads)
    else:
        args.model = args.model or DEMO_MODEL
        model = load_model_from(args)
    path = export.export(model, args.output, head=head, precision="int8" if args.int8 else "float16" if args.fp16
                         else "float32", tile_size_px=args.tile_size_px, sensor=args.sensor, overwrite=args.overwrite)
    meta = read_metadata(path)
    tile = meta["msfm_tile_size_px"]
    what = (f"{meta['msfm_head_card']['head_type']} head, classes {list(meta['class_names'].values())}; input image "
            f"[B, {len(meta['msfm_head_card']['bands'])}, {tile}, {tile}], output probabilities" if args.head else
            f"inputs image [B, C, {tile}, {tile}] + band_mix [C, 17], outputs cls, grid")
    precision = "int8, " if args.int8 else "float16, " if args.fp16 else ""
    print(f"{path}: {meta['msfm_encoder']} (D={meta['msfm_embed_dim']}, depth {meta['msfm_depth']}), {what}; "
          f"{precision}{path.stat().st_size / 1e6:.1f} MB")
    return 0


def register(sub: Any) -> None:
    """Add ``export-onnx`` to the ``msfm`` sub-parsers."""
    p = sub.add_parser("export-onnx",
                       help="export a SMARTIES encoder (spectral projection in the graph), or an encoder "
                       "with its segmentation head, to ONNX for ONNX Runtime (no torch needed to run it)")
    p.add_argument("output", help="destination .onnx file")
    p.add_argument("--head", help="export this segmentation head (.safetensors) with its encoder: image → class "
                   "probabilities, the head's card in the metadata; `msfm segment` takes the .onnx as the head")
    p.add_argument("--model", help=f"model name or .safetensors path (default {DEMO_MODEL}; with --head, the encoder "
                   "the head's card names)")
    p.add_argument("--num-heads", type=int, help="attention heads, if the checkpoint does not say")
    p.add_argument("--tile-size-px", type=int,
                   help="tile side fixed in the graph (default 224; with --head, the head's training chip size)")
    p.add_argument("--sensor", help="record this preset's resolution and standardisation (Deepness keys)")
    p.add_argument("--int8", action="store_true",
                   help="quantize to int8 for the CPU (ONNX Runtime dynamic; ~2.5× torch on ViT-B, cosine 0.99999 on "
                   "the demo scene)")
    p.add_argument("--fp16", action="store_true", help="convert to float16 for the CUDA execution provider")
    add_overwrite_option(p)
    p.set_defaults(func=cmd_export_onnx)
