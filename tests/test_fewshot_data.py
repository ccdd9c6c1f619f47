"""Few-shot motions of the procedural domain (issue 18 item 7, data part): new motions in a separate generator, the
existing splits bit-identical, trajectories inside the frame and of the promised shape, clips written to disk."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from microcinema.core.errors import MicroCinemaError
from microcinema.data import synthetic
from microcinema.data.synthetic import (FEWSHOT_MOTIONS, MOTIONS, fewshot_track_score, render_clip, sample_clip,
                                        sample_fewshot_clip, train_combos)

# (index, seed, split, frames, fps, size) -> (hash of the spec's row, hash of the rendered frames), computed with the
# code before the few-shot motions were added: the shipped models' caches are fingerprinted on these clips.
BEFORE = {
    (0, 0, "train", 33, 8.0, 64): ("ba1ca19bedb14d00", "e8c5248a611b5eeb"),
    (5, 1, "train", 9, 2.0, 64): ("1fd2a1d0409c5175", "662084351b839c74"),
    (3, 0, "heldout", 9, 2.0, 64): ("3dd5cebc83efda40", "24ddd50ba544ab64"),
    (17, 2, "train", 5, 8.0, 32): ("d67c2b0cfbae7324", "2be9c20848f81a88"),
}


@pytest.mark.parametrize("key", list(BEFORE))
def test_existing_clips_are_bit_identical(key):
    index, seed, split, frames, fps, size = key
    spec = sample_clip(index, seed=seed, split=split, num_frames=frames, fps=fps, size=size)
    row = hashlib.sha256(json.dumps(spec.to_row(), sort_keys=True).encode()).hexdigest()[:16]
    pixels = hashlib.sha256(render_clip(spec).tobytes()).hexdigest()[:16]
    assert (row, pixels) == BEFORE[key]


def test_new_motions_are_in_no_split():
    assert not set(FEWSHOT_MOTIONS) & set(MOTIONS)
    assert not {m for _, _, m in train_combos()} & set(FEWSHOT_MOTIONS)
    assert {m for _, _, m in synthetic.HELD_OUT_COMBOS}.isdisjoint(FEWSHOT_MOTIONS)
    assert {sample_clip(i, num_frames=5).motion for i in range(200)} <= set(MOTIONS)


@pytest.mark.parametrize("motion", list(FEWSHOT_MOTIONS))
def test_fewshot_clips_stay_inside_and_have_their_shape(motion):
    scores = []
    for i in range(12):
        spec = sample_fewshot_clip(i, motion, num_frames=9, fps=2.0, size=64)
        assert spec.split == "fewshot" and spec.motion == motion
        assert any(t.format(np="X").replace("X", "") in spec.caption for t in FEWSHOT_MOTIONS[motion])
        c, half = np.array(spec.centers), max(spec.sizes) / 2
        assert c.shape == (9, 2)
        assert (c >= half - 1e-6).all() and (c <= 64 - half + 1e-6).all(), (motion, i, c)
        scores.append(fewshot_track_score(motion, c, 64))
        # the same clip in continuous time: 33 frames at 8 fps pass through the 9 frames at 2 fps
        fine = np.array(sample_fewshot_clip(i, motion, num_frames=33, fps=8.0, size=64).centers)
        np.testing.assert_allclose(fine[::4], c, atol=1e-9)
    assert min(scores) >= 0.6, scores
    others = [fewshot_track_score(motion, sample_clip(i, num_frames=9, fps=2.0).centers, 64) for i in range(30)]
    assert np.mean(others) < np.mean(scores) - 0.3


def test_shape_score_separates_the_new_motions():
    for motion in FEWSHOT_MOTIONS:
        for other in FEWSHOT_MOTIONS:
            if other != motion:
                c = sample_fewshot_clip(0, other, num_frames=9, fps=2.0).centers
                assert fewshot_track_score(motion, c, 64) < 0.8, (motion, other)


def test_fewshot_sampling_is_deterministic_and_restricted():
    a = sample_fewshot_clip(3, "zigzag", seed=1, colours=["red", "blue"], objects=["circle"])
    b = sample_fewshot_clip(3, "zigzag", seed=1, colours=["red", "blue"], objects=["circle"])
    assert a == b and a.colour in ("red", "blue") and a.object == "circle"
    assert sample_fewshot_clip(4, "zigzag", seed=1).centers != a.centers
    for bad in (dict(motion="left"), dict(motion="spin")):
        with pytest.raises(MicroCinemaError, match="few-shot motion"):
            sample_fewshot_clip(0, **bad)
    with pytest.raises(MicroCinemaError, match="colours"):
        sample_fewshot_clip(0, "bounce", colours=["pink"])


def test_write_fewshot_clips(tmp_path):
    from microcinema.data.video_dataset import VideoCaptionDataset
    from microcinema.systems.fewshot.data import write_fewshot_clips

    table = write_fewshot_clips(tmp_path / "d", "diagonal", num=2, num_frames=9, fps=2.0, size=32, objects=["square"])
    rows = [json.loads(line) for line in table.read_text().splitlines()]
    assert len(rows) == 2 and all(r["motion"] == "diagonal" and r["object"] == "square" for r in rows)
    assert all(len(r["centers"]) == 9 and r["text"] == r["caption"] for r in rows)
    assert (tmp_path / "d" / "preview.png").is_file()
    item = VideoCaptionDataset(table, num_frames=9, fps=2.0, size=32, sample="start")[0]
    spec = sample_fewshot_clip(0, "diagonal", num_frames=9, fps=2.0, size=32, objects=["square"])
    truth = render_clip(spec).astype(np.float32)
    decoded = (item["pixel_values"].permute(0, 2, 3, 1).numpy() + 1) * 127.5
    assert np.abs(decoded - truth).mean() < 4.0
