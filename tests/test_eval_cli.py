"""``microcinema eval`` on a tiny random pipeline folder: shapes and msrvtt runs, missing-input messages."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from microcinema.cli import main
from microcinema.eval.benchmarks import (UCF101_CLASSES, load_classifier_or_note, read_captions, ucf101_prompts)
from microcinema.eval.domain_classifier import DomainVideoClassifier
from microcinema.systems.microcinema.pipeline import MicroCinemaPipeline
from microcinema.pipelines.text_to_image import TextToImagePipeline
from microcinema.testing import tiny_unet2d, tiny_vae
from microcinema.models.unet3d import VideoUNet


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory, minilm_encoder):
    """A MicroCinema pipeline folder of tiny random models (16x16 frames) with a t2i/ key frame model."""
    torch.manual_seed(0)
    video = VideoUNet.from_pretrained_2d(tiny_unet2d(cross_attention_dim=384, sample_size=8),
                                         temporal_attention_head_dim=4)
    folder = MicroCinemaPipeline(video, tiny_vae(), minilm_encoder).save_pretrained(tmp_path_factory.mktemp("mc") / "mc")
    TextToImagePipeline(tiny_unet2d(cross_attention_dim=384, sample_size=8), tiny_vae(),
                        minilm_encoder).save_pretrained(folder / "t2i")
    return folder


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("classifier")
    DomainVideoClassifier(block_out_channels=[8, 8, 16, 16], norm_num_groups=4, sample_size=16).save_pretrained(path)
    return path


def test_shapes_end_to_end_writes_metrics_report_and_plots(pipeline_dir, classifier_dir, tmp_path, capsys):
    out = tmp_path / "shapes"
    argv = ["eval", "--benchmark", "shapes", "--num-samples", "4", "--out", str(out), "--model", str(pipeline_dir),
            "--steps", "1", "--no-interpolate", "--batch-size", "2", "--domain-classifier", str(classifier_dir)]
    assert main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["key_frames"] == "generate" and m["num_samples"] == 4 and m["frames"] == 9
    assert m["judge"]["against_prompt"]["all"]["n"] == 4
    assert set(m["judge"]["motion_from_base_frames"]["by_motion"]) <= {"left", "right", "up", "down", "still",
                                                                       "grow", "shrink"}
    assert np.isfinite(m["appearance"]["centre_frame_psnr_db"]["median"])
    assert np.isfinite(m["appearance"]["all_frames_psnr_db"]["mean"])
    assert m["temporal"]["warping_error"] >= 0 and m["temporal"]["clip_temp"] is None
    assert m["distribution"]["domain_fvd"] >= 0 and m["distribution"]["fvd"] is None
    t = m["timings"]
    assert t["generation_s"] > 0 and t["metrics_s"] > 0 and {"judge", "warping_error", "domain_fvd"} <= set(
        t["metrics_breakdown_s"])
    # generation_s is rounded to 0.01 s (error <= 0.005 / 4 per video) and the per-video figure to 0.001 s
    assert t["generation_s_per_video"] == pytest.approx(t["generation_s"] / 4, abs=0.005 / 4 + 0.0005)
    report = (out / "report.md").read_text()
    assert "microcinema eval --benchmark shapes --num-samples 4" in report
    assert "| domain FVD" in report and "grid.png" in report and "motion_accuracy.png" in report
    assert (out / "grid.png").stat().st_size > 0 and (out / "motion_accuracy.png").stat().st_size > 0
    assert "wrote" in capsys.readouterr().out


def test_shapes_truth_key_frames_and_missing_classifier(pipeline_dir, tmp_path):
    model, note = load_classifier_or_note(tmp_path / "nowhere")
    assert model is None and note.startswith("domain FVD skipped: no domain classifier at")
    out = tmp_path / "truth"
    assert main(["eval", "--benchmark", "shapes", "--num-samples", "2", "--out", str(out), "--model",
                 str(pipeline_dir), "--steps", "1", "--no-interpolate", "--key-frames", "truth"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["key_frames"] == "truth"
    # the shipped classifier measures the domain FVD; without it the report says why it was skipped
    assert m["distribution"]["domain_fvd"] is not None or any("domain FVD skipped" in n for n in m["notes"])


def test_msrvtt_clipsim_with_a_tiny_clip(pipeline_dir, tmp_path):
    from microcinema.testing import make_tiny_clip_model

    clip = make_tiny_clip_model(tmp_path / "clip", num_hidden_layers=1)
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"sentences": [{"video_id": "video1", "caption": "a man is cooking"},
                                                  {"video_id": "video1", "caption": "someone cooks"},
                                                  {"video_id": "video2", "caption": "a dog runs on grass"}]}))
    out = tmp_path / "msrvtt"
    assert main(["eval", "--benchmark", "msrvtt", "--num-samples", "5", "--out", str(out), "--model", str(pipeline_dir),
                 "--steps", "1", "--no-interpolate", "--captions", str(captions), "--clip-model", str(clip)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["num_samples"] == 2 and m["frames"] == 17  # one caption per video; 17 base frames without TSR
    assert -1 <= m["clipsim"] <= 1 and -1 <= m["clip_temp"] <= 1 and "fid" not in m
    assert "| CLIPSIM ↑ |" in (out / "report.md").read_text() and (out / "grid.png").exists()


@pytest.mark.parametrize("extra, expected", [
    (["--benchmark", "ucf101"], ["--data (", "--i3d-weights (", "--inception-weights ("]),
    (["--benchmark", "msrvtt"], ["--captions (", "--clip-model ("]),
    (["--benchmark", "msrvtt", "--captions", "{tmp}", "--clip-model", "{tmp}", "--inception-weights", "{tmp}"],
     ["--data ("]),
    (["--benchmark", "msrvtt", "--captions", "{tmp}/missing.json", "--clip-model", "{tmp}"],
     ["--captions", "missing.json does not exist"]),
])
def test_missing_inputs_are_one_line_errors(tmp_path, capsys, extra, expected):
    argv = ["eval", "--num-samples", "2", "--out", str(tmp_path / "o")] + [a.format(tmp=tmp_path) for a in extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(e in err for e in expected), err
    assert not (tmp_path / "o").exists()


def test_zero_samples_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--benchmark", "shapes", "--num-samples", "0", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--num-samples must be an integer >= 1, got 0" in err and err.count("\n") == 1


def test_prompts_and_caption_layouts(tmp_path):
    assert len(UCF101_CLASSES) == len(set(UCF101_CLASSES)) == 101
    prompts = ucf101_prompts(103)
    assert prompts[0] == "a video of apply eye makeup" and prompts[101] == prompts[0]
    assert prompts[100] == "a video of yo yo"
    (tmp_path / "c.csv").write_text("key,vid_key,video_id,sentence\nret0,msr7579,video7579,a girl sings\n")
    (tmp_path / "c.jsonl").write_text('{"text": "one"}\n\n{"caption": "two"}\n')
    (tmp_path / "c.txt").write_text("first\n\nsecond\n")
    (tmp_path / "l.json").write_text(json.dumps(["x", {"sentence": "y"}]))
    assert read_captions(tmp_path / "c.csv") == ["a girl sings"]
    assert read_captions(tmp_path / "c.jsonl") == ["one", "two"]
    assert read_captions(tmp_path / "c.txt") == ["first", "second"]
    assert read_captions(tmp_path / "l.json") == ["x", "y"]
    from microcinema.core.errors import MicroCinemaError

    (tmp_path / "c.xml").write_text("<a/>")
    with pytest.raises(MicroCinemaError, match="allowed: .json, .jsonl, .csv, .txt"):
        read_captions(tmp_path / "c.xml")
    (tmp_path / "bad.csv").write_text("id,words\n1,hello\n")
    with pytest.raises(MicroCinemaError, match="column named one of caption, sentence, text, name"):
        read_captions(tmp_path / "bad.csv")


def test_ucf101_run_path_with_random_feature_networks(pipeline_dir, tmp_path, monkeypatch):
    """The UCF-101 protocol end to end (prompts, real videos from a folder, FVD and IS), with random I3D and
    Inception networks at small resolutions standing in for the real weights (the paths only need to exist)."""
    from microcinema.data.synthetic import make_clip
    from microcinema.eval import metrics
    from microcinema.core.video_io import write_video

    real_i3d, real_inception = metrics.I3DFeatureExtractor, metrics.InceptionFeatureExtractor
    monkeypatch.setattr(metrics, "I3DFeatureExtractor",
                        lambda path: real_i3d(None, allow_random=True, resolution=32, device="cpu"))
    monkeypatch.setattr(metrics, "InceptionFeatureExtractor",
                        lambda path: real_inception(None, allow_random=True, resolution=75, device="cpu"))
    videos = tmp_path / "UCF-101" / "Archery"
    videos.mkdir(parents=True)
    for i in range(3):
        write_video(videos / f"v_Archery_g0{i}_c01.mp4", make_clip(i, num_frames=12, fps=2.0, size=32)[0], 2.0)
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"")
    out = tmp_path / "ucf"
    assert main(["eval", "--benchmark", "ucf101", "--num-samples", "3", "--out", str(out), "--model", str(pipeline_dir),
                 "--steps", "1", "--no-interpolate", "--data", str(tmp_path / "UCF-101"), "--i3d-weights",
                 str(weights), "--inception-weights", str(weights)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["num_samples"] == m["num_real"] == 3 and m["frames"] == 17 and m["fvd_frames"] == 16
    assert m["fvd"] >= 0 and m["inception_score"] >= 1 and "fid" not in m
    assert m["prompt_template"] == "a video of {}"
    assert len((out / "real_videos.jsonl").read_text().splitlines()) == 3
