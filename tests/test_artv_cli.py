"""``microcinema artv`` (issue 17 items 8 and 12) and ``microcinema eval --benchmark longvideo --model``: the video
file has the right frame count, images and keyframes, the streaming writer, --help, bad input as one line with
exit status 2. A tiny random ART-V pipeline folder, one sampler step."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from microcinema.cli import main
from microcinema.core.video_io import probe_video, read_video
from microcinema.systems.artv.cli import ANCHOR_MODES, StreamingVideoWriter
from microcinema.systems.artv.model import ARTVModel
from microcinema.systems.artv.pipeline import ARTVPipeline
from microcinema.systems.artv.segments import ANCHOR_MODES as LIBRARY_ANCHOR_MODES
from microcinema.testing import tiny_clip_text_model, tiny_clip_tokenizer, tiny_unet2d, tiny_vae


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    unet = tiny_unet2d(cross_attention_dim=32, sample_size=8)
    torch.manual_seed(0)
    model = ARTVModel.from_unet(unet, mask_block_out_channels=[8, 8], mask_layers_per_block=1)
    pipe = ARTVPipeline(model, tiny_vae(), tiny_clip_text_model(), tiny_clip_tokenizer(), num_inference_steps=1)
    return str(pipe.save_pretrained(tmp_path_factory.mktemp("artv") / "model"))


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main(["artv", *map(str, argv)])
    except SystemExit as exit_:  # argparse's usage errors (also one line, status 2)
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_teaches(capsys):
    with pytest.raises(SystemExit) as info:
        main(["artv", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for needle in ("PROMPT", "--frames-per-prompt", "--image", "--keyframe", "--loop", "--anchor", "examples:",
                   "memory stays flat", "DPM++ 2S ancestral"):
        assert needle in text, needle
    assert ANCHOR_MODES == LIBRARY_ANCHOR_MODES
    assert "artv" in main.__globals__["DESCRIPTION"]


def test_writes_every_frame_of_every_prompt(folder, tmp_path, capsys):
    out = tmp_path / "v.mp4"
    code, stdout, err = run(capsys, "a red circle moving left", "a red circle moving up", "--out", out,
                            "--frames-per-prompt", 2, 3, "--model", folder, "--seed", 3)
    assert code == 0, err
    info = probe_video(out)
    assert info.num_frames == 5 and info.fps == pytest.approx(8.0) and (info.height, info.width) == (16, 16)
    assert "wrote" in stdout and "5 frames" in stdout and "2 prompt(s)" in stdout
    assert "segments" in err and "frames" in err  # the two progress bars
    assert not list(tmp_path.glob(".*partial*"))
    again = tmp_path / "again.mp4"
    assert run(capsys, "a red circle moving left", "a red circle moving up", "--out", again, "--frames-per-prompt",
               2, 3, "--model", folder, "--seed", 3, "--quiet")[0] == 0
    assert np.array_equal(read_video(out)[0], read_video(again)[0])  # the seed decides


def test_image_keyframe_loop_and_gif(folder, tmp_path, capsys):
    key = tmp_path / "key.png"
    Image.new("RGB", (30, 20), (220, 40, 40)).save(key)
    out = tmp_path / "v.gif"
    code, _, err = run(capsys, "a red circle moving left", "--out", out, "--frames-per-prompt", 4, "--image", key,
                       "--keyframe", f"2={key}", "--model", folder, "--quiet", "--anchor", "first")
    assert code == 0, err
    assert "resized 30x20" in err and "frame 0 is your image" in err
    assert probe_video(out).num_frames == 4
    out = tmp_path / "loop.mp4"
    assert run(capsys, "a", "b", "--out", out, "--frames-per-prompt", 2, "--loop", "--model", folder, "--quiet",
               "--fps", 4)[0] == 0
    info = probe_video(out)
    assert info.num_frames == 4 and info.fps == pytest.approx(4.0)


def test_streaming_writer_appends_and_aborts(tmp_path):
    writer = StreamingVideoWriter(tmp_path / "w.mp4", 8.0)
    for k in range(80):  # encoded as they come: past x264's look-ahead, packets are in the partial file
        writer.append(np.full((15, 17, 3), 3 * k, np.uint8))  # odd sides are padded
    assert writer.tmp.stat().st_size > 0 and not (tmp_path / "w.mp4").exists()
    assert writer.close() == tmp_path / "w.mp4" and probe_video(tmp_path / "w.mp4").num_frames == 80
    broken = StreamingVideoWriter(tmp_path / "b.mp4", 8.0)
    broken.append(np.zeros((16, 16, 3), np.uint8))
    broken.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.mp4"]


@pytest.mark.parametrize("argv, expected", [
    (["", "--out", "{tmp}/v.mp4"], "empty prompt"),
    (["a", "--out", "{tmp}/v.mp4", "--frames-per-prompt", "0"], "--frames-per-prompt must be an integer >= 1"),
    (["a", "b", "--out", "{tmp}/v.mp4", "--frames-per-prompt", "1", "2", "3"], "one number or one per prompt"),
    (["a", "--out", "{tmp}/v.mp4", "--image", "{tmp}/junk.png"], "cannot read image"),
    (["a", "--out", "{tmp}/v.mp4", "--image", "{tmp}/missing.png"], "image not found"),
    (["a", "--out", "{tmp}/v.mp4", "--frames-per-prompt", "4", "--keyframe", "4={tmp}/ok.png"],
     "keyframe at frame 4 is past the video's end"),
    (["a", "--out", "{tmp}/v.mp4", "--keyframe", "end={tmp}/ok.png"], "--keyframe must be FRAME=IMAGE"),
    (["a", "--out", "{tmp}/v.mp4", "--keyframe", "2={tmp}/junk.png"], "--keyframe 2: cannot read image"),
    (["a", "--out", "{tmp}/v.mp4", "--guidance-scale", "high"], "--guidance-scale must be a number >= 0"),
    (["a", "--out", "{tmp}/v.mp4", "--ref-guidance-scale", "nan"], "--ref-guidance-scale must be a number >= 0"),
    (["a", "--out", "{tmp}/v.avi"], "--out must end in .mp4 or .gif"),
    (["a", "--out", "{tmp}/v.mp4", "--model", "{tmp}"], "not an ART-V pipeline folder"),
])
def test_bad_input_is_one_line_with_status_2(folder, tmp_path, capsys, argv, expected):
    (tmp_path / "junk.png").write_bytes(b"not an image")
    Image.new("RGB", (16, 16)).save(tmp_path / "ok.png")
    argv = [a.format(tmp=tmp_path) for a in argv]
    if "--model" not in argv:
        argv += ["--model", folder]
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "v.mp4").exists() and not list(tmp_path.glob(".*partial*"))


def test_embedded_model_missing_is_one_line(tmp_path, capsys, monkeypatch):
    import microcinema.embedded

    monkeypatch.setattr(microcinema.embedded, "WEIGHTS_DIR", tmp_path / "weights")  # as before it was trained
    code, _, err = run(capsys, "a red circle moving left", "--out", tmp_path / "v.mp4")
    assert code == 2 and err.count("\n") == 1 and "embedded ART-V model is not trained yet" in err


def test_eval_longvideo_with_a_model_folder(folder, tmp_path, capsys, monkeypatch):
    """The wiring: the folder's pipeline makes the benchmark's videos (here its first sequence cut to 2 x 2 frames
    at 16 pixels, the 64-frame run being the benchmark's own business)."""
    import microcinema.eval.longvideo as longvideo

    seen = {}

    def run_longvideo(make_video, out, **kwargs):
        segments = longvideo.sample_sequence(0, frames_per_segment=2, num_segments=2, size=16)
        seen.update(kwargs, frames=make_video(segments, kwargs["seed"]))
        return {}

    monkeypatch.setattr(longvideo, "run_longvideo", run_longvideo)
    code = main(["eval", "--benchmark", "longvideo", "--num-samples", "3", "--out", str(tmp_path / "lv"),
                 "--model", folder, "--steps", "1", "--seed", "5"])
    assert code == 0, capsys.readouterr().err
    assert seen["frames"].shape == (4, 16, 16, 3) and seen["num_sequences"] == 3 and seen["seed"] == 5
    assert seen["label"].startswith("ART-V") and "1 steps per frame" in seen["note"]
