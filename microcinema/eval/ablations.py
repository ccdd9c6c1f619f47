"""MicroCinema's ablations re-run on the procedural domain (DESIGN.md section 5).

* **Table 2** (section 4.2.1): the four AppearNet injections, ``concat``, ``add_dec``, ``add_encdec`` and
  ``add_encdec_spade``, trained with the Appearance Noise Prior at lambda = 0.03 and sampled with gamma = 0.02.
* **Fig. 5** (section 4.2.2): lambda in {0, 0.03, 0.1} (training) x gamma in {0, 0.02} (inference) with
  ``add_encdec_spade``; the lambda = 0.03 model is Table 2's ``add_encdec_spade`` model (trained once).
* **Fig. 11** (appendix A.1): 5 vs 25 sampling steps, with (lambda 0.03, gamma 0.02) and without (0, 0) the prior.

Every variant is a :func:`~microcinema.systems.microcinema.task.train_video` run with the same short budget, from the
same initialisation (the config's ``init_from``) and the same seeds, on one shared latent cache. Every
evaluation uses the same prompts (:func:`~microcinema.eval.stage_one.domain_prompts`), sampling seed and
step count, with ground-truth key frames (stage two measured alone) and no interpolation. Rows: motion
accuracy, colour / object kept in every frame, centre-frame PSNR, domain FVD (with a domain classifier)
and warping error. Resumable: a variant whose weights were trained with the same settings is not trained
again (an unfinished one resumes from its checkpoints), an evaluation already in ``evals/`` is reused.
Writes ``results.json`` and ``ablations.md`` to ``--out``. Run::

    python -m microcinema.eval.ablations --out runs/ablations --steps-budget 300 --num-samples 50
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from microcinema.systems.microcinema.pipeline import MicroCinemaPipeline
from microcinema.embedded.presets import MICROCINEMA as EMBEDDED_PRESET
from microcinema.training.common import load_config
from microcinema.training.tasks.t2i import load_vae
from microcinema.systems.microcinema.task import build_cache, train_video
from microcinema.core.text_encoders import load_text_encoder
from microcinema.models.unet3d import VideoUNet
from microcinema.eval.benchmarks import Timer, load_classifier_or_note, real_clips, shapes_metrics
from microcinema.eval.stage_one import domain_prompts
from microcinema.eval.stage_two import generate_videos, judge_videos

INJECTIONS = ("concat", "add_dec", "add_encdec", "add_encdec_spade")
LAMBDA, GAMMA = 0.03, 0.02  # the paper's choice (Table 7, Fig. 5)


@dataclass(frozen=True)
class Variant:
    """A trained model: AppearNet injection and the training noise prior's lambda."""

    injection: str
    lam: float

    @property
    def name(self) -> str:
        return f"{self.injection}_lambda{self.lam:g}"


@dataclass(frozen=True)
class Setting:
    """One evaluation: a trained variant sampled with the prior's extra gamma and a number of steps."""

    variant: Variant
    gamma: float
    steps: int

    @property
    def key(self) -> str:
        return f"{self.variant.name}_gamma{self.gamma:g}_steps{self.steps}"


@dataclass
class Budget:
    """The shared training and evaluation budget of every variant."""

    config: str = "video"
    train_steps: int = 300
    batch_size: int | None = None  # None: the config's
    data_num: int | None = None  # None: the config's
    num_samples: int = 50
    sample_steps: int = 25
    few_steps: int = 5
    seed: int = 0
    eval_batch_size: int = 10


#: Metrics of a row: key -> (column title, True when higher is better, format).
METRICS = {"motion": ("motion right", True, ".1%"), "colour_kept": ("colour kept", True, ".1%"),
           "object_kept": ("object kept", True, ".1%"), "centre_psnr": ("centre PSNR (dB, median)", True, ".2f"),
           "domain_fvd": ("domain FVD ↓", False, ".4g"), "warping_error": ("warping error ↓", False, ".4g")}


