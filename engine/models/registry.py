"""Named SMARTIES weights: where they live (Hugging Face Hub or bundled), and how to get a local file.

Every function that takes a model name also takes a local ``.safetensors`` file or a folder holding exactly one
``.safetensors`` file (plus an optional ``config.json``), so an offline machine can always point at a file. A DINO /
X-STARS ``.pth`` checkpoint (or a folder holding exactly one) works too; X-STARS weights are distributed outside the
Hub (docs/xstars.md §6), so they have no registry entry.

Hub downloads go through :func:`huggingface_hub.hf_hub_download` and its cache. ``huggingface_hub`` reads its
environment (``HF_HUB_OFFLINE``, ``HF_HUB_CACHE``) once at import time; this module reads ``os.environ`` at call
time instead and passes ``cache_dir=`` and ``local_files_only=True`` explicitly, so a setting changed after import
(tests, the QGIS plugin) is honoured and an offline lookup never touches the network.

Sources: docs/smarties.md §1.4 (sizes), §1.7 (fine-tuned checkpoints), §1.8 (Hub repos)
(licence apache-2.0 from the ViT-L model card). The Hub commit hashes could not be looked up offline, so every entry
tracks ``revision="main"``; :func:`download_model` logs the commit it resolved and :func:`model_info` reports the
commit of the cached snapshot.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import CheckpointError, ModelNotAvailableError
from .dino_checkpoint import dino_checkpoint_info, is_dino_checkpoint
from .smarties_checkpoint import inspect_checkpoint

__all__ = (
    "ModelSpec",
    "download_model",
    "get_model_spec",
    "list_models",
    "model_info",
    "resolve_weights",
    "snapshot_commit",
)

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Folder of the weights shipped inside the package (``engine/weights/``); tests may point it elsewhere.
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"

_PAPER = (
    "Sumbul, Xu, Dalsasso, Tuia. SMARTIES: Spectrum-Aware Multi-Sensor Auto-Encoder for Remote Sensing Images. "
    "ICCV 2025, arXiv:2506.19585"
)
_LICENSE = "apache-2.0"
_FINETUNED_REPO = "gsumbul/SMARTIES-v1-finetuned-models"
_TRUE = {"1", "true", "yes", "on"}
_SNAPSHOT_RE = re.compile(r"[\\/]snapshots[\\/]([0-9a-f]{40})[\\/]")


@dataclass(frozen=True)
class ModelSpec:
    """One named set of SMARTIES weights.

    Attributes:
        name: Stable lowercase id used on the command line (``"smarties-vit-b"``).
        family: Model family (``"smarties"``).
        repo_id: Hugging Face repository, or None for bundled-only weights.
        filename: File name inside the repository (or of the bundled file).
        revision: Hub branch, tag or commit to download (``"main"``: the commit is logged at download time).
        num_heads: Attention heads (not stored in the tensors, so it is recorded here).
        embed_dim: Token dimension D.
        depth: Transformer blocks.
        description: One line for ``msfm models list``.
        license: SPDX id of the weights' licence.
        paper: Citation.
        bundled: File name inside ``engine/weights/`` for weights shipped with the package, else None.
        size_mb: Approximate file size in MB (10⁶ bytes), for download prompts.
        patch_size: Patch side p in pixels.
        head: Head variant of a fine-tuned checkpoint (``"linear"``, ``"linprobe"``, ``"segmentation"``) or None.
        num_classes: Output classes of the head, or None.
        filename_verified: False when the file name is inferred from the spec and was never seen on the Hub.
        sha256: Expected SHA-256 of the file when known (None: not pinned yet).
    """

    name: str
    family: str = "smarties"
    repo_id: Optional[str] = None
    filename: str = ""
    revision: str = "main"
    num_heads: int = 12
    embed_dim: int = 768
    depth: int = 12
    description: str = ""
    license: str = _LICENSE
    paper: str = _PAPER
    bundled: Optional[str] = None
    size_mb: Optional[float] = None
    patch_size: int = 16
    head: Optional[str] = None
    num_classes: Optional[int] = None
    filename_verified: bool = True
    sha256: Optional[str] = None

    @property
    def is_bundled(self) -> bool:
        """True for weights shipped inside the package."""
        return self.bundled is not None


def _encoder_mb(dim: int, depth: int, patch: int = 16, tokens: int = 197) -> float:
    """fp32 size of an encoder in MB (docs/smarties.md §1.4 counts: 88,563,456 values for ViT-B)."""
    per_block = 4 * dim + (3 * dim * dim + 3 * dim) + (dim * dim + dim) + 2 * (4 * dim * dim) + 4 * dim + dim
    values = dim + tokens * dim + 17 * (patch * patch * dim + dim) + depth * per_block + 2 * dim
    return round(values * 4 / 1e6, 1)


def _finetuned(name: str, head: str, classes: int, dataset: str, sources: int = 1) -> ModelSpec:
    large = "-vitl-" in name
    dim, depth, heads = (1024, 24, 16) if large else (768, 12, 12)
    in_features = sources * dim
    head_values = {"linear": classes * in_features + classes, "linprobe": 2 * in_features + classes * in_features
                   + classes, "segmentation": classes * in_features + classes}[head]
    return ModelSpec(
        name=name,
        repo_id=_FINETUNED_REPO,
        filename=f"{name}.safetensors",
        num_heads=heads,
        embed_dim=dim,
        depth=depth,
        description=f"SMARTIES-v1 ViT-{'L' if large else 'B'} with a {head} head for {dataset} "
        f"({classes} classes; file name from the paper's naming, not verified on the Hub)",
        size_mb=round(_encoder_mb(dim, depth) + head_values * 4 / 1e6, 1),
        head=head,
        num_classes=classes,
        filename_verified=False,
    )


_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="smarties-vit-b",
        repo_id="gsumbul/SMARTIES-v1-ViT-B",
        filename="smarties-v1-vitb.safetensors",
        num_heads=12,
        embed_dim=768,
        depth=12,
        description="SMARTIES-v1 ViT-B/16 pretrained encoder (86 M params, D=768); file may also hold the MAE "
        "decoder (354 MB encoder-only, 466 MB with decoder)",
        size_mb=466.0,
    ),
    ModelSpec(
        name="smarties-vit-l",
        repo_id="gsumbul/SMARTIES-v1-ViT-L",
        filename="smarties-v1-vitl.safetensors",
        num_heads=16,
        embed_dim=1024,
        depth=24,
        description="SMARTIES-v1 ViT-L/16 pretrained encoder (307 M params, D=1024); file may also hold the MAE "
        "decoder (1228 MB encoder-only, 1340 MB with decoder)",
        size_mb=1340.0,
    ),
    ModelSpec(
        name="smarties-demo-tiny",
        repo_id=None,
        filename="smarties-demo-tiny.safetensors",
        num_heads=3,
        embed_dim=192,
        depth=6,  # the recipe default (training/recipes/smarties_mae.py); model_info reads the file
        description="Small SMARTIES-architecture ViT-Tiny-like encoder (D=192, patch 16) trained by this project, "
        "bundled (float16) for demos and CPU tests; not the paper's weights",
        bundled="smarties-demo-tiny.safetensors",
        size_mb=round(_encoder_mb(192, 6) / 2, 1),  # float16 file
    ),
    _finetuned("smarties-v1-vitb-eurosat-finetune", "linear", 10, "EuroSAT"),
    _finetuned("smarties-v1-vitl-eurosat-finetune", "linear", 10, "EuroSAT"),
    _finetuned("smarties-v1-vitb-bigearthnets2-finetune", "linear", 19, "BigEarthNet-S2"),
    _finetuned("smarties-v1-vitl-bigearthnets2-finetune", "linear", 19, "BigEarthNet-S2"),
    _finetuned("smarties-v1-vitl-resisc45-finetune", "linear", 45, "RESISC-45"),
    _finetuned("smarties-v1-vitb-eurosat-linprobe", "linprobe", 10, "EuroSAT"),
    _finetuned("smarties-v1-vitl-eurosat-linprobe", "linprobe", 10, "EuroSAT"),
    _finetuned("smarties-v1-vitb-bigearthnets1-linprobe", "linprobe", 19, "BigEarthNet-S1"),
    _finetuned("smarties-v1-vitl-bigearthnets1-linprobe", "linprobe", 19, "BigEarthNet-S1"),
    _finetuned("smarties-v1-vitb-bigearthnetmm-linprobe", "linprobe", 19, "BigEarthNet S1+S2", sources=2),
    _finetuned("smarties-v1-vitl-bigearthnetmm-linprobe", "linprobe", 19, "BigEarthNet S1+S2", sources=2),
    _finetuned("smarties-v1-vitb-dfc2020-linprobe", "segmentation", 8, "DFC2020 segmentation"),
)
_BY_NAME = {spec.name: spec for spec in _SPECS}


# ---------------------------------------------------------------------------------------------------- lookup
def list_models() -> list[ModelSpec]:
    """All registered models, pretrained encoders first.

    Returns:
        The specs in registry order.
    """
    return list(_SPECS)


def get_model_spec(name: str) -> ModelSpec:
    """The spec of a registered model.

    Args:
        name: Registry name (``"smarties-vit-b"``, case-insensitive) or a Hub repo id
            (``"gsumbul/SMARTIES-v1-ViT-B"``) of a pretrained encoder.

    Returns:
        The matching spec.

    Raises:
        engine.errors.ModelNotAvailableError: Unknown name; the message lists the close names.
    """
    key = str(name).strip()
    spec = _BY_NAME.get(key) or _BY_NAME.get(key.lower())
    if spec is not None:
        return spec
    by_repo = [s for s in _SPECS if s.repo_id and s.repo_id.lower() == key.lower() and s.repo_id != _FINETUNED_REPO]
    if len(by_repo) == 1:
        return by_repo[0]
    close = difflib.get_close_matches(key.lower(), list(_BY_NAME), n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"known models: {', '.join(_BY_NAME)}."
    raise ModelNotAvailableError(
        f"unknown model {name!r}; {hint} Run `msfm models list` for all names, or pass the path of a .safetensors "
        "file (or of a folder holding one)."
    )


# ---------------------------------------------------------------------------------------------------- environment
def _hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` as set *now* (huggingface_hub itself only reads it at import time)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def _hub_cache_dir() -> Path:
    """The Hub cache folder as set *now*, with huggingface_hub's precedence of variables."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def snapshot_commit(path: PathLike) -> Optional[str]:
    """The Hub commit hash of a file inside the Hub cache (``.../snapshots/<40-hex commit>/<file>``).

    Args:
        path: A path returned by :func:`resolve_weights` / :func:`download_model`.

    Returns:
        The commit hash, or None when the path is not in a Hub snapshot folder.
    """
    match = _SNAPSHOT_RE.search(str(path))
    return match.group(1) if match else None


