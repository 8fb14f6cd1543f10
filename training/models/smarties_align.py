"""The step module of ``smarties-align`` (:mod:`training.recipes.smarties_align`): student MAE, frozen domain teacher
and MSAD in one ``nn.Module``.

One forward computes the whole loss, so that DDP sees every parameter use (X-STARS B14)::

    L = mae_weight · L_MAE(student, new-sensor view) + alpha · L_MSAD(teacher(old view), student(new view))

The student is a :class:`training.models.mae.SmartiesMAE`; the domain teacher a frozen copy of its initial encoder
(:class:`engine.models.SmartiesEncoder`, always in eval mode, run under ``torch.no_grad``); MSAD is
:class:`training.losses.msad.MSADLoss` with one pair (``aggregation="single"``) on the all-token outputs after the
final LayerNorm (``encoder.encode(x, bands, "tokens")``).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from engine.models import SmartiesEncoder

from ..losses.msad import MSADLoss
from .mae import SmartiesMAE

__all__ = ("SmartiesAlignModel",)


class SmartiesAlignModel(nn.Module):
    """Student MAE, frozen domain teacher and MSAD loss (with its heads), in one module (see the module docstring).

    Args:
        student: The trainable SMARTIES MAE (encoder + decoder).
        teacher: The domain teacher, a copy of the initial encoder: set frozen and kept in eval mode here.
        msad: MSAD loss with ``aggregation="single"`` (its heads are trained in ``paper`` mode).
        alpha: Weight of MSAD.
        mae_weight: Weight of the MAE loss (0 = not computed).

    Raises:
        ValueError: The teacher shares parameter storage with the student, its width differs, or ``msad`` does not
            aggregate a single pair.
    """

    def __init__(self, student: SmartiesMAE, teacher: SmartiesEncoder, msad: MSADLoss, alpha: float = 0.1,
                 mae_weight: float = 1.0) -> None:
        super().__init__()
        trained = {p.data_ptr() for p in student.parameters()}
        if any(p.data_ptr() in trained for p in teacher.parameters()):
            raise ValueError("the domain teacher shares parameter storage with the student; give it a copy "
                             "(copy.deepcopy(student.encoder))")
        if teacher.embed_dim != student.embed_dim or msad.heads.embed_dim != student.embed_dim:
            raise ValueError(f"widths differ: student {student.embed_dim}, teacher {teacher.embed_dim}, MSAD heads "
                             f"{msad.heads.embed_dim}")
        if msad.aggregation != "single":
            raise ValueError("continual MSAD aligns one pair (teacher on the old sensor, student on the new one): "
                             "build MSADLoss(..., aggregation='single')")
        self.student = student
        self.teacher = teacher.requires_grad_(False).eval()
        self.msad = msad
        self.alpha = float(alpha)
        self.mae_weight = float(mae_weight)

    def train(self, mode: bool = True) -> "SmartiesAlignModel":
        """Train mode for the student and the MSAD heads (dropout); the domain teacher stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step's loss.

        Args:
            batch: ``old`` ``[B, C_old, S, S]`` and ``new`` ``[B, C_new, S, S]`` float32 normalised images of the
                same ground windows (S = patch · grid), ``old_bands`` / ``new_bands`` their band specs, and (when
                ``mae_weight > 0``) ``patches`` ``[B, G, G, C_new, p, p]`` / ``indices`` ``[B, G, G, C_new]`` of the new
                view (:func:`training.models.mae.images_to_mae_batch`).

        Returns:
            ``(loss, mae_loss, msad_loss)`` float32 scalars, the last two detached (``mae_loss`` NaN when
            ``mae_weight`` is 0). ``loss = mae_weight · mae_loss + alpha · msad_loss``.
        """
        with torch.no_grad():
            old = self.teacher.encode(batch["old"], batch["old_bands"], "tokens")
        paper = self.msad.mode == "paper"
        with torch.set_grad_enabled(paper and torch.is_grad_enabled()):
            new = self.student.encoder.encode(batch["new"], batch["new_bands"], "tokens")
        msad = self.msad([old, new])
        loss = self.alpha * msad
        mae = torch.full((), float("nan"), device=msad.device)
        if self.mae_weight > 0:
            mae = self.student(batch["patches"], batch["indices"], all_preds=False).loss
            loss = loss + self.mae_weight * mae
        return loss, mae.detach(), msad.detach()
