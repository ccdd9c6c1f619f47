"""The web UI's jobs without the web (issue 20): input checks, the three systems' jobs on the embedded models with
few steps, their events, cancel, the run store, and that the UI makes the same video as the CLI for a seed."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from microcinema.core.errors import MicroCinemaError
from microcinema.core.video_io import read_video as _read_video
from microcinema.ui.backend import Studio, check_prompt, parse_segments, resolve_seed
from microcinema.ui.jobs import Cancelled, Job, JobRegistry, run_job


def read_video(path):
    return _read_video(path)[0]


def kinds(events):
    return [e.kind for e in events if e.kind != "progress"]


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    return Studio(outputs=tmp_path_factory.mktemp("ui"))


# ------------------------------------------------------------------------------------------ input checks


def test_check_prompt():
    assert check_prompt("  a red circle  ") == "a red circle"
    for empty in ("", "   ", None):
        with pytest.raises(MicroCinemaError, match="empty prompt"):
            check_prompt(empty)


def test_resolve_seed():
    assert resolve_seed(7) == 7 and resolve_seed("12") == 12 and resolve_seed(3.0) == 3
    drawn = {resolve_seed(-1) for _ in range(5)} | {resolve_seed(None), resolve_seed("")}
    assert all(0 <= s < 2**31 for s in drawn) and len(drawn) > 1
    for bad in ("abc", 1.5, -2, float("nan")):
        with pytest.raises(MicroCinemaError, match="seed must be a whole number"):
            resolve_seed(bad)


def test_parse_segments():
    rows = [["a red circle moving left", 16], ["", None], ["a red circle moving up", "8"]]
    assert parse_segments(rows) == [("a red circle moving left", 16), ("a red circle moving up", 8)]
    cases = {
        "row 1: empty prompt": [["", 4]],
        "row 2: give the number of frames": [["a", 4], ["b", None]],
        "row 1: frames must be a whole number from 1": [["a", 0]],
        "add at least one prompt": [],
        "add up to 300 frames": [["a", 200], ["b", 100]],
    }
    for message, bad in cases.items():
        with pytest.raises(MicroCinemaError, match=message):
            parse_segments(bad)
    import pandas as pd

    frame = pd.DataFrame([["a green square moving right", 3]], columns=["prompt", "frames"])
    assert parse_segments(frame) == [("a green square moving right", 3)]


# ------------------------------------------------------------------------------------------ jobs


def test_run_job_reports_errors_and_results():
    events = list(run_job(lambda job: (job.emit("step", 1), 42)[1]))
    assert kinds(events) == ["step", "done"] and events[-1].payload == 42
    events = list(run_job(lambda job: check_prompt("")))
    assert events[-1].kind == "error" and isinstance(events[-1].payload, MicroCinemaError)


def test_cancel_stops_a_running_job():
    job, started = Job(), threading.Event()

    def work(job):
        started.set()
        while True:
            job.raise_if_cancelled()

    registry = JobRegistry()
    registry._jobs["session"] = job
    stream = run_job(work, job)
    started.wait(5)
    assert registry.cancel("session") and not registry.cancel("other")
    events = list(stream)
    assert isinstance(events[-1].payload, Cancelled)


def test_microcinema_job_matches_the_cli_and_shows_the_key_frame_first(studio):
    events = list(run_job(lambda job: studio.microcinema(job, "a red circle moving left", steps=2, seed=5,
                                                          negative_prompt="blurry")))
    assert kinds(events) == ["seed", "key_frame", "done"], events[-1].payload
    assert events[0].payload == 5
    run = events[-1].payload
    frames = read_video(run.mp4)
    assert frames.shape == (33, 64, 64, 3) and read_video(run.gif).shape[0] == 33
    settings = json.loads((run.folder / "settings.json").read_text())
    assert settings["seed"] == 5 and settings["negative_prompt"] == "blurry"
    assert "--seed 5" in settings["command"] and "--negative-prompt blurry" in settings["command"]
    # the same call the CLI makes (microcinema generate ... --seed 5 --steps 2 --negative-prompt blurry)
    pipe = studio.microcinema_pipeline()
    out = pipe("a red circle moving left", negative_prompt="blurry", num_inference_steps=2,
               generator=torch.Generator().manual_seed(5), output_type="latent", progress=False)
    expected = pipe.decode_to_uint8(out.frames)[0]
    from microcinema.core.video_io import write_video

    write_video(run.folder / "cli.mp4", expected, out.fps)
    np.testing.assert_array_equal(read_video(run.folder / "cli.mp4"), frames)
    # the key frame shown during the run is the one the video was made from
    at = next(i for i, e in enumerate(events) if e.kind == "key_frame")
    stages = [e.payload[1].split(":")[0] for e in events if e.kind == "progress"]
    before = [e.payload[1].split(":")[0] for e in events[:at] if e.kind == "progress"]
    assert set(before) == {"key frame"} and "base" in stages  # shown before stage two starts
    key = np.asarray(events[at].payload, dtype=np.int16)
    final = np.asarray(Image.open(run.folder / "key_frame.png"), dtype=np.int16)
    assert np.abs(key - final).max() <= 1
    assert run.folder in [r.folder for r in studio.runs.list()]


def test_microcinema_job_bad_input(studio, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    for kwargs, message in [({"prompt": ""}, "empty prompt"),
                            ({"num_frames": 4}, "num_frames must be an odd number"),
                            ({"image": str(bad)}, "cannot read image"),
                            ({"guidance_scale": "lots"}, "guidance must be a number")]:
        args = {"prompt": "a red circle moving left", "steps": 1, **kwargs}
        events = list(run_job(lambda job: studio.microcinema(job, **args)))
        assert events[-1].kind == "error" and message in str(events[-1].payload)
        assert "\n" not in str(events[-1].payload)


def test_microcinema_job_with_an_image_says_how_it_was_fitted(studio):
    image = Image.new("RGBA", (100, 80), (200, 30, 30, 255))
    events = list(run_job(lambda job: studio.microcinema(job, "a red square moving up", image=image, steps=1,
                                                          seed=1)))
    notes = [e.payload for e in events if e.kind == "notes"][0]
    assert any("RGBA" in n for n in notes) and any("80" in n or "100" in n for n in notes)
    assert events[-1].kind == "done" and events[-1].payload.settings["image"] is True


def test_cancelled_job_saves_no_run(studio):
    before = len(studio.runs.list())
    job = Job()
    job.cancel()
    events = list(run_job(lambda j: studio.microcinema(j, "a red circle moving left", steps=1), job))
    assert isinstance(events[-1].payload, Cancelled)
    assert len(studio.runs.list()) == before


def test_artv_job_streams_frames_and_a_growing_video(studio):
    events = list(run_job(lambda job: studio.artv(job, [["a red circle moving left", 3],
                                                        ["a red circle moving up", 2]], steps=1, seed=3)))
    assert events[-1].kind == "done", events[-1].payload
    frames = [e.payload for e in events if e.kind == "frame"]
    assert [f[0] for f in frames] == [0, 1, 2, 3, 4] and all(f[1] == 5 for f in frames)
    partial = [e.payload for e in events if e.kind == "partial"]
    assert [read_video(p).shape[0] for p in partial] == [3, 5]  # at each segment's end
    run = events[-1].payload
    video = read_video(run.mp4)
    assert video.shape[0] == 5
    assert run.settings["segments"][1] == {"prompt": "a red circle moving up", "frames": 2}
    assert "--frames-per-prompt 3 2" in run.settings["command"]
    events = list(run_job(lambda job: studio.artv(job, [["a red circle", 0]], steps=1)))
    assert events[-1].kind == "error" and "row 1: frames" in str(events[-1].payload)


@pytest.fixture(scope="module")
def bounce_clips(tmp_path_factory):
    from microcinema.systems.fewshot.data import write_fewshot_clips

    folder = tmp_path_factory.mktemp("clips")
    write_fewshot_clips(folder, "bounce", num=2, colours=["red"], objects=["circle"])
    return sorted(folder.rglob("*.mp4"))


def test_fewshot_train_and_generate(studio, bounce_clips):
    events = list(run_job(lambda job: studio.fewshot_train(job, bounce_clips, "a red circle bouncing", steps=2,
                                                            sample_every=1, sample_steps=1)))
    assert events[-1].kind == "done", events[-1].payload
    losses = [p for e in events if e.kind == "loss" for p in e.payload]
    assert [s for s, _ in losses] == [1, 2] and all(np.isfinite(v) for _, v in losses)
    samples = [e.payload for e in events if e.kind == "sample"]
    assert [s for s, _ in samples] == [1, 2] and read_video(samples[0][1]).shape[0] == 8
    report = events[-1].payload
    events = list(run_job(lambda job: studio.fewshot_generate(job, report["adapter"], "a yellow star bouncing",
                                                               seed=4, steps=1)))
    assert events[-1].kind == "done", events[-1].payload
    video = read_video(events[-1].payload.mp4)
    assert video.shape == (8, 64, 64 * 2 + 2, 3)


def test_fewshot_train_bad_input(studio, bounce_clips, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    for files, caption, message in [(bounce_clips[:1], "a bounce", "upload 2 to 16 clips"),
                                    (bounce_clips, " ", "empty caption"),
                                    ([bounce_clips[0], broken], "a bounce", "broken.mp4")]:
        events = list(run_job(lambda job: studio.fewshot_train(job, files, caption, steps=1)))
        assert events[-1].kind == "error" and message in str(events[-1].payload), events[-1].payload
        assert isinstance(events[-1].payload, MicroCinemaError)
    short = tmp_path / "short"
    from microcinema.systems.fewshot.data import write_fewshot_clips

    write_fewshot_clips(short, "bounce", num=2, num_frames=6, colours=["red"], objects=["circle"])
    events = list(run_job(lambda job: studio.fewshot_train(job, sorted(short.rglob("*.mp4")), "a bounce", steps=1)))
    assert events[-1].kind == "error" and "shorter than 8 frames at 2 fps" in str(events[-1].payload)
    events = list(run_job(lambda job: studio.fewshot_train(job, sorted(short.rglob("*.mp4")), "a bounce", steps=1,
                                                            num_frames=4, fps=8)))  # fewer frames: the clips fit
    assert events[-1].kind == "done", events[-1].payload
    events = list(run_job(lambda job: studio.fewshot_generate(job, "", "a star bouncing")))
    assert "no adapter yet" in str(events[-1].payload)


def test_ui_command_says_in_one_line_when_the_port_is_taken(tmp_path, capsys):
    import socket

    from microcinema.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["ui", "--port", str(port), "--outputs", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"cannot serve on 127.0.0.1:{port}" in err[0]
