"""Exceptions raised by the engine.

Every error derives from :class:`EngineError` and, where it helps callers, from the matching builtin as well
(``BandResolutionError`` is also a ``ValueError``), so code can catch either. Messages name the offending value,
what was expected, and how to fix it.
"""

from __future__ import annotations

__all__ = (
    "BandResolutionError",
    "CheckpointError",
    "EngineError",
    "InferenceCancelled",
    "InputRasterError",
    "ModelNotAvailableError",
)


class EngineError(Exception):
    """Root of every error the engine raises on purpose."""


class BandResolutionError(EngineError, ValueError):
    """A raster band could not be mapped to a SMARTIES spectral range (or the mapping is inconsistent)."""


class CheckpointError(EngineError, ValueError):
    """A checkpoint file has unknown, missing or mis-shaped keys, or cannot be read."""


class ModelNotAvailableError(EngineError, LookupError):
    """A named model is unknown, or not cached while the Hub cannot be reached."""


class InputRasterError(EngineError, ValueError):
    """An input raster cannot be used: unreadable, all nodata, or with invalid settings."""


class InferenceCancelled(EngineError):
    """The caller's ``is_canceled`` callback returned True; nothing was written."""
