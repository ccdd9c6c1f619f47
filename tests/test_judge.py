"""The pixel judge: ground-truth frames and videos of the procedural domain are read back correctly (clean
and degraded), an empty frame shows nothing, and a wrong colour / object / motion is scored wrong."""

from __future__ import annotations

import numpy as np
import pytest

from microcinema.data.synthetic import (BACKGROUNDS, COLOURS, MOTIONS, OBJECTS, ClipSpec, render_clip, render_frame,
                                        render_mask, sample_clip)
from microcinema.core.errors import MicroCinemaError
from microcinema.eval.judge import (ObjectClassifier, accuracy_table, default_object_classifier, degrade_frame,
                                    estimate_motion, judge_colour, judge_frame, judge_frames, judge_video,
                                    motion_thresholds, score_against, segment)

SEED = 4242  # never used to train the classifier (its frames come from its own generator and seed)


@pytest.fixture(scope="module")
def classifier() -> ObjectClassifier:
    return default_object_classifier()


@pytest.fixture(scope="module")
def key_frames() -> tuple[np.ndarray, list[ClipSpec], list[int]]:
    """500 random frames of held-out-seed clips (9 frames at 2 fps; a third show digits), their clips and indices."""
    rng = np.random.default_rng(SEED)
    specs = [sample_clip(i, seed=SEED, num_frames=9, fps=2.0) for i in range(500)]
    which = [int(rng.integers(s.num_frames)) for s in specs]
    return np.stack([render_frame(s, k) for s, k in zip(specs, which)]), specs, which


def _frame(colour: str = "red", obj: str = "circle", background: str = "black", center=(30.0, 34.0),
           extent: float = 20.0, size: int = 64) -> np.ndarray:
    spec = ClipSpec(index=0, split="train", seed=0, colour=colour, object=obj, motion="still", background=background,
                    caption="", fps=2.0, num_frames=1, size=size, centers=[list(center)], sizes=[extent])
    return render_frame(spec, 0)


def _table(judged, specs) -> dict:
    return accuracy_table(zip(judged, [(s.colour, s.object, None) for s in specs]))


def test_clean_key_frames_colour_and_object(key_frames, classifier):
    frames, specs, _ = key_frames
    judged = judge_frames(frames, classifier)
    table = _table(judged, specs)
    assert table["n"] == 500 and table["found"] == 1.0
    assert table["colour"] >= 0.99, table
    assert table["object"] >= 0.97, table
    shapes = accuracy_table(zip(judged, [(s.colour, s.object, None) for s in specs]), group_by="object")
    assert all(shapes[o]["object"] == 1.0 for o in ("circle", "square", "triangle", "star") if o in shapes)


def test_blurred_and_noised_key_frames(key_frames, classifier):
    frames, specs, _ = key_frames
    rng = np.random.default_rng(1)
    degraded = np.stack([degrade_frame(f, blur_sigma=0.8, noise_sigma=8.0, rng=rng) for f in frames])
    table = _table(judge_frames(degraded, classifier), specs)
    assert table["found"] == 1.0
    assert table["colour"] >= 0.99, table
    assert table["object"] >= 0.95, table


def test_centre_and_size_match_the_ground_truth(key_frames, classifier):
    frames, specs, which = key_frames
    shown = [(f, s, k) for f, s, k in zip(frames, specs, which) if s.object in ("circle", "square")][:40]
    assert len(shown) == 40
    for frame, spec, k in shown:
        judged = judge_frame(frame, classifier)
        assert np.hypot(*np.subtract(judged.center, spec.centers[k])) < 0.5
        assert abs(judged.size - spec.sizes[k]) < 1.0  # the renderer's shapes are ~0.25 px wider than nominal


def test_motion_of_ground_truth_videos(classifier):
    pairs = []
    for index in range(70):
        spec = sample_clip(index, seed=SEED + 1, num_frames=9, fps=2.0)
        pairs.append((judge_video(render_clip(spec), fps=2.0, classifier=classifier), spec))
    assert {s.motion for _, s in pairs} == set(MOTIONS)
    table = accuracy_table(pairs)
    assert table["motion"] >= 0.98, table
    assert table["colour_every_frame"] >= 0.98 and table["object"] >= 0.95, table


def test_background_only_frames_show_nothing(classifier):
    rng = np.random.default_rng(0)
    for name, rgb in BACKGROUNDS.items():
        empty = np.broadcast_to(np.array(rgb, np.uint8), (64, 64, 3)).copy()
        noisy = degrade_frame(empty, blur_sigma=0.8, noise_sigma=10.0, rng=rng)
        for frame in (empty, noisy):
            assert not segment(frame).any(), name
            judged = judge_frame(frame, classifier)
            assert not judged.found and judged.colour is None and judged.object is None
            assert score_against(judged, colour="red", object="circle") == {"found": False, "colour": False,
                                                                            "object": False}