def tables(budget: Budget) -> list[dict[str, Any]]:
    """The three ablations: rows of (label, setting), the paper's best row and its direction, quoted."""
    spade = lambda lam: Variant("add_encdec_spade", lam)  # noqa: E731
    full, few = budget.sample_steps, budget.few_steps
    return [
        {"id": "table2", "title": "Table 2: AppearNet injection (lambda 0.03, gamma 0.02)", "kind": "best",
         "best": "add_encdec_spade",
         "rows": [(inj, Setting(Variant(inj, LAMBDA), GAMMA, full)) for inj in INJECTIONS],
         "paper": "Paper (Table 2, UCF-101 zero-shot, 2K samples): Add-to-EncDec-SPADE is best on both metrics, "
                  "FVD 508.56 / IS 29.63, vs Add-to-EncDec 525.02 / 27.25, Add-to-Dec 589.59 / 27.90, Concat "
                  "688.92 / 15.83 (FVD falls Concat > Add-to-Dec > Add-to-EncDec > SPADE)."},
        {"id": "fig5", "title": "Fig. 5: noise prior lambda (training) x gamma (inference), add_encdec_spade",
         "kind": "best", "best": f"lambda {LAMBDA:g}, gamma {GAMMA:g}",
         "rows": [(f"lambda {lam:g}, gamma {g:g}", Setting(spade(lam), g, full))
                  for lam in (0.0, LAMBDA, 0.1) for g in (0.0, GAMMA)],
         "paper": "Paper (Fig. 5, UCF-101 FVD): the lowest FVD is at lambda = 0.03, gamma = 0.02; against the "
                  "baseline lambda = 0, gamma = 0 it drops from 692 to 508, and IS rises from 18.5 to 29.6."},
        {"id": "fig11", "title": f"Fig. 11: {few} vs {full} sampling steps, with and without the noise prior",
         "kind": "steps", "few": few, "full": full,
         "rows": [(f"{name}, {steps} steps", Setting(spade(lam), g, steps))
                  for name, lam, g in (("prior (lambda 0.03, gamma 0.02)", LAMBDA, GAMMA), ("no prior (0, 0)", 0.0, 0.0))
                  for steps in (full, few)],
         "paper": "Paper (Fig. 11, appendix A.1, qualitative): with the Appearance Noise Prior the model still "
                  "makes reasonable videos with 5 sampling steps, especially for simple motion (1.3 s per "
                  "9-frame video); Fig. 9: without it (lambda = gamma = 0) appearance is kept less well."},
    ]


# ------------------------------------------------------------------------------------------ training


def variant_config(base: dict[str, Any], variant: Variant, budget: Budget) -> dict[str, Any]:
    config = copy.deepcopy(base)
    config.pop("phases", None)  # the paper's recipe: the first phase of embedded/configs/video.yaml
    config["model"] = {**config.get("model", {}), "injection": variant.injection}
    config["loss"] = {**config.get("loss", {}), "noise_prior_lambda": variant.lam}
    if budget.data_num is not None:
        config["data"] = {**config["data"], "num": budget.data_num}
    train = {**config["train"], "max_steps": budget.train_steps, "seed": budget.seed}
    train["checkpoint_every"] = min(int(train.get("checkpoint_every", 250)), budget.train_steps)
    if budget.batch_size is not None:
        train["batch_size"] = budget.batch_size
    config["train"] = train
    return config


def _fingerprint(config: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in config.items() if not k.startswith("_")}, sort_keys=True, default=str)


