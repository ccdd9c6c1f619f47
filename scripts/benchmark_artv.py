"""ART-V speed and memory (issue 17 item 11): seconds per frame and peak memory for 16, 64 and 256 frames on this
machine, with the same-process ratio to MicroCinema's base model per frame; and, with --gpu and a CUDA device,
the paper's Table 3 at SD 2.1 size (random weights): ART-V against diffusers' UNet3DConditionModel (the
ModelScope architecture) for a 16-frame clip at 320, 448 and 768 pixels.

CPU part. The model is --model (an ART-V pipeline folder) or the embedded ART-V model; while that is not trained
yet, an ART-V converted from the embedded text-to-image U-Net with the embedded recipe's settings
(microcinema/embedded/configs/artv.yaml): untrained, but the same network, so the same cost (the output says
which). Each length is one ``pipe.stream(...)`` whose frames are decoded to uint8 one at a time and dropped (as
``microcinema artv`` writes them to the file). Each length runs twice: once timed, plain; once again with the
memory instruments on (they slow Python-heavy code, so they stay out of the timed run). Memory:

* ``rss_peak_mb``: the process's resident set, sampled every 2 ms by a thread reading /proc/self/statm, peak
  minus the value just before the generation (torch's CPU tensors live in malloc'd memory, which RSS sees and
  Python's tracemalloc does not);
* ``tracemalloc_peak_mb``: the peak of Python-level allocations (lists, dicts, small objects) during the run.

The MicroCinema reference is ``MicroCinemaPipeline.embedded()``'s base stage (9 frames from a given key frame,
no interpolation, no refinement) at the same steps: its ``timings["base"] / 9`` seconds per base frame, the runs
interleaved with ART-V's 16-frame runs, the median ratio printed. Seconds are wall-clock; the process's CPU seconds
per frame are printed beside them (on a machine shared with other work, the CPU time is the steadier number).

GPU part (``--gpu``; skipped without CUDA): both networks in fp16 at SD 2.1 size: ART-V = SD 2.1's
UNet2DConditionModel (320/640/1280/1280, 1024-d text, linear projections) converted with the paper's mask
network (Table 2: 64/128/256/256); ModelScope = ``UNet3DConditionModel()`` (its defaults are ModelScope's
text-to-video-ms-1.7b layout). One forward of a 16-frame batch (ART-V: 16 frames with their references and
anchor; ModelScope: one 16-frame video) with 77 text tokens, as the paper's Table 3 counts it: throughput
(batches per second, median of --gpu-runs after warm-up) and peak memory per forward
(``torch.cuda.max_memory_allocated`` minus the weights). Also ART-V's real per-frame cost: one guided sampler
evaluation (the four eq. 8 branches batched) per frame.

    python scripts/benchmark_artv.py                       # 16, 64, 256 frames at the model's steps
    python scripts/benchmark_artv.py --lengths 16 64 256 --steps 10 --threads 2
    python scripts/benchmark_artv.py --gpu --skip-cpu      # Table 3 on a CUDA device
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import torch

PROMPTS = ["a red circle moving left", "a red circle moving up", "a red circle moving right", "a red circle"]


# ------------------------------------------------------------------------------------------------ memory


class PeakRSS:
    """Peak resident set size (bytes) while the block runs, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval, self.peak, self.start = interval, 0, 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        gc.collect()
        self.start = self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.start) / 2**20


# ------------------------------------------------------------------------------------------------ CPU part


def load_artv(model: str | None) -> tuple[Any, str]:
    """The pipeline and a sentence saying what it is."""
    from microcinema.embedded import WEIGHTS_DIR
    from microcinema.systems.artv.pipeline import ARTVPipeline

    if model not in (None, "embedded"):
        return ARTVPipeline.from_pretrained(model), f"ART-V from {model}"
    if (WEIGHTS_DIR / "artv" / "config.json").is_file():
        return ARTVPipeline.embedded(), "the embedded ART-V model"
    import yaml
    from diffusers import AutoencoderKL

    from microcinema.core.text_encoders import load_text_encoder
    from microcinema.embedded import CONFIG_DIR, embedded_path
    from microcinema.pipelines.base import sd_scheduler
    from microcinema.systems.artv.model import ARTVModel
    from microcinema.systems.artv.pipeline import EMBEDDED_SETTINGS

    options = yaml.safe_load((CONFIG_DIR / "artv.yaml").read_text())["model"]
    unet = ARTVModel.from_unet(embedded_path("t2i"), **options)
    vae = AutoencoderKL.from_pretrained(embedded_path("vae"))
    pipe = ARTVPipeline(unet, vae, load_text_encoder("minilm"), scheduler=sd_scheduler(), **EMBEDDED_SETTINGS)
    return pipe, ("an UNTRAINED ART-V converted from the embedded text-to-image U-Net with artv.yaml's settings "
                  "(the embedded ART-V model is not trained yet; same network, same cost)")


