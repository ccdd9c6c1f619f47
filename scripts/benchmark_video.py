"""Seconds, GFLOP and start-up of the embedded MicroCinema pipeline (text -> 9 frames -> 33 frames, 64x64).

Default (timing): median of --runs single-prompt generations with the embedded preset's settings (sampler and
steps of each stage: stage one, the base model, the x4 interpolation; text guidance in stage one and two,
refinement, no guidance in the interpolation; --steps, --key-frame-steps, --interp-steps, --sampler and
--interp-sampler override them), after one warm-up run; prints the median time of each stage (the pipeline's
``out.timings``), the peak resident memory during the timed runs (Linux VmHWM, reset before the runs), and then:

* GFLOP per video and per stage (``torch.utils.flop_counter.FlopCounterMode``: matmuls, convolutions and
  attention; elementwise work and norms are not counted), from one separate counted run with the same prompt,
  seed and settings; each stage is split into its sampling passes (GFLOP per network call) and the rest (VAE,
  text encoder, registration);
* a 1024x1024 fp32 matmul rate measured in the same process (median of several), the floor
  ``GFLOP / matmul rate`` and the ratio ``time / floor``, per stage and per video; the achieved GFLOP/s per stage.

Reference runs in the same process follow (``--no-references`` skips them): with interpolation off, and with the
key-frame refinement off (``refine_strength=0``).

``--flops-only``: only the counted run (no timing; its numbers do not depend on the machine's load).
``--startup``: seconds from launching a fresh ``python -c`` to (a) ``import microcinema``, (b) ``from microcinema
import MicroCinemaPipeline``, (c) + ``MicroCinemaPipeline.embedded()``, (d) + encoding the first prompt (the
first denoising step can start): each in its own fresh subprocess, median of --startup-runs (3).

    python scripts/benchmark_video.py --runs 5 --threads 2
    python scripts/benchmark_video.py --flops-only
    python scripts/benchmark_video.py --startup --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode

#: Stage methods of MicroCinemaPipeline whose returns close the stages of ``out.timings`` (the pipeline's ``lap``).
STAGE_ENDS = {"generate_key_frames": "key_frame", "generate_base": "base", "refine_base": "refine",
              "interpolate": "interpolation", "postprocess": "decode"}

#: Top-level module names of the FLOP counter (class names) -> component.
COMPONENTS = {"VideoUNet": "video U-Nets", "VideoUNet.appearnet": "(of which AppearNet)",
              "UNet2DConditionModel": "key-frame U-Net", "Encoder": "VAE encoder", "Decoder": "VAE decoder",
              "Conv2d": "VAE quant convs", "BertModel": "text encoder", "CLIPTextModel": "text encoder"}


def peak_rss_mib() -> float | None:
    """Peak resident set size of this process since the last reset (Linux), MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def matmul_gflops(size: int = 1024, trials: int = 7, reps: int = 10) -> float:
    """Median GFLOP/s of ``size x size`` fp32 matmuls (``2 size^3`` FLOP each) over ``trials`` of ``reps``."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    for _ in range(3):
        torch.matmul(a, b, out=out)
    rates = []
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b, out=out)
        rates.append(2 * size**3 * reps / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


def call(pipe: Any, prompt: str, steps: int, seed: int, **kwargs: Any) -> Any:
    return pipe(prompt, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), output_type="np",
                progress=False, **kwargs)


def time_runs(pipe: Any, prompt: str, runs: int, steps: int, interpolate: bool,
              refine_strength: float | None = None) -> tuple[list[float], dict[str, float], int]:
    totals, stages = [], {}
    frames = 0
    for run in range(runs):
        pipe.text_embedder.clear_cache()
        start = time.perf_counter()
        out = call(pipe, prompt, steps, run, interpolate=interpolate, refine_strength=refine_strength)
        totals.append(time.perf_counter() - start)
        frames = out.frames.shape[1]
        for name, seconds in out.timings.items():
            stages.setdefault(name, []).append(seconds)
    return totals, {name: statistics.median(v) for name, v in stages.items()}, frames


#: The embedded preset before issue 19: DDIM with 25 steps in every stage.
PREVIOUS_DEFAULT = {"sampler": "ddim", "interp_sampler": None, "num_inference_steps": 25,
                    "key_frame_num_inference_steps": 25, "interp_num_inference_steps": 25}


def time_against(pipe: Any, prompt: str, runs: int, other: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Seconds per video with the pipeline's settings and with ``other`` settings, the runs interleaved (so a
    machine whose speed drifts affects both alike)."""
    mine = {k: getattr(pipe, k) for k in other}
    ours, theirs = [], []
    for run in range(runs):
        for settings, times in ((mine, ours), (other, theirs)):
            for k, v in settings.items():
                setattr(pipe, k, v)
            times.append(time_runs(pipe, prompt, 1, pipe.num_inference_steps, interpolate=True)[0][0])
    for k, v in mine.items():
        setattr(pipe, k, v)
    return ours, theirs


