"""The training runner (training/runner.py), the config loader (training/config.py) and the SMARTIES MAE recipe on
them: tiny config on real crops, bit-for-bit resume, atomic checkpoints, non-finite guard, gradient accumulation,
exports into engine.load_model, and a 2-process CPU DDP run (gloo, torchrun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import torch
from torch import nn

from engine.models import load_model, read_checkpoint
from tests.conftest import DATA, shared_file
from tests.training.helpers import fit_recipe, read_log
from training.config import ConfigError, config_to_dict, dump_config, load_config
from training.models.mae import SmartiesMAE
from training.optim import lr_schedule
from training.recipes.smarties_mae import SmartiesMAEConfig, load_mae_config, mae_task
from training.runner import (
    LOG_COLUMNS,
    NonFiniteLossError,
    RunConfig,
    Runner,
    StepOutput,
    TrainTask,
    latest_checkpoint,
    resolve_mixed_precision,
)

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "training" / "configs" / "smarties-mae-tiny-cpu.yaml"


def tiny_cfg(out_dir: Path, *overrides: str) -> SmartiesMAEConfig:
    """The tiny CPU config on the shared rasters (skips without them), no progress bar."""
    shared_file("data", "s2_l1c_13band_10m_virginia.tif")
    return load_mae_config(TINY, [f"run.out_dir={out_dir}", "run.progress=false", f"data.data_dir={DATA}",
                                  *overrides])


def run_mae(cfg, crash_at: Optional[int] = None) -> tuple[Any, Any]:
    """Fit the recipe; ``crash_at`` raises KeyboardInterrupt in that (0-based) step. Returns (result or None, task)."""
    return fit_recipe(cfg, mae_task, crash_at)


# ---------------------------------------------------------------------------------------------------- synthetic task
@dataclass
class Regression:
    """Deterministic, stateful stream of linear-regression batches (``{"x": [B, 4], "y": [B, 1]}``)."""

    batch: int = 8
    seed: int = 0
    split: int = 1  # yield each batch as `split` consecutive micro-batches
    position: int = 0
    _pending: list = field(default_factory=list)

    def __iter__(self) -> "Regression":
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if not self._pending:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.position // self.split)
            x = torch.randn(self.batch, 4, generator=g)
            y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(self.batch, 1, generator=g)
            self._pending = list(zip(x.chunk(self.split), y.chunk(self.split)))
        x, y = self._pending.pop(0)
        self.position += 1
        return {"x": x, "y": y}

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position, self._pending = state["position"], []
        if self.position % self.split:
            raise ValueError("resume inside a split batch")


def regression_task(data: Regression, lr: float = 0.05, **kw: Any) -> TrainTask:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def loss_fn(m: nn.Module, batch: dict[str, torch.Tensor], step: int) -> StepOutput:
        err = m(batch["x"]) - batch["y"]
        return StepOutput((err**2).mean(), {"mae": err.abs().mean()})

    kw.setdefault("param_groups", [{"params": list(model.parameters()), "weight_decay": 0.0}])
    return TrainTask(model=model, loss_fn=loss_fn, data=data, lr_at=lambda s: lr, batch_size=data.batch // data.split,
                     metric_names=("mae",), **kw)


def run_cfg(out_dir: Path, **kw: Any) -> RunConfig:
    base = dict(out_dir=str(out_dir), steps=6, seed=0, device="cpu", threads=2, checkpoint_every=2, progress=False)
    base.update(kw)
    return RunConfig(**base)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------ recipe on real data
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[SmartiesMAEConfig, Any, TrainTask]:
    """12 steps of the tiny config overfitting one fixed batch of real crops (4 S2 + S1 pairs / spectral splits)."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    cfg = tiny_cfg(out, "run.steps=12", "run.checkpoint_every=5", "data.overfit_one_batch=true",
                   "data.p_pair=1.0", "optim.lr=3e-3")
    result, task = run_mae(cfg)
    return cfg, result, task


