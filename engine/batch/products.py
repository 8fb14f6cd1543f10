"""What a batch run leaves for its users: Cloud-Optimized GeoTIFFs, a mosaic VRT per CRS, a STAC collection.

- :func:`write_cog`: one COG per scene (GDAL's COG driver: 256 × 256 internal tiles, smaller for scenes smaller than
  a tile, ZSTD, overviews), converted from
  the engine's row-band GeoTIFF, written atomically (:func:`engine.atomic.atomic_output`). Overviews of float
  embeddings average their cells (nodata ignored); integer rasters take the nearest cell: class maps, and int8
  embeddings (:mod:`engine.maps.quantized`), since an average of per-cell scale exponents means nothing.
- :func:`write_mosaics`: a VRT per CRS and cell size (GDAL VRT format, "VRT -- GDAL Virtual Format" in GDAL's
  documentation): scenes in several UTM zones give one mosaic per zone and are never reprojected silently.
- :func:`write_stac`: a STAC Collection (pystac) with one Item per output: its footprint in WGS 84, the projection
  extension's CRS, shape and transform, the source, model, settings and timings, the COG as its ``data`` asset (and
  the outputs that go with it, a change mask or polygons, as assets of their own), and the mosaics as assets of the
  collection.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import math
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import rasterio
import rasterio.features
import rasterio.shutil
from rasterio.warp import transform_geom

from ..atomic import atomic_output
from ..errors import DependencyError

__all__ = ("COG_MEDIA_TYPE", "Product", "file_digest", "write_cog", "write_mosaics", "write_stac", "write_vrt")

COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
_PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
#: Media types of the outputs that go with a scene's COG (:func:`engine.batch.scene_task` ``companions``).
_MEDIA = {".tif": COG_MEDIA_TYPE, ".gpkg": "application/geopackage+sqlite3"}
_VRT_TYPES = {"float32": "Float32", "float64": "Float64", "int8": "Int8", "uint8": "Byte", "int16": "Int16",
              "uint16": "UInt16", "int32": "Int32", "uint32": "UInt32"}


@dataclass(frozen=True)
class Product:
    """One finished scene of a batch run, as the manifest records it.

    Attributes:
        id: The scene id (:class:`engine.batch.Scene`).
        path: The output COG.
        source: What was read (:attr:`engine.batch.Scene.href`).
        record: The manifest entry: ``bytes``, ``sha256``, ``seconds``, ``tiles``, ``datetime``, ``properties``…
    """

    id: str
    path: Path
    source: str
    record: Mapping[str, Any]


def file_digest(path: Union[str, Path]) -> tuple[int, str]:
    """``(size in bytes, SHA-256 hex digest)`` of a file, read in 1 MiB blocks.

    Raises:
        OSError: The file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return Path(path).stat().st_size, digest.hexdigest()


def write_cog(source: Union[str, Path], output: Union[str, Path]) -> Path:
    """Copy a GeoTIFF into a Cloud-Optimized GeoTIFF with overviews, atomically (an existing output is replaced).

    Args:
        source: A GeoTIFF written by the engine (tags, band descriptions and nodata are kept).
        output: The COG path.

    Returns:
        ``output``.
    """
    with rasterio.open(source) as ds:
        integer = ds.dtypes[0] in ("int8", "uint8", "int16", "uint16", "int32", "uint32")
        # a tile is compressed whole, padding included: a 64 × 64-cell scene in 256 × 256 tiles would compress 16×
        # its size (0.25 s instead of 0.03 s for 192 bands)
        block = min(256, 16 * math.ceil(max(ds.width, ds.height) / 16))
    with atomic_output(output) as tmp:
        rasterio.shutil.copy(
            source, tmp, driver="COG", COMPRESS="ZSTD", LEVEL=1, BLOCKSIZE=block, BIGTIFF="IF_SAFER",
            PREDICTOR="NO" if integer else "FLOATING_POINT",
            OVERVIEW_RESAMPLING="NEAREST" if integer else "AVERAGE",
        )
    return Path(output)


