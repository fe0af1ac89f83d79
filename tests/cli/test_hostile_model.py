"""Hostile model inputs: broken checkpoints, corrupt weights, wrong architectures, a broken
remote module, an unreachable hub, a tampered fingerprint memo.

Every broken checkpoint is the tiny llama of the `workdir` fixture, corrupted in place. Checks
that need only config.json or a file header run at `validate`; the others at `run`, where the
unchanged work folder also proves that nothing was written to --out.
"""

from __future__ import annotations

import http.server
import json
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from helpers import invoke
from hostile import HostileCase, check_case, tree_digest
from pipelines import edit_pipeline_file

from wanda_export.model.fingerprint import clear_fingerprint_cache

VALIDATE = ("validate", "{work}/pipeline.yaml")
RUN = ("run", "{work}/pipeline.yaml", "--out", "{work}/out", "--quiet")
HUB_ID = "wanda-export-tests/made-up-model"
WEIGHTS = "model/model.safetensors"


def _model(work: Path, **settings) -> None:
    """Change the model section of the work folder's pipeline.yaml."""
    edit_pipeline_file(work / "pipeline.yaml", model=settings)


def _config(work: Path, edit: Callable[[dict], object]) -> None:
    """Rewrite model/config.json after `edit` changed it in place."""
    file = work / "model" / "config.json"
    data = json.loads(file.read_text())
    edit(data)
    file.write_text(json.dumps(data))


