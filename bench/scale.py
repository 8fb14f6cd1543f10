"""Scale-out benchmark: ``msfm batch embed`` on Dask against the sequential loop, and the scheduler at 1 000 scenes.

Run: ``.venv/bin/python bench/scale.py [--scenes 8] [--input RASTER]``. Prints a table and one JSON line per
measurement. All figures of one run are comparable; compare across runs only as ratios.

Measures, in one run, on a catalogue of ``--scenes`` copies (symbolic links) of one real raster:

1. **sequential**: one process, the model loaded once, ``embed_raster`` scene after scene with every core (what a
   shell loop over ``msfm embed`` does, without reloading the model per scene);
2. **batch, 1 and 2 workers**: ``engine.batch.batch_embed`` on a fresh ``LocalCluster`` (cluster start, model load per
   worker, COG conversion, hashing, mosaics and STAC included), scenes/s and tiles/s, and the ratio to sequential
   per core used (workers × threads = cores, so per core is the ratio itself); also in the steady state, between the
   first and the last scene's end, which leaves out the fixed cost of starting and stopping;
3. **Dask overhead per task**: 500 empty tasks through a 1-worker cluster;
4. **1 000 simulated scenes**: tasks that sleep for the measured per-scene time through the real scheduler, the real
   manifest and ``engine.batch.run_scenes`` (100 threads), and the time to read the 1 000-scene manifest back.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_INPUT = REPO / "demo" / "s2_l1c_virginia_13band_10m.tif"


def sleep_scene(scene: Any, seconds: float) -> dict[str, Any]:
    """A simulated scene: sleeps, then returns a manifest record as :func:`engine.batch.embed_scene` would."""
    time.sleep(seconds)
    return {"status": "done", "output": f"{scene.id}.tif", "bytes": 0, "sha256": "", "seconds": seconds}


def catalogue(folder: Path, source: Path, n: int) -> Path:
    scenes = folder / "scenes"
    scenes.mkdir()
    for i in range(n):
        (scenes / f"scene_{i:03d}{source.suffix}").symlink_to(source.resolve())
    return scenes


def sequential(scenes: Path, out: Path, model_name: str, settings: Any) -> dict[str, Any]:
    from engine import load_model
    from engine.maps import embed_raster

    out.mkdir()
    t = time.perf_counter()
    model = load_model(model_name)
    tiles, ends = 0, []
    paths = sorted(scenes.iterdir())
    for path in paths:
        tiles += embed_raster(path, out / f"{path.stem}.tif", model, settings=settings).tiles
        ends.append(time.perf_counter())
    return {"seconds": time.perf_counter() - t, "scenes": len(paths), "tiles": tiles, "steady_scenes_per_s":
            (len(ends) - 1) / (ends[-1] - ends[0])}


def batch(scenes: Path, out: Path, model_name: str, settings: Any, workers: int) -> dict[str, Any]:
    from engine.batch import batch_embed

    t = time.perf_counter()
    report = batch_embed(scenes, out, model_name, settings=settings, workers=workers)
    seconds = time.perf_counter() - t
    assert not report.failed, report.failed
    tiles = sum(p.record["tiles"] for p in report.outputs)
    busy = sum(p.record["seconds"] for p in report.outputs)
    # when each scene ended, from the manifest (milliseconds; the progress callback also reports tiles)
    ends = sorted(dt.datetime.fromisoformat(p.record["finished"]).timestamp() for p in report.outputs)
    return {"seconds": seconds, "scenes": len(report.done), "tiles": tiles, "task_seconds": busy,
            "steady_scenes_per_s": (len(ends) - 1) / (ends[-1] - ends[0])}


def task_overhead(n: int = 500) -> float:
    import distributed

    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        client.gather(client.map(int, range(20)))  # warm up
        t = time.perf_counter()
        client.gather(client.map(int, range(n), key=[f"empty-{i}" for i in range(n)]))
        return (time.perf_counter() - t) / n


def simulate(folder: Path, n: int, seconds: float, threads: int = 100) -> dict[str, Any]:
    import distributed

    from engine.batch import Manifest, Scene, run_scenes

    scenes = [Scene(f"sim_{i:05d}", f"/vsimem/sim_{i:05d}.tif") for i in range(n)]
    folder.mkdir()
    manifest = Manifest(folder, "simulated", "embed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=threads, processes=False,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as client:
        t = time.perf_counter()
        done, failed = run_scenes(client, scenes, sleep_scene, seconds, manifest=manifest)
        wall = time.perf_counter() - t
    t = time.perf_counter()
    again = Manifest(folder, "simulated", "embed")
    read = time.perf_counter() - t
    assert len(done) == n and not failed and len(again.scenes) == n
    ideal = n * seconds / threads
    return {"scenes": n, "wall_s": wall, "ideal_s": ideal, "overhead_per_scene_ms": (wall - ideal) / n * 1e3,
            "manifest_bytes": manifest.path.stat().st_size, "manifest_read_s": read}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="the real raster the catalogue copies")
    parser.add_argument("--scenes", type=int, default=8, help="scenes in the catalogue (default 8)")
    parser.add_argument("--model", default="smarties-demo-tiny")
    parser.add_argument("--simulate", type=int, default=1000, help="scenes of the simulated catalogue")
    args = parser.parse_args()

    from engine.batch import local_layout
    from engine.settings import InferenceSettings

    _, cores = local_layout(1)  # one worker takes every physical core
    settings = InferenceSettings(tile_size_px=224, overlap_px=32, scale=1.0, threads=None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        scenes = catalogue(folder, args.input, args.scenes)
        seq = sequential(scenes, folder / "seq", args.model, settings)
        rows.append(("sequential (1 process, every core)", seq))
        for workers in (1, 2):
            rows.append((f"batch, {workers} worker(s) × {max(1, cores // workers)} threads",
                         batch(scenes, folder / f"batch{workers}", args.model, settings, workers)))
        per_task = task_overhead()
        per_scene = seq["seconds"] / seq["scenes"]
        sim = simulate(folder / "sim", args.simulate, per_scene)
    print(f"\n{args.scenes} scenes of {args.input.name}, {args.model}, {cores} physical cores, tiles 224 px, "
          "overlap 32")
    print(f"{'run':44s} {'s':>7s} {'scenes/s':>9s} {'tiles/s':>8s} {'× sequential':>13s} {'steady scenes/s':>16s} "
          f"{'× sequential':>13s}")
    for name, r in rows:
        ratio, steady = seq["seconds"] / r["seconds"], r["steady_scenes_per_s"] / seq["steady_scenes_per_s"]
        print(f"{name:44s} {r['seconds']:7.1f} {r['scenes'] / r['seconds']:9.3f} {r['tiles'] / r['seconds']:8.1f} "
              f"{ratio:13.2f} {r['steady_scenes_per_s']:16.3f} {steady:13.2f}")
        print(json.dumps({"run": name, **r, "ratio_to_sequential": ratio, "steady_ratio": steady}))
    print("steady: scenes/s between the first and the last scene's end (without cluster start, model load, stop)")
    print(f"Dask overhead per task: {per_task * 1e3:.2f} ms (500 empty tasks, 1 worker)")
    print(f"{sim['scenes']} simulated scenes of {per_scene:.2f} s on 100 threads: {sim['wall_s']:.1f} s "
          f"(ideal {sim['ideal_s']:.1f} s: {sim['overhead_per_scene_ms']:.2f} ms of wall time per scene); manifest "
          f"{sim['manifest_bytes'] / 1e3:.0f} kB, read back in {sim['manifest_read_s'] * 1e3:.0f} ms")
    print(json.dumps({"task_overhead_ms": per_task * 1e3, "simulation": sim, "cores": cores,
                      "pid": os.getpid()}))


if __name__ == "__main__":
    main()
