"""Small frictions a new user met: one voxel order documented everywhere, the causal help, evaluate's effort
presets, and a heartbeat when the bar is hidden."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from segxai.cli import build_parser
from segxai.pipelines.evaluate import EFFORTS
from segxai.progress import progress_bar, set_heartbeat
from segxai.targets import VOXEL_ORDER, parse_target
from segxai.errors import SegxaiError

README = Path(__file__).resolve().parents[1] / "README.md"


def subcommand_help(name: str) -> str:
    parser = build_parser()
    action = next(a for a in parser._subparsers._group_actions if a.choices)  # the subcommands
    return " ".join(action.choices[name].format_help().split())


def test_voxel_targets_have_one_coordinate_order_in_readme_help_and_errors():
    readme = " ".join(README.read_text().split())
    explain_help = subcommand_help("explain")
    for text in (readme, explain_help):
        assert "voxel:[CLS:]i,j,k" in text and VOXEL_ORDER in text
        assert "z,y,x" not in text
    with pytest.raises(SegxaiError, match=re.escape(VOXEL_ORDER)):
        parse_target("voxel")
    assert parse_target("voxel:2:3,4,5").position == (3, 4, 5)


def test_causal_blocks_help_says_the_regions_own_blocks_are_left_out():
    assert "blocks overlapping the region itself are left out" in subcommand_help("causal")


def test_evaluate_is_quick_by_default_and_thorough_on_request():
    parser = build_parser()
    common = ["evaluate", "--model", "m.pt", "--image", "i.nii.gz", "--mask", "l.nii.gz", "--label", "1", "--out", "o"]
    assert parser.parse_args(common).effort == "quick"
    assert parser.parse_args([*common, "--thorough"]).effort == "thorough"
    with pytest.raises(SystemExit):
        parser.parse_args([*common, "--quick", "--thorough"])
    from segxai.methods.perturb.lime import LIME
    from segxai.methods.perturb.rise import RISE
    import inspect

    defaults = lambda cls, name: inspect.signature(cls.__init__).parameters[name].default  # noqa: E731
    assert EFFORTS["quick"]["rise"]["n_masks"] < defaults(RISE, "n_masks") / 4
    assert EFFORTS["quick"]["lime"]["n_samples"] < defaults(LIME, "n_samples") / 2
    assert EFFORTS["thorough"] == {}  # the methods' own defaults


def test_a_hidden_bar_prints_a_heartbeat_only_when_switched_on(capsys):
    try:
        set_heartbeat(0.0)  # every item is "a few seconds later": no waiting in the test
        assert list(progress_bar(range(3), enabled=False, desc="rise", status=lambda: "loss 0.5")) == [0, 1, 2]
        lines = capsys.readouterr().err.splitlines()
        assert lines[0].startswith("rise: 1/3 after") and lines[-1].startswith("rise: 3/3") and "loss 0.5" in lines[0]
    finally:
        set_heartbeat(None)
    list(progress_bar(range(3), enabled=False, desc="rise"))
    assert capsys.readouterr().err == ""
