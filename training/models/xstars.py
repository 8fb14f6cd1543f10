"""The step module of the X-STARS recipes (:mod:`training.recipes.xstars`): student, EMA teacher, DINO and MSAD
losses and (continual pretraining) the frozen domain teacher in one ``nn.Module`` (docs/xstars.md §2-§4).

One forward computes the whole loss, so that DDP sees every parameter use (X-STARS B14)::

    teacher_out = teacher(globals)            no grad          [2B, K]
    student_out = student(globals + locals)                    [(2 + N)B, K]
    L = DINOLoss(student_out, teacher_out, epoch) + alpha · MSAD(tokens of the MSAD views)

:meth:`XStarsModel.update_teacher` is the EMA step the recipe runs after every optimiser step. Unlike the released
code (B7), the domain teacher runs in eval mode under ``torch.no_grad``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..losses.dino import DINOLoss
from ..losses.msad import MSADLoss

__all__ = ("XStarsModel",)


class XStarsModel(nn.Module):
    """Student, EMA teacher, losses, MSAD heads and (continual) the frozen domain teacher, in one module.

    Args:
        student: Backbone + DINO head (:class:`~engine.models.MultiCropWrapper`); trained.
        teacher: Same architecture; updated only by :meth:`update_teacher` (its parameters are frozen here).
        dino_loss: The DINO loss (holds the centre buffer).
        msad: The MSAD loss with its heads, or ``None`` (DINO only).
        alpha: Weight of MSAD.
        frozen: Continual pretraining's domain teacher (a bare backbone), or ``None`` in pretraining. Frozen, and
            always in eval mode.

    Raises:
        ValueError: Student and teacher parameters differ in names or shapes, or the teacher or domain teacher
            shares parameter storage with the student.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, dino_loss: DINOLoss, msad: Optional[MSADLoss] = None,
                 alpha: float = 0.1, frozen: Optional[nn.Module] = None) -> None:
        super().__init__()
        s_shapes = {n: p.shape for n, p in student.named_parameters()}
        t_shapes = {n: p.shape for n, p in teacher.named_parameters()}
        if s_shapes != t_shapes:
            raise ValueError("student and teacher must have the same parameters (names and shapes)")
        trained = {p.data_ptr() for p in student.parameters()}
        for name, other in (("teacher", teacher), ("frozen", frozen)):
            if other is not None and any(p.data_ptr() in trained for p in other.parameters()):
                raise ValueError(f"the {name} network shares parameter storage with the student; give it a copy")
        self.student = student
        self.teacher = teacher.requires_grad_(False)
        self.dino_loss = dino_loss
        self.msad = msad
        self.alpha = alpha
        self.frozen = frozen.requires_grad_(False).eval() if frozen is not None else None

    def train(self, mode: bool = True) -> "XStarsModel":
        """Train mode for the student and the MSAD heads; the teacher and the domain teacher stay in eval mode."""
        super().train(mode)
        self.teacher.eval()
        if self.frozen is not None:
            self.frozen.eval()
        return self

    def forward(self, crops: Sequence[torch.Tensor], msad_views: Sequence[torch.Tensor],
                epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One X-STARS step's loss.

        Args:
            crops: ``2 + N`` views ``[B, 3, S, S]``: the two globals first, then the locals.
            msad_views: Un-augmented views ``[B, 3, M, M]``, one per MSAD sensor in MSAD order (pretraining), or
                ``(partner sensor, new sensor)`` in continual pretraining; ignored without MSAD.
            epoch: Current epoch (teacher-temperature schedule).

        Returns:
            ``(loss, dino_loss, msad_loss)`` float32 scalars; the last two detached (``msad_loss`` is 0 without MSAD).
        """
        crops = list(crops)
        with torch.no_grad():
            teacher_out = self.teacher(crops[:2])
        student_out = self.student(crops)
        dino = self.dino_loss(student_out, teacher_out, epoch)
        if self.msad is None:
            return dino, dino.detach(), torch.zeros((), device=dino.device)
        grad = self.msad.mode == "paper"
        if self.frozen is not None:
            if len(msad_views) != 2:
                raise ValueError(f"continual MSAD takes 2 views (partner, new sensor), got {len(msad_views)}")
            with torch.no_grad():
                old = self.frozen(msad_views[0], return_all_tokens=True)
            with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
                new = self.student.backbone(msad_views[1], return_all_tokens=True)
            features = [old, new]
        else:
            with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
                tokens = self.student.backbone(torch.cat(list(msad_views)), return_all_tokens=True)
            features = list(tokens.chunk(len(msad_views)))
        msad = self.msad(features)
        return dino + self.alpha * msad, dino.detach(), msad.detach()

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """EMA over all parameters (frozen weight-norm gain included), docs/xstars.md §2:
        ``θ_t ← m θ_t + (1 − m) θ_s``."""
        teacher = dict(self.teacher.named_parameters())
        pairs = [(teacher[n], p.detach()) for n, p in self.student.named_parameters()]
        t_params, s_params = [t for t, _ in pairs], [s.to(t.dtype) for t, s in pairs]
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