def _resumable(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """A finished run of ``old`` can continue to ``new``: the same settings, at most more training steps."""
    strip = lambda c: {**c, "train": {k: v for k, v in c["train"].items()  # noqa: E731
                                      if k not in ("max_steps", "checkpoint_every")}}
    return strip(old) == strip(new) and old["train"]["max_steps"] <= new["train"]["max_steps"]


def train_variant(out: Path, variant: Variant, config: dict[str, Any], shared_cache: Path, seed: int) -> Path:
    """Train one variant, or skip it when trained with the same config, or continue it from its checkpoints
    (an interrupted run, or a larger ``--steps-budget``); a run of other settings starts again. Returns its
    weights folder."""
    run = out / "runs" / variant.name
    marker, final = run / "ablation.json", run / "final"
    wanted = json.loads(_fingerprint(config))
    if marker.is_file():
        done = json.loads(marker.read_text())["config"]
        if done == wanted and (final / "config.json").is_file():
            return final
        if not _resumable(done, wanted):
            print(f"ablations: {variant.name} was trained with other settings: training it again", file=sys.stderr)
            shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    cache = run / "latents.safetensors"
    if not cache.exists():  # every variant trains on the same encoded clips: encode once, link
        try:
            os.link(shared_cache, cache)
        except OSError:
            shutil.copyfile(shared_cache, cache)
    torch.manual_seed(seed)  # the same initialisation of new layers for every variant
    report = train_video(config, run)
    marker.write_text(json.dumps({"config": wanted, "report": report}, indent=2, default=str))
    return final


# ------------------------------------------------------------------------------------------ evaluation


def evaluate(setting: Setting, weights: Path, parts: dict[str, Any], budget: Budget, fingerprint: str,
             out: Path, sampling_seed: int | None = None) -> dict[str, Any]:
    """One row, measured or read back from ``out/evals`` when measured before with the same settings.
    ``sampling_seed``: another sampling seed than the budget's (to measure the rows' sampling noise)."""
    seed = budget.seed if sampling_seed is None else sampling_seed
    suffix = "" if seed == budget.seed else f"_sampling_seed{seed}"
    path = out / "evals" / f"{setting.key}{suffix}.json"
    key = json.dumps({"train": fingerprint, "gamma": setting.gamma, "steps": setting.steps, "seed": budget.seed,
                      "num_samples": budget.num_samples, "domain_classifier": parts["classifier_path"]}
                     | ({"sampling_seed": seed} if suffix else {}), sort_keys=True)
    if path.is_file() and json.loads(path.read_text()).get("key") == key:
        return json.loads(path.read_text())["row"]
    pipe = MicroCinemaPipeline(VideoUNet.from_pretrained(weights).float(), parts["vae"], parts["text_encoder"],
                               **{**EMBEDDED_PRESET, "pin_key_frame": False},  # the paper's sampling: the model
                               # redraws the key frame too; otherwise the embedded family's preset
                               noise_prior_lambda=setting.variant.lam, noise_prior_gamma=setting.gamma)
    specs = parts["specs"]
    generated = generate_videos(pipe, specs, "animate", steps=setting.steps, batch_size=budget.eval_batch_size,
                                seed=seed, interpolate=False)
    timer = Timer()
    judged, _, _ = judge_videos(specs, generated, "animate", steps=setting.steps)
    extra = shapes_metrics(parts["real"], generated, timer, domain_model=parts["classifier"], domain_note=parts["note"])
    kept = judged["kept_from_key_frame"]
    row = {"injection": setting.variant.injection, "lambda": setting.variant.lam, "gamma": setting.gamma,
           "steps": setting.steps, "motion": judged["against_prompt"]["all"]["motion"],
           "colour_kept": kept.get("colour_every_frame"), "object_kept": kept.get("object_every_frame"),
           "centre_psnr": judged["centre_frame_psnr_db"]["median"], "domain_fvd": extra["domain_fvd"],
           "warping_error": extra["warping_error"], "seconds_per_video": round(generated.seconds / len(specs), 3)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "row": row}, indent=2))
    return row


def matching_metric(rows: list[dict[str, Any]]) -> str:
    """The paper's metric is FVD: the domain FVD when every row has it, else motion accuracy."""
    return "domain_fvd" if all(r["domain_fvd"] is not None for r in rows) else "motion"


def _better(a: float, b: float, metric: str) -> bool:
    return a > b if METRICS[metric][1] else a < b


