"""Where cases run: in this process (default) or as Ray tasks on a pool of actors, one model per worker.

Both take the cases still to do and hand each finished record to `on_record` as soon as it arrives, so the
driver writes the manifest case by case whichever executor ran them. Ray is imported only when asked for.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from segxai.errors import SegxaiError
from segxai.progress import progress_bar
from segxai.pipelines.runs.config import RunConfig
from segxai.pipelines.runs.dataset import CaseFiles

EXECUTORS = ("local", "ray")
OnRecord = Callable[[dict[str, Any]], None]


def run_cases(config: RunConfig, out: Path, cases: Sequence[CaseFiles], on_record: OnRecord, *,
              executor: str = "local", workers: int = 2, progress: bool = True) -> None:
    """Process `cases` with the chosen executor, calling `on_record` with each case's record."""
    if executor not in EXECUTORS:
        raise SegxaiError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise SegxaiError(f"workers must be a positive integer, not {workers!r}")
    if not cases:
        return
    if executor == "local":
        _run_local(config, out, cases, on_record, progress)
    else:
        _run_ray(config, out, cases, on_record, workers, progress)


def _run_local(config: RunConfig, out: Path, cases: Sequence[CaseFiles], on_record: OnRecord,
               progress: bool) -> None:
    from segxai.pipelines.runs.worker import CaseWorker

    worker = CaseWorker(config, out)
    for case in progress_bar(cases, enabled=progress, total=len(cases), desc="cases"):
        on_record(worker.process(case))


def _run_ray(config: RunConfig, out: Path, cases: Sequence[CaseFiles], on_record: OnRecord, workers: int,
             progress: bool) -> None:
    """One actor per worker (each loads the model once; a GPU share each when CUDA is present, used when the
    configuration's `model.device` names it), cases handed out as actors free up, records gathered in
    completion order. A Ray instance this run started is shut down when it ends, however it ends."""
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:  # a cluster named by RAY_ADDRESS, else a local instance with `workers` CPUs
        local = {} if os.environ.get("RAY_ADDRESS") else {"num_cpus": workers, "include_dashboard": False}
        ray.init(log_to_driver=False, **local)
    try:
        with _signals_interrupt():
            _map_on_ray(ray, config, out, cases, on_record, workers, progress)
    finally:  # Ctrl-C, a termination signal or an error: never leave this run's Ray processes behind
        if started:
            ray.shutdown()


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """While Ray runs, SIGTERM and SIGHUP interrupt like Ctrl-C, so the `finally` that shuts Ray down runs
    (in the main thread only, where Python delivers signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _map_on_ray(ray: Any, config: RunConfig, out: Path, cases: Sequence[CaseFiles], on_record: OnRecord,
                workers: int, progress: bool) -> None:
    import torch
    from ray.util import ActorPool

    from segxai.pipelines.runs.worker import CaseWorker

    gpus = 1.0 / workers if torch.cuda.is_available() else 0
    threads = max(1, int(ray.available_resources().get("CPU", workers)) // workers)
    actor = ray.remote(num_cpus=1, num_gpus=gpus)(CaseWorker)
    pool = ActorPool([actor.remote(config, out, threads) for _ in range(workers)])
    records = pool.map_unordered(lambda worker, case: worker.process.remote(case), list(cases))
    for record in progress_bar(records, enabled=progress, total=len(cases), desc=f"cases on {workers} Ray workers"):
        on_record(record)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SegxaiError("--executor ray needs Ray: pip install 'segxai[ray]' (or pip install 'ray>=2.9')") from None
    return ray