# ------------------------------------------------------------------------------------------------ FLOPs


def _by_component(counter: FlopCounterMode) -> dict[str, float]:
    """FLOP so far in all (``"Global"``), per top-level module class (the counter's names without a dot) and in
    AppearNet (part of the video U-Nets)."""
    return {name: float(sum(ops.values())) for name, ops in counter.get_flop_counts().items()
            if "." not in name or name == "VideoUNet.appearnet"}


def _delta(now: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in now.items() if v - before.get(k, 0.0) > 0}


@contextmanager
def _patched(obj: Any, name: str, wrapper: Any) -> Iterator[None]:
    """``obj.name`` replaced by ``wrapper(original)`` on the instance for the block."""
    original = getattr(obj, name)
    object.__setattr__(obj, name, wrapper(original))
    try:
        yield
    finally:
        object.__delattr__(obj, name)


def count_flops(pipe: Any, prompt: str, steps: int, seed: int = 0, **kwargs: Any) -> dict[str, Any]:
    """One generation under ``FlopCounterMode``: FLOP per stage (closed where ``out.timings`` closes them, when
    the stage methods return), per sampling pass (``denoise`` calls, with their network calls) and per component
    (top-level module class). The text cache is cleared first, so the prompt is encoded as in a fresh call."""
    counter = FlopCounterMode(display=False)
    marks: list[tuple[str, dict[str, float]]] = []
    passes: list[dict[str, Any]] = []

    def stage_end(name: str):
        def wrap(method):
            def run(*args, **kw):
                out = method(*args, **kw)
                marks.append((name, _by_component(counter)))
                return out
            return run
        return wrap

    def denoise_wrap(method):
        def run(eps_model, *args, stage: str, **kw):
            calls = [0]

            def counted(x, t):
                calls[0] += 1
                return eps_model(x, t)

            before = counter.get_total_flops()
            out = method(counted, *args, stage=stage, **kw)
            passes.append({"pass": stage, "flop": counter.get_total_flops() - before, "calls": calls[0]})
            return out
        return run

    pipe.text_embedder.clear_cache()
    with _patched(pipe, "denoise", denoise_wrap), _patched_all(pipe, stage_end), counter:
        out = call(pipe, prompt, steps, seed, **kwargs)
    stages, before = {}, {}
    for name, now in marks:
        stages[name] = _delta(now, before)
        before = now
    check_names = list(out.timings)
    if list(stages) != check_names:
        raise RuntimeError(f"stage boundaries {list(stages)} differ from the pipeline's timings {check_names}")
    return {"total": float(counter.get_total_flops()), "stages": stages, "passes": passes,
            "frames": int(out.frames.shape[1])}


@contextmanager
def _patched_all(pipe: Any, stage_end: Any) -> Iterator[None]:
    patches = [_patched(pipe, method, stage_end(name)) for method, name in STAGE_ENDS.items()]
    for patch in patches:
        patch.__enter__()
    try:
        yield
    finally:
        for patch in reversed(patches):
            patch.__exit__(None, None, None)


def _pass_stage(name: str) -> str:
    """The ``out.timings`` stage a sampling pass belongs to."""
    return "interpolation" if name.startswith("interpolation") else name


