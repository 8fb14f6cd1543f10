"""Run a catalogue of bad or awkward ``msfm`` invocations and print what each one does (issue 14).

Each case runs ``python -m engine …`` in a fresh folder holding a copy of the committed Sentinel-2 crop (tests/data),
an earlier product and a trained head, and records the exit status, the last line on stderr, whether a traceback was
printed, whether the inputs and earlier products are byte-for-byte unchanged and what partial files were left.

    .venv/bin/python scripts/reliability_catalogue.py                 # this checkout
    .venv/bin/python scripts/reliability_catalogue.py --repo OLD_TREE # another checkout (e.g. a git worktree), to
                                                                      # compare before and after a change

The table is Markdown; ``--json FILE`` keeps the raw results.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import rasterio

REPO = Path(__file__).resolve().parents[1]
SCENE = REPO / "tests" / "data" / "s2_l1c_virginia_13band_10m_96x128.tif"

#: (name, arguments, signal to send once a partial file appears or None). Placeholders: {d} the case folder.
CASES: list[tuple[str, list[str], Optional[int]]] = [
    ("embed: output = input", ["embed", "{d}/scene.tif", "{d}/scene.tif"], None),
    ("embed: output = input, other spelling", ["embed", "{d}/scene.tif", "{d}/../{n}/./scene.tif"], None),
    ("embed: output = input via a symlink", ["embed", "{d}/scene.tif", "{d}/link.tif"], None),
    ("cluster: output = input", ["cluster", "{d}/scene.tif", "{d}/scene.tif", "--k", "3"], None),
    ("cluster: --embeddings-output = input", ["cluster", "{d}/scene.tif", "{d}/c.tif", "--embeddings-output",
                                              "{d}/scene.tif"], None),
    ("similarity: output = input", ["similarity", "{d}/scene.tif", "{d}/scene.tif", "--point", "0", "0"], None),
    ("segment: output = head file", ["segment", "{d}/scene.tif", "{d}/head.safetensors", "{d}/head.safetensors"],
     None),
    ("embed: --pca = output", ["embed", "{d}/scene.tif", "{d}/e.tif", "--pca", "{d}/e.tif"], None),
    ("embed: existing output, no --overwrite", ["embed", "{d}/scene.tif", "{d}/old.tif"], None),
    ("embed: output is a folder", ["embed", "{d}/scene.tif", "{d}/sub"], None),
    ("embed: output named .png", ["embed", "{d}/scene.tif", "{d}/e.png"], None),
    ("embed: --tile-size-px 100", ["embed", "{d}/scene.tif", "{d}/e.tif", "--tile-size-px", "100"], None),
    ("embed: --tile-size-px 4096", ["embed", "{d}/scene.tif", "{d}/e.tif", "--tile-size-px", "4096"], None),
    ("embed: --overlap-px 224", ["embed", "{d}/scene.tif", "{d}/e.tif", "--overlap-px", "224"], None),
    ("embed: --batch-size 0", ["embed", "{d}/scene.tif", "{d}/e.tif", "--batch-size", "0"], None),
    ("embed: --device banana", ["embed", "{d}/scene.tif", "{d}/e.tif", "--device", "banana"], None),
    ("embed: --threads -1", ["embed", "{d}/scene.tif", "{d}/e.tif", "--threads", "-1"], None),
    ("embed: --model ''", ["embed", "{d}/scene.tif", "{d}/e.tif", "--model", ""], None),
    ("embed: random-bytes .onnx model", ["embed", "{d}/scene.tif", "{d}/e.tif", "--model", "{d}/random.onnx"], None),
    ("embed: VRT with a missing source", ["embed", "{d}/broken.vrt", "{d}/e.tif"], None),
    ("embed: --quicklook into a missing folder", ["embed", "{d}/scene.tif", "{d}/e.tif", "--quicklook",
                                                  "{d}/nowhere/q.png"], None),
    ("cluster: --seed -1", ["cluster", "{d}/scene.tif", "{d}/c.tif", "--seed", "-1"], None),
    ("cluster: rotated raster, pixel resolution", ["cluster", "{d}/rotated.tif", "{d}/c.tif", "--k", "3"], None),
    ("cluster: constant raster", ["cluster", "{d}/constant.tif", "{d}/c.tif", "--k", "3"], None),
    ("cluster: 8-bit raster described as B11/B12/B01", ["cluster", "{d}/byte.tif", "{d}/c.tif", "--k", "3"], None),
    ("embed: 13-band raster with --sensor naip_rgbn", ["embed", "{d}/scene.tif", "{d}/e.tif", "--sensor",
                                                       "naip_rgbn"], None),
    ("embed: complex raster", ["embed", "{d}/complex.tif", "{d}/e.tif"], None),
    ("embed: 1024² raster, one 64² block of data", ["-v", "embed", "{d}/sparse.tif", "{d}/e.tif", "--overlap-px",
                                                    "32"], None),
    ("train-head: --steps 0", ["train-head", "{d}/scene.tif", "{d}/h.safetensors", "--label-raster",
                               "{d}/labels.tif", "--steps", "0"], None),
    ("train-head: --lr -1", ["train-head", "{d}/scene.tif", "{d}/h.safetensors", "--label-raster", "{d}/labels.tif",
                             "--lr", "-1"], None),
    ("export-onnx: --tile-size-px 100", ["export-onnx", "{d}/m.onnx", "--tile-size-px", "100"], None),
    ("export-onnx: into a missing folder", ["export-onnx", "{d}/nowhere/m.onnx"], None),
    ("embed: SIGTERM mid-run", ["embed", "{d}/scene.tif", "{d}/e.tif", "--scale", "8", "--overlap-px", "208",
                                "--batch-size", "1", "--threads", "1"], signal.SIGTERM),
    ("embed: SIGHUP mid-run", ["embed", "{d}/scene.tif", "{d}/e.tif", "--scale", "8", "--overlap-px", "208",
                               "--batch-size", "1", "--threads", "1"], signal.SIGHUP),
    ("embed: SIGKILL mid-run, then the same run again", ["embed", "{d}/scene.tif", "{d}/e.tif", "--scale", "8",
                                                         "--overlap-px", "208", "--batch-size", "1", "--threads",
                                                         "1"], signal.SIGKILL),
]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_like(src: Path, dst: Path, data: np.ndarray, **update: Any) -> None:
    with rasterio.open(src) as ds:
        profile = ds.profile
        descriptions = ds.descriptions
    profile.update(count=data.shape[0], dtype=data.dtype.name, **update)
    profile.pop("nodata", None) if data.dtype.kind == "c" else None
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
        for i, d in enumerate(descriptions[: data.shape[0]], start=1):
            if d:
                out.set_band_description(i, d)


def prepare(folder: Path, msfm: list[str], repo: Path) -> None:
    """Fill ``folder`` with the inputs every case reads (copies; the repository's file is never touched).

    The head is trained by the checkout under test (3 steps: any head will do for these cases).
    """
    scene = folder / "scene.tif"
    shutil.copyfile(SCENE, scene)
    (folder / "link.tif").symlink_to("scene.tif")
    (folder / "sub").mkdir()
    (folder / "random.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    with rasterio.open(scene) as ds:
        data, t, profile = ds.read(), ds.transform, ds.profile
        names = list(ds.descriptions)
    shutil.copyfile(scene, folder / "old.tif")
    _write_like(scene, folder / "rotated.tif", data, transform=t * t.rotation(20))
    _write_like(scene, folder / "constant.tif", np.full_like(data, 1200))
    rgb = np.stack([data[names.index(b)] for b in ("B04", "B03", "B02")])
    byte = np.clip(rgb / 20, 0, 255).astype(np.uint8)
    with rasterio.open(folder / "byte.tif", "w", **{**profile, "count": 3, "dtype": "uint8", "nodata": None}) as out:
        out.write(byte)
        for i, d in enumerate(("B11", "B12", "B01"), start=1):
            out.set_band_description(i, d)
    _write_like(scene, folder / "complex.tif", data[:2].astype(np.complex64))
    sparse = np.zeros((data.shape[0], 1024, 1024), data.dtype)
    sparse[:, 480:544, 480:544] = data[:, :64, :64]
    _write_like(scene, folder / "sparse.tif", sparse, width=1024, height=1024, nodata=0)
    green, nir = data[names.index("B03")].astype(float), data[names.index("B08")].astype(float)
    labels = ((green - nir) / (green + nir) > 0).astype(np.uint8)[None]
    _write_like(scene, folder / "labels.tif", labels, nodata=None)
    part = folder / "part.tif"
    shutil.copyfile(scene, part)
    subprocess.run(["gdalbuildvrt", "-q", str(folder / "broken.vrt"), str(part)], check=True)
    part.unlink()
    done = subprocess.run([*msfm, "train-head", str(scene), str(folder / "head.safetensors"), "--label-raster",
                           str(folder / "labels.tif"), "--steps", "3"], cwd=repo, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"cannot train the catalogue's head: {done.stderr[-1000:]}")


def _partial(folder: Path) -> bool:
    return any(p.name.startswith(".") and p.name not in (".", "..") for p in folder.iterdir())


def run_case(msfm: list[str], repo: Path, args: list[str], stop: Optional[int], folder: Path) -> dict[str, Any]:
    """Run one case in ``folder``; returns what happened."""
    args = [a.format(d=folder, n=folder.name) for a in args]
    watched = {p: _digest(p) for p in folder.iterdir() if p.is_file() and not p.is_symlink()}
    before = set(os.listdir(folder))
    started = time.perf_counter()
    proc = subprocess.Popen([*msfm, *args], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rerun = None
    if stop is not None:
        deadline = time.monotonic() + 120
        while not _partial(folder) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        proc.send_signal(stop)
    out, err = proc.communicate(timeout=900)
    seconds = time.perf_counter() - started
    leftovers = sorted(x for x in set(os.listdir(folder)) - before if x.startswith("."))
    hidden_after_kill = [x for x in leftovers if x.startswith(".")]
    if stop == signal.SIGKILL:
        again = subprocess.run([*msfm, *args], cwd=repo, capture_output=True, text=True, timeout=900)
        rerun = again.returncode
        leftovers = sorted(x for x in os.listdir(folder) if x.startswith("."))
    lines = [line.replace(str(folder) + "/", "").replace(str(folder), ".")
             for line in (err if proc.returncode else out).strip().splitlines() if line.strip() and "%|" not in line]
    changed = [p.name for p, d in watched.items() if not p.exists() or _digest(p) != d]
    return {
        "exit": proc.returncode,
        "rerun_exit": rerun,
        "traceback": "Traceback" in err,
        "message": (lines[-1] if lines else "").strip()[:160],
        "inputs_changed": changed,
        "leftovers": leftovers,
        "left_after_kill": hidden_after_kill,
        "seconds": round(seconds, 1),
        "tiles": next((line for line in (out + err).splitlines() if "tiles" in line and "nodata" in line), ""),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose engine runs (default: this one)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    msfm = [sys.executable, "-m", "engine"]
    results = []
    with tempfile.TemporaryDirectory(prefix="msfm-catalogue-") as tmp:
        template = Path(tmp) / "template"
        template.mkdir()
        prepare(template, msfm, args.repo)
        for i, (name, case, stop) in enumerate(CASES):
            folder = Path(tmp) / f"case{i:02d}"
            shutil.copytree(template, folder, symlinks=True)
            res = run_case(msfm, args.repo, case, stop, folder)
            results.append({"case": name, **res})
            print(f"{name}: exit {res['exit']}, {res['message'][:100]}", file=sys.stderr)
    print("| case | exit | traceback | inputs changed | left behind | last line |")
    print("|---|---|---|---|---|---|")
    for r in results:
        exit_text = f"{r['exit']}" + (f", rerun {r['rerun_exit']}" if r["rerun_exit"] is not None else "")
        left = ", ".join(r["leftovers"]) or "—"
        if r["rerun_exit"] is not None:
            left = f"after the kill: {', '.join(r['left_after_kill']) or '—'}; after the rerun: {left}"
        print(f"| {r['case']} | {exit_text} | {'yes' if r['traceback'] else 'no'} | "
              f"{', '.join(r['inputs_changed']) or 'none'} | {left} | {r['message'].replace('|', '/')} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
