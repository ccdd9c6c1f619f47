"""``microcinema fewshot`` end to end on a tiny Stable Diffusion folder (issue 18 items 4, 5, 9): train an adapter on
procedural clips, resume after an interruption exactly, generate with --compare, and one-line errors for bad input
without losing anything."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from microcinema.cli import main
from microcinema.systems.fewshot.adapter import load_adapter
from microcinema.systems.fewshot.data import write_fewshot_clips
from microcinema.testing import make_tiny_sd_pipeline


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fewshot_cli")
    base = make_tiny_sd_pipeline(root / "sd")
    table = write_fewshot_clips(root / "clips", "bounce", num=3, num_frames=9, fps=2.0, size=32, preview=0,
                               objects=["circle", "square"])
    short = write_fewshot_clips(root / "short", "bounce", num=2, num_frames=3, fps=2.0, size=32, preview=0,
                               objects=["circle"])
    return {"root": root, "base": str(base), "table": table, "short": short}


def _train(setup, out, *extra):
    return main(["fewshot", "train", "--data", str(setup["table"]), "--out", str(out), "--base", setup["base"],
                 "--steps", "2", "--frames", "4", "--checkpoint-every", "1", "--log-every", "1", "--lr", "1e-3", *extra])


def _one_line_error(capsys, rc, pattern):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    errors = [line for line in err if line.startswith("microcinema: error:")]
    assert len(errors) == 1 and pattern in errors[0], err
    return errors[0]


def test_train_then_generate_with_compare(setup, tmp_path, capsys):
    from microcinema.core.video_io import probe_video

    out = tmp_path / "bounce.safetensors"
    assert _train(setup, out) == 0
    printed = capsys.readouterr().out
    assert "memory estimate" in printed and "activations" in printed and "training" in printed
    assert printed.index("memory estimate") < printed.index("wrote")
    state, meta = load_adapter(out)
    assert (meta.steps, meta.num_frames, meta.height, meta.width, meta.fps) == (2, 4, 32, 32, 2.0)
    assert meta.attention == "recurrent" and meta.noise == "independent" and meta.base == setup["base"]
    assert meta.num_clips == 3 and meta.trainable_parameters == sum(v.numel() for v in state.values())
    run = tmp_path / "bounce_run"
    assert [r["step"] for r in map(json.loads, (run / "loss.jsonl").read_text().splitlines())] == [1, 2]
    assert (run / "loss.png").is_file() and (run / "fewshot.json").is_file()

    video = tmp_path / "v.mp4"
    rc = main(["fewshot", "generate", str(out), "a red ball bouncing", "--out", str(video), "--steps", "2",
               "--frames", "5", "--compare"])
    assert rc == 0
    assert probe_video(video).num_frames == 5
    side = probe_video(tmp_path / "v_compare.mp4")
    assert side.num_frames == 5 and side.width >= 2 * 32
    assert (tmp_path / "v_compare.png").is_file()


def test_resume_after_interruption_is_exact(setup, tmp_path, monkeypatch, capsys):
    from microcinema.training import trainer as trainer_module

    whole = tmp_path / "whole.safetensors"
    assert _train(setup, whole, "--steps", "4") == 0
    cut = tmp_path / "cut.safetensors"
    original, calls = trainer_module.Trainer.save_checkpoint, []

    def killed_after_two(self):
        path = original(self)
        calls.append(self.global_step)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if killed right after the step-2 checkpoint
        return path

    monkeypatch.setattr(trainer_module.Trainer, "save_checkpoint", killed_after_two)
    assert _train(setup, cut, "--steps", "4") == 130
    assert not cut.exists() and calls == [1, 2]
    monkeypatch.setattr(trainer_module.Trainer, "save_checkpoint", original)
    assert _train(setup, cut, "--steps", "4") == 0
    assert '"resumed_from": 2' in capsys.readouterr().out
    a, meta = load_adapter(whole)
    b, _ = load_adapter(cut)
    assert meta.steps == 4 and all(torch.equal(a[k], b[k]) for k in a)
    logs = [(p.with_name(p.stem + "_run") / "loss.jsonl").read_text() for p in (whole, cut)]
    assert logs[0] == logs[1]


def test_bad_input_is_one_line_and_loses_nothing(setup, tmp_path, capsys):
    root, base = setup["root"], setup["base"]

    def dry(data, *extra):
        return main(["fewshot", "train", "--data", str(data), "--out", str(tmp_path / "x.safetensors"), "--base", base,
                     "--frames", "4", "--dry-run", *extra])

    rows = [json.loads(line) for line in setup["table"].read_text().splitlines()]
    clip = lambda r: str(root / "clips" / r["file"])  # noqa: E731

    def table(name, entries):
        path = tmp_path / name
        path.write_text("".join(json.dumps(e) + "\n" for e in entries))
        return path

    _one_line_error(capsys, dry(table("one.jsonl", [{"file": clip(rows[0]), "text": "a ball"}])), "at least 2 clips")
    short_rows = [json.loads(line) for line in setup["short"].read_text().splitlines()]
    shorts = [{"file": str(root / "short" / r["file"]), "text": "a ball"} for r in short_rows]
    _one_line_error(capsys, dry(table("short.jsonl", shorts)), "shorter than 4 frames at 2 fps")
    mixed = table("mixed.jsonl", [{"file": clip(r), "text": "a ball"} for r in rows] + shorts[:1])
    assert dry(mixed) == 0
    captured = capsys.readouterr()
    assert "dry run" in captured.out and "microcinema: warning: skipping a clip shorter" in captured.err
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 2048)
    bad = table("bad.jsonl", [{"file": clip(r), "text": "a ball"} for r in rows] + [{"file": str(broken), "text": "b"}])
    _one_line_error(capsys, dry(bad), "unreadable video")
    gone = table("gone.jsonl", [{"file": clip(r), "text": "a ball"} for r in rows] + [{"file": "nope.mp4", "text": "b"}])
    _one_line_error(capsys, dry(gone), "file not found")
    empty = table("empty.jsonl", [{"file": clip(r), "text": ""} for r in rows])
    _one_line_error(capsys, dry(empty), "missing caption")
    folder = tmp_path / "videos"
    folder.mkdir()
    for r in rows:
        shutil.copy(clip(r), folder)
    _one_line_error(capsys, dry(folder), "missing caption")
    assert dry(folder, "--caption", "a ball bouncing") == 0
    capsys.readouterr()
    _one_line_error(capsys, main(["fewshot", "train", "--data", str(folder), "--out", str(tmp_path / "a.pt")]),
                    ".safetensors")

    # an existing adapter made with other settings is not overwritten, nor a file without a run folder
    out = tmp_path / "kept.safetensors"
    assert _train(setup, out) == 0
    capsys.readouterr()
    before = out.read_bytes()
    _one_line_error(capsys, _train(setup, out, "--attention", "sparse-causal"), "other settings")
    alone = tmp_path / "alone.safetensors"
    shutil.copy(out, alone)
    _one_line_error(capsys, _train(setup, alone), "has no run folder")
    assert out.read_bytes() == before and alone.read_bytes() == before
    assert _train(setup, out, "--attention", "sparse-causal", "--overwrite") == 0
    assert load_adapter(out)[1].attention == "sparse-causal"
    capsys.readouterr()

    # an adapter refused on another base; a bad output suffix
    other = make_tiny_sd_pipeline(tmp_path / "other", seed=1)
    video = tmp_path / "v.mp4"
    rc = main(["fewshot", "generate", str(out), "a ball", "--out", str(video), "--base", str(other), "--steps", "1"])
    _one_line_error(capsys, rc, "tuned on base")
    _one_line_error(capsys, main(["fewshot", "generate", str(out), "a ball", "--out", str(tmp_path / "v.avi")]),
                    ".mp4 or .gif")
    _one_line_error(capsys, main(["fewshot", "generate", str(tmp_path / "none.safetensors"), "a ball", "--out",
                                  str(video)]), "adapter not found")
    assert not video.exists()


def test_data_command_and_cli_choices(tmp_path, capsys):
    from microcinema.systems.fewshot import cli, inflation, structured_noise

    assert cli.ATTENTION_KINDS == inflation.ATTENTION_KINDS and cli.NOISE_KINDS == structured_noise.NOISE_KINDS
    assert cli.DEFAULT_ALPHA == structured_noise.DEFAULT_ALPHA
    assert main(["fewshot", "data", "--motion", "circling", "--num", "2", "--frames", "5", "--size", "32",
                 "--out", str(tmp_path / "c"), "--colours", "red,blue", "--objects", "star"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "c" / "captions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {r["colour"] for r in rows} <= {"red", "blue"} and rows[0]["motion"] == "circling"
    _one_line_error(capsys, main(["fewshot", "data", "--motion", "circling", "--out", str(tmp_path / "d"),
                                  "--colours", "pink"]), "colours")