def _blob_sha256(path: Path) -> Optional[str]:
    """SHA-256 of a cached LFS file, read from the blob name the snapshot link points to (no hashing)."""
    try:
        name = Path(os.path.realpath(path)).name
    except OSError:
        return None
    return name if re.fullmatch(r"[0-9a-f]{64}", name) else None


def _unavailable_message(spec: ModelSpec, reason: str) -> str:
    size = f" (~{spec.size_mb:.0f} MB)" if spec.size_mb else ""
    return (
        f"model {spec.name!r} is not available locally: {reason}. On a machine with internet access run "
        f"`msfm models download {spec.name}`{size} (or `HF_HUB_OFFLINE=0 msfm models download {spec.name}`), then "
        f"copy the Hugging Face cache folder, or copy the file {spec.filename} and pass its path (or its folder) "
        f"instead of the name. Expected cache folder: {_hub_cache_dir()}."
    )


def _hub_errors() -> tuple[type[BaseException], ...]:
    """huggingface_hub's 'not cached' error classes (module moved between versions)."""
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # huggingface_hub < 0.23
        from huggingface_hub.utils import LocalEntryNotFoundError
    return (LocalEntryNotFoundError, FileNotFoundError)


def _cached_file(spec: ModelSpec) -> Optional[Path]:
    """The cached Hub file of a spec, or None; never touches the network."""
    from huggingface_hub import hf_hub_download

    assert spec.repo_id is not None
    try:
        path = hf_hub_download(
            spec.repo_id,
            spec.filename,
            revision=spec.revision,
            cache_dir=str(_hub_cache_dir()),
            local_files_only=True,
        )
    except _hub_errors():
        return None
    return Path(path)


