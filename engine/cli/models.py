"""``msfm models list | info | download`` and ``msfm versions`` (versions for bug reports)."""

from __future__ import annotations

import argparse
import json
import platform
from typing import Any

import numpy
import rasterio

from .. import __version__
from ..models import download_model, list_models, model_info
from ..provenance import git_sha

__all__ = ("register",)


def cmd_models(args: argparse.Namespace) -> int:
    """List, describe or download named models."""
    if args.action == "list":
        for spec in list_models():
            info = model_info(spec.name)
            state = "bundled" if info.get("bundled_present") else ("cached" if info.get("cached") else "not available")
            print(f"{spec.name:<40} {state:<14} {spec.description}")
    elif args.action == "info":
        print(json.dumps(model_info(args.name), indent=2, default=str))
    else:
        print(download_model(args.name))
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    """Print the versions of msfm and its dependencies (torch and CUDA when installed)."""
    lines = {"msfm": __version__, "git": git_sha() or "not a git checkout", "python": platform.python_version(),
             "numpy": numpy.__version__, "rasterio": rasterio.__version__,
             "GDAL (rasterio)": rasterio.__gdal_version__}
    try:
        import torch  # reported when installed; the command works without it

        lines["torch"] = torch.__version__
        lines["CUDA"] = f"{torch.version.cuda} (available: {torch.cuda.is_available()})"
    except ImportError:
        lines["torch"] = "not installed"
    for name in ("onnxruntime", "huggingface_hub", "safetensors", "sklearn"):
        try:
            lines[name] = __import__(name).__version__
        except ImportError:
            lines[name] = "not installed"
    for k, v in lines.items():
        print(f"{k:<16} {v}")
    return 0


def register(sub: Any) -> None:
    """Add ``models`` and ``versions`` to the ``msfm`` sub-parsers."""
    p = sub.add_parser("models", help="list, describe or download models")
    msub = p.add_subparsers(dest="action", required=True)
    msub.add_parser("list", help="named models and whether they are available offline")
    for action in ("info", "download"):
        q = msub.add_parser(action, help=f"{action} a named model")
        q.add_argument("name")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("versions", help="versions of msfm and its dependencies (for bug reports)")
    p.set_defaults(func=cmd_versions)
