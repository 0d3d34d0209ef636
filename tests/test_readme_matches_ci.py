"""The README's setup and test commands are exactly what CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _section_command(readme: str, heading: str) -> str:
    section = readme.split(f"## {heading}", 1)[1]
    return re.search(r"```bash\n(.+?)\n```", section, re.S).group(1).strip()


def test_ci_runs_the_readme_setup_and_test_commands():
    readme = (ROOT / "README.md").read_text()
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    for heading in ("Set up", "Test"):
        command = _section_command(readme, heading)
        assert "\n" not in command, f"README '{heading}' must be one command"
        assert command in ci, f"README '{heading}' command {command!r} is not what .ci/run runs"
