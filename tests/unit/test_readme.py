"""The README's Python example runs as written (a newcomer's first contact must not break)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_python_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "the README lost its Python example"
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    env = namespace["env"]
    assert env.observation_space.contains(namespace["obs"])  # type: ignore[attr-defined]
    assert isinstance(namespace["reward"], float)
