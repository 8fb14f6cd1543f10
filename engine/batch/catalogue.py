"""Catalogues: the scenes of a batch run, from a folder, a glob, a list of paths/URLs or a STAC document.

A scene is a raster GDAL can open by name: a local path, or a GDAL virtual path (``/vsicurl/``, ``/vsis3/``…; an
``http(s)://`` URL becomes ``/vsicurl/URL`` and ``s3://bucket/key`` becomes ``/vsis3/bucket/key``, as GDAL documents
in "GDAL Virtual File Systems"). Rasters are opened inside the tasks that process them, never here: reading a
catalogue of a million scenes costs nothing but the listing.
"""

from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from ..errors import DependencyError, InputRasterError, SettingsError

__all__ = ("RASTER_SUFFIXES", "Scene", "gdal_path", "read_catalogue")

#: Files a folder catalogue takes (lower case; other files in the folder are ignored).
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img", ".nc")
#: Media types of STAC assets that hold a raster GDAL reads (the asset is chosen by them when ``asset`` is None).
_RASTER_MEDIA = ("image/tiff", "image/jp2", "application/x-hdf", "application/x-netcdf")
_ID = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Scene:
    """One raster of a catalogue.

    Attributes:
        id: A file-name-safe identifier, unique in the catalogue: the file stem (the relative path where stems
            repeat), or the STAC item id. Outputs are named after it (``<id>.tif``).
        href: What GDAL opens (:func:`gdal_path`).
        datetime: ISO 8601 acquisition time from the STAC item, or None.
        properties: The STAC item's properties (empty for other catalogues), carried into the output catalogue.
        rows: Cell rows ``[first, end)`` of the raster's output grid when the scene is one block of a raster split
            across workers (:func:`engine.batch.batch_embed` ``block_rows``), else None.
    """

    id: str
    href: str
    datetime: Optional[str] = None
    properties: dict[str, Any] = field(default_factory=dict, compare=False)
    rows: Optional[tuple[int, int]] = None


def gdal_path(href: str, base: Optional[Path] = None) -> str:
    """The name GDAL opens for ``href``: URLs through GDAL's virtual file systems, relative paths against ``base``.

    Args:
        href: A path, ``/vsi…/`` path, ``http(s)://`` or ``s3://`` URL, or ``file://`` URL.
        base: Folder that relative paths are relative to (the list file's or STAC document's folder).

    Returns:
        ``/vsicurl/https://…``, ``/vsis3/bucket/key``, ``/vsi…`` unchanged, or a local path.
    """
    if href.startswith(("http://", "https://")):
        return "/vsicurl/" + href
    if href.startswith("s3://"):
        return "/vsis3/" + href[len("s3://"):]
    if href.startswith("file://"):
        href = href[len("file://"):]
    if href.startswith("/vsi"):
        return href
    path = Path(href).expanduser()
    return str(path if path.is_absolute() or base is None else Path(os.path.abspath(base / path)))


