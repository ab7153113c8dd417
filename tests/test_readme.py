"""The README's quick example runs, and .ci/run runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_readme_example_runs(capsys):
    blocks = _python_blocks(ROOT / "README.md")
    assert blocks, "README has no python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out.split()
    assert len(out) >= 2 and all(float(x) == float(x) for x in out)


def test_ci_runs_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    tests_section = readme.split("## Tests", 1)[1]
    command = re.search(r"```bash\n(.*?)\n```", tests_section, flags=re.S).group(1).strip()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    # the last line runs it through run_suite, which fails on a stray traceback
    assert ci[-1].strip() == f"run_suite py311 {command}"


def test_ci_fails_a_passing_suite_that_prints_a_traceback(tmp_path):
    """``run_suite`` in ``.ci/run`` passes a clean run and fails one that prints a
    ``KeyboardInterrupt`` traceback though its command exits 0."""
    import subprocess

    text = (ROOT / ".ci" / "run").read_text()
    start = text.index("LOGS=")
    end = text.index("\n}\n", start) + 3
    helper = "set -euo pipefail\n" + text[start:end]
    clean = "echo '3 passed'"
    noisy = "printf 'Traceback (most recent call last):\\nKeyboardInterrupt\\n3 passed\\n'"
    failing = "echo '1 failed'; exit 1"
    codes = {}
    for name, body in (("clean", clean), ("noisy", noisy), ("failing", failing)):
        script = tmp_path / f"{name}.sh"
        script.write_text(f'{helper}\nrun_suite {name} bash -c "{body}"\n')
        codes[name] = subprocess.run(["bash", str(script)], capture_output=True).returncode
    assert codes == {"clean": 0, "noisy": 1, "failing": 1}