def _stream(pipe: Any, frames: int, steps: int, seed: int) -> int:
    per = max(1, frames // len(PROMPTS))
    prompts = [(p, per) for p in PROMPTS[:-1]] + [(PROMPTS[-1], frames - per * (len(PROMPTS) - 1))]
    prompts = [(p, n) for p, n in prompts if n > 0]
    count = 0
    for _ in pipe.stream(prompts, num_inference_steps=steps, output_type="uint8", progress=False,
                         generator=torch.Generator().manual_seed(seed)):
        count += 1  # dropped, as the CLI writes it to the file
    assert count == frames, (count, frames)
    return count


def time_artv(pipe: Any, frames: int, steps: int, seed: int = 0, memory: bool = True) -> dict[str, float]:
    """Seconds per frame from a plain run; then (``memory``) the memory from a second, instrumented run of the
    same video: tracemalloc and the 2 ms RSS-sampling thread slow Python-heavy code (the thread takes the GIL),
    so they are kept out of the timed run."""
    gc.collect()
    t, cpu = time.perf_counter(), time.process_time()
    _stream(pipe, frames, steps, seed)
    seconds, cpu_seconds = time.perf_counter() - t, time.process_time() - cpu
    row = {"frames": frames, "seconds": seconds, "s_per_frame": seconds / frames, "cpu_s_per_frame": cpu_seconds / frames}
    if memory:
        gc.collect()
        tracemalloc.start()
        with PeakRSS() as mem:
            _stream(pipe, frames, steps, seed)
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        row.update(rss_peak_mb=mem.growth_mb, tracemalloc_peak_mb=traced_peak / 2**20)
    return row


def count_artv_flops(pipe: Any, steps: int, frames: int = 16) -> dict[str, float]:
    """GFLOP per frame of a ``frames``-frame stream (matmuls, convolutions, attention: what
    ``torch.utils.flop_counter`` counts) and the same-process fp32 matmul rate (``benchmark_video.matmul_gflops``)."""
    from torch.utils.flop_counter import FlopCounterMode

    from benchmark_video import matmul_gflops  # scripts/ is on sys.path when a script there runs

    with FlopCounterMode(display=False) as counter:
        count = sum(1 for _ in pipe.stream([("a red circle moving left", frames)], num_inference_steps=steps,
                                           output_type="uint8", progress=False,
                                           generator=torch.Generator().manual_seed(0)))
    gflop = counter.get_total_flops() / 1e9 / count
    rate = matmul_gflops()
    return {"gflop_per_frame": gflop, "matmul_gflops": rate, "floor_s_per_frame": gflop / rate}


def time_microcinema_base(mc: Any, key: Any, steps: int, seed: int) -> float:
    out = mc("a red circle moving left", image=key, num_frames=9, num_inference_steps=steps, interpolate=False,
             refine_strength=0.0, output_type="latent", generator=torch.Generator().manual_seed(seed), progress=False)
    return out.timings["base"] / 9


def cpu_part(args: argparse.Namespace) -> dict[str, Any]:
    from microcinema.systems.microcinema.pipeline import MicroCinemaPipeline

    pipe, what = load_artv(args.model)
    pipe.set_progress_bar_config(disable=True)
    steps = args.steps or pipe.num_inference_steps
    print(f"ART-V: {what}")
    print(f"  sampler {pipe.sampler}, {steps} steps per frame, guidance {pipe.ref_guidance_scale}/"
          f"{pipe.anchor_guidance_scale}/{pipe.guidance_scale} (four branches batched), "
          f"{pipe.default_height_width[0]}x{pipe.default_height_width[1]} pixels; torch threads "
          f"{torch.get_num_threads()}")
    list(pipe.stream("a red circle", 3, num_inference_steps=1, output_type="uint8", progress=False))  # warm-up
    rows = []
    for frames in args.lengths:
        row = time_artv(pipe, frames, steps)
        rows.append(row)
        print(f"  {frames:4d} frames: {row['s_per_frame']:.3f} s/frame ({row['seconds']:.1f} s; process CPU time "
              f"{row['cpu_s_per_frame']:.3f} s/frame), peak RSS growth "
              f"{row['rss_peak_mb']:.1f} MB, tracemalloc peak {row['tracemalloc_peak_mb']:.2f} MB", flush=True)
    base = rows[0]
    for row in rows[1:]:
        print(f"  {row['frames']} vs {base['frames']} frames: peak RSS growth x{row['rss_peak_mb'] / max(base['rss_peak_mb'], 1e-9):.2f}"
              f", tracemalloc peak x{row['tracemalloc_peak_mb'] / max(base['tracemalloc_peak_mb'], 1e-9):.2f}")
    result: dict[str, Any] = {"model": what, "steps": steps, "sampler": pipe.sampler, "threads": torch.get_num_threads(),
                              "lengths": rows}
    result["flops"] = flops = count_artv_flops(pipe, steps, frames=16)
    print(f"  GFLOP per frame (torch.utils.flop_counter, a 16-frame video): {flops['gflop_per_frame']:.2f}; 1024x1024 "
          f"fp32 matmul in this process {flops['matmul_gflops']:.1f} GFLOP/s, so the floor is "
          f"{flops['floor_s_per_frame']:.3f} s/frame; achieved {flops['gflop_per_frame'] / base['s_per_frame']:.1f} "
          f"GFLOP/s at {base['frames']} frames, time / floor = {base['s_per_frame'] / flops['floor_s_per_frame']:.2f}")
    if args.no_reference:
        return result
    mc = MicroCinemaPipeline.embedded()
    mc.set_progress_bar_config(disable=True)
    from PIL import Image

    height, width = mc.default_height_width
    key = Image.new("RGB", (width, height), (200, 40, 40))
    time_microcinema_base(mc, key, 1, 0)  # warm-up
    ratios, artv_s, mc_s = [], [], []
    for run in range(args.ratio_runs):  # interleaved: the ratio survives a machine whose speed drifts
        a = time_artv(pipe, 16, steps, seed=run, memory=False)["s_per_frame"]
        m = time_microcinema_base(mc, key, steps, run)
        artv_s.append(a)
        mc_s.append(m)
        ratios.append(a / m)
    ratio = statistics.median(ratios)
    print(f"MicroCinema base model (embedded, {mc.sampler}, guidance {mc.guidance_scale}, 9 frames from a key frame):"
          f" {statistics.median(mc_s):.3f} s per base frame at {steps} steps; ART-V {statistics.median(artv_s):.3f} "
          f"s per frame in the same runs: ratio ART-V / MicroCinema base = {ratio:.2f} (median of {args.ratio_runs} "
          "interleaved runs)")
    result["microcinema_base"] = {"s_per_frame": statistics.median(mc_s), "artv_s_per_frame": statistics.median(artv_s),
                                  "ratio": ratio, "runs": args.ratio_runs}
    return result


# ------------------------------------------------------------------------------------------------ GPU part


def sd21_unet_config(tiny: bool = False) -> dict[str, Any]:
    """SD 2.1's UNet2DConditionModel layout (``stabilityai/stable-diffusion-2-1``'s config); ``tiny``: the same
    layout at toy widths, to check this code on a CPU."""
    widths = (32, 64) if tiny else (320, 640, 1280, 1280)
    n = len(widths)
    return dict(sample_size=96, in_channels=4, out_channels=4, layers_per_block=2 if not tiny else 1,
                block_out_channels=widths, down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
                cross_attention_dim=64 if tiny else 1024, attention_head_dim=(2,) * n if tiny else (5, 10, 20, 20),
                use_linear_projection=True, norm_num_groups=8 if tiny else 32)


def modelscope_config(tiny: bool = False) -> dict[str, Any]:
    if not tiny:
        return {}  # UNet3DConditionModel's defaults are ModelScope's layout
    return dict(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), layers_per_block=1, cross_attention_dim=64,
                attention_head_dim=8, norm_num_groups=8)