def _bundled_path(spec: ModelSpec) -> Path:
    assert spec.bundled is not None
    return Path(WEIGHTS_DIR) / spec.bundled


# ---------------------------------------------------------------------------------------------------- resolution
#: Weight files a folder may hold: SMARTIES / DINO safetensors, DINO / X-STARS torch checkpoints.
_WEIGHT_SUFFIXES = (".safetensors", ".pth")


def _resolve_local(path: Path) -> Path:
    if path.is_file():
        return path
    candidates = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ModelNotAvailableError(
            f"folder {path} holds no .safetensors or .pth file; pass the checkpoint file itself or a folder with "
            "exactly one weights file (plus an optional config.json)"
        )
    raise ModelNotAvailableError(
        f"folder {path} holds {len(candidates)} weight files ({', '.join(p.name for p in candidates)}); pass "
        "the path of the one to use"
    )


def _looks_like_path(text: str) -> bool:
    return text.endswith(_WEIGHT_SUFFIXES) or os.sep in text or "/" in text or text.startswith((".", "~"))


def resolve_weights(name_or_path: Union[str, PathLike], download: bool = True) -> Path:
    """A local ``.safetensors`` file for a model name, a file path or a folder.

    Order: an existing file or folder on disk; a registry name (or pretrained Hub repo id); bundled names map to
    ``engine/weights/<file>``; Hub names are looked up in the Hub cache and downloaded when allowed.

    Args:
        name_or_path: Registry name, ``.safetensors`` path, or a folder with exactly one ``.safetensors`` file.
        download: Allow a download when a Hub model is not cached (ignored while ``HF_HUB_OFFLINE=1``).

    Returns:
        Path of the weights file (inside the Hub cache for Hub models).

    Raises:
        engine.errors.ModelNotAvailableError: Unknown name (close names listed), a path that does not exist, a
            folder without exactly one ``.safetensors`` file, a bundled file that is missing, or a Hub model that is
            not cached while offline or with ``download=False`` (the message gives ``msfm models download NAME``),
            or a failed download.
    """
    text = os.fspath(name_or_path)
    if not text.strip():
        raise ModelNotAvailableError(
            "the model is empty; give a name from `msfm models list` (e.g. smarties-demo-tiny) or a weights file"
        )
    candidate = Path(text).expanduser()
    if candidate.exists():
        return _resolve_local(candidate)
    if not isinstance(name_or_path, str) or (_looks_like_path(text) and not _is_repo_id(text)):
        raise ModelNotAvailableError(
            f"weights file or folder {candidate} does not exist; check the path, or give a registered model name "
            "(`msfm models list`)"
        )
    spec = get_model_spec(text)
    if spec.is_bundled:
        path = _bundled_path(spec)
        if path.is_file():
            return path
        raise ModelNotAvailableError(
            f"the bundled model {spec.name!r} is missing: {path} does not exist (it is produced by the project's "
            "training code and shipped with the package). Reinstall msfm, or pass the path of a .safetensors file."
        )
    cached = _cached_file(spec)
    if cached is not None:
        logger.debug("%s: using cached %s (commit %s)", spec.name, cached, snapshot_commit(cached))
        return cached
    if _hub_offline():
        raise ModelNotAvailableError(_unavailable_message(spec, "it is not in the Hub cache and HF_HUB_OFFLINE=1"))
    if not download:
        raise ModelNotAvailableError(_unavailable_message(spec, "it is not in the Hub cache and download=False"))
    return _download(spec)


