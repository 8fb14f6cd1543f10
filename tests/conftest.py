"""Shared test fixtures and constants: the real rasters (../shared and tests/data), models loaded once per session, an
offline Hub cache, and the markers' run conditions.

Markers (declared in pyproject.toml, ``--strict-markers``): ``slow`` tests run only in ``make test-all`` (CI);
``gpu`` tests need a CUDA GPU and are skipped without one; ``network`` tests need the internet and are skipped unless
``MSFM_TEST_NETWORK=1``; ``qgis`` tests need the QGIS Python bindings.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MSFM_SHARED", REPO.parent / "shared"))
DATA = SHARED / "data"
FIXTURES = SHARED / "fixtures"

#: A 96 × 128-px crop of the demo scene (13 Sentinel-2 L1C bands, lagoon shore: ~42 % water), committed with the
#: repository (tests/data/README.md): the default tier's spine runs on it without ../shared.
TINY_S2 = REPO / "tests" / "data" / "s2_l1c_virginia_13band_10m_96x128.tif"

# The real rasters of ../shared/data (its SOURCES.md), as arguments of shared_file(*NAME).
#: Sentinel-2 L1C, 13 bands, 1024 × 1024 px, 10 m, Eastern Shore of Virginia (the demo scene's source).
S2_L1C = ("data", "s2_l1c_13band_10m_virginia.tif")
#: Landsat-8 OLI/TIRS L1, 10 bands, 627 × 603 px, 30 m, Gulf coast (cumulus over the middle third).
L8 = ("data", "l8_l1_10band_30m_gulfcoast.tif")
#: Landsat-8 panchromatic B8 of the same scene, 15 m.
L8_PAN = ("data", "l8_l1_pan_b8_15m_gulfcoast.tif")
#: Landsat-7 RGB (uint8), rotated footprint with a nodata-0 collar, 300 m, Bahamas.
LANDSAT7 = ("data", "landsat7_rgb_byte_bahamas.tif")
#: NAIP R, G, B, NIR (uint8, no band descriptions or wavelengths: needs the ``naip_rgbn`` preset), 934 × 723 px, 5 m.
NAIP = ("data", "naip_rgbn_5m_north_dakota_2020.tif")
#: WorldView-2 B, G, R, NIR1, 300 × 300 px, 1 m, Rotterdam (SpaceNet 6).
WV2_BGRN = ("data", "spacenet6_rotterdam_wv2_bgrn_1m.tif")
#: WorldView-2 panchromatic of the same footprint, 0.5 m.
WV2_PAN = ("data", "spacenet6_rotterdam_wv2_pan_0.5m.tif")
#: WorldView-3 panchromatic, 1300 × 1300 px, EPSG:4326, ≈0.3 m, Las Vegas (SpaceNet 3).
VEGAS_PAN = ("data", "spacenet3_vegas_pan_0.3m.tif")
#: Road label raster (255 = road) on the grid of VEGAS_PAN.
VEGAS_ROADS = ("data", "spacenet3_vegas_road_mask.tif")
#: UAV orthophoto RGB + alpha, 2 cm, Poland.
DRONE = ("data", "drone_ortho_rgba_2cm_poland.tif")
#: BigEarthNet-MM Sentinel-1 VV/VH (dB) patch, 120 × 120 px.
BEN_S1 = ("data", "bigearthnet_mm", "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48_s1_vv_vh.tif")
#: BigEarthNet Sentinel-2 L2A 12-band patch of the same place as BEN_S1.
BEN_S2 = ("data", "bigearthnet_mm", "S2A_MSIL2A_20170613T101031_87_48_s2_12band.tif")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu`` tests without a CUDA GPU and ``network`` tests unless ``MSFM_TEST_NETWORK=1``."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu and not _cuda_available():
        for item in gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (torch sees none)"))
    if os.environ.get("MSFM_TEST_NETWORK") != "1":
        for item in items:
            if item.get_closest_marker("network"):
                item.add_marker(pytest.mark.skip(reason="needs the network (set MSFM_TEST_NETWORK=1)"))


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _offline_hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never touch the network (``network`` tests excepted): the Hub is offline and its cache a fresh folder."""
    if request.node.get_closest_marker("network") is None:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf-cache")))


def shared_file(*parts: str) -> Path:
    """Path of a file under ../shared, skipping the test when the shared folder is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available (set MSFM_SHARED to the shared folder)")
    return path


def ndwi_water(green: np.ndarray, nir: np.ndarray) -> np.ndarray:
    """Open water: NDWI = (green − NIR) / (green + NIR) > 0 (McFeeters 1996); green + NIR = 0 is not water."""
    green, nir = green.astype(np.float64), nir.astype(np.float64)
    return (green - nir) / np.maximum(green + nir, 1) > 0


def water_iou(classes: np.ndarray, water: np.ndarray) -> float:
    """IoU of water when every class is named water or land by majority vote (class 255 is nodata)."""
    valid = classes != 255
    pred = np.zeros(water.shape, bool)
    for c in np.unique(classes[valid]):
        pred[classes == c] = water[classes == c].mean() > 0.5
    return float((pred & water & valid).sum() / ((pred | water) & valid).sum())


# ---------------------------------------------------------------------------------------------------- embedding rasters
def unit_projection(values: np.ndarray, dims: int, seed: int = 0) -> np.ndarray:
    """Embeddings ``values`` float [D, h, w] on ``dims`` seeded orthonormal directions, each cell then of unit length
    (float32 [dims, h, w]): our embeddings in another product's dimensions."""
    basis, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((values.shape[0], dims)))
    x = np.einsum("dhw,dk->khw", values, basis)
    return (x / np.linalg.norm(x, axis=0, keepdims=True)).astype(np.float32)


