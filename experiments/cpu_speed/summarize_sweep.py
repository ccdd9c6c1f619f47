"""Table of a step sweep (sweep_steps.sh): one row per run folder and mode.

    python experiments/cpu_speed/summarize_sweep.py runs/sweep_steps
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def main(root: str) -> None:
    print("| run | mode | motion | colour every frame | object every frame | centre PSNR (median dB) | s/video (batched) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for folder in sorted(Path(root).iterdir()):
        path = folder / "metrics.json"
        if not path.is_file():
            continue
        for mode, m in json.loads(path.read_text())["modes"].items():
            p = m["against_prompt"]["all"]
            print(f"| {folder.name} | {mode} | {100 * p['motion']:.0f} % | {100 * p['colour_every_frame']:.0f} % | "
                  f"{100 * p['object_every_frame']:.0f} % | {m['centre_frame_psnr_db']['median']:.1f} | "
                  f"{m['seconds_per_video']:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/sweep_steps")