def test_tiny_config_trains_on_cpu_and_logs(tiny_run) -> None:
    cfg, result, task = tiny_run
    losses = [v for _, v in result.history]
    assert result.steps == 12 and result.stopped_because == "steps" and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.02, losses  # fixed batch: the loss must fall
    rows = read_log(result.log_csv)
    assert list(rows[0]) == [*LOG_COLUMNS, "loss1", "loss2", "paired"]
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    assert [int(r["samples"]) for r in rows] == [8 * s for s in range(1, 13)]
    assert all(r["paired"] == "1" and r["loss2"] for r in rows)  # p_pair 1: every batch is a two-view batch
    expected_lr = lr_schedule(cfg.optim, 12, 8)
    np.testing.assert_allclose([float(r["lr"]) for r in rows], expected_lr, rtol=1e-5)
    assert float(rows[0]["lr"]) == 0.0 and max(float(r["lr"]) for r in rows) == pytest.approx(3e-3)
    np.testing.assert_allclose([float(r["loss"]) for r in rows], losses, rtol=1e-5)
    # checkpoints every 5 steps and at the end, newest 2 kept; the resolved config round-trips
    assert sorted(p.name for p in (result.out_dir / "checkpoints").iterdir()) == ["step_0000010", "step_0000012"]
    assert latest_checkpoint(result.out_dir) == result.checkpoint == result.out_dir / "checkpoints" / "step_0000012"
    assert load_config(SmartiesMAEConfig, result.out_dir / "config.yaml") == cfg
    info = json.loads((result.out_dir / "run_info.json").read_text())
    assert info["mixed_precision"] == "no" and info["effective_batch"] == 8 and info["num_processes"] == 1


def test_exports_round_trip_into_engine_load_model(tiny_run) -> None:
    cfg, result, task = tiny_run
    model: SmartiesMAE = task.model
    encoder_file, mae_file = result.exports
    assert encoder_file.name == "smarties-mae-tiny-cpu.safetensors"
    loaded = load_model(encoder_file)
    assert loaded.provenance.layout == "encoder" and (loaded.embed_dim, loaded.depth, loaded.num_heads) == (64, 2, 2)
    trained = model.encoder.state_dict()
    assert set(loaded.state_dict()) == set(trained)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, trained[k]), k  # float32 export: bit-identical
    x = torch.randn(2, 3, 64, 64)
    keys = ["red_2", "green_2", "blue_1"]
    torch.testing.assert_close(loaded.encode(x, keys, output="cls"), model.encoder.eval().encode(x, keys, output="cls"))
    model.train()
    ckpt = read_checkpoint(mae_file)
    assert ckpt.layout == "mae" and ckpt.config["steps"] == 12 and ckpt.config["mixup"] == "symmetric"
    again = SmartiesMAE.from_checkpoint(mae_file)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in again.state_dict().items())


def test_resume_continues_bit_for_bit(tmp_path) -> None:
    """Crash in step 6 (checkpoint at 3), resume: same batches, masks, losses, log and weights as without the crash."""
    over = ("run.steps=8", "run.checkpoint_every=3", "data.prefetch=2")
    full, full_task = run_mae(tiny_cfg(tmp_path / "full", *over))
    crashed, _ = run_mae(tiny_cfg(tmp_path / "cut", *over), crash_at=5)
    assert crashed is None and latest_checkpoint(tmp_path / "cut").name == "step_0000003"
    resumed, resumed_task = run_mae(tiny_cfg(tmp_path / "cut", *over, "run.resume=true"))
    assert resumed.start_step == 3 and resumed.steps == 8
    assert resumed.history == full.history[3:]  # exact float equality
    a, b = weights(full_task.model), weights(resumed_task.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]  # noqa: E731
    assert strip(read_log(resumed.log_csv)) == strip(read_log(full.log_csv))  # the crashed tail (steps 4-5) replaced