def held_column(table: dict[str, Any], rows: dict[str, dict[str, Any]], metric: str) -> dict[str, str]:
    """Per row label, whether the paper's direction holds here on ``metric`` (with the numbers compared)."""
    value = {label: row[metric] for label, row in rows.items()}
    f = lambda v: f"{v:.4g}"  # noqa: E731
    if table["kind"] == "best":
        best = table["best"]
        held = {}
        for label in value:
            if label == best:
                rivals = [other for other in value if other != best and not _better(value[best], value[other], metric)]
                held[label] = "yes: best of all rows" if not rivals else f"no: {'; '.join(rivals)} as good or better"
            else:
                ok = _better(value[best], value[label], metric)
                held[label] = f"{'yes' if ok else 'no'}: {best} {f(value[best])} vs {f(value[label])}"
        return held
    labels = list(rows)  # prior full, prior few, none full, none few
    few_ok = _better(value[labels[1]], value[labels[3]], metric)
    few = (f"{'yes' if few_ok else 'no'}: at {table['few']} steps, prior {f(value[labels[1]])} "
           f"vs none {f(value[labels[3]])}")
    sign = 1 if METRICS[metric][1] else -1  # cost of fewer steps: how much worse the metric gets
    cost = [sign * (value[labels[0]] - value[labels[1]]), sign * (value[labels[2]] - value[labels[3]])]
    cost_text = (f"{'yes' if cost[0] < cost[1] else 'no'}: {table['full']}->{table['few']} steps costs "
                 f"{f(cost[0])} with the prior vs {f(cost[1])} without")
    return {labels[0]: cost_text, labels[1]: few, labels[2]: cost_text, labels[3]: few}


# ------------------------------------------------------------------------------------------ driver, report


def run_ablations(out: Path, budget: Budget, *, domain_classifier: str | None = None, command: str = "") -> dict:
    """Train every variant, evaluate every setting, write ``results.json`` and ``ablations.md``."""
    out.mkdir(parents=True, exist_ok=True)
    base = load_config(budget.config)
    all_tables = tables(budget)
    variants = sorted({s.variant for t in all_tables for _, s in t["rows"]},
                      key=lambda v: (INJECTIONS.index(v.injection), v.lam))
    configs = {v: variant_config(base, v, budget) for v in variants}
    started = time.time()
    vae = load_vae(base.get("vae", "embedded"))
    build_cache(configs[variants[0]], out / "shared", vae)  # the clips every variant trains on, encoded once
    weights = {v: train_variant(out, v, configs[v], out / "shared" / "latents.safetensors", budget.seed)
               for v in variants}
    train_minutes = round((time.time() - started) / 60, 2)
    classifier, note = load_classifier_or_note(domain_classifier)
    specs = domain_prompts(budget.num_samples)
    parts = {"vae": vae, "text_encoder": load_text_encoder(base.get("text_encoder", "minilm")), "specs": specs,
             "real": real_clips(specs), "classifier": classifier, "note": note,
             # rows measured without a classifier are measured again once one is there (e.g. shipped later)
             "classifier_path": None if classifier is None else str(domain_classifier or "shipped")}
    results = {"budget": asdict(budget), "init_from": base.get("init_from", "embedded"), "command": command,
               "train_minutes_this_run": train_minutes, "notes": [note] if note else [], "tables": []}
    for table in all_tables:
        rows = {label: evaluate(s, weights[s.variant], parts, budget, _fingerprint(configs[s.variant]), out)
                for label, s in table["rows"]}
        metric = matching_metric(list(rows.values()))
        held = held_column(table, rows, metric)
        results["tables"].append({k: v for k, v in table.items() if k != "rows"} | {
            "metric": metric, "rows": [{"label": label, **row, "held": held[label]} for label, row in rows.items()]})
    # sampling noise: the paper's setting again with the next sampling seed (same model, prompts and steps)
    ref = Setting(Variant("add_encdec_spade", LAMBDA), GAMMA, budget.sample_steps)
    fingerprint = _fingerprint(configs[ref.variant])
    results["sampling_noise"] = {"setting": ref.key, "seeds": [budget.seed, budget.seed + 1], "rows": [
        evaluate(ref, weights[ref.variant], parts, budget, fingerprint, out, sampling_seed=seed)
        for seed in (budget.seed, budget.seed + 1)]}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(out, results, base)
    return results


