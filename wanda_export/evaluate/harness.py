"""lm-evaluation-harness on the in-memory model: which tasks a pipeline names and where each
comes from, loading their data offline-first, and scoring a model on them.

The model is wrapped, never reloaded (`HFLM(pretrained=<model object>)`), so the dense and the
pruned evaluation run on the weights the pipeline holds. Tasks are of three kinds: the builtin
offline task (`builtin_task.py`), local tasks (lm-eval YAMLs under `include_path`, over local
json/jsonl data) and lm-eval's own tasks, whose data come from the hub or the datasets cache.
When the hub cannot be used (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE, or one probe without
retries gets no answer) every dataset is read in offline mode, so a missing one fails at once,
naming the task and its data, instead of retrying for minutes.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from wanda_export.errors import ConfigError, EnvironmentProblem, did_you_mean, missing_dependency
from wanda_export.evaluate.builtin_task import BUILTIN_TASK, write_builtin_task
from wanda_export.model.checkpoint import first_line
from wanda_export.model.hub import offline, probe_timeout

TASKS_DIR = ".lm-eval-tasks"  # under the cache root: the builtin task's files
PREFERRED_METRICS = ("acc_norm", "acc")
_TRUE = {"1", "ON", "YES", "TRUE"}
_BOOTSTRAP_ITERS = 1000  # only metrics without a closed-form stderr are bootstrapped

TaskKind = Literal["builtin", "local", "hub"]


def require_lm_eval() -> str:
    """lm-eval's version; exit 4 with the install command when it is not installed."""
    try:
        import lm_eval
    except ImportError as error:
        raise missing_dependency("lm-eval", "eval") from error
    return str(getattr(lm_eval, "__version__", "unknown"))


@dataclass(frozen=True)
class TaskSpec:
    """One task a pipeline names: where it comes from, its version, what defines it."""

    name: str
    kind: TaskKind
    version: Any
    digest: str  # of its items (builtin), its folder's files (local) or its config (hub)
    dataset: str | None = None  # a hub task's dataset, for error messages
    folder: Path | None = None  # a local task's include_path: its relative data files' base

    def record(self) -> dict[str, Any]:
        """The task's part of the dense-scores cache key."""
        return {"name": self.name, "kind": self.kind, "version": self.version,
                "digest": self.digest}


@dataclass
class TaskSet:
    """The resolved tasks of one evaluate stage and the lm-eval TaskManager that loads them."""

    tasks: list[TaskSpec]
    manager: Any
    lm_eval_version: str
    loaded: dict[str, Any] = field(default_factory=dict)  # lm-eval Task objects, once loaded

    @property
    def hub_tasks(self) -> list[TaskSpec]:
        """The tasks whose data come from the hub or the datasets cache."""
        return [task for task in self.tasks if task.kind == "hub"]


@dataclass(frozen=True, slots=True)
class TaskScores:
    """One task's scores on one model: every metric lm-eval reported, with its standard error
    (None when lm-eval gave none), and the number of items evaluated."""

    values: dict[str, float]
    stderrs: dict[str, float | None]
    n: int

    def metric(self, task: str, wanted: str | None) -> str:
        """The metric reported for `task`: `wanted` if set, else acc_norm, else acc, else the
        first one lm-eval reported."""
        if wanted is not None:
            if wanted not in self.values:
                raise ConfigError(
                    f"evaluate -> lm_eval -> metric -> {task}: task {task!r} reports no metric "
                    f"{wanted!r}; it reports {', '.join(self.values)}")
            return wanted
        return next((name for name in PREFERRED_METRICS if name in self.values),
                    next(iter(self.values)))


