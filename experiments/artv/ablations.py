"""ART-V's ablations on the procedural domain (issue 17 item 10; paper section 4.2, Fig. 8 and Fig. 4).

Every row runs the long-video benchmark (:func:`microcinema.eval.longvideo.run_longvideo`: the same prompt
sequences, seed, sampler, steps and guidance for every row; frame 0 the ground truth's by default, so that the
rows differ only in the auto-regressive model) and is written to ``--out/<row>/`` (``metrics.json``,
``report.md``, ``curves.png``, ``grid.png``):

* ``full``: the full model at its reference noise level (the paper's 200);
* ``no_masked_diffusion``: a model trained without the mask network (``--no-mask-model``, same budget:
  ``experiments/artv/artv_no_mask.yaml``); skipped with a note when not given;
* ``no_anchor_trained``: a model trained with the anchor always dropped (``--no-anchor-model``,
  ``experiments/artv/artv_no_anchor.yaml``), sampled without the anchor condition, as it was trained;
  skipped with a note when not given;
* ``no_anchor_inference``: the full model sampled without the anchor condition (no anchor tokens in any
  guidance branch, so the anchor term of eq. 8 vanishes): what the anchor does at inference alone;
* ``ref_level_<s>``: the full model with the references and the anchor corrupted at level ``s`` in
  ``--levels`` (default 0, 100, 200, 300, 400; the paper's Fig. 8 b); the full model's own level is the
  ``full`` row, not run twice.

The mean mask per sampling step (Fig. 4) is recorded during the ``full`` row through the pipeline's
``mask_callback`` (the mask of the ``e(all)`` branch at every model evaluation) and ``callback_on_step_end``
(which closes a sampling step): per frame, the mean over the step's evaluations and the mask's pixels, then
averaged over every sampled frame of every video. ``--out`` gets ``ablations.md`` (rows x measures, the
paper's directions and whether they held here), ``ablations.json``, ``mask_per_step.png`` and
``measures.png``.

    python experiments/artv/ablations.py --model embedded --out runs/artv/ablations \\
        --no-mask-model runs/artv_no_mask --no-anchor-model runs/artv_no_anchor

``--model`` and the ablated models: ``embedded``, an ART-V pipeline folder (``save_pretrained``), a training
run folder (``final/`` with ``components.json``) or an exported ART-V model folder (with ``--vae`` and
``--text-encoder``, default the embedded family's).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from microcinema.core.errors import MicroCinemaError, check
from microcinema.eval.longvideo import FIRST_FRAME_MODES, MAIN_RATES, artv_video_fn, main_rates, run_longvideo

__all__ = ["load_artv", "without_anchor", "MaskRecorder", "run_ablations", "main"]

LEVELS = (0, 100, 200, 300, 400)
#: The table's columns: (label, key of the row's numbers, format).
COLUMNS = (("motion right / segment", "motion_right_per_segment", "pct"),
           ("colour kept", "colour_kept_every_frame", "pct"),
           ("object kept", "object_kept_every_frame", "pct"),
           ("background kept", "background_kept_every_frame", "pct"),
           ("colour start-end (Delta E)", "colour_start_end_contrast", "num"),
           ("background start-end (Delta E)", "background_start_end_contrast", "num"),
           ("seconds", "seconds", "sec"))
KEPT = ("colour_kept_every_frame", "object_kept_every_frame", "background_kept_every_frame")


# ------------------------------------------------------------------------------------------------ models


def load_artv(source: str | Path, *, vae: str = "embedded", text_encoder: str = "minilm") -> Any:
    """An :class:`~microcinema.systems.artv.pipeline.ARTVPipeline` from ``"embedded"``, a pipeline folder
    (``model_index.json``), a training run folder (``components.json`` + ``final/``) or an ART-V model folder
    (``config.json`` of an ``ARTVModel``: ``vae`` and ``text_encoder`` complete it, with the embedded family's
    settings)."""
    from microcinema.core.text_encoders import load_text_encoder
    from microcinema.pipelines.base import sd_scheduler
    from microcinema.systems.artv.model import ARTVModel
    from microcinema.systems.artv.pipeline import EMBEDDED_SETTINGS, ARTVPipeline
    from microcinema.training.common import load_vae

    if str(source) == "embedded":
        return ARTVPipeline.embedded()
    path = Path(source)
    check(path.is_dir(), f"model {str(source)!r} is not a folder (give 'embedded', an ART-V pipeline folder, a "
                         "training run folder or an exported ART-V model)")
    if (path / "model_index.json").is_file():
        return ARTVPipeline.from_pretrained(path)
    scheduler = sd_scheduler()
    if (path / "components.json").is_file():  # a training run: final/ + its VAE, text encoder and schedule
        from diffusers import DDPMScheduler

        record = json.loads((path / "components.json").read_text())
        vae, text_encoder = record.get("vae") or vae, record.get("text_encoder") or text_encoder
        if (path / "scheduler").is_dir():
            scheduler = DDPMScheduler.from_pretrained(path / "scheduler")
        path = path / record.get("unet", "final")
    config = path / "config.json"
    check(config.is_file() and json.loads(config.read_text()).get("_class_name") == ARTVModel.__name__,
          f"{path} holds no ART-V model (expected model_index.json, components.json or an ARTVModel config.json)")
    model = ARTVModel.from_pretrained(path, torch_dtype=torch.float32)
    return ARTVPipeline(model, load_vae(vae), load_text_encoder(text_encoder), scheduler=scheduler,
                        **EMBEDDED_SETTINGS)


@contextlib.contextmanager
def without_anchor(pipe: Any) -> Iterator[Any]:
    """``pipe`` sampling every frame without the anchor condition (no anchor tokens in any guidance branch:
    the anchor term of eq. 8 vanishes), as a model trained with the anchor always dropped saw it; restored on
    exit."""
    plan = pipe.plan

    def plan_without_anchor(*args: Any, **kwargs: Any) -> Any:
        schedule, keyed = plan(*args, **kwargs)
        schedule.anchor_of = [None] * schedule.num_frames
        return schedule, keyed

    pipe.plan = plan_without_anchor
    try:
        yield pipe
    finally:
        del pipe.plan


class MaskRecorder:
    """The mean mask per sampling step (Fig. 4): ``mask_callback`` collects the ``e(all)`` mask of each model
    evaluation, ``step_callback`` (``callback_on_step_end``) closes the step; per frame and step the mean over
    the step's evaluations and pixels, averaged over frames (:meth:`curve`)."""

    def __init__(self) -> None:
        self.pending: list[float] = []
        self.sums: dict[int, float] = {}
        self.counts: dict[int, int] = {}
        self.timesteps: dict[int, float] = {}
        self.saved_curve: list[dict[str, float]] | None = None  # a reused row's curve

    def mask_callback(self, t: torch.Tensor, mask: torch.Tensor) -> None:
        self.pending.append(float(mask.float().mean()))

    def step_callback(self, pipe: Any, step: int, t: Any, tensors: dict) -> dict:
        if self.pending:  # no mask on a frame without references (none with masked diffusion off)
            self.sums[step] = self.sums.get(step, 0.0) + float(np.mean(self.pending))
            self.counts[step] = self.counts.get(step, 0) + 1
            self.timesteps[step] = float(t)
        self.pending = []
        return {}

    def curve(self) -> list[dict[str, float]]:
        """``[{"step", "timestep", "mean_mask", "frames"}]`` by sampling step (1 = the first, noisiest)."""
        return [{"step": s + 1, "timestep": round(self.timesteps[s], 1), "mean_mask": self.sums[s] / self.counts[s],
                 "frames": self.counts[s]} for s in sorted(self.sums)]


