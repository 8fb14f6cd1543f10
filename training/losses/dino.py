"""The DINO self-distillation loss with centring (docs/xstars.md §2), written from the paper and docs/xstars.md.

DINO: Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021 (Apache-2.0 reference
code, facebookresearch/dino); X-STARS uses it unchanged. With ``n_crops = 2 + N`` views (2 globals, then N locals)
of a batch of B samples::

    p_v = softmax(s_v / 0.1)                      student, every view v           (log-softmax for stability)
    q_g = softmax((t_g − c) / T_t)                teacher, globals g ∈ {0, 1}; no gradient
    L   = 1/(2 n_crops − 2) Σ_g Σ_{v ≠ g} mean_batch( −Σ_k q_g,k log p_v,k )

then the centre is updated with the teacher logits (the loss uses the centre from *before* the update)::

    c ← 0.9 c + 0.1 Σ_rows t / (2B · world)

The sum over rows is all-reduced across processes only when ``torch.distributed`` is initialised, so a single CPU
process needs no process group (the released code requires one, bug B10). ``T_t`` follows
:func:`training.schedules.teacher_temp_schedule`, indexed by epoch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..schedules import teacher_temp_schedule

__all__ = ("DINOLoss",)

#: Student temperature (DINO/X-STARS default, docs/xstars.md §2).
STUDENT_TEMP = 0.1
#: Centre EMA momentum (docs/xstars.md §2).
CENTER_MOMENTUM = 0.9
#: Teacher views: the two global crops (docs/xstars.md §2).
N_GLOBAL_CROPS = 2


class DINOLoss(nn.Module):
    """Cross-entropy between the centred, sharpened teacher and the student over all (teacher view, other view) pairs.

    Args:
        out_dim: K, the DINO head's output width (65536 in X-STARS).
        n_crops: Student views ``2 + N`` (10 with 8 local crops).
        epochs: Run length in epochs (length of the teacher-temperature schedule).
        teacher_temp: Final teacher temperature (0.04).
        warmup_teacher_temp: Initial teacher temperature (0.04 in X-STARS: no warm-up).
        warmup_teacher_temp_epochs: Epochs of the linear temperature warm-up (0 in X-STARS).
        student_temp: Student temperature (0.1).
        center_momentum: Centre EMA momentum (0.9).

    Attributes:
        center: Buffer ``[1, K]`` float32, zeros at start; saved as ``dino_loss.center`` in checkpoints
            (docs/xstars.md §6).
        n_terms: Number of averaged (teacher view, student view) pairs, ``2 · n_crops − 2``.

    Raises:
        ValueError: ``n_crops < 2``.
    """

    def __init__(
        self,
        out_dim: int,
        n_crops: int,
        epochs: int,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: int = 0,
        student_temp: float = STUDENT_TEMP,
        center_momentum: float = CENTER_MOMENTUM,
    ) -> None:
        super().__init__()
        if n_crops < N_GLOBAL_CROPS:
            raise ValueError(f"n_crops must be at least {N_GLOBAL_CROPS} (the global crops), got {n_crops}")
        self.n_crops = n_crops
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.teacher_temps = teacher_temp_schedule(
            epochs, warmup_teacher_temp=warmup_teacher_temp, teacher_temp=teacher_temp,
            warmup_epochs=warmup_teacher_temp_epochs,
        )

    @property
    def n_terms(self) -> int:
        """``2 · n_crops − 2``: each global teacher view against every student view but itself."""
        return N_GLOBAL_CROPS * self.n_crops - N_GLOBAL_CROPS

    def pair_terms(self, student_output: torch.Tensor, teacher_output: torch.Tensor, epoch: int) -> torch.Tensor:
        """Batch-mean cross-entropy of every (teacher view g, student view v) pair, diagonal included.

        Args:
            student_output: ``[n_crops · B, K]`` logits, crop-major (rows ``v·B .. v·B+B−1`` are view v; globals first).
            teacher_output: ``[2 · B, K]`` logits of the two global views, crop-major.
            epoch: Index into the teacher-temperature schedule.

        Returns:
            float32 ``[2, n_crops]``; entry ``(g, v)`` is ``mean_b −Σ_k q_g log p_v``. The loss uses the entries with
            ``v ≠ g`` only. The centre is *not* updated.

        Raises:
            ValueError: Row counts that do not split into ``n_crops`` / 2 views of one batch size, or K ≠ the centre's.
            IndexError: ``epoch`` beyond the schedule.
        """
        k = self.center.shape[-1]
        if student_output.shape[-1] != k or teacher_output.shape[-1] != k:
            raise ValueError(f"DINO outputs must have K = {k} columns, got {student_output.shape[-1]} / "
                             f"{teacher_output.shape[-1]}")
        if student_output.shape[0] % self.n_crops or teacher_output.shape[0] % N_GLOBAL_CROPS:
            raise ValueError(f"{student_output.shape[0]} student rows / {teacher_output.shape[0]} teacher rows do not "
                             f"split into {self.n_crops} / {N_GLOBAL_CROPS} views")
        b = student_output.shape[0] // self.n_crops
        if teacher_output.shape[0] != N_GLOBAL_CROPS * b:
            raise ValueError(f"teacher has {teacher_output.shape[0]} rows, expected {N_GLOBAL_CROPS} × batch {b}")
        temp = float(self.teacher_temps[epoch])
        log_p = torch.log_softmax(student_output.float() / self.student_temp, dim=-1).reshape(self.n_crops, b, k)
        q = torch.softmax((teacher_output.float() - self.center) / temp, dim=-1).detach()
        q = q.reshape(N_GLOBAL_CROPS, b, k)
        return -torch.einsum("gbk,vbk->gv", q, log_p) / b

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor, epoch: int) -> torch.Tensor:
        """DINO loss (float32 scalar) with the current centre, then the centre update.

        Args:
            student_output: ``[n_crops · B, K]`` logits, crop-major.
            teacher_output: ``[2 · B, K]`` logits, crop-major.
            epoch: Current epoch (teacher-temperature schedule index).

        Raises:
            ValueError / IndexError: As :meth:`pair_terms`.
        """
        terms = self.pair_terms(student_output, teacher_output, epoch)
        off_diagonal = ~torch.eye(N_GLOBAL_CROPS, self.n_crops, dtype=torch.bool, device=terms.device)
        loss = terms[off_diagonal].sum() / self.n_terms
        self.update_center(teacher_output)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """``c ← m c + (1 − m) Σ_rows t / (rows · world)``; the row sum is all-reduced only under torch.distributed.

        Args:
            teacher_output: ``[2 · B, K]`` teacher logits of this process.
        """
        batch_center = teacher_output.float().sum(dim=0, keepdim=True)
        world = 1
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_center)
            world = dist.get_world_size()
        batch_center = batch_center / (teacher_output.shape[0] * world)
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1.0 - self.center_momentum)
