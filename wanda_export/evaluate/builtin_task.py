"""The builtin offline accuracy task: docstring continuations from the held-out corpus.

Each item is the first sentence of a docstring paragraph from the evaluation split of the builtin corpus
(`data/builtin.py`: modules the calibration never sees) and four candidate second sentences: the
true one and three taken from other docstrings, in a seeded order. The model is right when it
gives the true continuation the highest log-likelihood (lm-eval's `acc`; `acc_norm` divides by
the candidate's length in bytes). It is written as an ordinary lm-eval task (a YAML over a
jsonl file), so it runs through the same harness path as any local task.

What it measures: whether the pruned model still prefers the coherent continuation of
technical English prose, against the dense model on the same items. What it does not: world
knowledge, reasoning or instruction following (the hub tasks: ARC, BoolQ, HellaSwag...), and
its absolute score says little on its own; read it as a recovery ratio.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from wanda_export.atomic import staging_directory
from wanda_export.data.builtin import builtin_text

BUILTIN_TASK = "wanda_docstrings"
BUILTIN_TASK_VERSION = 1  # bump when the items change for the same corpus and seed
CHOICES = 4
MAX_ITEMS = 1000  # the task's size before `limit`
_MIN_CHARS, _MAX_CHARS = 24, 120  # sentence lengths kept: informative, and cheap to score
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


@dataclass(frozen=True)
class BuiltinTask:
    """The task folder (for lm-eval's `include_path`), its items and their digest."""

    folder: Path
    items: int
    digest: str


def _pairs(text: str) -> list[tuple[str, str]]:
    """(first sentence, second sentence) of every paragraph whose two sentences fit."""
    pairs = []
    for paragraph in text.split("\n\n"):
        sentences = _SENTENCE_END.split(" ".join(paragraph.split()))
        if len(sentences) < 2:
            continue
        first, second = sentences[0], sentences[1]
        if all(_MIN_CHARS <= len(part) <= _MAX_CHARS for part in (first, second)):
            pairs.append((first, second))
    return pairs


def task_items(seed: int) -> list[dict]:
    """The task's items, deterministic for a corpus and a seed: context, four choices, label.

    Pairs (one per first sentence) are shuffled with `seed` and the first MAX_ITEMS kept; each
    item's distractors are three distinct second sentences of other items, and the true one's
    position is drawn too.
    """
    by_context = dict(sorted(_pairs(builtin_text("evaluation")), reverse=True))
    pairs = sorted(by_context.items())
    rng = random.Random(seed)
    rng.shuffle(pairs)
    pairs = pairs[:MAX_ITEMS]
    answers = sorted({answer for _, answer in pairs})
    items = []
    for context, answer in pairs:
        choices: list[str] = []
        while len(choices) < CHOICES - 1:
            text = answers[rng.randrange(len(answers))]
            if text != answer and text not in choices:
                choices.append(text)
        label = rng.randrange(CHOICES)
        choices.insert(label, answer)
        items.append({"context": context, "choices": choices, "label": label})
    return items


def task_yaml(data_file: Path) -> str:
    """The lm-eval task config (multiple choice over `data_file`), as YAML text."""
    config = {
        "task": BUILTIN_TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "output_type": "multiple_choice",
        "test_split": "test",
        "doc_to_text": "{{context}}",
        "doc_to_target": "{{label}}",
        "doc_to_choice": "{{choices}}",
        "metric_list": [{"metric": name, "aggregation": "mean", "higher_is_better": True}
                        for name in ("acc", "acc_norm")],
        "metadata": {"version": BUILTIN_TASK_VERSION},
    }
    return json.dumps(config, indent=2) + "\n"  # JSON is YAML


def write_builtin_task(root: Path, seed: int) -> BuiltinTask:
    """Build the task into `root/<digest>/` (once per content: the folder is named by the
    digest of its items, written atomically) and return where it is."""
    items = task_items(seed)
    data = "".join(json.dumps(item, sort_keys=True) + "\n" for item in items).encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()
    folder = root / digest
    if not (folder / f"{BUILTIN_TASK}.yaml").is_file():
        root.mkdir(parents=True, exist_ok=True)
        with staging_directory(folder) as staging:
            (staging / f"{BUILTIN_TASK}.jsonl").write_bytes(data)
            yaml = task_yaml(folder / f"{BUILTIN_TASK}.jsonl")
            (staging / f"{BUILTIN_TASK}.yaml").write_text(yaml, encoding="utf-8")
            try:
                os.replace(staging, folder)
            except OSError:  # another process published the same content meanwhile
                shutil.rmtree(staging, ignore_errors=True)
    return BuiltinTask(folder=folder, items=len(items), digest=digest)
