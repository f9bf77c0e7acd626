"""Benchmark: throughput of `segxai run` (cases per minute) in-process vs on Ray with 2 workers, same 20 cases.

    .venv/bin/pip install 'ray>=2.9'        # or: pip install -e '.[ray]'
    .venv/bin/python benchmarks/runs_throughput.py --out benchmarks/results

The cases are 2D abdominal CT phantoms (NIfTI, with label maps); the model is a seeded, untrained MONAI 2D U-Net
(cost does not depend on the weights) and the target the liver class's logit at the image centre (`voxel:1:...`),
which needs no predicted region. Each case runs Saliency and SmoothGrad (8 samples) with the whole evaluation
suite (localisation, deletion/insertion with 10 steps, 3-step cascading randomisation, one stability draw).

The local executor runs in this process twice, with torch's default threads (all cores) and with one; Ray runs one actor per worker
(`num_cpus=1`, one torch thread each, the model loaded once per actor). Ray's own start (`ray.init`) is timed
apart; actor start-up and model loading count towards Ray's time. Memory per worker is the peak resident memory
each worker process reports in the manifest (for local, the driver process itself).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from measuring import cpu_name, markdown

from segxai.models.checkpoint import save_checkpoint
from segxai.models.presets import build_network, network_config
from segxai.data import abdomen_phantom
from segxai.io import save_array
from segxai.metrics import write_csv
from segxai.pipelines.runs import run
from segxai.models.train import PHANTOM_SETTINGS


def make_dataset(work: Path, n: int, shape: tuple[int, int]) -> Path:
    """`n` phantom cases, a seeded untrained U-Net checkpoint, and the run configuration; returns its path."""
    data = work / "data"
    (data / "labels").mkdir(parents=True)
    for i in range(n):
        phantom = abdomen_phantom(shape, seed=i)
        save_array(phantom.image[0], data / f"case{i:02d}.nii.gz")
        save_array(phantom.labels.astype(np.uint8), data / "labels" / f"case{i:02d}.nii.gz")
    names = dict(abdomen_phantom(shape, seed=0).names)
    config = network_config("unet2d", 1, max(names) + 1, names=names, intensity=PHANTOM_SETTINGS["abdomen"]["intensity"])
    torch.manual_seed(0)
    checkpoint = save_checkpoint(work / "model.pt", build_network(config), config)
    centre = ",".join(str(s // 2) for s in shape)
    path = work / "run.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"checkpoint": str(checkpoint)},
        "dataset": {"root": str(data), "masks": "labels/{case}.nii.gz"},
        "methods": ["saliency", {"name": "smoothgrad", "params": {"n_samples": 8}}],
        "targets": [f"voxel:1:{centre}"],
        "evaluation": {"faithfulness": {"steps": 10}, "sanity": {"steps": 3}, "stability": {"noise": 0.02}},
    }))
    return path


def timed_run(config: Path, out: Path, executor: str, workers: int) -> dict[str, Any]:
    threads = torch.get_num_threads()
    start = time.perf_counter()
    result = run(config, out=out, executor=executor, workers=workers, progress=False)
    seconds = time.perf_counter() - start
    if result.failed:
        raise SystemExit(f"{executor}: cases failed: {result.failed}")
    peaks: dict[int, float] = {}
    for record in result.records:
        pid = record["worker"]["pid"]
        peaks[pid] = max(peaks.get(pid, 0.0), record["worker"]["max_rss_mb"])
    return {"executor": executor, "workers": 1 if executor == "local" else workers,
            "torch_threads": threads if executor == "local" else 1, "cases": len(result.records),
            "seconds": round(seconds, 2), "cases_per_minute": round(60 * len(result.records) / seconds, 2),
            "worker_processes": len(peaks), "peak_mb_per_worker": round(max(peaks.values()), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--shape", default="64,64", help="phantom grid H,W (multiples of 4)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    import ray

    work = Path(tempfile.mkdtemp(prefix="segxai-runs-bench-"))
    try:
        config = make_dataset(work, args.cases, tuple(int(v) for v in args.shape.split(",")))
        local = timed_run(config, work / "local", "local", args.workers)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        local_one = timed_run(config, work / "local1", "local", args.workers)
        torch.set_num_threads(threads)
        start = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - start
        on_ray = timed_run(config, work / "ray", "ray", args.workers)
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [local, local_one, {**on_ray, "ray_init_seconds": round(ray_start, 2)}]
    best = max(local["cases_per_minute"], local_one["cases_per_minute"])
    speedup = on_ray["cases_per_minute"] / best
    out = Path(args.out)
    write_csv(rows, out / "runs_throughput.csv")
    columns = ("executor", "workers", "torch_threads", "cases", "seconds", "cases_per_minute", "peak_mb_per_worker", "ray_init_seconds")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    text = (f"# segxai run: local vs Ray ({args.cases} phantom cases {args.shape}, {date.today()}, {cpu_name()}, "
            f"{os.cpu_count()} cores, load average {load} at the end)\n\n{markdown(rows, columns)}\n\n"
            f"Ray with {args.workers} workers: {speedup:.2f}x the faster local throughput.\n")
    (out / "runs_throughput.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
