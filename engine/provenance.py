"""Where things come from: content hashes of files and the source revision of this checkout.

Head cards, ONNX metadata, model cards and training runs record these so that a product can be traced back to the
exact weights and code that made it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Optional, Union

__all__ = ("file_sha256", "git_sha")

#: The repository root when the engine runs from a source checkout.
_REPO = Path(__file__).resolve().parents[1]


def file_sha256(path: Union[str, "os.PathLike[str]"]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MB blocks.

    Raises:
        OSError: The file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def git_sha(repo: Union[str, "os.PathLike[str]", None] = None) -> Optional[str]:
    """``git rev-parse HEAD`` of ``repo`` (default: the checkout the engine runs from), or None outside git.

    Args:
        repo: A folder inside a git work tree.
    """
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo or _REPO, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None