def write_markdown(out: Path, results: dict[str, Any], config: dict[str, Any]) -> Path:
    b = results["budget"]
    batch = b["batch_size"] or config["train"]["batch_size"]
    data_num = b["data_num"] or config["data"]["num"]
    lines = ["# MicroCinema ablations on the procedural domain", "",
             f"Regenerate: `{results['command']}`", "",
             f"Budget: every variant trained {b['train_steps']} steps at batch {batch} on {data_num} procedural clips "
             f"(9 frames at 2 fps, data seed {config['data']['seed']}) from `{results['init_from']}`, train seed "
             f"{b['seed']}; evaluated on {b['num_samples']} domain prompts (prompt seed 999, 25 % held-out "
             f"combinations) with ground-truth key frames, no interpolation, sampling seed {b['seed']}, "
             f"{b['sample_steps']} steps unless the row says otherwise. Training in this run: "
             f"{results['train_minutes_this_run']} min (variants trained before are reused).", ""]
    lines += [f"Note: {n}" for n in results["notes"]] + ([""] if results["notes"] else [])
    noise = results.get("sampling_noise")
    if noise:
        first, again = noise["rows"]
        changes = ", ".join(f"{METRICS[k][0]} {format(first[k], METRICS[k][2])} -> {format(again[k], METRICS[k][2])}"
                            for k in METRICS if first[k] is not None and again[k] is not None)
        lines += [f"Sampling noise: the same model ({noise['setting']}) and prompts with sampling seed "
                  f"{noise['seeds'][1]} instead of {noise['seeds'][0]}: {changes}. Differences between rows of that "
                  "size are not meaningful.", ""]
    for t in results["tables"]:
        title, higher, _ = METRICS[t["metric"]]
        lines += [f"## {t['title']}", "", t["paper"], "",
                  f"'held here?' compares on {title} ({'higher' if higher else 'lower'} is better)"
                  + (": the domain FVD needs a domain classifier" if t["metric"] == "motion" else "") + ".", "",
                  "| row | " + " | ".join(name for name, _, _ in METRICS.values()) + " | s per video | held here? |",
                  "|---|" + "---|" * (len(METRICS) + 2)]
        for r in t["rows"]:
            cells = ["not measured" if r[k] is None else format(r[k], spec) for k, (_, _, spec) in METRICS.items()]
            lines.append(f"| {r['label']} | " + " | ".join(cells) + f" | {r['seconds_per_video']} | {r['held']} |")
        lines.append("")
    path = out / "ablations.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    from microcinema.core.errors import MicroCinemaError

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", default="video", help="base training config (name or YAML; default video)")
    parser.add_argument("--steps-budget", type=int, default=300, help="training steps per variant (default 300)")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (default: the config's)")
    parser.add_argument("--data-num", type=int, default=None, help="training clips (default: the config's)")
    parser.add_argument("--num-samples", type=int, default=50, help="evaluation prompts (default 50)")
    parser.add_argument("--sample-steps", type=int, default=25, help="sampling steps (default 25)")
    parser.add_argument("--few-steps", type=int, default=5, help="Fig. 11's reduced sampling steps (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="training and sampling seed (default 0)")
    parser.add_argument("--domain-classifier", default=None, help="domain classifier folder (default: the shipped one)")
    args = parser.parse_args(argv)
    for name in ("steps_budget", "num_samples", "sample_steps", "few_steps"):
        if getattr(args, name) < 1 or (name == "num_samples" and args.num_samples < 2):
            parser.error(f"--{name.replace('_', '-')} must be >= {2 if name == 'num_samples' else 1}")
    budget = Budget(config=args.config, train_steps=args.steps_budget, batch_size=args.batch_size,
                    data_num=args.data_num, num_samples=args.num_samples, sample_steps=args.sample_steps,
                    few_steps=args.few_steps, seed=args.seed)
    command = " ".join(["python -m microcinema.eval.ablations", *(sys.argv[1:] if argv is None else argv)])
    try:
        run_ablations(args.out, budget, domain_classifier=args.domain_classifier, command=command)
    except MicroCinemaError as error:
        print(f"ablations: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out / 'ablations.md'} and {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
