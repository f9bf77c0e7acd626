"""`segxai run` as processes: two runs on one output folder do each case once and lose no manifest record;
Ctrl-C (SIGINT) stops a run with exit 130 and one line, and the rerun ends with the outputs of an uninterrupted
run. The real command runs in subprocesses on the small phantom dataset of test_runs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from test_runs import N_CASES, dataset, write_config  # noqa: F401 - `dataset` is a fixture used below

pytestmark = pytest.mark.usefixtures("one_thread")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def segxai_run(config: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "segxai.cli", "run", str(config), "--no-progress"],
                            env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_two_runs_on_one_folder_do_each_case_once_and_lose_no_record(dataset, tmp_path):
    """This test holds the folder's lock while both runs start, so both find it busy and wait; released, one
    runs every case and the other then finds them done."""
    from segxai.atomic import folder_lock

    out = tmp_path / "out"
    out.mkdir()
    config = write_config(dataset, out, rois=["none"], evaluation={"faithfulness": False, "sanity": False,
                                                                    "stability": False})
    with folder_lock(out):
        runs = [segxai_run(config) for _ in range(2)]
        for process in runs:  # each says it waits, naming the holder, before it reads the manifest
            assert "in use by process" in process.stderr.readline()
    results = [(process.wait(timeout=300), process.stdout.read(), process.stderr.read()) for process in runs]
    assert [code for code, _, _ in results] == [0, 0], results
    said = sorted(out_text.splitlines()[0].split(";")[0] for _, out_text, _ in results)
    assert said == [f"0 case(s) run, {N_CASES} already done, 0 failed", f"{N_CASES} case(s) run, 0 already done, 0 failed"]
    found = records(out)
    assert sorted(r["case"] for r in found) == [f"case{i}" for i in range(N_CASES)]
    assert all(r["status"] == "done" for r in found)


def test_ctrl_c_stops_a_run_and_the_rerun_matches_an_uninterrupted_run(dataset, tmp_path):
    from segxai.pipelines.runs import run

    settings = {"methods": [{"name": "occlusion", "params": {"window": 4, "stride": 2}}], "rois": ["none"]}
    full = tmp_path / "full"
    run(write_config(dataset, full, **settings), progress=False)
    out = tmp_path / "interrupted"
    config = write_config(dataset, out, **settings)
    process = segxai_run(config)
    deadline = time.monotonic() + 300
    while not ((out / "manifest.jsonl").is_file() and (out / "manifest.jsonl").read_text().count("\n") >= 1):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    code, err = process.wait(timeout=120), process.stderr.read()
    assert code == 130 and err == "segxai: interrupted (rerun the same command to resume)\n"
    assert 1 <= len(records(out)) < N_CASES  # stopped part-way, the finished cases kept
    done = len([r for r in records(out) if r["status"] == "done"])
    rerun = run(config, progress=False)  # the same settings, in this process: it resumes
    assert len(rerun.skipped) == done and len(rerun.processed) == N_CASES - done and not rerun.failed
    maps = sorted(p.relative_to(full) for p in (full / "cases").rglob("*.nii.gz"))
    assert maps == sorted(p.relative_to(out) for p in (out / "cases").rglob("*.nii.gz")) and len(maps) == 2 * N_CASES
    for path in maps:
        np.testing.assert_array_equal(nib.load(full / path).get_fdata(), nib.load(out / path).get_fdata())
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
    assert [strip(r["rows"]) for r in records(out)] == [strip(r["rows"]) for r in records(full)]  # one batching