def test_pairs_source_feeds_ground_aligned_sensor_pairs(tmp_path) -> None:
    """data.source: pairs — BigEarthNet S2 (view 1) ↔ S1 (view 2) paired crops; an epoch is one crop per pair."""
    from training.recipes.smarties_mae import _pairs_stream, samples_per_epoch

    cfg = tiny_cfg(tmp_path, "data.source=pairs", f"data.pairs.path={DATA / 'bigearthnet_mm'}",
                   "data.pairs.sensors=[s2, s1]", "data.batch_size=2", "run.steps=null", "run.epochs=1")
    stream, pairs = _pairs_stream(cfg, rank=0)  # prefetching in a thread
    plain, _ = _pairs_stream(replace(cfg, data=replace(cfg.data, prefetch=0)), rank=0)
    try:
        batch = next(iter(stream))
        again = next(iter(plain))
    finally:
        stream.close()
        plain.close()
    assert samples_per_epoch(cfg) == len(pairs) == 6
    assert batch["patches"].shape == (2, 4, 4, 12, 16, 16) and batch["second_patches"].shape == (2, 4, 4, 2, 16, 16)
    assert batch["second_indices"][0, 0, 0].tolist() == [15, 16]  # microwave_1/2 (VV, VH)
    assert all(torch.equal(batch[k], again[k]) for k in batch)  # batch k depends only on (seed, rank, k)
    result, _ = run_mae(cfg)
    assert result.total_steps == 3 and all(r["paired"] == "1" for r in read_log(result.log_csv))  # 6 pairs / 2


def test_run_folder_guards(tmp_path) -> None:
    data = Regression()
    Runner(run_cfg(tmp_path, steps=2)).fit(regression_task(data))
    with pytest.raises(FileExistsError, match="resume"):
        Runner(run_cfg(tmp_path, steps=2)).fit(regression_task(Regression()))
    cfg = run_cfg(tmp_path, steps=2, resume=True, max_minutes=5.0)  # a resumable change: accepted
    assert Runner(cfg).fit(regression_task(Regression())).start_step == 2
    with pytest.raises(ConfigError, match="differs .* in seed"):
        Runner(run_cfg(tmp_path, steps=2, resume=True, seed=1)).fit(regression_task(Regression()))


# ---------------------------------------------------------------------------------------------------- mechanics
def test_interrupted_checkpoint_is_never_resumed_from(tmp_path, monkeypatch) -> None:
    """A save that dies half-way leaves a .tmp folder, never a step_* folder; resume uses the previous one."""
    from accelerate import Accelerator

    reference = regression_task(Regression())
    Runner(run_cfg(tmp_path / "ref")).fit(reference)
    real_save = Accelerator.save_state

    def dying_save(self, output_dir=None, **kw):
        if output_dir.endswith("step_0000004"):
            Path(output_dir, "model.safetensors").write_bytes(b"partial")
            raise OSError("disk full")
        return real_save(self, output_dir, **kw)

    monkeypatch.setattr(Accelerator, "save_state", dying_save)
    with pytest.raises(OSError, match="disk full"):
        Runner(run_cfg(tmp_path / "run")).fit(regression_task(Regression()))
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == [".tmp-step_0000004", "step_0000002"]
    monkeypatch.setattr(Accelerator, "save_state", real_save)
    task = regression_task(Regression())
    result = Runner(run_cfg(tmp_path / "run", resume=True)).fit(task)
    assert result.start_step == 2 and result.steps == 6
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))
    a, b = weights(reference.model), weights(task.model)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_stops_naming_the_step(tmp_path) -> None:
    task = regression_task(Regression())
    inner = task.loss_fn

    def loss_fn(m, batch, step):
        out = inner(m, batch, step)
        return StepOutput(out.loss * float("nan"), out.metrics) if step == 2 else out

    task.loss_fn = loss_fn
    before = {}

    def after_step(m, step):
        before.update(weights(m))

    task.after_step = after_step
    with pytest.raises(NonFiniteLossError, match=r"step 3 .*mae="):
        Runner(run_cfg(tmp_path)).fit(task)
    after = weights(task.model)
    assert all(torch.equal(after[k], before[k]) and torch.isfinite(after[k]).all() for k in after)  # no NaN update
    assert latest_checkpoint(tmp_path).name == "step_0000002"


