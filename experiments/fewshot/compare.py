"""The paper's comparison on the procedural domain (issue 18 item 8): recurrent causal attention against
sparse-causal attention (Tune-A-Video), and the three noise priors, with the same clips, steps and seeds.

For each motion (``--motions``, default all four few-shot motions) the tuning clips are written once
(``OUT/<motion>/clips``) and every variant is tuned and evaluated on them with ``run_domain.run`` (same steps,
learning rate, seeds, evaluation prompts and sampling seeds):

* ``recurrent-autoregressive`` (the paper's model), ``sparse-causal-autoregressive`` (the attention baseline),
  ``recurrent-independent`` and ``recurrent-shared`` (the noise priors; section 4.3); ``--full-grid`` adds the
  sparse-causal ones with the other priors, ``--variants`` picks some. The untuned base (the reference) is
  evaluated with the first variant (``--base-every`` for every variant).

``OUT/comparison.md`` (and ``comparison.json``) holds one table per motion (every metric, one column per variant)
and the claims table: each claim of the paper with its numbers there, what was measured here, and "held here?"
computed from the numbers (yes / no / not measured, e.g. without ``--clip`` for the CLIP claims), then how many
motions each held on.

Usage::

    python experiments/fewshot/compare.py --out runs/fewshot/compare --motions bounce,zigzag
    python experiments/fewshot/compare.py --out /tmp/cmp --smoke --base ./tiny-sd --motions bounce
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for path in (str(REPO), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

import run_domain  # noqa: E402

from microcinema.core.errors import MicroCinemaError, check  # noqa: E402

#: (name, attention, noise) of the variants; the first is the paper's model.
VARIANTS = (("recurrent-autoregressive", "recurrent", "autoregressive"),
            ("sparse-causal-autoregressive", "sparse-causal", "autoregressive"),
            ("recurrent-independent", "recurrent", "independent"),
            ("recurrent-shared", "recurrent", "shared"))
EXTRA = (("sparse-causal-independent", "sparse-causal", "independent"),
         ("sparse-causal-shared", "sparse-causal", "shared"))


def _better(a: float | None, b: float | None, higher: bool) -> bool | None:
    if a is None or b is None:
        return None
    return a > b if higher else a < b


def _extreme(values: dict[str, float | None], name: str, highest: bool) -> bool | None:
    known = {k: v for k, v in values.items() if v is not None}
    if name not in known or len(known) < 2:
        return None
    best = max(known.values()) if highest else min(known.values())
    return known[name] == best


def claims(results: dict[str, dict[str, Any]], base: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The paper's claims, each with what was measured here and whether it held (None: not measured). ``results``:
    variant name -> the tuned summary of :func:`~microcinema.systems.fewshot.evaluate.evaluate_adapter`."""
    rec, sparse = results.get("recurrent-autoregressive"), results.get("sparse-causal-autoregressive")
    priors = {k: results.get(f"recurrent-{k}") for k in ("independent", "shared", "autoregressive")}

    def get(summary: dict[str, Any] | None, key: str) -> float | None:
        return None if summary is None else summary.get(key)

    def pair(key: str, higher: bool) -> tuple[str, bool | None]:
        a, b = get(rec, key), get(sparse, key)
        shown = "-" if a is None or b is None else f"recurrent {a:.4g} vs sparse-causal {b:.4g}"
        return shown, _better(a, b, higher)

    def among(key: str, name: str, highest: bool) -> tuple[str, bool | None]:
        values = {k: get(v, key) for k, v in priors.items()}
        shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items() if v is not None) or "-"
        return shown, _extreme(values, name, highest)

    rows = []

    def add(claim: str, paper: str, measured: tuple[str, bool | None]) -> None:
        rows.append({"claim": claim, "paper": paper, "here": measured[0], "held": measured[1]})

    add("recurrent attention: lower warping error than sparse-causal", "Table 1: 5756.69 vs 9956.31 (guided TAV)",
        pair("warping_error", False))
    add("recurrent attention: higher CLIP-Temp than sparse-causal", "Table 1: 98.00 vs 96.29", pair("clip_temp", True))
    add("recurrent attention: higher CLIP score than sparse-causal", "Table 1: 31.29 vs 29.11",
        pair("clip_score", True))
    add("recurrent attention learns the motion better (smooth motion, not random variations of one image)",
        "section 4.2.2 (qualitative, Fig. 4)", pair("motion_fidelity", True))
    add("recurrent attention: taught motion right more often", "section 4.2.2 (qualitative)",
        pair("motion_right", True))
    add("independent noise: the most diverse samples", "section 4.3 (qualitative, Fig. 6)",
        among("diversity", "independent", True))
    add("independent noise: sometimes inconsistent (highest warping error of the priors)", "section 4.3",
        among("warping_error", "independent", True))
    add("shared noise: frames nearly identical unless alpha is small (least change between frames)",
        "section 4.3 (alpha 0.2 named as small)", among("frame_change", "shared", False))
    a, i = get(priors["autoregressive"], "warping_error"), get(priors["independent"], "warping_error")
    add("auto-regressive noise: smooth transitions (lower warping error than independent)", "section 4.3",
        ("-" if a is None or i is None else f"autoregressive {a:.4g} vs independent {i:.4g}", _better(a, i, False)))
    a, i = get(priors["autoregressive"], "sharpness"), get(priors["independent"], "sharpness")
    add("auto-regressive noise: blurrier than independent", "section 4.3",
        ("-" if a is None or i is None else f"sharpness autoregressive {a:.4g} vs independent {i:.4g}",
         _better(a, i, False)))
    t, b = get(rec, "motion_right"), get(base, "motion_right")
    add("tuning teaches the motion: right more often than the untuned base", "section 4 (premise)",
        ("-" if t is None or b is None else f"tuned {t:.1%} vs base {b:.1%}", _better(t, b, True)))
    return rows