def _weights(work: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    """Rewrite model/model.safetensors after `edit` changed its tensors in place."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(work / WEIGHTS))
    edit(state)
    save_file(state, str(work / WEIGHTS), metadata={"format": "pt"})


def _header(work: Path, edit: Callable[[dict], None]) -> None:
    """Rewrite the JSON header of model/model.safetensors, keeping its tensor bytes."""
    file = work / WEIGHTS
    raw = file.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + size])
    edit(header)
    encoded = json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + size :])


def _bytes(work: Path, edit: Callable[[bytes], bytes], name: str = WEIGHTS) -> None:
    file = work / name
    file.write_bytes(edit(file.read_bytes()))


def _nan_block(raw: bytes) -> bytes:
    """4 KiB of 0xFF (NaN as float32) a little into the tensor data."""
    start = 8 + struct.unpack("<Q", raw[:8])[0] + 1024
    return raw[:start] + b"\xff" * 4096 + raw[start + 4096 :]


def _empty(work: Path) -> None:
    for file in (work / "model").iterdir():
        file.unlink()


def _swap_model(work: Path, model) -> None:
    """Replace config.json and the weights with those of another (random, tiny) model."""
    (work / WEIGHTS).unlink()
    (work / "model" / "config.json").unlink()
    model.save_pretrained(work / "model")


def _bert(work: Path) -> None:
    from transformers import BertConfig, BertModel

    _swap_model(work, BertModel(BertConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, intermediate_size=128)))


def _t5(work: Path) -> None:
    from transformers import T5Config, T5ForConditionalGeneration

    _swap_model(work, T5ForConditionalGeneration(T5Config(
        vocab_size=256, d_model=64, num_layers=2, num_heads=4, d_ff=128, d_kv=16)))


def _pickle_only(work: Path) -> None:
    from safetensors.torch import load_file

    torch.save(load_file(str(work / WEIGHTS)), work / "model" / "pytorch_model.bin")
    (work / WEIGHTS).unlink()


def _remote_code(module: str, body: str) -> Callable[[Path], None]:
    """A checkpoint whose config.json points at its own (broken) Python module."""

    def setup(work: Path) -> None:
        (work / "model" / f"{module}.py").write_text(body)
        _config(work, lambda c: c.update(auto_map={
            "AutoConfig": f"{module}.CustomConfig", "AutoModelForCausalLM": f"{module}.Custom"}))
        _model(work, trust_remote_code=True)

    return setup


BROKEN_MODULE = """\
from transformers import LlamaConfig


class CustomConfig(LlamaConfig):
    model_type = "llama"


Custom = None.weights
"""
NEEDS_PACKAGE = "import wanda_export_absent_package\n" + BROKEN_MODULE


def _gguf(edit: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def setup(work: Path) -> None:
        _bytes(work, edit, "tiny.gguf")
        _model(work, path="tiny.gguf")

    return setup


def _hub(work: Path) -> None:
    _model(work, path=HUB_ID)


def _lm_head(edit: Callable[[torch.Tensor], object]) -> Callable[[Path], None]:
    return lambda work: _weights(work, lambda s: edit(s["lm_head.weight"]))


CASES = [
    HostileCase("empty-model-dir", VALIDATE, 2, "model is empty; a transformers checkpoint",
                _empty),
    HostileCase("config-json-missing", VALIDATE, 2, "model has no config.json",
                lambda w: (w / "model" / "config.json").unlink()),
    HostileCase("config-json-not-json", VALIDATE, 2, "config.json is not readable JSON",
                lambda w: (w / "model" / "config.json").write_text('{"model_type": "llama",')),
    HostileCase("config-json-a-list", VALIDATE, 2, "config.json holds a JSON list, not an object",
                lambda w: (w / "model" / "config.json").write_text('[{"model_type": "llama"}]')),
    HostileCase("config-json-without-model-type", VALIDATE, 2, "config.json has no model_type",
                lambda w: _config(w, lambda c: c.pop("model_type"))),
    HostileCase("config-json-unknown-model-type", VALIDATE, 2,
                "model_type 'frobnitz' is not known to transformers",
                lambda w: _config(w, lambda c: c.update(model_type="frobnitz"))),
    HostileCase("bert-checkpoint", VALIDATE, 2,
                "config.json: architecture BertModel is not a causal language model", _bert),
    HostileCase("t5-seq2seq-checkpoint", VALIDATE, 2,
                "architecture T5ForConditionalGeneration is not a causal language model", _t5),
    HostileCase("remote-code-broken-module", VALIDATE, 2,
                "own code (trust_remote_code) failed while loading the config of",
                _remote_code("modeling_broken", BROKEN_MODULE)),
    HostileCase("remote-code-missing-package", VALIDATE, 4,
                "needs a package that is not installed",
                _remote_code("modeling_needs_package", NEEDS_PACKAGE)),
    HostileCase("gguf-junk-after-magic", VALIDATE, 2,
                "tiny.gguf is not a readable GGUF file (truncated or corrupt)",
                _gguf(lambda raw: raw[:8] + bytes(range(256)) * 8)),
    HostileCase("gguf-truncated", VALIDATE, 2,
                "tiny.gguf is not a readable GGUF file (truncated or corrupt)",
                _gguf(lambda raw: raw[: len(raw) // 2])),
    HostileCase("safetensors-truncated", RUN, 2,
                "model.safetensors is not a readable safetensors file (truncated or corrupt)",
                lambda w: _bytes(w, lambda raw: raw[: len(raw) // 2])),
    HostileCase("safetensors-header-corrupted", RUN, 2, "invalid JSON in header",
                lambda w: _bytes(w, lambda raw: raw[:8] + b"#" * 32 + raw[40:])),
    HostileCase("safetensors-zero-bytes", RUN, 2,
                "model.safetensors is not a readable safetensors file", lambda w: _bytes(
                    w, lambda raw: b"")),
    HostileCase("safetensors-unknown-dtype", RUN, 2, "unknown variant `X99`",
                lambda w: _header(w, lambda h: h["lm_head.weight"].update(dtype="X99"))),
    HostileCase("safetensors-dtype-size-mismatch", RUN, 2,
                "invalid shape, data type, or offset for tensor",
                lambda w: _header(w, lambda h: h["lm_head.weight"].update(dtype="U8"))),
    HostileCase("flipped-bytes-nan-weights", RUN, 2,
                "holds NaN or Inf values; the weight file is corrupt",
                lambda w: _bytes(w, _nan_block)),
    HostileCase("huge-weights-overflow-perplexity", RUN, 2, "so its perplexity overflows",
                _lm_head(lambda w: w.mul_(1e30))),
    HostileCase("huge-weights-inf-logits", RUN, 2, "the model's logits are NaN or Inf",
                _lm_head(lambda w: w.fill_(3e38))),
    HostileCase("lm-head-missing", RUN, 2,
                "lack 1 tensor(s) that LlamaForCausalLM needs (lm_head.weight); transformers "
                "would initialise them at random",
                lambda w: _weights(w, lambda s: s.pop("lm_head.weight"))),
    HostileCase("layer-weight-missing", RUN, 2, "(model.layers.1.mlp.up_proj.weight)",
                lambda w: _weights(w, lambda s: s.pop("model.layers.1.mlp.up_proj.weight"))),
    HostileCase("unexpected-weight", RUN, 2,
                "1 tensor(s) that LlamaForCausalLM does not use (model.extra.weight)",
                lambda w: _weights(w, lambda s: s.update({"model.extra.weight": torch.ones(3)}))),
    HostileCase("weight-of-the-wrong-shape", RUN, 2, "tensors of the wrong shape (lm_head.weight)",
                lambda w: _weights(w, lambda s: s.update({"lm_head.weight": torch.ones(3, 3)}))),
    HostileCase("no-weight-files", RUN, 2, "holds no weight files",
                lambda w: (w / WEIGHTS).unlink()),
    HostileCase("pickle-only-weights", RUN, 2, "set model: {allow_pickle: true} in the pipeline",
                _pickle_only),
    HostileCase("hub-id-offline", RUN, 4, "is not in the local Hugging Face cache and the hub "
                "cannot be used: HF_HUB_OFFLINE is set", _hub, env=(("HF_HUB_OFFLINE", "1"),)),
]


@pytest.fixture(autouse=True)
def private_modules_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """transformers copies a checkpoint's own code into HF_MODULES_CACHE (read at import time):
    point it at a folder of this session, not the user's home."""
    import transformers.dynamic_module_utils as dynamic

    folder = tmp_path_factory.getbasetemp() / "hf-modules"
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(folder))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_hostile_model(case: HostileCase, workdir: Path, write_pipeline, monkeypatch,
                       request: pytest.FixtureRequest):
    write_pipeline()
    if case.id.startswith("gguf"):
        gguf = request.getfixturevalue("tiny_llama_gguf")
        (workdir / "tiny.gguf").write_bytes(gguf.read_bytes())
    check_case(case, workdir, monkeypatch)


