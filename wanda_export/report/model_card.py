"""The model card of a release: `model/README.md`, Hugging Face card metadata in YAML front
matter (base_model, tags, license, library_name, pipeline_tag), then what was done (method,
pattern, sparsity, calibration data), what it measured (metric tables, gates), and how to
reproduce it (the tool version, the config digest and the config with every default filled in).

Nothing here touches the network: the base model's license comes from the hub cache's
README.md front matter, a local checkpoint's own README.md, or a GGUF file's `general.license`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from wanda_export.atomic import atomic_write_bytes
from wanda_export.report.markdown import number, percent, table

CARD_FILE = "README.md"
DEFAULT_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the embedded default's weights
DEFAULT_LICENSE = "apache-2.0"  # its GGUF file's general.license
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.DOTALL)
_HUB_SNAPSHOT = re.compile(r"models--([^/]+)--([^/]+)/snapshots/[^/]+")


def front_matter(text: str) -> dict[str, Any]:
    """The YAML front matter of a Markdown card as a mapping ({} when absent or unreadable)."""
    match = _FRONT_MATTER.match(text)
    if not match:
        return {}
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _card_of(folder: Path) -> dict[str, Any]:
    try:
        return front_matter((folder / CARD_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return {}


def _gguf_license(path: Path) -> str | None:
    try:
        from gguf import GGUFReader

        field = GGUFReader(path).fields.get("general.license")
        return None if field is None else str(field.contents())
    except (OSError, ValueError, KeyError, IndexError):  # unreadable: the license is unknown
        return None


def base_model_facts(model: dict[str, Any]) -> dict[str, Any]:
    """{base_model, license} of the release's input, each None when not known offline: a hub id
    (its license from the hub cache's README.md), the default model, a hub cache snapshot
    folder (named models--ORG--NAME), a checkpoint folder with a card, or a GGUF file."""
    kind, source = model.get("kind"), str(model.get("source") or "")
    if kind == "default":
        return {"base_model": DEFAULT_BASE_MODEL, "license": DEFAULT_LICENSE}
    if kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, CARD_FILE)
        card = _card_of(Path(cached).parent) if isinstance(cached, str) else {}
        return {"base_model": source, "license": card.get("license")}
    if kind == "gguf":
        return {"base_model": None, "license": _gguf_license(Path(source))}
    folder = Path(source)
    card = _card_of(folder) if kind == "dir" else {}
    snapshot = _HUB_SNAPSHOT.search(folder.as_posix())
    hub_id = f"{snapshot.group(1)}/{snapshot.group(2)}" if snapshot else None
    return {"base_model": hub_id or card.get("base_model"), "license": card.get("license")}


def model_name(model: dict[str, Any], base_model: str | None) -> str:
    """What people call the input model: its hub id, else its folder's or file's name."""
    if base_model:
        return base_model
    source = str(model.get("source") or "the default model")
    return Path(source).name if "/" in source or "\\" in source else source


def card_metadata(report: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
    """The card's YAML front matter (the keys the Hugging Face Hub reads)."""
    plan = report.get("plan") or {}
    pattern = plan.get("pattern") or (report.get("sparsity") or {}).get("pattern")
    allocation = ((report.get("sparsity") or {}).get("allocation") or {}).get("method")
    tags = ["wanda-export", "sparse", "pruned", plan.get("method"), pattern,
            allocation if allocation not in (None, "uniform") else None]
    metadata: dict[str, Any] = {}
    if facts.get("base_model"):
        metadata["base_model"] = facts["base_model"]
    if facts.get("license"):
        metadata["license"] = facts["license"]
    metadata |= {"library_name": "transformers", "pipeline_tag": "text-generation",
                 "tags": list(dict.fromkeys(str(tag) for tag in tags if tag))}
    return metadata


def _pruning(report: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    plan, sparsity = report.get("plan") or {}, report.get("sparsity") or {}
    calibration = (settings.get("data") or {}).get("calibration")
    rows = [["method", plan.get("method") or "—"], ["pattern", plan.get("pattern") or "—"],
            ["target sparsity", percent(plan.get("sparsity"))],
            ["measured sparsity (pruned linears)", percent(sparsity.get("overall"))],
            ["allocation", (sparsity.get("allocation") or {}).get("method", "uniform")],
            ["calibration", f"{plan.get('mode', '—')} mode"], ["pruned linears",
                                                                 plan.get("targets", "—")]]
    if plan.get("permute"):
        rows.append(["N:M channel permutation", "folded into the weights"])
    for label, key in (("mask refinement", "refine"), ("weight update", "update")):
        if plan.get(key):
            rows.append([label, plan[key]["method"]])
    if calibration is not None:
        where = (calibration.get("path") or calibration.get("dataset")
                 or "the offline corpus (stdlib docstrings)")
        text = (f"{calibration['source']}: {where}; {calibration['nsamples']} windows x "
                f"{calibration['seqlen']} tokens, seed {calibration['seed']}")
        rows.append(["calibration data", text])
    return ["## Pruning", "", *table(["", ""], rows), ""]


def _evaluation(report: dict[str, Any]) -> list[str]:
    metrics = report.get("metrics") or {}
    lines = []
    perplexity = metrics.get("perplexity")
    if perplexity:
        lines += ["## Evaluation", "", *table(
            ["", "dense", "pruned", "pruned / dense", "windows x seqlen"],
            [["perplexity", number(perplexity.get("dense")), number(perplexity.get("pruned")),
              number(perplexity.get("ratio_to_dense")),
              f"{perplexity.get('windows', '—')} x {perplexity.get('seqlen', '—')}"]]), ""]
    tasks = metrics.get("lm_eval") or {}
    rows = [[task, row.get("metric", "—"), number(row.get("dense")), number(row.get("pruned")),
             number(row.get("recovery"))] for task, row in sorted(tasks.items())
            if isinstance(row, dict)]
    if rows:
        lines += [*table(["task", "metric", "dense", "pruned", "recovery"], rows), ""]
    return lines


def _gates(report: dict[str, Any]) -> list[str]:
    gates = report.get("gates") or []
    if not gates:
        return []
    rows = [[gate["name"], "passed" if gate["passed"] else "FAILED", number(gate.get("value")),
             number(gate.get("threshold")), gate.get("message") or ""] for gate in gates]
    return ["## Release gates", "", *table(["gate", "result", "value", "threshold", "message"],
                                           rows), ""]


def render_model_card(report: dict[str, Any], settings: dict[str, Any]) -> str:
    """The whole card of a run's `report` (report.json's content) and `settings` (the pipeline
    as JSON data, every default filled in): front matter, then pruning, evaluation, gates,
    usage and the config."""
    facts = base_model_facts(report.get("model") or {})
    metadata = card_metadata(report, facts)
    name = model_name(report.get("model") or {}, facts.get("base_model"))
    plan = report.get("plan") or {}
    what = (f"{plan.get('method', 'pruned')}, {percent(plan.get('sparsity'))} "
            f"{plan.get('pattern', '')}").strip()
    link = f"[{name}](https://huggingface.co/{name})" if facts.get("base_model") else f"`{name}`"
    config = yaml.safe_dump(settings, sort_keys=False)
    intro = (f"{link} pruned by [wanda-export](https://pypi.org/project/wanda-export/) "
             f"{report.get('tool_version', '')}: the zeros are stored in ordinary dense tensors, "
             "so the checkpoint loads anywhere the base model loads; a speedup needs a runtime "
             "with sparse kernels (2:4 on TensorRT or PyTorch semi-structured tensors).")
    status = (f"Release status: **{report.get('status', '—')}** (exit code "
              f"{report.get('exit_code', '—')}).")
    usage = ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
             'model = AutoModelForCausalLM.from_pretrained("PATH_OR_REPO")',
             'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO")', "```"]
    reproduce = (f"Config digest `{report.get('config_digest', '—')}`; the pipeline with every "
                 "default filled in (paths as written in the file):")
    lines = [
        "---", yaml.safe_dump(metadata, sort_keys=False).rstrip(), "---", "",
        f"# {name.rsplit('/', 1)[-1]}, pruned ({what})", "", intro, "", status, "",
        *_pruning(report, settings), *_evaluation(report), *_gates(report),
        "## Usage", "", *usage, "", "`pruning.json` beside the weights holds the per-layer plan.",
        "", "## Reproduce", "", reproduce, "", "```yaml", config.rstrip(), "```", "",
    ]
    return "\n".join(lines)


def write_model_card(report: dict[str, Any], settings: dict[str, Any], folder: Path) -> Path:
    """Write `folder/README.md` (the checkpoint folder of a release), atomically."""
    return atomic_write_bytes(Path(folder) / CARD_FILE,
                              render_model_card(report, settings).encode("utf-8"))