def write_mosaics(products: Sequence[Product], folder: Union[str, Path]) -> list[Path]:
    """Write one VRT per CRS and cell size over the products' COGs (paths relative to the VRT).

    Each VRT band takes the same band of every scene (``ComplexSource`` with the scenes' nodata, so a scene's nodata
    border never hides its neighbour); where scenes overlap, the later one in ``products`` is on top. Files are named
    ``mosaic_<CRS>.vrt`` (``EPSG_32633``), with the cell size appended where one CRS holds several.

    Args:
        products: The finished scenes.
        folder: Where the VRTs go (the outputs' folder).

    Returns:
        The VRT paths, sorted.
    """
    groups: dict[tuple[str, float, float], list[Product]] = defaultdict(list)
    for product in products:
        with rasterio.open(product.path) as ds:
            groups[(ds.crs.to_string(), round(ds.transform.a, 9), round(ds.transform.e, 9))].append(product)
    per_crs: dict[str, int] = defaultdict(int)
    for crs, _, _ in groups:
        per_crs[crs] += 1
    written = []
    for (crs, xres, _), members in sorted(groups.items()):
        name = "mosaic_" + "".join(c if c.isalnum() else "_" for c in crs)
        if per_crs[crs] > 1:
            name += f"_{abs(xres):g}m"
        written.append(write_vrt(members, Path(folder) / f"{name}.vrt"))
    return sorted(written)


def write_vrt(products: Sequence[Product], path: Union[str, Path]) -> Path:
    """Write one VRT over products of one CRS and cell size (paths relative to the VRT), atomically.

    Where products overlap, the later one is on top; each product's nodata is transparent.

    Args:
        products: Products with the same CRS, cell size, band count and data type (the first one's are used).
        path: The ``.vrt`` file; the products' COGs must lie in its folder or below it.

    Returns:
        ``path``.
    """
    path = Path(path)
    members = []
    for product in products:
        with rasterio.open(product.path) as ds:
            members.append((product, {"crs": ds.crs, "transform": ds.transform, "width": ds.width,
                                      "height": ds.height, "count": ds.count, "dtype": ds.dtypes[0],
                                      "nodata": ds.nodata, "descriptions": ds.descriptions}))
    t = members[0][1]["transform"]
    with atomic_output(path) as tmp:
        tmp.write_text(_vrt(members, t.a, t.e, path.parent), encoding="utf-8")
    return path


def _vrt(members: list[tuple[Product, Any]], xres: float, yres: float, folder: Path) -> str:
    first = members[0][1]
    lefts, tops, rights, bottoms = [], [], [], []
    for _, p in members:
        t = p["transform"]
        lefts.append(t.c)
        tops.append(t.f)
        rights.append(t.c + p["width"] * t.a)
        bottoms.append(t.f + p["height"] * t.e)
    left, top = min(lefts), max(tops)
    width = math.ceil(round((max(rights) - left) / xres, 6))
    height = math.ceil(round((min(bottoms) - top) / yres, 6))
    nodata = first["nodata"]
    nodata_text = "" if nodata is None else ("nan" if math.isnan(nodata) else repr(nodata))
    lines = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
             f'  <SRS dataAxisToSRSAxisMapping="1,2">{html.escape(first["crs"].to_wkt())}</SRS>',
             f"  <GeoTransform>{left!r}, {xres!r}, 0.0, {top!r}, 0.0, {yres!r}</GeoTransform>"]
    for band in range(1, first["count"] + 1):
        description = first["descriptions"][band - 1] or ""
        lines.append(f'  <VRTRasterBand dataType="{_VRT_TYPES[first["dtype"]]}" band="{band}">')
        lines.append(f"    <Description>{html.escape(description)}</Description>")
        if nodata_text:
            lines.append(f"    <NoDataValue>{nodata_text}</NoDataValue>")
        for product, p in members:
            t = p["transform"]
            x_off, y_off = (t.c - left) / xres, (t.f - top) / yres
            source = html.escape(str(Path(product.path).resolve().relative_to(folder.resolve())))
            lines += ["    <ComplexSource>",
                      f'      <SourceFilename relativeToVRT="1">{source}</SourceFilename>',
                      f"      <SourceBand>{band}</SourceBand>",
                      f'      <SrcRect xOff="0" yOff="0" xSize="{p["width"]}" ySize="{p["height"]}"/>',
                      f'      <DstRect xOff="{x_off:.6f}" yOff="{y_off:.6f}" xSize="{p["width"]}" '
                      f'ySize="{p["height"]}"/>']
            if nodata_text:
                lines.append(f"      <NODATA>{nodata_text}</NODATA>")
            lines.append("    </ComplexSource>")
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    return "\n".join(lines) + "\n"


