"""Exceptions raised by the engine, one class per kind of problem, all under :class:`EngineError`.

Each class also derives from the builtin that fits it (``SettingsError`` is a ``ValueError``, ``DeviceError`` a
``RuntimeError``), so callers can catch either. Messages name the offending value, what was expected and the fix.

Which class to raise:

- :class:`SettingsError` — an argument or setting outside its valid values (``k``, tile sizes, ``shifts``, an output
  path that cannot be written);
- :class:`OutputError` — an output path that would replace an input, another output of the same run or (without
  ``overwrite``) an existing file, or that cannot be written (its folder is missing or read-only);
- :class:`DeviceError` — the requested compute device (CUDA, an ONNX Runtime provider) is not available;
- :class:`CheckpointError` — a weights file is unreadable, or its keys or shapes break the strict rules;
- :class:`ModelMismatchError` — a model that loads fine but does not fit the task: another encoder than the head's,
  an ONNX export for another tile size, an encoder without the block grids a head reads;
- :class:`ModelNotAvailableError` — an unknown model name, or a Hub model that is not cached while offline;
- :class:`BandResolutionError` — a raster band cannot be mapped to a SMARTIES spectral range;
- :class:`InputRasterError` — an input raster cannot be used (unreadable, all nodata, outside the region);
  :class:`LabelError` is its kind for training labels (polygons or a label raster);
- :class:`DependencyError` — an optional package the call needs is not installed (the message has the install line);
- :class:`InferenceCancelled` — the caller's ``is_canceled`` callback returned True; nothing was written.
"""

from __future__ import annotations

__all__ = (
    "BandResolutionError",
    "CheckpointError",
    "DependencyError",
    "DeviceError",
    "EngineError",
    "InferenceCancelled",
    "InputRasterError",
    "LabelError",
    "ModelMismatchError",
    "ModelNotAvailableError",
    "OutputError",
    "SettingsError",
)


class EngineError(Exception):
    """Root of every error the engine raises on purpose."""


class SettingsError(EngineError, ValueError):
    """An argument or setting is outside its valid values, or an output path cannot be written."""


class OutputError(SettingsError):
    """An output path would replace an input, another output or an existing file, or cannot be written."""


class DeviceError(EngineError, RuntimeError):
    """The requested device (a CUDA GPU, an ONNX Runtime execution provider) is not available."""


class CheckpointError(EngineError, ValueError):
    """A checkpoint file has unknown, missing or mis-shaped keys, or cannot be read."""


class ModelMismatchError(EngineError, ValueError):
    """A model that does not fit the task: another encoder than the head's, another tile size or device."""


class ModelNotAvailableError(EngineError, LookupError):
    """A named model is unknown, or not cached while the Hub cannot be reached."""


class BandResolutionError(EngineError, ValueError):
    """A raster band could not be mapped to a SMARTIES spectral range (or the mapping is inconsistent).

    Args:
        message: What went wrong and the fix, in command-line and Python terms.
        unmapped: Indexes (1-based) of the bands that could not be mapped.
        presets: Ids of the sensor presets with as many bands as the raster has, the best guess first: a host
            application (the QGIS plugin) words its own advice from them.
    """

    def __init__(self, message: str, *, unmapped: tuple[int, ...] = (), presets: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.unmapped, self.presets = unmapped, presets


class InputRasterError(EngineError, ValueError):
    """An input raster cannot be used: unreadable, all nodata, or outside the region."""


class LabelError(InputRasterError):
    """Training labels (polygons or a label raster) cannot be used: empty classes, no CRS, no overlap."""


class DependencyError(EngineError, ImportError):
    """An optional package the call needs is not installed; the message says how to install it."""


class InferenceCancelled(EngineError):
    """The caller's ``is_canceled`` callback returned True; nothing was written."""
