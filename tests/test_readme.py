"""The README's two commands are the ones CI and users run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [b.strip() for b in blocks[:2]]


def test_readme_has_two_setup_commands_and_ci_runs_the_test_one():
    install_and_run, install_and_test = readme_commands()
    assert "torch==2.13.0" in install_and_run and "torch==2.13.0" in install_and_test
    assert install_and_run.rstrip().split("&&")[-1].strip().startswith("microcinema ")
    assert "pytest" in install_and_test
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install_and_test in ci, "CI must run exactly the README's test command"
