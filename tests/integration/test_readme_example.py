"""The README's Python example runs as written, on the offline default model (SmolLM2-135M)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

README = Path(__file__).parents[2] / "README.md"


def python_example() -> str:
    """The README's ```python block that uses `prune`."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    (block,) = [block for block in blocks if "from wanda_export import prune" in block]
    return block


def test_the_readme_example_prunes_and_saves_the_default_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(python_example(), "README.md", "exec"), namespace)  # noqa: S102 (our README)
    result = namespace["result"]
    assert result.sparsity == pytest.approx(0.5, abs=1e-3)
    assert "50.0% of the pruned layers' weights are zero" in capsys.readouterr().out
    saved = tmp_path / "smollm2-2of4"
    plan = json.loads((saved / "pruning.json").read_text())
    assert plan["pattern"] == "2:4" and plan["method"] == "wanda"
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(saved)
    weight = model.model.layers[0].mlp.down_proj.weight
    assert (weight.reshape(-1, 4) == 0).sum(dim=1).min() >= 2  # 2 of every 4 are zero