def print_flops(flops: dict[str, Any], steps: int, seconds: dict[str, float] | None = None,
                total_seconds: float | None = None, rate: float | None = None) -> None:
    """The GFLOP table; with ``seconds`` (median per stage) and ``rate`` (matmul GFLOP/s) the achieved rate,
    floor and time / floor too."""
    g = 1e9
    print(f"\nGFLOP (torch.utils.flop_counter; one counted run, base steps {steps}, {flops['frames']} frames):")
    head = f"  {'stage':<22}{'GFLOP':>9}{'share':>8}"
    if seconds is not None and rate is not None:
        head += f"{'seconds':>9}{'GFLOP/s':>9}{'floor s':>9}{'t/floor':>9}"
    print(head)
    total = flops["total"]
    for stage, parts in flops["stages"].items():
        stage_flop = parts.get("Global", 0.0)
        line = f"  {stage:<22}{stage_flop / g:>9.1f}{stage_flop / total:>8.1%}"
        if seconds is not None and rate is not None and stage in seconds:
            s = seconds[stage]
            floor = stage_flop / g / rate
            line += f"{s:>9.2f}{stage_flop / g / s:>9.1f}{floor:>9.2f}{s / floor if floor else float('nan'):>9.2f}"
        print(line)
        for p in [p for p in flops["passes"] if _pass_stage(p["pass"]) == stage]:
            per = p["flop"] / max(p["calls"], 1) / g
            print(f"    pass {p['pass']:<17}{p['flop'] / g:>9.1f}   {p['calls']} network calls, {per:.2f} GFLOP each")
        denoised = sum(p["flop"] for p in flops["passes"] if _pass_stage(p["pass"]) == stage)
        if stage_flop - denoised > 0:
            print(f"    {'outside sampling':<22}{(stage_flop - denoised) / g:>9.1f}")
        comps = ", ".join(f"{COMPONENTS.get(k, k)} {v / g:.1f}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1])
                          if k != "Global" and v >= 0.05 * g)
        print(f"    by component: {comps}")
    line = f"  {'video':<22}{total / g:>9.1f}{1:>8.0%}"
    if total_seconds is not None and rate is not None:
        floor = total / g / rate
        line += f"{total_seconds:>9.2f}{total / g / total_seconds:>9.1f}{floor:>9.2f}{total_seconds / floor:>9.2f}"
    print(line)
    comps: dict[str, float] = {}
    for parts in flops["stages"].values():
        for k, v in parts.items():
            if k == "Global":
                continue
            comps[COMPONENTS.get(k, k)] = comps.get(COMPONENTS.get(k, k), 0.0) + v
    print("  per component: " + ", ".join(f"{k} {v / g:.1f}" for k, v in sorted(comps.items(), key=lambda kv: -kv[1])
                                        if v >= 0.05 * g))


# ------------------------------------------------------------------------------------------------ start-up

_STARTUP_CHILD = r"""
import json, sys, time
launched, upto, prompt, threads = float(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
marks = {"interpreter": time.time() - launched}
import microcinema
marks["import microcinema"] = time.time() - launched
if upto != "import microcinema":
    import torch
    if threads:
        torch.set_num_threads(threads)
    from microcinema import MicroCinemaPipeline
    marks["import MicroCinemaPipeline"] = time.time() - launched
if upto in ("embedded()", "first prompt"):
    pipe = MicroCinemaPipeline.embedded()
    marks["embedded()"] = time.time() - launched
if upto == "first prompt":
    pipe.encode_prompt([prompt], None, 1, True, None)
    marks["first prompt"] = time.time() - launched
print(json.dumps(marks))
"""

STARTUP_MILESTONES = ("import microcinema", "import MicroCinemaPipeline", "embedded()", "first prompt")