def test_wrong_colour_and_object_are_judged_wrong(classifier):
    frame = _frame("red", "circle", "maroon")
    judged = judge_frame(frame, classifier)
    assert (judged.colour, judged.object) == ("red", "circle")
    assert score_against(judged, colour="red", object="circle") == {"found": True, "colour": True, "object": True}
    assert score_against(judged, colour="orange", object="square") == {"found": True, "colour": False, "object": False}
    # repaint the object: the judge follows the pixels, not the prompt
    alpha = render_mask("circle", (30.0, 34.0), 20.0, 64)[..., None]
    for colour, (rgb, _) in COLOURS.items():
        repainted = (np.array(BACKGROUNDS["maroon"]) * (1 - alpha) + np.array(rgb) * alpha + 0.5).astype(np.uint8)
        assert judge_colour(repainted, segment(repainted))[0] == colour
    star = judge_frame(_frame("red", "star"), classifier)
    assert star.object == "star" and not score_against(star, object="circle")["object"]


def test_colour_and_object_kept_over_a_video(classifier):
    spec = sample_clip(3, seed=SEED, num_frames=9, fps=2.0)
    video = render_clip(spec)
    judged = judge_video(video, 2.0, colour=spec.colour, object=spec.object, classifier=classifier)
    assert judged.colour_kept == 1.0 and judged.object_kept == 1.0 and judged.found_fraction == 1.0
    other = "blue" if spec.colour != "blue" else "red"
    recoloured = video.copy()
    for i in (6, 7, 8):  # the object turns another colour at the end
        alpha = render_mask(spec.object, spec.centers[i], spec.sizes[i], 64, spec.digit_instance)[..., None]
        recoloured[i] = (np.array(BACKGROUNDS[spec.background]) * (1 - alpha) + np.array(COLOURS[other][0]) * alpha
                         + 0.5).astype(np.uint8)
    bad = judge_video(recoloured, 2.0, colour=spec.colour, classifier=classifier)
    assert bad.colour == spec.colour and bad.colour_kept == pytest.approx(6 / 9)
    scores = score_against(bad, colour=spec.colour, object=spec.object, motion=spec.motion)
    assert scores["colour"] and not scores["colour_every_frame"] and scores["motion"]
    blank = video.copy()
    blank[4] = np.array(BACKGROUNDS[spec.background], np.uint8)  # the object vanishes for a frame
    gone = judge_video(blank, 2.0, classifier=classifier)
    assert gone.found_fraction == pytest.approx(8 / 9) and gone.motion == spec.motion
    assert not score_against(gone, object=spec.object)["object_every_frame"]


def test_motion_thresholds_follow_the_generator():
    limits = motion_thresholds(4.0, 64)  # 9 frames at 2 fps
    assert limits.translation == pytest.approx(0.5 * 0.09 * 4 * 64)
    assert limits.log_size == pytest.approx(0.5 * np.log(1 + 0.05 * 4 / 0.22))


def test_estimate_motion_is_robust_to_one_bad_frame():
    t = np.arange(9) / 2.0
    centres = np.stack([32 - 6.0 * t, np.full(9, 30.0)], 1)
    sizes = np.full(9, 18.0)
    centres[5] = (60.0, 5.0)  # one misjudged frame
    sizes[2] = np.nan  # one frame without an object
    motion, (dx, dy), log_ratio = estimate_motion(t, centres, sizes, 64)
    assert motion == "left" and dx == pytest.approx(-24.0) and abs(dy) < 1e-9
    grow = estimate_motion(t, np.full((9, 2), 32.0), 12.0 + 3.0 * t, 64)
    assert grow[0] == "grow"
    assert estimate_motion(t, np.full((9, 2), 32.0) + 0.4 * np.sin(t)[:, None], np.full(9, 20.0), 64)[0] == "still"
    assert estimate_motion(t[:1], centres[:1], sizes[:1], 64)[0] is None


def test_classifier_fit_is_deterministic_and_round_trips(tmp_path):
    a = ObjectClassifier(hidden=16, max_iter=3).fit(num_samples=140, seed=5)
    b = ObjectClassifier(hidden=16, max_iter=3).fit(num_samples=140, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(a.weights, b.weights))
    path = a.save(tmp_path / "oc.npz")
    loaded = ObjectClassifier.load(path)
    frames = np.stack([_frame(obj=o, extent=24.0) for o in ("circle", "square", "star")])
    assert loaded.predict(frames) == a.predict(frames)
    assert loaded.predict(np.zeros((64, 64, 3), np.uint8)) == [None]
    with pytest.raises(MicroCinemaError, match="no object classifier"):
        ObjectClassifier.load(tmp_path / "missing.npz")


def test_shipped_classifier_is_small_and_complete(classifier):
    from microcinema.eval.judge import DEFAULT_WEIGHTS

    assert DEFAULT_WEIGHTS.is_file() and DEFAULT_WEIGHTS.stat().st_size < 2 * 1024 * 1024
    assert classifier.classes == tuple(OBJECTS)


def test_bad_inputs_are_explained():
    with pytest.raises(MicroCinemaError, match="unknown colour"):
        score_against(judge_frame(_frame()), colour="pink")
    with pytest.raises(MicroCinemaError, match=r"\(H, W, 3\)"):
        segment(np.zeros((64, 64), np.uint8))
    with pytest.raises(MicroCinemaError, match="group_by"):
        accuracy_table([], group_by="size")
    with pytest.raises(MicroCinemaError, match="uint8"):
        judge_frame(_frame().astype(np.float32) / 127.5 - 1)
