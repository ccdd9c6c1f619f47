"""The command line: help that teaches, the data commands, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from microcinema.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "microcinema.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_commands_and_examples():
    top = run_cli("--help")
    assert top.returncode == 0 and "data synth" in top.stdout
    synth = run_cli("data", "synth", "--help")
    assert synth.returncode == 0
    assert "examples:" in synth.stdout and "--split" in synth.stdout and "heldout" in synth.stdout


def test_data_synth_then_grid(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert main(["data", "synth", "--out", str(out), "--num", "3", "--frames", "9", "--fps", "2", "--seed", "4"]) == 0
    rows = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all((out / row["file"]).exists() for row in rows)
    assert {"file", "caption", "object", "colour", "background", "motion", "centers", "sizes"} <= set(rows[0])
    assert len(rows[0]["centers"]) == 9 and (out / "preview.png").exists()
    assert json.loads((out / "dataset.json").read_text())["seed"] == 4
    grid = tmp_path / "grid.png"
    assert main(["data", "grid", str(out), "--out", str(grid), "--num", "2"]) == 0
    assert grid.stat().st_size > 0


@pytest.mark.parametrize("args, expected", [
    (["--num", "0"], "--num must be an integer >= 1, got 0"),
    (["--num", "2", "--size", "-4"], "--size must be an integer >= 16, got -4"),
    (["--num", "2", "--frames", "0"], "--frames must be an integer >= 1"),
    (["--num", "2", "--fps", "-2"], "--fps must be a positive number"),
    (["--num", "2", "--split", "validation"], "invalid choice: 'validation' (choose from"),
    (["--num", "2", "--size", "33"], "size must be an even integer >= 16"),
    (["--num", "2", "--crf", "60"], "crf must be between 0 (lossless) and 51"),
])
def test_data_synth_bad_input_is_one_line(tmp_path, args, expected):
    result = run_cli("data", "synth", "--out", str(tmp_path / "x"), *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_unwritable_out_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_cli("data", "synth", "--out", str(blocker / "sub"), "--num", "1")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "cannot write to output folder" in result.stderr


def test_grid_on_table_with_missing_columns_is_one_line(tmp_path):
    table = tmp_path / "bad.csv"
    table.write_text("video,caption\nx.mp4,a red circle\n")
    result = run_cli("data", "grid", str(table), "--out", str(tmp_path / "g.png"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "missing" in result.stderr and "videoid" in result.stderr
