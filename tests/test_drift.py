"""Drift measures for long videos (microcinema/eval/drift.py) and the longvideo benchmark (eval/longvideo.py):
perfect on the rendered ground truth, a colour fade and a vanishing object caught where they happen, feature
similarity with tiny random CLIP / DINOv2 folders, one-line errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from microcinema.core.errors import MicroCinemaError
from microcinema.data.synthetic import BACKGROUNDS, HELD_OUT_COMBOS, render_clip
from microcinema.eval.drift import (BACKGROUND_TOLERANCE, ImageFeatureModel, Segment, check_segments, colour_statistics,
                                    domain_drift, feature_similarity, measure_drift, motion_amount, plot_drift,
                                    save_drift_report, start_end_contrast, start_end_count, video_drift)
from microcinema.eval.longvideo import (MOTION_PATTERNS, benchmark_sequences, drifting, fade_colours, is_heldout,
                                        remove_object, render_truth, run_longvideo, sample_sequence)


@pytest.fixture(scope="module")
def sequence():
    """Left, up, right, still: 4 x 16 frames at 8 fps, with its ground truth."""
    segments = sample_sequence(0, motions=["left", "up", "right", "still"])
    return segments, render_truth(segments)


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message
    return message


# ---------------------------------------------------------------------------------------------- definitions


def test_start_end_contrast_is_end_minus_start_over_15_percent():
    assert [start_end_count(n) for n in (1, 6, 16, 63, 64, 256)] == [1, 1, 2, 9, 10, 38]
    assert start_end_contrast(np.arange(64.0)) == pytest.approx(54.0)  # (54..63) - (0..9)
    assert start_end_contrast(np.arange(64.0)[::-1]) == pytest.approx(-54.0)  # signed
    assert start_end_contrast(np.full(40, 3.0)) == 0.0 and start_end_contrast([7.0]) == 0.0
    values = np.r_[np.nan, 1.0, np.zeros(16), 5.0, np.nan]  # 20 values, 3 at each end, NaNs left out
    assert start_end_contrast(values) == pytest.approx(2.5 - 0.5)
    assert np.isnan(start_end_contrast(np.r_[np.nan, 0.0, 1.0, 2.0, np.nan]))  # an end with nothing finite
    assert start_end_contrast(np.arange(10.0), fraction=0.5) == pytest.approx(5.0)


def test_sequences_continue_across_segments_and_stay_in_frame():
    for first, pattern in MOTION_PATTERNS.items():
        assert pattern[0] == first and len(pattern) == 4
    sequences = benchmark_sequences(12, heldout_fraction=0.25)
    assert len(sequences) == 12 and sum(s[0].split == "heldout" for s in sequences) == 3
    assert all(is_heldout(s) for s in sequences[-3:])
    assert all((s[0].colour, s[0].object, s[0].motion) in HELD_OUT_COMBOS for s in sequences[-3:])
    for segments in sequences:
        assert [s.motion for s in segments] == list(MOTION_PATTERNS[segments[0].motion])
        assert len({(s.colour, s.object, s.background, s.digit_instance) for s in segments}) == 1
        centers = np.concatenate([s.centers for s in segments])
        sizes = np.concatenate([s.sizes for s in segments])
        assert (centers - sizes[:, None] / 2 >= 0).all() and (centers + sizes[:, None] / 2 <= 64).all()
        steps = np.linalg.norm(np.diff(centers, axis=0), axis=1)
        assert steps.max() < 2.0  # continuous: no jump at a join (at most one frame's travel)
    again = sample_sequence(3, seed=999)
    assert [s.to_row() for s in again] == [s.to_row() for s in sequences[3]]  # deterministic
    with pytest.raises(MicroCinemaError) as error:
        sample_sequence(0, motions=["left", "sideways", "up", "down"])
    assert "unknown motion 'sideways'" in one_line(error)
    with pytest.raises(MicroCinemaError) as error:
        sample_sequence(0, motions=["left"] * 4)
    assert "leave the frame" in one_line(error)


def test_long_sequences_loop_at_full_speed():
    """256 frames (16 segments): the pattern repeats mirrored, so the path closes and no segment is slowed."""
    segments = sample_sequence(2, num_segments=16)
    pattern = MOTION_PATTERNS[segments[0].motion]
    mirror = {"left": "right", "right": "left", "up": "down", "down": "up"}
    assert [s.motion for s in segments[4:8]] == [mirror.get(m, m) for m in pattern]
    assert [s.motion for s in segments[8:12]] == list(pattern) and sum(s.num_frames for s in segments) == 256
    centers = np.concatenate([s.centers for s in segments])
    steps = np.linalg.norm(np.diff(centers, axis=0), axis=1)
    moving = steps[steps > 1e-9]
    assert np.allclose(moving, moving[0])  # one speed throughout: never scaled down to fit


# ---------------------------------------------------------------------------------------------- truth


def test_ground_truth_reads_perfect(sequence):
    segments, frames = sequence
    assert frames.shape == (64, 64, 64, 3)
    report = measure_drift(frames, segments)
    d, s = report.domain, report.domain["summary"]
    assert [x["motion"] for x in d["segments"]] == ["left", "up", "right", "still"]
    assert s["motion_right_per_segment"] == 1.0 and s["motion_right_all"]
    assert s["colour_kept_every_frame"] and s["object_kept_every_frame"] and s["background_kept_every_frame"]
    assert s["colour_kept_fraction"] == s["object_kept_fraction"] == s["found_fraction"] == 1.0
    assert s["colour_lost_at"] is None and s["object_lost_at"] is None
    assert all(d["frames"]["colour_kept_first"]) and all(d["frames"]["object_kept_first"])
    assert abs(s["object_colour_start_end_contrast"]) < 1.5 and s["background_start_end_contrast"] == 0.0
    assert report.boundaries == [16, 32, 48]
    c = report.generic["start_end_contrast"]
    assert abs(c["colour_distance"]) < 1.0 and abs(c["brightness"]) < 1.0  # Delta E, L*: the object only moves
    assert set(c) == {"colour_distance", "colour_std_distance", "brightness", "motion_amount"}
    curves = report.generic["curves"]
    assert curves["colour_distance"][0] == 0.0 and len(curves["motion_amount"]) == 63
    motion = np.array(curves["motion_amount"])
    assert motion[:47].mean() > 5 * max(motion[48:].mean(), 1e-3)  # the last segment stands still


def test_room_for_the_motion_on_truth_and_at_the_border(sequence):
    """The domain keeps every trajectory in the frame, so each translation of the truth has room; the same
    "left" segment starting with the object at the left edge (the frames mirrored) cannot show its motion."""
    segments, frames = sequence
    d = domain_drift(frames, segments)
    assert [x["possible"] for x in d["segments"]] == [True, True, True, None]  # left, up, right, still
    assert all(x["room_px"] > 5 for x in d["segments"][:3])
    assert d["summary"]["motion_right_where_possible"] == 1.0
    first = frames[0]
    columns = np.flatnonzero((np.abs(first.astype(int) - first[0, 0].astype(int)).sum(-1) > 30).any(0))
    at_edge = np.roll(first, -int(columns[0]), axis=1)  # the object moved to touch the left border (flat background)
    e = domain_drift(np.repeat(at_edge[None], 16, axis=0), segments[:1])  # asked to go left, it stays
    (seg,) = e["segments"]
    assert seg["target_motion"] == "left" and seg["motion"] == "still"
    assert seg["possible"] is False and seg["room_px"] < 2
    assert e["summary"]["motion_right_per_segment"] == 0.0 and e["summary"]["motion_right_where_possible"] is None


def test_motion_amount_of_a_still_and_a_moving_object(sequence):
    _, frames = sequence
    still = np.repeat(frames[50:51], 4, axis=0)
    assert np.allclose(motion_amount(still), 0.0, atol=1e-3)
    moving = motion_amount(frames[:8])
    assert (moving > 0.02).all()
    top = motion_amount(frames[:8], top=0.05)  # the largest 5 % of the flow: the object's own speed
    assert (top > 2 * moving).all() and (top < 3.0).all()  # the object moves about 1 px per frame at 8 fps


# ---------------------------------------------------------------------------------------------- drift caught


def test_colour_fade_grows_the_start_end_contrast_by_the_expected_amount(sequence):
    segments, _ = sequence
    still = sample_sequence(1, motions=["still"] * 4)
    truth = render_truth(still)
    grey = np.array([128.0, 128.0, 128.0])
    mean0 = truth[0].reshape(-1, 3).astype(float).mean(0)
    base = video_drift(truth, space="rgb", motion=False)["start_end_contrast"]["colour_distance"]
    assert base == pytest.approx(0.0, abs=1e-9)  # a still object: every frame is frame 0
    for strength in (0.3, 0.6):
        faded = fade_colours(truth, strength, towards=grey)
        contrast = video_drift(faded, space="rgb", motion=False)["start_end_contrast"]["colour_distance"]
        # frame t's mean is (1 - a_t) m + a_t g, a_t = s t / 63: distance a_t |m - g|, contrast s (58.5 - 4.5) / 63 |m - g|
        expected = strength * 54 / 63 * np.linalg.norm(mean0 - grey)
        assert contrast == pytest.approx(expected, rel=0.01)
        lab = video_drift(faded, motion=False)["start_end_contrast"]
        assert lab["colour_distance"] > 5 and lab["brightness"] > 5  # Delta E / L* in CIELAB too
        domain = domain_drift(faded, still)["summary"]
        assert domain["object_colour_start_end_contrast"] > 5 and domain["background_start_end_contrast"] > 5
    assert not domain_drift(fade_colours(truth, 0.6), still)["summary"]["background_kept_every_frame"]


@pytest.mark.parametrize("k", [0, 37, 63])
def test_an_object_that_vanishes_is_caught_at_its_frame(sequence, k):
    segments, frames = sequence
    report = domain_drift(remove_object(frames, k), segments)
    s = report["summary"]
    assert s["object_lost_at"] == k and s["colour_lost_at"] == k
    assert s["found_fraction"] == pytest.approx(k / 64) and not s["object_kept_every_frame"]
    assert report["frames"]["found"] == [True] * k + [False] * (64 - k)
    assert s["background_kept_every_frame"]  # only the object went
    judged = [x["motion"] for x in report["segments"]]
    assert judged[:k // 16] == ["left", "up", "right", "still"][:k // 16]  # segments before it are unharmed


def test_background_swap_is_not_kept(sequence):
    segments, frames = sequence
    swapped = frames.copy()
    background = render_clip(segments[0])[0, 0, 0]
    other = BACKGROUNDS["maroon" if segments[0].background != "maroon" else "navy"]
    swapped[40:] = np.where((swapped[40:] == background).all(-1, keepdims=True), np.uint8(other), swapped[40:])
    s = domain_drift(swapped, segments)
    assert s["frames"]["background_kept"] == [True] * 40 + [False] * 24
    assert s["summary"]["background_start_end_contrast"] > BACKGROUND_TOLERANCE


# ---------------------------------------------------------------------------------------------- features


@pytest.fixture(scope="module")
def feature_folders(tmp_path_factory):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, Dinov2Config, Dinov2Model

    from microcinema.testing import make_tiny_clip_model

    root = tmp_path_factory.mktemp("features")
    layers = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4)
    clip = make_tiny_clip_model(root / "clip", num_hidden_layers=1)
    Dinov2Model(Dinov2Config(image_size=28, patch_size=7, **layers)).save_pretrained(root / "dino")
    CLIPVisionModelWithProjection(CLIPVisionConfig(image_size=32, patch_size=8, projection_dim=16, **layers)
                                  ).save_pretrained(root / "clipv")
    return {"clip": clip, "dino": root / "dino", "clipv": root / "clipv"}


@pytest.mark.parametrize("name, kind, dim", [("clip", "CLIPModel", 16), ("dino", "Dinov2Model", 32),
                                             ("clipv", "CLIPVisionModelWithProjection", 16)])
def test_feature_similarity_with_tiny_random_models(sequence, feature_folders, name, kind, dim):
    _, frames = sequence
    model = ImageFeatureModel(feature_folders[name], device="cpu", batch_size=24)
    assert model.kind == kind
    emb = model.embeddings(frames[:20])
    assert emb.shape == (20, dim) and np.allclose(emb.norm(dim=-1).numpy(), 1.0, atol=1e-5)
    sim = feature_similarity(frames[:20], model)
    assert sim["to_first"][0] == pytest.approx(1.0, abs=1e-5) and sim["to_first"].shape == (20,)
    assert np.isfinite(sim["to_first"]).all() and (np.abs(sim["to_first"]) <= 1 + 1e-5).all()
    assert sim["to_previous"].shape == (19,) and -1 <= sim["subject_consistency"] <= 1
    same = feature_similarity(np.repeat(frames[:1], 3, axis=0), model)
    assert np.allclose(same["to_first"], 1.0, atol=1e-5) and same["subject_consistency"] == pytest.approx(1.0, abs=1e-5)


def test_video_drift_with_a_feature_model_and_the_plot(sequence, feature_folders, tmp_path):
    segments, frames = sequence
    report = measure_drift(frames, segments, feature_model=feature_folders["clip"])
    curve = report.generic["curves"]["feature_similarity"]
    assert len(curve) == 64 and curve[0] == pytest.approx(1.0, abs=1e-5)
    assert np.isfinite(report.generic["start_end_contrast"]["feature_similarity"])
    assert -1 <= report.generic["subject_consistency"] <= 1
    json.dumps(report.to_dict())  # JSON-ready
    path = plot_drift(tmp_path / "one.png", report, title="one video")
    assert path.stat().st_size > 10_000
    paths = save_drift_report(tmp_path / "video", report, title="one video")
    text = paths["md"].read_text()
    assert "| feature_similarity |" in text and "| 4 | 48-63 |" in text and "| motion_right_all | True |" in text
    assert json.loads(paths["json"].read_text())["boundaries"] == [16, 32, 48] and paths["png"].exists()


# ---------------------------------------------------------------------------------------------- errors


def test_bad_input_is_a_one_line_error(sequence, tmp_path):
    segments, frames = sequence
    cases = [
        (lambda: video_drift(np.zeros((0, 64, 64, 3), np.uint8)), "empty video"),
        (lambda: video_drift([]), "empty list of frames"),
        (lambda: colour_statistics(frames.astype(np.float32)), "need uint8 (F, H, W, 3)"),
        (lambda: colour_statistics(frames, space="hsv"), "colour space must be one of lab, rgb"),
        (lambda: domain_drift(frames, segments[:3]), "sum to 48, but the video has 64 frames"),
        (lambda: measure_drift(frames[:60], segments), "sum to 64, but the video has 60 frames"),
        (lambda: domain_drift(frames, []), "non-empty list of segments"),
        (lambda: check_segments([Segment(0, "red")]), "num_frames must be an integer >= 1, got 0"),
        (lambda: check_segments([{"num_frames": 4, "motion": "jump"}]), "unknown motion 'jump'"),
        (lambda: check_segments([{"num_frames": 4, "speed": 2}]), "unknown keys ['speed']"),
        (lambda: motion_amount(frames[:1]), "at least 2 frames"),
        (lambda: ImageFeatureModel(tmp_path / "missing"), "is not a model folder"),
        (lambda: run_longvideo(lambda s, seed: np.zeros((10, 64, 64, 3), np.uint8), tmp_path / "o",
                               num_sequences=1), "returned 10 frames for sequence 0; its segments ask for 64"),
    ]
    for call, expected in cases:
        with pytest.raises(MicroCinemaError) as error:
            call()
        assert expected in one_line(error), (expected, str(error.value))
    assert check_segments([{"num_frames": 3, "caption": "a red circle moving left", "motion": "left"}])[0].prompt == \
        "a red circle moving left"


# ---------------------------------------------------------------------------------------------- benchmark


def test_benchmark_on_truth_and_on_a_drifting_fake(tmp_path):
    truth = run_longvideo(render_truth, tmp_path / "truth", num_sequences=3, command="test")
    a = truth["all"]
    heldout = sum(is_heldout(s) for s in benchmark_sequences(3))  # the last opens with one, others may hold one later
    assert a["n"] == 3 and heldout >= 1 and truth["heldout_sequences"]["n"] == heldout and truth["frames"] == 64
    assert a["motion_right_per_segment"] == a["motion_right_all_segments"] == 1.0
    assert a["colour_kept_every_frame"] == a["object_kept_every_frame"] == a["background_kept_every_frame"] == 1.0
    assert all(v == 1.0 for v in a["motion_right_by_position"]) and len(a["motion_right_by_position"]) == 4
    c = a["start_end_contrast"]
    assert c["background_distance"]["max_abs"] == 0.0 and c["object_colour_distance"]["max_abs"] < 1.5
    assert c["frame_colour_distance"]["mean_abs"] == pytest.approx(c["frame_colour_distance"]["truth_mean_abs"])
    assert truth["start_end_frames"] == {"video": 10, "motion": 9}
    for name in ("metrics.json", "report.md", "curves.png", "grid.png"):
        assert (tmp_path / "truth" / name).stat().st_size > 0
    report = (tmp_path / "truth" / "report.md").read_text()
    assert "| colour and object kept in every frame | 100.0% | 100.0% |" in report and "curves.png" in report
    assert json.loads((tmp_path / "truth" / "metrics.json").read_text())["per_sequence"][0]["motions"]

    fake = drifting(render_truth, lambda frames: remove_object(fade_colours(frames, 0.5), 56))
    drift = run_longvideo(fake, tmp_path / "fake", num_sequences=2, label="fading, vanishing at 56")
    d = drift["all"]
    assert d["object_kept_every_frame"] == d["colour_kept_every_frame"] == 0.0
    assert d["object_kept_frames"] == pytest.approx(56 / 64)
    assert all(s["object_lost_at"] == 56 for s in drift["per_sequence"])
    assert d["motion_right_by_position"][:3] == [1.0, 1.0, 1.0]  # the first three segments still move right
    assert d["start_end_contrast"]["frame_colour_distance"]["mean"] > 10 * c["frame_colour_distance"]["mean_abs"] + 5
    assert "fading, vanishing at 56" in (tmp_path / "fake" / "report.md").read_text()


def test_cli_longvideo_truth_run(tmp_path, capsys):
    from microcinema.cli import main

    out = tmp_path / "lv"
    assert main(["eval", "--benchmark", "longvideo", "--truth", "--num-samples", "2", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["generator"] == "truth" and m["num_sequences"] == 2 and "ground-truth sanity run" in m["notes"][0]
    assert m["all"]["motion_right_per_segment"] == 1.0 and "wrote" in capsys.readouterr().out
    assert "microcinema eval --benchmark longvideo --truth" in (out / "report.md").read_text()
    for argv, expected in ((["--benchmark", "longvideo", "--truth", "--model", str(tmp_path)], "leave --model out"),
                           (["--benchmark", "longvideo", "--model", str(tmp_path)], "not an ART-V pipeline folder"),
                           (["--benchmark", "shapes", "--truth"], "--truth is only for --benchmark longvideo")):
        assert main(["eval", "--num-samples", "1", "--out", str(tmp_path / "x"), *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, err
