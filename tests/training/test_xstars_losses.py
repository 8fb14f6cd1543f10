"""Tests of training/xstars losses and heads against the original X-STARS fixtures (fixtures/xstars README §1-§2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file

from tests.conftest import shared_file
from training.losses.dino import DINOLoss
from training.losses.msad import MSADLoss
from training.models.msad_heads import MSADHeads

MSAD_CASES = {
    # name: (soft weights, tau, label smoothing, expected-key prefix, per-token rtol, per-token atol)
    "main": (False, 1.0, 0.3, "", 1e-5, 1e-4),
    "main_ls0": (False, 1.0, 0.0, "_ls0", 1e-5, 1e-4),
    "soft": (True, 1.0, 0.3, "soft_", 0.0, 1e-5),
    "soft_ls0": (True, 1.0, 0.0, "soft_ls0_", 0.0, 1e-5),
    "soft_tau0p5": (True, 0.5, 0.3, "soft_tau0p5_", 0.0, 1e-5),
}


@pytest.fixture(scope="module")
def msad_io() -> dict[str, torch.Tensor]:
    return load_file(shared_file("fixtures", "xstars", "msad_io.safetensors"))


@pytest.fixture(scope="module")
def dino_io() -> dict[str, torch.Tensor]:
    return load_file(shared_file("fixtures", "xstars", "dino_io.safetensors"))


def _decode_2bit(packed: torch.Tensor) -> torch.Tensor:
    """fixtures README §1: byte j of row o holds the codes of columns 4j..4j+3 in bit pairs 0-1 .. 6-7;
    w = (2c−3)/128."""
    codes = torch.stack([(packed >> (2 * k)) & 3 for k in range(4)], dim=-1).reshape(packed.shape[0], -1)
    return (2.0 * codes.float() - 3.0) / 128.0


def _fixture_heads(io: dict[str, torch.Tensor], soft: bool) -> MSADHeads:
    state = {k: v for k, v in io.items() if k.startswith(("P.", "Q."))}
    state.update({k[len("codes2b."):]: _decode_2bit(v) for k, v in io.items() if k.startswith("codes2b.")})
    if soft:
        state.update({k[len("soft."):]: v for k, v in io.items() if k.startswith("soft.")})
    heads = MSADHeads(embed_dim=io["feat_a"].shape[-1])
    heads.load_state_dict(state, strict=True)
    return heads.eval()


# ---------------------------------------------------------------------------------------------------- MSAD
def test_msad_heads_keys_and_sizes(msad_io: dict[str, torch.Tensor]) -> None:
    """Fixture keys load strictly (all five packed matrices decoded); P(192→1024) 1.25 M and Q1+Q2 4.20 M (§3.2)."""
    heads = _fixture_heads(msad_io, soft=False)
    assert heads.P.fc.weight.unique().tolist() == [(2 * c - 3) / 128 for c in range(4)]
    tiny = MSADHeads(192)
    assert sum(p.numel() for p in tiny.P.parameters()) / 1e6 == pytest.approx(1.25, abs=0.005)
    assert sum(p.numel() for p in tiny.Q.parameters()) / 1e6 == pytest.approx(4.20, abs=0.005)
    assert tiny.P.layer_norm.eps == 1e-5 and tiny.P.dropout.p == 0.2


@pytest.mark.parametrize("case", list(MSAD_CASES))
def test_msad_matches_original(msad_io: dict[str, torch.Tensor], case: str) -> None:
    soft, tau, eps, prefix, rtol, atol = MSAD_CASES[case]
    if not soft:
        key_tok, key_mean = f"loss_per_token{prefix}", f"loss{prefix}"
    else:
        key_tok, key_mean = f"{prefix}loss_per_token", f"{prefix}loss"
    loss = MSADLoss(32, tau=tau, label_smoothing=eps, heads=_fixture_heads(msad_io, soft)).eval()
    per_token = loss.per_token([msad_io["feat_a"], msad_io["feat_b"]])
    assert per_token.shape == (197,)
    torch.testing.assert_close(per_token, msad_io[key_tok], rtol=rtol, atol=atol)
    torch.testing.assert_close(per_token.mean(), msad_io[key_mean], rtol=1e-6, atol=1e-5 if soft else 1e-4)


def _loop_reference(heads: MSADHeads, feats: list[torch.Tensor], tau: float, eps: float) -> torch.Tensor:
    """Straight from docs/xstars.md §3.3, one token and one pair at a time, with torch's own soft-target
    cross-entropy."""
    per_token = []
    for i in range(feats[0].shape[1]):
        total = torch.zeros(())
        for a in range(len(feats)):
            for b in range(a + 1, len(feats)):
                e_a = heads.Q.sat1_projection(heads.P(feats[a][:, i]))
                e_b = heads.Q.sat2_projection(heads.P(feats[b][:, i]))
                logits = e_b @ e_a.T / tau
                targets = F.softmax(tau * (e_a @ e_a.T + e_b @ e_b.T) / 2, dim=-1)
                l_b = F.cross_entropy(logits, targets, reduction="none", label_smoothing=eps)
                l_a = F.cross_entropy(logits.T, targets.T, reduction="none", label_smoothing=eps)
                total = total + ((l_a + l_b) / 2).mean()
        per_token.append(total)
    return torch.stack(per_token)


def test_msad_vectorised_equals_loop_three_sensors(msad_io: dict[str, torch.Tensor]) -> None:
    """Three sensors: pairs (0,1), (0,2), (1,2) summed; sensor 1 is sat2 in one pair and sat1 in another."""
    heads = _fixture_heads(msad_io, soft=True)
    g = torch.Generator().manual_seed(3)
    n = 40
    feats = [msad_io["feat_a"][:, :n], msad_io["feat_b"][:, :n]]
    feats.append(0.5 * feats[0] + 0.8 * torch.randn(feats[0].shape, generator=g))
    with torch.no_grad():
        expected = _loop_reference(heads, feats, tau=0.5, eps=0.3)
        got = MSADLoss(32, tau=0.5, heads=heads).per_token(feats)
        two = MSADLoss(32, tau=0.5, heads=heads).per_token(feats[:2])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, two, atol=1e-2)  # the extra pairs count


def test_msad_include_cls(msad_io: dict[str, torch.Tensor]) -> None:
    heads = _fixture_heads(msad_io, soft=True)
    feats = [msad_io["feat_a"], msad_io["feat_b"]]
    with_cls = MSADLoss(32, heads=heads).per_token(feats)
    without = MSADLoss(32, heads=heads, include_cls=False)
    torch.testing.assert_close(without.per_token(feats), with_cls[1:], rtol=0, atol=1e-6)
    torch.testing.assert_close(without(feats), with_cls[1:].mean(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["paper", "compat"])
def test_msad_gradients_by_mode(mode: str) -> None:
    """paper: gradient reaches the features (backbone stand-in) and P, Q1, Q2; compat: same value, no graph (B1)."""
    torch.manual_seed(0)
    feats = [torch.randn(4, 5, 16, requires_grad=True) for _ in range(2)]
    loss_fn = MSADLoss(16, mode=mode).train()
    torch.manual_seed(1)
    value = loss_fn(feats)
    other = MSADLoss(16, mode="compat" if mode == "paper" else "paper", heads=loss_fn.heads).train()
    torch.manual_seed(1)
    torch.testing.assert_close(value.detach(), other(feats).detach())  # same dropout draws, same value
    if mode == "compat":
        assert not value.requires_grad and value.grad_fn is None
        return
    value.backward()
    for f in feats:
        assert f.grad is not None and f.grad.abs().sum() > 0
    for name in ("P", "Q.sat1_projection", "Q.sat2_projection"):
        module = loss_fn.heads.get_submodule(name)
        for pname, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}.{pname} has no gradient"


def test_msad_rejects_bad_inputs() -> None:
    x = torch.zeros(2, 3, 8)
    with pytest.raises(ValueError, match="exactly 2"):
        MSADLoss(8, aggregation="single")([x, x, x])
    with pytest.raises(ValueError, match="at least 2"):
        MSADLoss(8)([x])
    with pytest.raises(ValueError, match="one shape"):
        MSADLoss(8)([x, torch.zeros(2, 4, 8)])
    with pytest.raises(ValueError, match="mode"):
        MSADLoss(8, mode="released")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------- DINO
@pytest.mark.parametrize("case", ["main", "zero_center", "warmup_e10"])
def test_dino_loss_matches_original(dino_io: dict[str, torch.Tensor], case: str) -> None:
    """README §2: loss with the centre from before the update, then c ← 0.9 c + 0.1 mean(teacher rows)."""
    ncrops = int(dino_io["ncrops"])
    if case == "warmup_e10":
        loss_fn = DINOLoss(64, ncrops, epochs=100, teacher_temp=0.07, warmup_teacher_temp=0.04,
                           warmup_teacher_temp_epochs=30)
        epoch = 10
        assert loss_fn.teacher_temps[epoch] == dino_io["warmup_e10_teacher_temp"].item()
    else:
        loss_fn = DINOLoss(64, ncrops, epochs=100)
        epoch = int(dino_io["epoch"])
    if case != "zero_center":
        loss_fn.center.copy_(dino_io["center_before"])
    loss = loss_fn(dino_io["student_output"], dino_io["teacher_output"], epoch)
    prefix = "" if case == "main" else f"{case}_"
    torch.testing.assert_close(loss, dino_io[f"{prefix}loss"], rtol=0, atol=1e-5)
    torch.testing.assert_close(loss_fn.center, dino_io[f"{prefix}center_after"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("n_local", [0, 3, 8])
def test_dino_averages_two_times_crops_minus_two_terms(n_local: int) -> None:
    """Uniform teacher (zero logits and centre): term (g, v) = c_v, the student's cross-entropy to uniform; the loss
    must be (Σ_g Σ_{v≠g} c_v) / (2(2+N) − 2) — 18 terms for 2 globals and 8 locals."""
    n_crops, b, k = 2 + n_local, 3, 7
    torch.manual_seed(n_local)
    student = torch.randn(n_crops * b, k) * torch.arange(1, n_crops + 1).repeat_interleave(b)[:, None]
    loss_fn = DINOLoss(k, n_crops, epochs=1)
    c = [-(torch.log_softmax(s / 0.1, dim=-1).mean(-1)).mean() for s in student.split(b)]
    expected = (2 * sum(c) - c[0] - c[1]) / (2 * n_crops - 2)
    assert loss_fn.n_terms == 2 * n_crops - 2
    torch.testing.assert_close(loss_fn(student, torch.zeros(2 * b, k), epoch=0), expected)


def test_dino_gradient_reaches_student_only() -> None:
    student = torch.randn(4 * 2, 5, requires_grad=True)
    teacher = torch.randn(2 * 2, 5, requires_grad=True)
    DINOLoss(5, 4, epochs=1)(student, teacher, 0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_dino_center_all_reduce_runs_under_a_process_group(tmp_path, dino_io: dict[str, torch.Tensor]) -> None:
    """The guarded collective: with a (1-process gloo) group the all-reduce runs and gives the same centre."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this test process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        loss_fn = DINOLoss(64, int(dino_io["ncrops"]), epochs=1)
        loss_fn.center.copy_(dino_io["center_before"])
        loss = loss_fn(dino_io["student_output"], dino_io["teacher_output"], 0)
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(loss, dino_io["loss"], rtol=0, atol=1e-5)
    torch.testing.assert_close(loss_fn.center, dino_io["center_after"], rtol=0, atol=1e-6)
    assert math.isfinite(loss.item())