def _tree_digest(folder: Path) -> str:
    """sha256 over the relative path and content of every file under `folder`."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode("utf-8") + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _include_folder(include_path: str, base_dir: Path) -> Path:
    folder = (base_dir / include_path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"evaluate -> lm_eval -> include_path: {include_path!r} is not a "
                          f"folder (looked for {folder})")
    return folder


def resolve_tasks(settings, base_dir: Path, cache_root: Path) -> TaskSet:
    """Find each task of `settings` (an `LmEvalSettings`): the builtin task (written into the
    cache root once per content), the YAMLs under `include_path`, else lm-eval's own tasks
    (indexed only when needed: it takes seconds). An unknown name is a ConfigError."""
    version = require_lm_eval()
    from lm_eval.tasks import TaskManager

    folders: dict[str, Path] = {}
    builtin = None
    if BUILTIN_TASK in settings.tasks:
        builtin = write_builtin_task(cache_root / TASKS_DIR, settings.seed)
        folders["builtin"] = builtin.folder
    if settings.include_path is not None:
        folders["local"] = _include_folder(settings.include_path, base_dir)
    paths = [str(folder) for folder in folders.values()]
    manager = TaskManager(include_path=paths, include_defaults=False) if paths else None
    local = set(manager.all_tasks) if manager is not None else set()
    if any(name not in local for name in settings.tasks):
        manager = TaskManager(include_path=paths or None)
    specs = []
    for name in settings.tasks:
        entry = manager.task_index.get(name)
        if entry is None:
            raise ConfigError(f"evaluate -> lm_eval -> tasks: unknown lm-eval task {name!r}"
                              + did_you_mean(name, manager.all_tasks),
                              hint="see `lm-eval ls tasks`, or add its YAML under include_path")
        config = dict(entry.cfg or {})
        task_version = (config.get("metadata") or {}).get("version")
        if name == BUILTIN_TASK and builtin is not None:
            specs.append(TaskSpec(name, "builtin", task_version, builtin.digest))
        elif name in local:
            specs.append(TaskSpec(name, "local", task_version, _tree_digest(folders["local"]),
                                  folder=folders["local"]))
        else:
            dataset = " / ".join(str(config[key]) for key in ("dataset_path", "dataset_name")
                                 if config.get(key))
            text = json.dumps(config, sort_keys=True, default=str).encode("utf-8")
            specs.append(TaskSpec(name, "hub", task_version, hashlib.sha256(text).hexdigest(),
                                  dataset or None))
    return TaskSet(specs, manager, version)


def _offline_reason(dataset: str | None) -> str | None:
    """Why the hub cannot be used (offline mode, or no answer to one probe), else None."""
    if offline():
        return "HF_HUB_OFFLINE is set"
    if os.environ.get("HF_DATASETS_OFFLINE", "").strip().upper() in _TRUE:
        return "HF_DATASETS_OFFLINE is set"
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    try:
        get_hf_file_metadata(hf_hub_url(dataset or "", "README.md", repo_type="dataset"),
                             timeout=probe_timeout())
    except HfHubHTTPError as error:
        if getattr(getattr(error, "response", None), "status_code", 500) < 500:
            return None  # the hub answered (a missing file is lm-eval's to report)
        return f"{constants.ENDPOINT} answered {first_line(error)}"
    except Exception as error:  # noqa: BLE001 - DNS, refused, TLS, timeout: no answer
        return f"{constants.ENDPOINT} did not answer: {type(error).__name__}: {first_line(error)}"
    return None


@contextmanager
def _datasets_offline(enabled: bool) -> Iterator[None]:
    """datasets and huggingface_hub in offline mode (both read the flag at call time)."""
    if not enabled:
        yield
        return
    import datasets.config
    from huggingface_hub import constants

    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


@contextmanager
def _working_directory(folder: Path | None) -> Iterator[None]:
    """Run the block in `folder` (None: where we are). datasets resolves a task YAML's relative
    data_files against the working directory; a local task's are meant relative to its
    include_path. Only task loading runs here; the previous directory always comes back."""
    if folder is None:
        yield
        return
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def _load_error(spec: TaskSpec, reason: str | None, error: Exception) -> Exception:
    """The error for a task whose data could not be loaded."""
    if spec.kind != "hub":
        return ConfigError(f"lm-eval task {spec.name!r}: could not load its local data: "
                           f"{type(error).__name__}: {first_line(error)}",
                           hint="check the data_files of its YAML (absolute, or relative to "
                                "include_path)")
    data = f"the dataset {spec.dataset}" if spec.dataset else "its dataset"
    if reason is not None:
        return EnvironmentProblem(
            f"lm-eval task {spec.name!r} needs {data}, which is not in the local datasets "
            f"cache, and the hub cannot be used: {reason}",
            hint="run once with network access to fill the cache, or use the builtin task "
                 f"{BUILTIN_TASK} or local tasks (evaluate -> lm_eval -> include_path)")
    return EnvironmentProblem(f"lm-eval task {spec.name!r} could not load {data}: "
                              f"{type(error).__name__}: {first_line(error)}",
                              hint="check the network and disk space")


def load_tasks(task_set: TaskSet) -> dict[str, Any]:
    """Load every task's data (once per run: the dense and the pruned evaluation share them),
    offline when the hub cannot be used or no task needs it."""
    if task_set.loaded:
        return task_set.loaded
    hub = task_set.hub_tasks
    reason = _offline_reason(hub[0].dataset) if hub else None
    loaded: dict[str, Any] = {}
    with _datasets_offline(reason is not None or not hub), _quiet_harness():
        for spec in task_set.tasks:
            try:
                with _working_directory(spec.folder):
                    loaded[spec.name] = task_set.manager.load([spec.name])["tasks"]
            except Exception as error:  # datasets raises anything: mapped here
                raise _load_error(spec, reason, error) from error
    task_set.loaded = loaded
    return loaded


def _scores(results: dict[str, Any], task: str, n: int) -> TaskScores:
    """One task's metrics out of lm-eval's results ("acc,none", "acc_stderr,none", ...)."""
    values: dict[str, float] = {}
    stderrs: dict[str, float | None] = {}
    for key, value in results.items():
        metric, _, _filter = key.partition(",")
        if not _filter or metric.endswith("_stderr") or not isinstance(value, int | float):
            continue
        values.setdefault(metric, float(value))
        stderr = results.get(f"{metric}_stderr,{_filter}")
        stderrs.setdefault(metric, float(stderr) if isinstance(stderr, int | float) else None)
    if not values:
        raise ConfigError(f"lm-eval task {task!r} reported no numeric metric")
    return TaskScores(values, stderrs, n)


@contextmanager
def _quiet_harness() -> Iterator[None]:
    """lm-eval's own logs (below errors) and its tqdm bars (written to sys.stderr, which is
    swapped for a buffer) off: the run shows its own progress; errors still raise."""
    logger = logging.getLogger("lm_eval")
    saved_level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(saved_level)


def score_tasks(model, tokenizer, task_set: TaskSet, settings) -> dict[str, TaskScores]:
    """Score the in-memory `model` on every leaf task of `task_set` (groups expand to their
    tasks). lm-eval's global seeds are left alone so the run's own random state is unchanged."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    loaded = load_tasks(task_set)
    tasks = [task for group in loaded.values() for task in group.values()]
    with torch.inference_mode(), _datasets_offline(not task_set.hub_tasks), _quiet_harness():
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size)
        output = lm_eval.simple_evaluate(
            model=lm, tasks=tasks, num_fewshot=settings.num_fewshot, limit=settings.limit,
            log_samples=False, bootstrap_iters=_BOOTSTRAP_ITERS, task_manager=task_set.manager,
            random_seed=None, numpy_random_seed=None, torch_random_seed=None)
    samples = output.get("n-samples", {})
    return {name: _scores(results, name, int(samples.get(name, {}).get("effective", 0)))
            for name, results in output["results"].items() if name in samples}


def scores_to_tensors(scores: dict[str, TaskScores]) -> dict[str, torch.Tensor]:
    """The scores as a cache entry: their canonical JSON as a uint8 tensor."""
    data = json.dumps({name: {"values": s.values, "stderrs": s.stderrs, "n": s.n}
                       for name, s in scores.items()}, sort_keys=True).encode("utf-8")
    return {"scores_json": torch.frombuffer(bytearray(data), dtype=torch.uint8)}


def scores_from_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, TaskScores]:
    """The scores of a cache entry written by `scores_to_tensors`."""
    data = json.loads(bytes(tensors["scores_json"].tolist()).decode("utf-8"))
    return {name: TaskScores(item["values"], item["stderrs"], int(item["n"]))
            for name, item in data.items()}