def test_gradient_accumulation_equals_one_large_batch(tmp_path) -> None:
    big = regression_task(Regression(batch=8))
    Runner(run_cfg(tmp_path / "big", steps=4)).fit(big)
    small = regression_task(Regression(batch=8, split=2))
    result = Runner(run_cfg(tmp_path / "acc", steps=4, grad_accum_steps=2)).fit(small)
    assert result.samples == 4 * 8 and small.data.position == 8
    a, b = weights(big.model), weights(small.model)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    assert not torch.equal(a["0.weight"], weights(regression_task(Regression()).model)["0.weight"])  # it trained


def test_lr_scale_per_group(tmp_path) -> None:
    torch.manual_seed(0)
    task = regression_task(Regression())
    first, second = task.model[0], task.model[2]
    task.param_groups = [{"params": list(first.parameters()), "weight_decay": 0.1, "lr_scale": 0.0},
                         {"params": list(second.parameters()), "weight_decay": 0.0}]
    start = weights(task.model)
    Runner(run_cfg(tmp_path, steps=3)).fit(task)
    end = weights(task.model)
    assert torch.equal(start["0.weight"], end["0.weight"])  # lr 0 (weight decay is multiplied by the lr too)
    assert not torch.equal(start["2.weight"], end["2.weight"])
    with pytest.raises(ValueError, match="missing from the parameter groups"):
        bad = regression_task(Regression())
        bad.param_groups = [{"params": list(bad.model[0].parameters())}]
        Runner(run_cfg(tmp_path / "bad", steps=1)).fit(bad)


def test_before_step_hook_can_cancel_gradients(tmp_path) -> None:
    """DINO's frozen last layer: gradients set to None before the step leave those weights (and Adam state) alone."""
    task = regression_task(Regression())
    start = weights(task.model)
    seen = []

    def cancel_first_layer(model, step):
        seen.append(step)
        if step < 2:
            for p in model[0].parameters():
                p.grad = None

    task.before_step = cancel_first_layer
    Runner(run_cfg(tmp_path, steps=2)).fit(task)
    end = weights(task.model)
    assert seen == [0, 1] and torch.equal(start["0.weight"], end["0.weight"])
    assert not torch.equal(start["2.weight"], end["2.weight"])


