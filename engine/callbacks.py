"""Progress and cancellation callbacks of long engine calls.

Every long call (embeddings, clustering, similarity, head fitting, segmentation) takes ``progress`` — called with the
completed fraction 0..1 — and ``is_canceled`` — polled at least once per batch; when it returns True the call raises
:class:`~engine.errors.InferenceCancelled` and its atomic writers leave nothing behind. The QGIS plugin maps them onto
Processing's feedback, the command line onto a tqdm bar.
"""

from __future__ import annotations

from typing import Callable, Optional

from .errors import InferenceCancelled

__all__ = ("CancelFn", "ProgressFn", "check_canceled", "scaled")

#: Called with the completed fraction, 0..1.
ProgressFn = Callable[[float], None]
#: Polled once per batch; True stops the call.
CancelFn = Callable[[], bool]


def check_canceled(is_canceled: Optional[CancelFn], when: str, nothing: str = "no output written") -> None:
    """Raise :class:`~engine.errors.InferenceCancelled` if ``is_canceled`` returns True.

    Args:
        is_canceled: The caller's callback, or None (never cancelled).
        when: Where the call stopped, for the message (``"after fitting k-means"``).
        nothing: What the caller is left with (``"no head written"``).

    Raises:
        InferenceCancelled: The callback returned True.
    """
    if is_canceled is not None and is_canceled():
        raise InferenceCancelled(f"cancelled {when}; {nothing}")


def scaled(progress: Optional[ProgressFn], start: float, end: float) -> ProgressFn:
    """A progress callback that maps 0..1 onto ``start..end`` of ``progress`` (a no-op when it is None)."""
    if progress is None:
        return lambda fraction: None
    return lambda fraction: progress(start + (end - start) * fraction)