def write_stac(products: Sequence[Product], folder: Union[str, Path], mosaics: Sequence[Path], *,
               description: str, title: str = "embeddings") -> Path:
    """Write a self-contained STAC Collection of the outputs (``collection.json`` and one item per scene).

    Args:
        products: The finished scenes.
        folder: The outputs' folder; the collection goes to ``folder/stac/collection.json`` (replaced as a whole).
        mosaics: The mosaic VRTs (:func:`write_mosaics`), added as collection assets.
        description: The collection's description (command, model).
        title: What each output is (its asset's title: "embeddings", "class map"…).

    Returns:
        The collection file.

    Raises:
        engine.errors.DependencyError: pystac is not installed.
    """
    try:
        import pystac
    except ImportError as exc:
        raise DependencyError("writing the STAC collection needs pystac: pip install pystac-core") from exc
    folder = Path(folder)
    items = []
    for product in products:
        with rasterio.open(product.path) as ds:
            footprint = transform_geom(ds.crs, "EPSG:4326", _box(ds.bounds), antimeridian_cutting=True)
            epsg = ds.crs.to_epsg()
            proj = {"proj:code": f"EPSG:{epsg}" if epsg else None, "proj:shape": [ds.height, ds.width],
                    "proj:transform": list(ds.transform)[:6]}
            if not epsg:
                proj["proj:wkt2"] = ds.crs.to_wkt()
        record = product.record
        when = record.get("datetime")
        properties = {**record.get("properties", {}), **proj, "msfm:source": product.source,
                      "msfm:model": record.get("model"), "msfm:settings": record.get("settings"),
                      "msfm:seconds": record.get("seconds"), "msfm:tiles": record.get("tiles"),
                      "msfm:sha256": record.get("sha256"), "msfm:finished": record.get("finished")}
        properties = {name: value for name, value in properties.items() if value is not None and name != "datetime"}
        # STAC needs a time: the acquisition time of the source item, else the processing time
        when = dt.datetime.fromisoformat(when or record["finished"])
        item = pystac.Item(product.id, footprint, list(rasterio.features.bounds(footprint)), when, properties,
                           stac_extensions=[_PROJECTION])
        item.add_asset("data", pystac.Asset(str(Path(product.path).resolve()), media_type=COG_MEDIA_TYPE,
                                            roles=["data"], title=title))
        for name in record.get("companions", {}):  # <id>_mask.tif → asset "mask"
            path = Path(product.path).with_name(name)
            key = path.stem[len(product.id) + 1:] if path.stem.startswith(f"{product.id}_") else path.stem
            item.add_asset(key, pystac.Asset(str(path.resolve()), media_type=_MEDIA.get(path.suffix.lower()),
                                             roles=["data"], title=f"{title}: {key}"))
        items.append(item)
    collection = pystac.Collection("msfm-batch", description, pystac.Extent.from_items(items), license="other")
    collection.add_items(items)
    for mosaic in mosaics:  # relative to stac/collection.json
        collection.add_asset(mosaic.stem, pystac.Asset(f"../{mosaic.name}", media_type="application/xml",
                                                       roles=["data", "mosaic"], title=f"mosaic VRT {mosaic.stem}"))
    # written in a hidden folder beside stac/ (same depth, so relative links hold), then renamed onto it
    root, tmp = folder / "stac", Path(tempfile.mkdtemp(prefix=".stac-partial-", dir=folder))
    try:
        collection.normalize_hrefs(str(tmp))
        collection.make_all_asset_hrefs_relative()
        collection.save(pystac.CatalogType.SELF_CONTAINED)
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / "collection.json"


def _box(bounds: Any, points: int = 16) -> dict[str, Any]:
    """The bounds as a polygon with ``points`` vertices per side, so that its reprojection follows curved edges."""
    left, bottom, right, top = bounds
    corners = [(left, bottom), (right, bottom), (right, top), (left, top), (left, bottom)]
    ring = [(x0 + (x1 - x0) * i / points, y0 + (y1 - y0) * i / points)
            for (x0, y0), (x1, y1) in zip(corners, corners[1:]) for i in range(points)]
    return {"type": "Polygon", "coordinates": [ring + [ring[0]]]}