def _is_repo_id(text: str) -> bool:
    return any(s.repo_id and s.repo_id.lower() == text.lower() for s in _SPECS)


def _download(spec: ModelSpec) -> Path:
    from huggingface_hub import hf_hub_download

    assert spec.repo_id is not None
    logger.info("downloading %s from %s@%s (~%s MB)", spec.filename, spec.repo_id, spec.revision, spec.size_mb)
    try:
        path = Path(
            hf_hub_download(spec.repo_id, spec.filename, revision=spec.revision, cache_dir=str(_hub_cache_dir()))
        )
    except Exception as exc:  # network, auth, 404: huggingface_hub's classes vary by version
        unverified = (
            f" The file name {spec.filename!r} is inferred from the paper and may differ on the Hub: browse "
            f"https://huggingface.co/{spec.repo_id}/tree/{spec.revision}, download the file by hand and pass its path."
            if not spec.filename_verified
            else ""
        )
        raise ModelNotAvailableError(
            _unavailable_message(spec, f"download failed ({type(exc).__name__}: {exc})") + unverified
        ) from exc
    logger.info(
        "%s: %s@%s resolved to commit %s -> %s", spec.name, spec.repo_id, spec.revision, snapshot_commit(path), path
    )
    return path


def download_model(name: str) -> Path:
    """Make a registered model available locally (download it into the Hub cache if needed).

    The resolved Hub commit is logged at INFO level and can be read back with :func:`snapshot_commit` or
    :func:`model_info` (``"commit"``). The file's keys are checked (header only) after the download.

    Args:
        name: Registry name.

    Returns:
        The local weights file.

    Raises:
        engine.errors.ModelNotAvailableError: Unknown name, bundled file missing, offline and not cached, or the
            download failed.
        engine.errors.CheckpointError: The downloaded file breaks the strict key rule.
    """
    spec = get_model_spec(name)
    if spec.is_bundled or _hub_offline():
        path = resolve_weights(spec.name, download=False)
    else:
        path = _download(spec)
    layout, _ = inspect_checkpoint(path)
    logger.info(
        "%s ready at %s (commit %s, layout %s, D=%d, depth %d)", spec.name, path, snapshot_commit(path) or "-",
        layout.layout, layout.geometry.embed_dim, layout.geometry.depth,
    )
    return path