def _held(value: bool | None) -> str:
    return "not measured" if value is None else ("yes" if value else "no")


def comparison_report(per_motion: dict[str, dict[str, Any]]) -> str:
    """``comparison.md``: per motion the metrics of every variant and the claims; then the claims over motions."""
    from microcinema.systems.fewshot.evaluate import metrics_table

    lines = ["# Recurrent vs sparse-causal attention and the noise priors (issue 18 item 8)", ""]
    first = next(iter(per_motion.values()))
    s = first["settings"]
    lines.append(f"Same tuning clips, {s['steps']} steps at learning rate {s['lr']:g}, seed {s['seed']}, "
                 f"{s['num_videos']} evaluation videos per variant with the same prompts and sampling seeds, "
                 f"{s['sample_steps']} sampling steps; base `{s['base']}`.")
    lines.append("")
    tally: dict[str, list[bool]] = {}
    for motion, entry in per_motion.items():
        columns = {name: summary for name, summary in entry["tuned"].items()}
        if entry.get("base"):
            columns["untuned base"] = entry["base"]
        lines += [f"## {motion}", "", metrics_table(columns), "",
                  "| claim (paper) | paper | here | held here? |", "|---|---|---|---|"]
        for row in entry["claims"]:
            lines.append(f"| {row['claim']} | {row['paper']} | {row['here']} | {_held(row['held'])} |")
            if row["held"] is not None:
                tally.setdefault(row["claim"], []).append(bool(row["held"]))
        lines.append("")
    if len(per_motion) > 1:
        lines += ["## Over the motions", "", "| claim | held on |", "|---|---|"]
        for claim, held in tally.items():
            lines.append(f"| {claim} | {sum(held)} of {len(held)} motions |")
        lines.append("")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = run_domain.build_parser()
    parser.description = __doc__.split("\n\n")[0]
    for action in parser._actions:  # --motion is replaced by --motions; attention and noise are the variants'
        if action.dest == "motion":
            action.required = False
    parser.add_argument("--motions", default="bounce,circling,zigzag,diagonal",
                        help="comma-separated motions (default all four)")
    parser.add_argument("--full-grid", action="store_true", help="also sparse-causal with the other noise priors")
    parser.add_argument("--base-every", action="store_true", help="evaluate the untuned base for every variant")
    parser.add_argument("--variants", default=None,
                        help="comma-separated variant names to run (default: all; see VARIANTS and --full-grid)")
    return parser


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    from microcinema.data.synthetic import FEWSHOT_MOTIONS
    from microcinema.systems.fewshot.evaluate import clean_json

    motions = [m.strip() for m in args.motions.split(",") if m.strip()]
    check(bool(motions) and all(m in FEWSHOT_MOTIONS for m in motions),
          f"--motions must be a comma-separated list of {', '.join(FEWSHOT_MOTIONS)}, got {args.motions!r}")
    variants = VARIANTS + (EXTRA if args.full_grid else ())
    if args.variants is not None:
        names = [v.strip() for v in args.variants.split(",") if v.strip()]
        known = {name for name, _, _ in VARIANTS + EXTRA}
        check(bool(names) and set(names) <= known,
              f"--variants must be a comma-separated list of {', '.join(sorted(known))}, got {args.variants!r}")
        variants = tuple(v for v in VARIANTS + EXTRA if v[0] in names)
    out = Path(args.out)
    per_motion: dict[str, dict[str, Any]] = {}
    for motion in motions:
        tuned, base, settings = {}, None, None
        for k, (name, attention, noise) in enumerate(variants):
            v = argparse.Namespace(**vars(args))
            v.motion, v.attention, v.noise = motion, attention, noise
            v.out = out / motion / name
            v.clips = out / motion / "clips"
            v.no_base = args.no_base or (k > 0 and not args.base_every)
            v.no_estimate = args.no_estimate or k > 0
            log(f"compare: {motion}: {name}")
            metrics = run_domain.run(v, log)
            if args.estimate_only:
                est = metrics["estimate"]
                if est:
                    log(f"compare: {len(variants)} variants x {len(motions)} motions: ~"
                        f"{len(variants) * len(motions) * est['total_s'] / 3600:.1f} h in all")
                return {"estimate": est}
            tuned[name] = metrics["evaluation"]["tuned"]
            base = base or metrics["evaluation"].get("base")
            settings = settings or metrics["settings"]
        per_motion[motion] = {"tuned": tuned, "base": base, "settings": settings,
                              "claims": claims(tuned, base)}
    result = clean_json(per_motion)
    (out / "comparison.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "comparison.md").write_text(comparison_report(result))
    log(f"compare: wrote {out / 'comparison.md'} and {out / 'comparison.json'}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except MicroCinemaError as error:
        print(f"compare: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