def _measure(fn: Any, device: torch.device, runs: int) -> tuple[float, float]:
    """(median seconds per call, peak memory in GB during the calls above what was allocated before)."""
    cuda = device.type == "cuda"
    for _ in range(2):
        fn()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    peak = (torch.cuda.max_memory_allocated() - before) / 2**30 if cuda else float("nan")
    return statistics.median(times), peak


@torch.no_grad()
def gpu_part(args: argparse.Namespace) -> dict[str, Any] | None:
    from diffusers import UNet2DConditionModel, UNet3DConditionModel
    from diffusers.utils import logging as diffusers_logging

    from microcinema.systems.artv.conditioning import guided_eps_model, make_conditions
    from microcinema.systems.artv.model import ARTVModel

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "none"))
    if device.type == "none":
        print("GPU part: no CUDA device here, skipped (run with --gpu on a machine with one)")
        return None
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    diffusers_logging.set_verbosity_error()  # ".to(float16)" advice: these random networks have no fp32 modules
    tiny = args.tiny
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"GPU part on {name} ({dtype}), {'TOY widths (code check)' if tiny else 'SD 2.1 size'}, random weights")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**sd21_unet_config(tiny))
    mask = [8, 16] if tiny else [64, 128, 256, 256]
    artv = ARTVModel.from_unet(unet, mask_block_out_channels=mask, mask_norm_num_groups=8 if tiny else 32,
                               mask_layers_per_block=1 if tiny else 2).to(device, dtype).eval()
    ms = UNet3DConditionModel(**modelscope_config(tiny)).to(device, dtype).eval()
    n_artv = sum(p.numel() for p in artv.parameters()) / 1e6
    n_ms = sum(p.numel() for p in ms.parameters()) / 1e6
    print(f"  parameters: ART-V {n_artv:.1f} M (U-Net + adapter + anchor tokens + mask network), ModelScope {n_ms:.1f} M")
    d = artv.unet.config.cross_attention_dim
    frames, rows = 16, []
    for pixels in args.gpu_sizes:
        h = pixels // 8
        text = torch.randn(frames, 77, d, device=device, dtype=dtype)
        x = torch.randn(frames, 4, h, h, device=device, dtype=dtype)
        refs = torch.randn(frames, 2, 4, h, h, device=device, dtype=dtype)
        anchor = torch.randn(frames, 4, h, h, device=device, dtype=dtype)
        t = torch.full((frames,), 500, device=device)
        row: dict[str, Any] = {"pixels": pixels}
        try:
            s, mem = _measure(lambda: artv(x, t, text, refs=refs, anchor=anchor, ref_level=200), device, args.gpu_runs)
            row.update(artv_batch_per_s=1 / s, artv_gb=mem)
            one = make_conditions(text[:1].float(), refs[:1].float(), anchor[:1].float())
            one = {k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in one.items()}
            guided = guided_eps_model(artv, one, (text[:1] * 0, None))
            s1, mem1 = _measure(lambda: guided(x[:1], t[:1]), device, args.gpu_runs)
            row.update(artv_guided_eval_s=s1, artv_guided_gb=mem1)
        except torch.OutOfMemoryError:
            row.update(artv_batch_per_s=None, artv_gb="OOM")
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        video = x.transpose(0, 1)[None]  # (1, 4, 16, h, w)
        try:
            s, mem = _measure(lambda: ms(video, t[:1], encoder_hidden_states=text[:1]), device, args.gpu_runs)
            row.update(modelscope_batch_per_s=1 / s, modelscope_gb=mem)
        except torch.OutOfMemoryError:
            row.update(modelscope_batch_per_s=None, modelscope_gb="OOM")
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        rows.append(row)
        fmt = lambda v, spec: "OOM" if v in (None, "OOM") else format(v, spec)  # noqa: E731
        print(f"  {pixels}^2, 16 frames: ART-V {fmt(row.get('artv_batch_per_s'), '.2f')} batch/s, "
              f"{fmt(row.get('artv_gb'), '.2f')} GB/forward | ModelScope {fmt(row.get('modelscope_batch_per_s'), '.2f')}"
              f" batch/s, {fmt(row.get('modelscope_gb'), '.2f')} GB/forward | ART-V guided sampler evaluation "
              f"(4 branches, one frame): {fmt(row.get('artv_guided_eval_s'), '.4f')} s", flush=True)
    print("  (the paper's Table 3 on an A100-80GB: ART-V 12.16 / 5.55 / 1.35 batch/s and 10.52 / 11.08 / 13.44 GB; "
          "ModelScope 7.87 / 3.43 / 0.78 batch/s and 10.91 / 16.67 / 75.08 GB at 320 / 448 / 768)")
    return {"device": name, "dtype": str(dtype), "tiny": tiny, "params_m": {"artv": n_artv, "modelscope": n_ms},
            "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="an ART-V pipeline folder (default: the embedded model, or "
                                                      "while untrained one converted from the embedded t2i U-Net)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256], help="video lengths in frames")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps per frame (default: the model's)")
    parser.add_argument("--ratio-runs", type=int, default=3, help="interleaved ART-V / MicroCinema runs for the ratio")
    parser.add_argument("--no-reference", action="store_true", help="skip the MicroCinema base-model ratio")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--skip-cpu", action="store_true", help="only the GPU part")
    parser.add_argument("--gpu", action="store_true", help="also the SD 2.1-size comparison (needs CUDA)")
    parser.add_argument("--gpu-sizes", type=int, nargs="+", default=[320, 448, 768])
    parser.add_argument("--gpu-runs", type=int, default=5)
    parser.add_argument("--device", default=None, help=argparse.SUPPRESS)  # 'cpu' + --tiny: check the GPU code here
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, Any] = {}
    if not args.skip_cpu:
        results["cpu"] = cpu_part(args)
    if args.gpu:
        results["gpu"] = gpu_part(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