def model_info(name: Union[str, PathLike]) -> dict[str, Any]:
    """Everything known about a model without touching the network.

    Args:
        name: Registry name, or a ``.safetensors`` / ``.pth`` file, or a folder.

    Returns:
        For a name: the :class:`ModelSpec` fields plus ``available`` (bool: a local file exists), ``cached``
        (bool: Hub file in the Hub cache), ``bundled_present`` (bool: bundled file exists), ``status`` (one sentence),
        ``local_path`` (str or None), ``commit`` (Hub snapshot commit or None), ``sha256`` (from the cache blob
        name when available) and, when a local file exists, ``layout`` and ``geometry`` read from its header
        (``error`` instead when the file breaks the key rule). For a path: ``name``, ``local_path``, ``available``,
        ``status``, ``layout``, ``geometry``, ``config``; for a DINO / X-STARS file also ``family`` (``"dino"``),
        ``networks``, ``head``, ``epoch``, ``input_norm`` and ``args``
        (:func:`engine.models.dino_checkpoint_info`).

    Raises:
        engine.errors.ModelNotAvailableError: Unknown name, or a path that does not exist.
        engine.errors.CheckpointError: A local file that cannot be read or breaks the strict key rule.
    """
    text = os.fspath(name)
    local = Path(text).expanduser()
    path: Optional[Path]
    if local.exists() or not isinstance(name, str) or (_looks_like_path(text) and not _is_repo_id(text)):
        path = resolve_weights(local, download=False)
        if is_dino_checkpoint(path):
            return dino_checkpoint_info(path)
        info: dict[str, Any] = {"name": str(path), "local_path": str(path), "available": True, "status": "local file"}
        layout, config = inspect_checkpoint(path)
        info.update(_layout_fields(layout))
        info["config"] = config
        return info

    spec = get_model_spec(text)
    info = dataclasses.asdict(spec)
    if spec.is_bundled:
        path = _bundled_path(spec)
        if path.is_file():
            status = f"bundled with the package: {path}"
        else:
            status = (
                f"bundled file not present yet ({path} is missing; it is produced by the project's training code)"
            )
            path = None
    else:
        path = _cached_file(spec)
        if path is not None:
            status = f"cached (commit {snapshot_commit(path)}): {path}"
        else:
            status = f"not downloaded; run `msfm models download {spec.name}` (~{spec.size_mb:.0f} MB)"
    info.update(
        available=path is not None,
        cached=path is not None and not spec.is_bundled,
        bundled_present=path is not None and spec.is_bundled,
        status=status,
        local_path=str(path) if path else None,
        commit=snapshot_commit(path) if path else None,
    )
    if path is not None:
        info["sha256"] = info["sha256"] or _blob_sha256(path)
        try:
            layout, config = inspect_checkpoint(path)
        except CheckpointError as exc:
            info["error"] = str(exc)
        else:
            info.update(_layout_fields(layout))
            info["config"] = config
    return info


def _layout_fields(layout: Any) -> dict[str, Any]:
    geometry = layout.geometry
    return {
        "layout": layout.layout,
        "global_pool": layout.global_pool,
        "geometry": {
            "embed_dim": geometry.embed_dim,
            "depth": geometry.depth,
            "patch_size": geometry.patch_size,
            "grid_size": geometry.grid_size,
            "mlp_ratio": geometry.mlp_ratio,
        },
        "num_classes": layout.num_classes,
    }
