"""The README stays true to the command it documents."""

import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_usage_matches_help():
    completed = subprocess.run(
        [sys.executable, "-m", "jetforce", "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    usage = completed.stdout.split("\n\n")[0]
    assert usage in README.read_text()


def test_readme_lists_every_option():
    completed = subprocess.run(
        [sys.executable, "-m", "jetforce", "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    readme = README.read_text()
    options = {word.rstrip(",") for word in completed.stdout.split() if word.startswith("--") and word != "--help"}
    missing = sorted(option for option in options if option not in readme)
    assert missing == []