def write_geotiff(path: Path, data: np.ndarray, profile: dict, **extra: Any) -> Path:
    """Write ``data`` [bands, h, w] as a GeoTIFF on ``profile``'s grid (its data type and band count replaced,
    untiled; ``extra`` overrides profile keys, e.g. ``nodata``)."""
    import rasterio

    meta = {**profile, "count": data.shape[0], "dtype": data.dtype.name, **extra}
    for key in ("blockxsize", "blockysize", "tiled"):
        meta.pop(key, None)
    with rasterio.open(path, "w", **meta) as dst:
        dst.write(data)
    return path


def write_alphaearth(path: Path, values: np.ndarray, profile: dict, *, names: bool = True,
                     nodata_cells: tuple[tuple[int, int], ...] = ()) -> np.ndarray:
    """Write embeddings ``values`` float [D, h, w] in the layout of an AlphaEarth int8 export (docs/inference.md):
    :func:`unit_projection` to 64 dimensions, stored as ``sign(v) · √|v| · 127.5`` in int8 (nodata −128), bands
    described ``A00`` … ``A63`` unless ``names`` is False (then nothing in the file says it is AlphaEarth's).

    Args:
        path: The GeoTIFF to write, on ``profile``'s grid.
        values: Our embeddings of a raster.
        profile: Their file's rasterio profile.
        names: Describe the bands as an AlphaEarth export does.
        nodata_cells: ``(row, col)`` cells written as nodata (−128).

    Returns:
        The unit vectors written, float32 [64, h, w] (before the int8 rounding).
    """
    import rasterio

    unit = unit_projection(values, 64)
    q = np.clip(np.rint(np.sign(unit) * np.sqrt(np.abs(unit)) * 127.5), -127, 127).astype(np.int8)
    for row, col in nodata_cells:
        q[:, row, col] = -128
    write_geotiff(path, q, profile, nodata=-128)
    if names:
        with rasterio.open(path, "r+") as ds:
            ds.descriptions = tuple(f"A{i:02d}" for i in range(64))
    return unit


# ---------------------------------------------------------------------------------------------------- models
#: The session's shared models; after every test they are put back on the CPU in eval mode (an engine run with
#: device "auto" moves its model to the GPU where there is one).
_SHARED_MODELS: list[Any] = []


def _shared(model: Any) -> Iterator[Any]:
    """Register ``model`` as shared; at the end of the session, fail if a test changed its weights."""
    import torch

    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    _SHARED_MODELS.append(model)
    yield model
    _SHARED_MODELS.remove(model)
    after = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    assert not changed, f"a test changed the weights of a shared model ({changed[:3]}…): give it the *_copy fixture"


@pytest.fixture(autouse=True)
def _shared_models_back_on_cpu() -> Iterator[None]:
    yield
    for model in _SHARED_MODELS:
        model.cpu().eval()


@pytest.fixture(scope="session")
def demo_model() -> Iterator[Any]:
    """The bundled ``smarties-demo-tiny`` (D = 192, 6 blocks), loaded once per session, in eval mode on the CPU.

    Shared by every test that asks for it: use it read-only. A test that changes a model (weights, mode, hooks) takes
    :func:`demo_model_copy`.
    """
    from engine.models import load_model

    with pytest.MonkeyPatch.context() as mp:  # the function-scoped offline-Hub fixture does not reach here
        mp.setenv("HF_HUB_OFFLINE", "1")
        model = load_model("smarties-demo-tiny")
    yield from _shared(model)


@pytest.fixture()
def demo_model_copy(demo_model: Any) -> Any:
    """A private copy of :func:`demo_model` that the test may change."""
    return copy.deepcopy(demo_model).cpu().eval()


@pytest.fixture(scope="session")
def random_encoder() -> Iterator[Any]:
    """A small random SMARTIES encoder (D = 64, depth 2, 2 heads; ``init_from_scratch`` seed 0), in eval mode, created
    once per session: for tests of the pipeline, not of the weights. Read-only, like :func:`demo_model`."""
    from engine.models import SmartiesEncoder, init_from_scratch

    yield from _shared(init_from_scratch(SmartiesEncoder(64, 2, 2), seed=0).eval())


# ---------------------------------------------------------------------------------------------------- subprocesses
#: Prepended to subprocess scripts by :func:`run_without_torch`: torch and onnx cannot be imported there, as in a
#: QGIS Python that has onnxruntime only.
HIDE_TORCH = f"""
import sys, importlib.abc
class _Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'onnx'):
            raise ImportError(name + ' is hidden for this test')
sys.meta_path.insert(0, _Hide())
sys.path.insert(0, {str(REPO)!r})
"""


def run_without_torch(script: str, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    """Run a Python ``script`` in a subprocess where torch and onnx are hidden from the import system."""
    return subprocess.run([sys.executable, "-c", HIDE_TORCH + textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env})
