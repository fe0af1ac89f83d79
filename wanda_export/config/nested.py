"""Settings sections nested inside a stage's settings: the lm-evaluation-harness tasks of the
evaluate stage (`lm_eval`) and the Hub upload of the export stage (`push_to_hub`). One
definition each, like the stage models themselves."""

from __future__ import annotations

import re
from typing import Annotated, Self

from pydantic import Field, field_validator, model_validator

from wanda_export.config.base import StrictModel, custom_error, problem, rules_error
from wanda_export.config.limits import (
    MAX_BATCH_SIZE,
    MAX_FEWSHOT,
    MAX_LM_EVAL_LIMIT,
    MAX_LM_EVAL_TASKS,
)

TaskName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.\-]+$")]


class LmEvalSettings(StrictModel):
    """lm-evaluation-harness tasks scored on the dense and on the pruned model (in memory).

    `tasks`: lm-eval task names: the builtin offline task (`evaluate/builtin_task.py`), tasks
    of the YAMLs under `include_path` (relative to the pipeline file), or lm-eval's own tasks
    (their data from the hub or its cache). `limit` caps the items per task; `metric` picks the
    metric reported and gated per task (default acc_norm, else acc, else the first);
    `seed` draws the builtin task's items.
    """

    tasks: list[TaskName] = Field(min_length=1, max_length=MAX_LM_EVAL_TASKS)
    num_fewshot: int = Field(0, ge=0, le=MAX_FEWSHOT)
    limit: int | None = Field(None, ge=1, le=MAX_LM_EVAL_LIMIT)
    batch_size: int = Field(8, ge=1, le=MAX_BATCH_SIZE)
    include_path: str | None = Field(None, min_length=1)
    metric: dict[TaskName, TaskName] = Field(default_factory=dict)
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _known_tasks(self) -> Self:
        problems = []
        if len(set(self.tasks)) != len(self.tasks):
            problems.append(problem(("tasks",), "a task is listed twice"))
        problems.extend(
            problem(("metric", task), f"task {task!r} is not in tasks ({', '.join(self.tasks)})",
                    at_key=True)
            for task in self.metric if task not in self.tasks)
        if problems:
            raise rules_error(problems)
        return self


HUB_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def repo_id_problem(repo_id: str) -> str | None:
    """Why `repo_id` is not a Hugging Face model repo id ORG/NAME, or None when it is one."""
    if HUB_REPO_ID.fullmatch(repo_id) and ".." not in repo_id and "--" not in repo_id:
        return None
    return (f"{repo_id!r} is not a hub repo id: ORG/NAME with letters, digits, '.', '_' or '-' "
            "(no '--' or '..', at most 96 characters each)")


class PushToHub(StrictModel):
    """Upload the release's model/ (and onnx/) to the Hugging Face Hub after a run whose gates
    passed (`wanda-export push` does the same for any release)."""

    repo_id: str
    private: bool = False

    @field_validator("repo_id")
    @classmethod
    def _a_repo_id(cls, value: str) -> str:
        message = repo_id_problem(value)
        if message:
            raise custom_error(message)
        return value