def test_missing_gguf_package_exits_4_with_the_install_command(workdir, write_pipeline,
                                                              tiny_llama_gguf, monkeypatch):
    write_pipeline()
    (workdir / "tiny.gguf").write_bytes(tiny_llama_gguf.read_bytes())
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now raises ImportError
    case = HostileCase("gguf-package-missing", VALIDATE, 4, "pip install 'gguf>=0.10'",
                       _gguf(lambda raw: raw))
    check_case(case, workdir, monkeypatch)


def _json(*args: str) -> dict:
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_an_overwritten_memo_does_not_lend_one_model_anothers_cache(workdir, write_pipeline,
                                                                     isolated_cache):
    first = write_pipeline()
    second = write_pipeline("second.yaml", model={"path": "other"})
    (workdir / "other").mkdir()
    for file in (workdir / "model").iterdir():
        (workdir / "other" / file.name).write_bytes(file.read_bytes())
    _weights(workdir, lambda s: s["lm_head.weight"].mul_(3))  # the first model's weights differ

    memos = isolated_cache / "fingerprints"
    dense = _json("run", str(first), "--out", str(workdir / "out-1"), "--quiet")
    (theirs,) = memos.iterdir()
    _json("plan", str(second))  # memoises the second model's weight hash
    (ours,) = set(memos.iterdir()) - {theirs}
    ours.write_text(theirs.read_text())  # the second model's memo now says the first's hash
    clear_fingerprint_cache()  # as in a new process: only the memo on disk is left

    again = _json("run", str(second), "--out", str(workdir / "out-2"), "--quiet")
    stages = {stage["name"]: stage for stage in again["stages"]}
    assert stages["evaluate-dense"]["cache"] == "miss"
    assert again["model"]["fingerprint"] != dense["model"]["fingerprint"]
    assert again["metrics"]["perplexity"]["dense"] != dense["metrics"]["perplexity"]["dense"]


class _MissingRepoHub(http.server.BaseHTTPRequestHandler):
    """A hub that answers every request with "repository not found"."""

    def do_HEAD(self) -> None:
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("X-Error-Message", "Repository not found")
        self.end_headers()

    do_GET = do_HEAD

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def missing_repo_hub() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MissingRepoHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize(("endpoint", "code", "phrase"), [
    ("http://127.0.0.1:9", 4, "the hub cannot be used: http://127.0.0.1:9 did not answer"),
    ("missing-repo-hub", 2, f"hub model '{HUB_ID}' does not exist"),
], ids=["connection-refused", "repository-not-found"])
def test_hub_failures_are_fast_and_mapped(endpoint, code, phrase, workdir, write_pipeline,
                                          isolated_cache, request: pytest.FixtureRequest):
    """HF_ENDPOINT is read when huggingface_hub is imported, so the CLI runs in a child."""
    if endpoint == "missing-repo-hub":
        endpoint = request.getfixturevalue("missing_repo_hub")
    write_pipeline()
    _hub(workdir)
    env = {key: value for key, value in os.environ.items()
           if key not in {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"}}
    env |= {"HF_ENDPOINT": endpoint, "HF_HOME": str(isolated_cache / "hf"),
            "WANDA_EXPORT_CACHE": str(isolated_cache)}
    before = tree_digest(workdir, skip=("cache",))
    started = time.perf_counter()
    child = subprocess.run(
        [sys.executable, "-m", "wanda_export", "run", str(workdir / "pipeline.yaml"), "--out",
         str(workdir / "out"), "--quiet"],
        env=env, capture_output=True, text=True, timeout=120, check=False)
    elapsed = time.perf_counter() - started
    assert child.returncode == code, child.stderr
    assert phrase in " ".join(child.stderr.split()), child.stderr
    assert "Traceback" not in child.stderr
    assert elapsed < 20, f"took {elapsed:.1f} s; huggingface_hub's retries take 25 s or more"
    assert tree_digest(workdir, skip=("cache",)) == before