def read_catalogue(source: Union[str, Path, Sequence[str]], asset: Optional[str] = None) -> list[Scene]:
    """The scenes of a catalogue, in a stable order.

    Args:
        source: One of
            - a folder: its rasters (:data:`RASTER_SUFFIXES`), recursively, sorted by path;
            - a glob pattern (``"tiles/**/*.tif"``), sorted;
            - one raster file (:data:`RASTER_SUFFIXES`): a catalogue of that scene;
            - a text file (any suffix but ``.json``): one path or URL per line, blank lines and ``#`` comments
              skipped, relative paths relative to the file;
            - a STAC ItemCollection, Catalog, Collection or Item JSON file (read with pystac; catalogues are walked
              recursively), one scene per item: the asset ``asset``, else the item's only raster asset;
            - a sequence of paths/URLs.
        asset: STAC asset key to process (``"visual"``, ``"B04"``…); required when an item has several rasters.

    Returns:
        Scenes with unique ids.

    Raises:
        InputRasterError: An empty catalogue, a missing file, a STAC item without the asset (the message lists the
            item's assets), a JSON file that is not STAC.
        engine.errors.DependencyError: A STAC catalogue without pystac installed.
    """
    if not isinstance(source, (str, Path)):
        scenes = _named([gdal_path(str(s)) for s in source])
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES)
            scenes = _named([str(p) for p in files], root=path)
        elif glob.has_magic(str(source)):
            scenes = _named(sorted(glob.glob(str(path), recursive=True)))
        elif not path.is_file():
            raise InputRasterError(f"catalogue {source} does not exist; give a folder, a glob pattern ('*.tif'), a "
                                   "text file of paths or URLs, or a STAC JSON file")
        elif path.suffix.lower() == ".json":
            scenes = _stac_scenes(path, asset)
        elif path.suffix.lower() in RASTER_SUFFIXES:  # one raster (read as a list of paths, it would not decode)
            scenes = _named([str(path)])
        else:
            lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
            scenes = _named([gdal_path(line, path.parent) for line in lines if line and not line.startswith("#")])
    if not scenes:
        raise InputRasterError(f"catalogue {source} names no raster (rasters are {', '.join(RASTER_SUFFIXES)} files "
                               "in a folder, lines of a text file, or STAC items)")
    ids = [s.id for s in scenes]
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise InputRasterError(f"catalogue {source} names several scenes {twice[0]!r}; outputs are named by scene, "
                               "so give each a different name (STAC item id or file name)")
    return scenes


def _safe(name: str) -> str:
    return _ID.sub("_", name).strip("._") or "scene"


def _named(hrefs: list[str], root: Optional[Path] = None) -> list[Scene]:
    """Scenes named by file stem, or by the path (relative to ``root``) where stems repeat."""
    stems = [_safe(Path(h).stem) for h in hrefs]
    scenes = []
    for href, stem in zip(hrefs, stems):
        if stems.count(stem) > 1:
            parts = Path(href).relative_to(root).with_suffix("").parts if root else Path(href).with_suffix("").parts
            stem = _safe("_".join(parts[-3:]))
        scenes.append(Scene(stem, href))
    return scenes


def _stac_scenes(path: Path, asset: Optional[str]) -> list[Scene]:
    try:
        import pystac
    except ImportError as exc:
        raise DependencyError("reading a STAC catalogue needs pystac: pip install pystac-core") from exc
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("type")
        obj = pystac.ItemCollection.from_file(str(path)) if kind == "FeatureCollection" else pystac.read_file(str(path))
    except Exception as exc:  # pystac raises several kinds for non-STAC JSON
        raise InputRasterError(f"{path} is not a STAC ItemCollection, Catalog, Collection or Item: {exc}") from exc
    if isinstance(obj, pystac.Item):
        items = [obj]
    elif isinstance(obj, pystac.ItemCollection):
        items = list(obj)
    elif isinstance(obj, pystac.Catalog):
        items = list(obj.get_items(recursive=True))
    else:
        raise InputRasterError(f"{path} is a STAC {type(obj).__name__}; give an ItemCollection, Catalog or Item")
    scenes = []
    for item in items:
        key = asset or _raster_asset(item)
        if key not in item.assets:
            raise InputRasterError(f"STAC item {item.id} has no asset {key!r}; its assets: "
                                   f"{', '.join(item.assets)} (choose one with --asset)")
        when = item.datetime or item.common_metadata.start_datetime
        scenes.append(Scene(_safe(item.id), gdal_path(item.assets[key].get_absolute_href() or "", path.parent),
                            when.isoformat() if when else None, dict(item.properties)))
    return scenes


def _raster_asset(item: Any) -> str:
    rasters = [k for k, a in item.assets.items() if (a.media_type or "").split(";")[0] in _RASTER_MEDIA
               and "thumbnail" not in (a.roles or [])]
    if len(rasters) != 1:
        found = ", ".join(f"{k} ({a.media_type or 'no type'})" for k, a in item.assets.items())
        raise SettingsError(f"STAC item {item.id} has {len(rasters)} raster assets ({found}); choose one with --asset")
    return rasters[0]