# ------------------------------------------------------------------------------------------------ rows


def _row_numbers(metrics: dict[str, Any]) -> dict[str, Any]:
    return {**main_rates(metrics["all"]), "seconds": metrics["timings"]["generation_s"],
            "seconds_per_frame": metrics["timings"]["generation_s_per_frame"]}


def run_ablations(model: str | Path, out: str | Path, *, no_mask_model: str | Path | None = None,
                  no_anchor_model: str | Path | None = None, num_sequences: int = 50, frames_per_segment: int = 16,
                  num_segments: int = 4, steps: int | None = None, seed: int = 0, prompt_seed: int = 999,
                  levels: Sequence[int] = LEVELS, first_frame: str = "truth", vae: str = "embedded",
                  text_encoder: str = "minilm", loader: Callable[[Any], Any] | None = None,
                  command: str = "") -> dict[str, Any]:
    """Run every row (see the module docstring) and write the table and plots to ``out``; returns the results
    (also ``out/ablations.json``). ``loader(source) -> pipeline`` replaces :func:`load_artv` (tests)."""
    check(first_frame in FIRST_FRAME_MODES, f"--first-frame must be one of {', '.join(FIRST_FRAME_MODES)}")
    check(len(levels) > 0 and all(isinstance(s, int) and s >= 0 for s in levels),
          f"levels must be integers >= 0, got {list(levels)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    load = loader or (lambda source: load_artv(source, vae=vae, text_encoder=text_encoder))
    full = load(model)
    full.set_progress_bar_config(disable=True)
    steps = steps or full.num_inference_steps
    size = int(full.unet.unet.config.sample_size) * full.vae_scale_factor
    settings = {k: getattr(full, k) for k in ("sampler", "guidance_scale", "ref_guidance_scale",
                                              "anchor_guidance_scale", "anchor", "fps")}
    base_level = int(full.ref_noise_level)
    bench = dict(num_sequences=num_sequences, frames_per_segment=frames_per_segment, num_segments=num_segments,
                 fps=float(full.fps), size=size, seed=seed, prompt_seed=prompt_seed, command=command)
    rows: list[dict[str, Any]] = []
    notes: list[str] = []

    def run(name: str, what: str, pipe: Any, recorder: "MaskRecorder | None" = None, **stream: Any) -> dict[str, Any]:
        """One row; a row already in ``out`` with the same settings (``row.json``) is reused, so a run killed
        or extended with a new model resumes where it was."""
        started = time.time()
        key = {"what": what, "steps": steps, "first_frame": first_frame, "settings": settings,
               **{k: v for k, v in bench.items() if k != "command"}}
        saved = out / name / "row.json"
        if saved.is_file():
            record = json.loads(saved.read_text())
            if record.get("key") == json.loads(json.dumps(key, default=str)):
                print(f"[ablations] {name}: reusing {saved}", file=sys.stderr, flush=True)
                rows.append(record["row"])
                if recorder is not None:
                    recorder.saved_curve = record.get("mask_per_step")
                return record["row"]
        print(f"[ablations] {name}: {what}", file=sys.stderr, flush=True)
        if recorder is not None:
            stream = {**stream, "mask_callback": recorder.mask_callback, "callback_on_step_end": recorder.step_callback}
        make_video = artv_video_fn(pipe, first_frame=first_frame, num_inference_steps=steps, **stream)
        metrics = run_longvideo(make_video, out / name, label=f"ART-V ablation {name}",
                                note=f"{what}; {steps} steps per frame, frame 0: {first_frame}", **bench)
        row = {"name": name, "what": what, **_row_numbers(metrics)}
        rows.append(row)
        record = {"key": key, "row": row, "mask_per_step": recorder.curve() if recorder is not None else None}
        saved.write_text(json.dumps(record, indent=2, default=str) + "\n")
        print(f"[ablations] {name}: done in {time.time() - started:.0f} s", file=sys.stderr, flush=True)
        return row

    def other(source: Any, name: str) -> Any:
        pipe = load(source)
        pipe.set_progress_bar_config(disable=True)
        for key, value in {**settings, "ref_noise_level": base_level}.items():  # the same sampling as the full row
            setattr(pipe, key, value)
        check(pipe.unet.unet.config.sample_size * pipe.vae_scale_factor == size,
              f"{name} ({source}) makes frames of another size than the full model ({size} px)")
        return pipe

    recorder = MaskRecorder()
    run("full", f"the full model (masked diffusion, anchor, reference level {base_level})", full, recorder=recorder)
    mask_curve = recorder.saved_curve if recorder.saved_curve is not None else recorder.curve()
    if not mask_curve:
        notes.append("no mask curve: the full model has no masked diffusion")

    if no_mask_model is not None:
        pipe = other(no_mask_model, "--no-mask-model")
        if pipe.unet.mask_net is not None:
            notes.append(f"--no-mask-model {no_mask_model} has a mask network: is it the ablated model?")
        run("no_masked_diffusion", f"trained without masked diffusion ({no_mask_model})", pipe)
    else:
        notes.append("no_masked_diffusion skipped: no --no-mask-model given (train experiments/artv/artv_no_mask.yaml)")
    if no_anchor_model is not None:
        with without_anchor(other(no_anchor_model, "--no-anchor-model")) as pipe:
            run("no_anchor_trained", f"trained with the anchor always dropped ({no_anchor_model}), sampled without it",
                pipe)
    else:
        notes.append("no_anchor_trained skipped: no --no-anchor-model given "
                     "(train experiments/artv/artv_no_anchor.yaml)")
    with without_anchor(full) as pipe:
        run("no_anchor_inference", "the full model sampled without the anchor condition (inference only)", pipe)
    for level in levels:
        if level == base_level:
            rows.append({**rows[0], "name": f"ref_level_{level}", "what": f"reference level {level}: the full row"})
        else:
            run(f"ref_level_{level}", f"the full model, references and anchor corrupted at level {level}", full,
                ref_noise_level=level)

    result = {"model": str(model), "no_mask_model": None if no_mask_model is None else str(no_mask_model),
              "no_anchor_model": None if no_anchor_model is None else str(no_anchor_model),
              "steps": steps, "first_frame": first_frame, "reference_level": base_level, "settings": settings,
              **{k: v for k, v in bench.items() if k != "command"}, "rows": rows, "mask_per_step": mask_curve,
              "claims": claims(rows, mask_curve, base_level), "notes": notes, "command": command}
    (out / "ablations.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    if mask_curve:
        plot_mask_curve(out / "mask_per_step.png", mask_curve)
    plot_measures(out / "measures.png", rows)
    write_table(out / "ablations.md", result)
    return result


# ------------------------------------------------------------------------------------------------ report


#: The smallest rise of the mean mask (last third of the steps against the first, in mask units of [0, 1]) counted
#: as "rises" (Fig. 4 shows it climbing across most of the range); a smaller change is the curve's wobble.
MASK_RISE = 0.05


def _kept(row: dict[str, Any]) -> float | None:
    values = [row.get(k) for k in KEPT]
    return None if any(v is None for v in values) else float(np.mean(values))


def claims(rows: Sequence[dict[str, Any]], mask_curve: Sequence[dict[str, float]], base_level: int
           ) -> list[dict[str, Any]]:
    """The paper's directions (section 4.2) checked against the rows: ``{"claim", "measure", "held"}`` (held
    None where the rows are missing). "Kept" is the mean of the colour, object and background kept-in-every-frame
    rates."""
    by = {r["name"]: r for r in rows}
    out: list[dict[str, Any]] = []

    def compare(claim: str, better: str, worse: str) -> None:
        a, b = by.get(better), by.get(worse)
        if a is None or b is None or _kept(a) is None or _kept(b) is None:
            out.append({"claim": claim, "measure": "row missing", "held": None})
            return
        out.append({"claim": claim, "measure": f"kept {_kept(a):.1%} ({better}) vs {_kept(b):.1%} ({worse})",
                    "held": _kept(a) > _kept(b)})

    compare("dropping masked diffusion makes the videos drift more (Fig. 8 a)", "full", "no_masked_diffusion")
    compare("dropping the anchor (trained without) makes the videos drift more (Fig. 8 a)", "full", "no_anchor_trained")
    compare("dropping the anchor at inference makes the videos drift more", "full", "no_anchor_inference")
    levels = {int(r["name"].rsplit("_", 1)[1]): r for r in rows if r["name"].startswith("ref_level_")}
    if 0 in levels and base_level in levels and base_level != 0:
        compare(f"noise augmentation helps: level {base_level} beats level 0 (Fig. 8 b)", f"ref_level_{base_level}",
                "ref_level_0")
    scored = {s: _kept(r) for s, r in levels.items() if _kept(r) is not None}
    if len(scored) > 1:
        best = max(scored.values())
        winners = sorted(s for s, v in scored.items() if v == best)
        out.append({"claim": "level 200 is the best reference level (Fig. 8 b, FVD)",
                    "measure": "kept by level: " + ", ".join(f"{s}: {v:.1%}" for s, v in sorted(scored.items())),
                    "held": 200 in winners if 200 in scored else None})
    if len(mask_curve) >= 2:
        third = max(1, len(mask_curve) // 3)
        early = float(np.mean([p["mean_mask"] for p in mask_curve[:third]]))
        late = float(np.mean([p["mean_mask"] for p in mask_curve[-third:]]))
        out.append({"claim": "the mean mask rises as denoising proceeds (Fig. 4)",
                    "measure": f"mean mask {early:.3f} over the first {third} steps, {late:.3f} over the last {third} "
                               f"(a rise counts from +{MASK_RISE})",
                    "held": late - early >= MASK_RISE})
    return out


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    return {"pct": f"{value:.1%}", "num": f"{value:.2f}", "sec": f"{value:.1f}"}[kind]


def write_table(path: Path, result: dict[str, Any]) -> Path:
    """``ablations.md``: rows x measures, the mask per step, the paper's directions and whether they held."""
    header = "| row | what | " + " | ".join(c[0] for c in COLUMNS) + " |"
    lines = [
        "# ART-V ablations on the procedural domain (issue 17 item 10)", "",
        *([f"Regenerate: `{result['command']}`", ""] if result["command"] else []),
        f"Model `{result['model']}`; {result['num_sequences']} sequences of {result['num_segments']} x "
        f"{result['frames_per_segment']} frames ({result['size']} px, {result['fps']:g} fps), seed {result['seed']}, "
        f"prompt seed {result['prompt_seed']}, {result['steps']} {result['settings']['sampler']} steps per frame, "
        f"guidance text / references / anchor {result['settings']['guidance_scale']} / "
        f"{result['settings']['ref_guidance_scale']} / {result['settings']['anchor_guidance_scale']}, anchor mode "
        f"{result['settings']['anchor']}, frame 0: {result['first_frame']} (the same for every row). Kept: fraction "
        "of videos keeping it in every frame; start-end: mean |contrast| of the distance to frame 0 (0 = no "
        "drift); seconds: generation time of the row.", "",
        header, "|" + "---|" * (len(COLUMNS) + 2),
        *[f"| {r['name']} | {r['what']} | " + " | ".join(_fmt(r.get(key), kind) for _, key, kind in COLUMNS) + " |"
          for r in result["rows"]], "",
        "Each row's folder holds its `report.md` (every measure, held-out sequences apart), `curves.png` and "
        "`grid.png`.", "",
        "## The paper's directions", "", "| claim | here | held? |", "|---|---|---|",
        *[f"| {c['claim']} | {c['measure']} | {'-' if c['held'] is None else 'yes' if c['held'] else 'no'} |"
          for c in result["claims"]], ""]
    if result["mask_per_step"]:
        lines += ["## Mean mask per sampling step (Fig. 4)", "",
                  "The `e(all)` branch's mask, mean over pixels and the step's model evaluations, averaged over every "
                  "sampled frame of the full row (step 1 is the noisiest).", "",
                  "| step | timestep | mean mask |", "|---|---|---|",
                  *[f"| {p['step']} | {p['timestep']:g} | {p['mean_mask']:.4f} |" for p in result["mask_per_step"]],
                  "", "![mean mask per sampling step](mask_per_step.png)", ""]
    lines += ["![measures by row](measures.png)", ""]
    lines += [f"- {note}" for note in result["notes"]] + ([""] if result["notes"] else [])
    path.write_text("\n".join(lines))
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_mask_curve(path: Path, curve: Sequence[dict[str, float]]) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([p["step"] for p in curve], [p["mean_mask"] for p in curve], marker="o", markersize=3)
    ax.set_xlabel("sampling step (denoising proceeds ->)")
    ax.set_ylabel("mean mask m")
    ax.set_title("masked diffusion: mean mask per sampling step")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_measures(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Grouped bars: the four rates per row (left), the two start-end contrasts (right)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [2, 1]})
    names = [r["name"] for r in rows]
    x = np.arange(len(rows))
    for axis, keys in ((left, [k for k in MAIN_RATES if "contrast" not in k]),
                       (right, [k for k in MAIN_RATES if "contrast" in k])):
        width = 0.8 / len(keys)
        for j, key in enumerate(keys):
            values = [np.nan if r.get(key) is None else r[key] for r in rows]
            axis.bar(x + (j - (len(keys) - 1) / 2) * width, values, width, label=key)
        axis.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        axis.grid(alpha=0.3, axis="y")
        axis.legend(fontsize=7)
    left.set_ylabel("fraction")
    right.set_ylabel("Delta E")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ command line


def _levels(text: str) -> list[int]:
    try:
        levels = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--levels must be comma-separated integers, got {text!r}") from None
    if not levels or any(v < 0 or v >= 1000 for v in levels):
        raise argparse.ArgumentTypeError(f"--levels must be integers in [0, 1000), got {text!r}")
    return levels


def main(argv: Sequence[str] | None = None) -> int:
    from microcinema.cli import positive_int

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="the full ART-V model (default: the embedded one)")
    parser.add_argument("--no-mask-model", default=None, help="trained without masked diffusion (same budget)")
    parser.add_argument("--no-anchor-model", default=None, help="trained with the anchor always dropped")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--num-sequences", type=positive_int("--num-sequences"), default=50)
    parser.add_argument("--frames-per-segment", type=positive_int("--frames-per-segment"), default=16)
    parser.add_argument("--num-segments", type=positive_int("--num-segments"), default=4)
    parser.add_argument("--steps", type=positive_int("--steps"), default=None,
                        help="sampler steps per frame, every row (default: the full model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt-seed", type=int, default=999)
    parser.add_argument("--levels", type=_levels, default=list(LEVELS), help="reference noise levels (0,100,...)")
    parser.add_argument("--first-frame", choices=FIRST_FRAME_MODES, default="truth",
                        help="frame 0: the ground truth's (default) or the model's own (text-only mode)")
    parser.add_argument("--vae", default="embedded", help="VAE of an exported ART-V model folder")
    parser.add_argument("--text-encoder", default="minilm", help="text encoder of an exported ART-V model folder")
    args = parser.parse_args(argv)
    command = "python experiments/artv/ablations.py " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        result = run_ablations(args.model, args.out, no_mask_model=args.no_mask_model,
                               no_anchor_model=args.no_anchor_model, num_sequences=args.num_sequences,
                               frames_per_segment=args.frames_per_segment, num_segments=args.num_segments,
                               steps=args.steps, seed=args.seed, prompt_seed=args.prompt_seed, levels=args.levels,
                               first_frame=args.first_frame, vae=args.vae, text_encoder=args.text_encoder,
                               command=command)
    except MicroCinemaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print((Path(args.out) / "ablations.md").read_text())
    return 0 if result["rows"] else 1


if __name__ == "__main__":
    sys.exit(main())