def test_resolve_mixed_precision(monkeypatch) -> None:
    assert resolve_mixed_precision("auto", "cpu") == "no"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_mixed_precision("auto", "cuda") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_mixed_precision("auto", "cuda") == "fp16"
    assert resolve_mixed_precision("fp16", "cuda") == "fp16"
    with pytest.raises(ValueError, match="CUDA"):
        resolve_mixed_precision("fp16", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            Runner(RunConfig(steps=1, device="cuda"))


# ---------------------------------------------------------------------------------------------------- configs
def test_config_loading_is_strict(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key optim\.weight_decai — did you mean 'weight_decay'"):
        load_mae_config(TINY, ["optim.weight_decai=0.1"])
    with pytest.raises(ConfigError, match=r"run\.steps: expected an integer"):
        load_mae_config(TINY, ["run.steps=1.5"])
    with pytest.raises(ConfigError, match=r"mae\.mixup: 'both' is not one of"):
        load_mae_config(TINY, ["mae.mixup=both"])
    with pytest.raises(ConfigError, match="exactly one of lr"):
        load_mae_config(TINY, ["optim.blr=1e-4"])
    with pytest.raises(ConfigError, match="exactly one of steps and epochs"):
        load_mae_config(TINY, ["run.epochs=3"])
    with pytest.raises(ConfigError, match="missing required key optim"):
        load_config(SmartiesMAEConfig, {"recipe": "smarties-mae", "run": {"steps": 1}})
    cfg = load_mae_config("smarties-mae-tiny-cpu", ["optim.betas=[0.8, 0.9]", "data.sources=[s2]", "run.threads=null"])
    assert cfg.optim.betas == (0.8, 0.9) and cfg.data.sources == ("s2",) and cfg.run.threads is None
    dump_config(cfg, tmp_path / "c.yaml", header="test")
    assert load_config(SmartiesMAEConfig, tmp_path / "c.yaml") == cfg
    assert config_to_dict(cfg)["optim"]["betas"] == [0.8, 0.9]


def test_shipped_configs_load() -> None:
    vitb = load_mae_config("smarties-mae-vitb")
    m, o = vitb.model, vitb.optim
    geometry = (m.embed_dim, m.depth, m.num_heads, m.decoder_dim, m.decoder_depth, m.decoder_heads)
    assert geometry == (768, 12, 12, 512, 8, 16)
    assert (o.blr, o.betas, o.weight_decay, o.warmup_epochs, vitb.run.epochs) == (1.5e-4, (0.9, 0.95), 0.05, 20, 300)
    assert vitb.mae.mask_ratio == 0.75 and vitb.mae.mixup_ratio == 0.5
    with pytest.raises(ConfigError, match="samples_per_epoch"):  # epochs need the data size, which we do not have
        lr_schedule(o, 10, 2048)
    demo = load_mae_config("smarties-demo-tiny")
    assert (demo.model.embed_dim, demo.model.depth, demo.run.steps, demo.export.dtype) == (192, 6, 728, "float16")


# ---------------------------------------------------------------------------------------------------- DDP
@pytest.mark.slow  # two torchrun processes: about 8 s
def test_two_process_cpu_ddp_keeps_replicas_identical(tmp_path) -> None:
    """torchrun, 2 processes, gloo: `python -m training train` end to end; both ranks end with identical weights."""
    shared_file("data", "s2_l1c_13band_10m_virginia.tif")
    out = tmp_path / "ddp"
    script = tmp_path / "ddp_check.py"
    script.write_text(
        "import hashlib, json, sys\n"
        "from training import cli\n"
        "from training.runner import Runner\n"
        "seen = {}\n"
        "orig_fit = Runner.fit\n"
        "def fit(self, task):\n"
        "    result = orig_fit(self, task)\n"
        "    h = hashlib.sha256()\n"
        "    for k, v in sorted(self.unwrap(task.model).state_dict().items()):\n"
        "        h.update(k.encode()); h.update(v.detach().cpu().numpy().tobytes())\n"
        "    json.dump({'rank': self.process_index, 'world': self.num_processes, 'sha': h.hexdigest(),\n"
        "               'dist': str(self.state.distributed_type), 'history': result.history},\n"
        "              open(f'{self.out_dir}/rank{self.process_index}.json', 'w'))\n"
        "    return result\n"
        "Runner.fit = fit\n"
        "from training.__main__ import main\n"
        "raise SystemExit(main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(29500 + os.getpid() % 1000), str(script), "train", "smarties-mae", str(TINY),
           "--out-dir", str(out), "--no-progress", "--set", "run.steps=3", "--set", "run.threads=1",
           "--set", f"data.data_dir={DATA}", "--set", "data.prefetch=0"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and all("MULTI_CPU" in r["dist"] for r in ranks)
    assert ranks[0]["sha"] == ranks[1]["sha"]  # DDP kept the replicas identical
    assert ranks[0]["history"] == ranks[1]["history"] and len(ranks[0]["history"]) == 3
    ckpt = out / "checkpoints" / "step_0000003"
    assert {"random_states_0.pkl", "random_states_1.pkl", "loop_state_0.pt", "loop_state_1.pt"} <= {
        p.name for p in ckpt.iterdir()}
    info = json.loads((out / "run_info.json").read_text())
    assert info["num_processes"] == 2 and info["effective_batch"] == 16
    rows = read_log(out / "log.csv")
    assert [int(r["samples"]) for r in rows] == [16, 32, 48]
    assert "done: step 3/3" in proc.stdout