def startup(prompt: str, runs: int, threads: int | None) -> dict[str, Any]:
    """Per milestone, median seconds from launching a fresh ``python -c`` to it (each milestone its own
    subprocesses, ``runs`` of them), and the full runs' (to the first prompt) per-run marks."""
    results: dict[str, Any] = {"median": {}, "full_runs": []}
    for upto in STARTUP_MILESTONES:
        rows = []
        for _ in range(runs):
            launched = time.time()
            done = subprocess.run([sys.executable, "-c", _STARTUP_CHILD, repr(launched), upto, prompt,
                                   str(threads or 0)], capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        results["median"][upto] = statistics.median(r[upto] for r in rows)
        if upto == STARTUP_MILESTONES[-1]:
            results["full_runs"] = rows
    return results


def print_startup(results: dict[str, Any], runs: int) -> None:
    print(f"\nstart-up: seconds from launching a fresh `python -c` to each milestone (its own subprocesses, "
          f"median of {runs})")
    for upto, seconds in results["median"].items():
        print(f"  {upto:<28}{seconds:>7.2f} s")
    full = results["full_runs"]
    if full:
        marks = ["interpreter", *STARTUP_MILESTONES]
        total = statistics.median(r[marks[-1]] for r in full)
        print(f"  breakdown of the runs to the first prompt (median increments, total {total:.2f} s):")
        for before, mark in zip([None, *marks], marks):
            step = statistics.median(r[mark] - (r[before] if before else 0.0) for r in full)
            print(f"    {mark if before is None else '+ ' + mark:<30}{step:>7.2f} s  {step / total:>6.1%}")


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None,
                        help="the base model's steps (default: the embedded preset's; the other stages keep theirs)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--prompt", default="a red circle moving left")
    parser.add_argument("--flops-only", action="store_true", help="only the counted run: GFLOP per stage, no timing")
    parser.add_argument("--startup", action="store_true", help="only the start-up milestones in fresh subprocesses")
    parser.add_argument("--startup-runs", type=int, default=3)
    parser.add_argument("--no-references", action="store_true", help="skip the no-interpolation/no-refinement runs")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    parser.add_argument("--key-frame-steps", type=int, default=None,
                        help="stage one's steps (default: the embedded preset's, else --steps)")
    parser.add_argument("--interp-steps", type=int, default=None,
                        help="the interpolation's steps (default: the embedded preset's, else --steps)")
    parser.add_argument("--sampler", default=None, help="the base model's sampler (default: the preset's)")
    parser.add_argument("--interp-sampler", default=None, help="the interpolation's sampler (default: the preset's)")
    parser.add_argument("--against-previous", type=int, default=0, metavar="RUNS",
                        help="also time RUNS videos with the preset before issue 19 (DDIM, 25 steps in every stage) "
                             "interleaved with as many of these settings, and print the ratio")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"steps": args.steps, "threads": torch.get_num_threads(), "prompt": args.prompt,
                              "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    if args.startup:
        results = startup(args.prompt, args.startup_runs, args.threads)
        print_startup(results, args.startup_runs)
        report["startup"] = results
        _write(args.json, report)
        return

    from microcinema import MicroCinemaPipeline
    from microcinema.eval.stage_two import set_sampling

    t0 = time.perf_counter()
    pipe = MicroCinemaPipeline.embedded()
    load = time.perf_counter() - t0
    report["settings"] = set_sampling(pipe, num_inference_steps=args.steps, sampler=args.sampler,
                                      key_frame_num_inference_steps=args.key_frame_steps,
                                      interp_num_inference_steps=args.interp_steps, interp_sampler=args.interp_sampler)
    args.steps = report["steps"] = pipe.num_inference_steps
    print("settings: " + ", ".join(f"{k}={v}" for k, v in report["settings"].items()))
    flops = count_flops(pipe, args.prompt, args.steps)
    report["flops"] = flops
    if args.flops_only:
        print(f"torch threads: {torch.get_num_threads()}; counted run only (no timing)")
        print_flops(flops, args.steps)
        _write(args.json, report)
        return

    call(pipe, args.prompt, args.steps, 0)  # warm-up
    print(f"torch threads: {torch.get_num_threads()}; load: {load:.2f} s; peak RSS after load + warm-up: "
          f"{peak_rss_mib():.0f} MiB")
    rate_before = matmul_gflops()
    reset_peak_rss()
    totals, stages, frames = time_runs(pipe, args.prompt, args.runs, args.steps, interpolate=True)
    peak = peak_rss_mib()
    rate = statistics.median([rate_before, matmul_gflops()])
    median = statistics.median(totals)
    print(f"seconds per video ({frames} frames at 64x64, base steps {args.steps}): median {median:.2f} "
          f"(min {min(totals):.2f}, max {max(totals):.2f}, {args.runs} runs)")
    print("median seconds per stage: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
    print(f"peak RSS during the timed runs: {peak:.0f} MiB" if peak else "peak RSS: not available on this OS")
    print(f"1024x1024 fp32 matmul, same process: {rate:.1f} GFLOP/s (before the timed runs {rate_before:.1f}); "
          f"floor = GFLOP / that rate")
    print_flops(flops, args.steps, stages, median, rate)
    report.update(seconds=totals, median=median, stage_seconds=stages, peak_rss_mib=peak, matmul_gflops=rate,
                  floor_s=flops["total"] / 1e9 / rate, ratio=median / (flops["total"] / 1e9 / rate))
    if not args.no_references:
        base_totals, _, base_frames = time_runs(pipe, args.prompt, args.runs, args.steps, interpolate=False)
        base = statistics.median(base_totals)
        print(f"\nreference, same process, no interpolation ({base_frames} frames): median {base:.2f} s; "
              f"interpolated / base-only = {median / base:.2f}x")
        plain_totals, plain_stages, _ = time_runs(pipe, args.prompt, args.runs, args.steps, interpolate=True,
                                                  refine_strength=0.0)
        plain = statistics.median(plain_totals)
        print(f"reference, same process, key-frame refinement off: median {plain:.2f} s ("
              + ", ".join(f"{k} {v:.2f}" for k, v in plain_stages.items()) + f"); refined / not = {median / plain:.2f}x")
        report.update(no_interpolation_median=base, no_refinement_median=plain)
    if args.against_previous:
        ours, theirs = time_against(pipe, args.prompt, args.against_previous, PREVIOUS_DEFAULT)
        print(f"interleaved, same process: these settings median {statistics.median(ours):.2f} s, the preset before "
              f"issue 19 (DDIM, 25 steps per stage) median {statistics.median(theirs):.2f} s; ratio "
              f"{statistics.median(theirs) / statistics.median(ours):.2f}x ({args.against_previous} runs each)")
        report["against_previous"] = {"ours": ours, "previous": theirs}
    _write(args.json, report)


def _write(path: Path | None, report: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
