"""Tests of the on-disk cache: key identity, atomic and checksummed entries, multi-process safety."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from safetensors.torch import load_file

from wanda_export.cache import CacheStore, CalibrationKey, digest_of, plan_digest
from wanda_export.cache.keys import COLLECTOR_VERSION, canonical_json, esd_alphas_key
from wanda_export.cache.store import MANIFEST_FILE, PIPELINE_KINDS, TENSORS_FILE
from wanda_export.errors import ConfigError, EnvironmentProblem

REPO_ROOT = Path(__file__).resolve().parents[2]
KIND = "stats"
KEY = digest_of({"test": "key"})
OTHER_KEY = digest_of({"test": "other"})
RECORD = {"test": "key"}

PLAN = plan_digest("wanda", 0.5, "unstructured", "row")
BASE_KEY = CalibrationKey(
    model_fingerprint="sha256:" + "ab" * 32,
    calibration_digest="cd" * 32,
    nsamples=128,
    seqlen=2048,
    seed=0,
    dtype="float32",
    mode="sequential",
    targets=("model.layers.0.mlp.down_proj", "model.layers.0.self_attn.q_proj"),
    plan_digest=PLAN,
)
# Hard-coded on purpose: a change here means every existing cache entry stops matching. Update
# only together with a deliberate record change (and COLLECTOR_VERSION if the meaning changed).
EXPECTED_PLAN_DIGEST = "f782b6f458dec650146cce4a39cfd7ea7f6ebe88551bc39c871725cff74c1dad"
EXPECTED_BASE_DIGEST = "d49f4136d348c3bfea0dc7900852fd8d801b68aabc9a09011b230405be865890"

# Run in child processes: `put-slow` blocks inside put() just before the manifest is written;
# `compete` waits for its sibling, then calls get_or_compute on the shared key.
CHILD = r"""
import sys, time
from pathlib import Path
import torch
from safetensors.torch import save_file
from wanda_export.cache import store as store_mod
from wanda_export.cache.store import CacheStore

mode, root, key, work = sys.argv[1], Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])

def compute():
    with open(work / "computed.log", "a") as log:
        log.write("computed\n")
    time.sleep(0.5)
    return {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "n": torch.tensor([7])}

if mode == "put-slow":
    real_write = store_mod.write_new_file
    def slow_write(path, data):
        if path.name == store_mod.MANIFEST_FILE:
            (work / "writing").write_text(str(path.parent))
            time.sleep(60)
        real_write(path, data)
    store_mod.write_new_file = slow_write
    CacheStore(root).put("stats", key, compute(), record={"k": 1})
else:
    name = sys.argv[5]
    (work / f"ready-{name}").touch()
    deadline = time.time() + 30
    while len(list(work.glob("ready-*"))) < 2 and time.time() < deadline:
        time.sleep(0.01)
    tensors, hit = CacheStore(root).get_or_compute("stats", key, compute, record={"k": 1})
    save_file(tensors, str(work / f"out-{name}.safetensors"))
    print("hit" if hit else "miss")
"""


def sample_tensors() -> dict[str, torch.Tensor]:
    """A few tensors of different dtypes and shapes, with values that round-trip exactly."""
    generator = torch.Generator().manual_seed(0)
    return {
        "a.sumsq": torch.rand(17, generator=generator),
        "a.tokens": torch.tensor([4096], dtype=torch.int64),
        "b.half": torch.rand(3, 5, generator=generator).to(torch.float16),
        "b.bf16": torch.rand(2, 2, generator=generator).to(torch.bfloat16),
        "c.mask": torch.tensor([True, False, True]),
    }


def assert_same(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    """Exact equality of two tensor dicts: names, dtypes, shapes and values."""
    assert sorted(left) == sorted(right)
    for name, value in left.items():
        assert value.dtype == right[name].dtype, name
        assert torch.equal(value, right[name]), name


class Counter:
    """A compute function that counts its calls."""

    def __init__(self, tensors: dict[str, torch.Tensor] | None = None) -> None:
        self.calls = 0
        self.tensors = tensors if tensors is not None else sample_tensors()

    def __call__(self) -> dict[str, torch.Tensor]:
        self.calls += 1
        return self.tensors


@pytest.fixture
def store(tmp_path: Path) -> CacheStore:
    return CacheStore(tmp_path / "cache")


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


# --- keys -------------------------------------------------------------------------------------


def test_calibration_key_is_stable_hard_coded() -> None:
    assert PLAN == EXPECTED_PLAN_DIGEST
    assert BASE_KEY.digest() == EXPECTED_BASE_DIGEST
    assert BASE_KEY.digest() == digest_of(BASE_KEY.record())


def test_canonical_json_is_sorted_and_compact() -> None:
    assert canonical_json({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'


def test_every_included_field_changes_the_key() -> None:
    changed = {
        "model_fingerprint": "sha256:" + "ef" * 32,
        "calibration_digest": "00" * 32,
        "nsamples": 64,
        "seqlen": 1024,
        "seed": 1,
        "dtype": "bfloat16",
        "mode": "dense",
        "targets": ("model.layers.0.mlp.down_proj",),
        "collector_version": COLLECTOR_VERSION + 1,
        "plan_digest": plan_digest("wanda", 0.6, "unstructured", "row"),
        "hessian": True,
        "means": True,
    }
    assert set(changed) == {field.name for field in dataclasses.fields(CalibrationKey)}
    digests = {BASE_KEY.digest()}
    for name, value in changed.items():
        digest = dataclasses.replace(BASE_KEY, **{name: value}).digest()
        assert digest not in digests, name
        digests.add(digest)


def test_excluded_inputs_do_not_change_the_key() -> None:
    dense = dataclasses.replace(BASE_KEY, mode="dense")
    for plan in (None, PLAN, plan_digest("magnitude", 0.7, "2:4", "layer")):
        assert dataclasses.replace(dense, plan_digest=plan).digest() == dense.digest()
    assert dense.record()["plan_digest"] is None
    shuffled = dataclasses.replace(BASE_KEY, targets=tuple(reversed(BASE_KEY.targets)))
    assert shuffled.digest() == BASE_KEY.digest()
    as_list = dataclasses.replace(BASE_KEY, targets=list(BASE_KEY.targets))
    assert as_list.digest() == BASE_KEY.digest()
    assert set(BASE_KEY.record()) == {
        "schema",
        "model_fingerprint",
        "calibration_digest",
        "nsamples",
        "seqlen",
        "seed",
        "dtype",
        "mode",
        "targets",
        "collector_version",
        "plan_digest",
    }


def test_plan_digest_depends_on_each_argument() -> None:
    variants = [
        ("wanda", 0.5, "unstructured", "row"),
        ("magnitude", 0.5, "unstructured", "row"),
        ("wanda", 0.6, "unstructured", "row"),
        ("wanda", 0.5, "2:4", "row"),
        ("wanda", 0.5, "unstructured", "layer"),
    ]
    assert len({plan_digest(*variant) for variant in variants}) == len(variants)
    assert plan_digest("wanda", 1, "2:4", "row") == plan_digest("wanda", 1.0, "2:4", "row")


def test_fields_added_later_keep_the_earlier_keys() -> None:
    """hessian=False and empty plan settings leave the record as before they existed, so cache
    entries written by earlier versions still hit; any value of theirs changes the key."""
    assert "hessian" not in BASE_KEY.record()
    assert plan_digest("wanda", 0.5, "unstructured", "row", {}) == plan_digest(
        "wanda", 0.5, "unstructured", "row")
    settings = [{"allocation": {"method": "owl", "owl_lambda": 0.08}},
                {"allocation": {"method": "owl", "owl_lambda": 0.1}},
                {"sparsegpt": {"dampening": 0.01, "block_size": 128}}]
    digests = {plan_digest("wanda", 0.5, "unstructured", "row", s) for s in settings}
    assert len(digests | {plan_digest("wanda", 0.5, "unstructured", "row")}) == 4


def test_alpha_key_depends_on_weights_targets_and_xmin_only() -> None:
    base = esd_alphas_key("sha256:aa", ["b", "a"], "ks")
    assert base == esd_alphas_key("sha256:aa", ["a", "b"], "ks")
    others = {esd_alphas_key("sha256:bb", ["a", "b"], "ks"), esd_alphas_key("sha256:aa", ["a"], "ks"),
              esd_alphas_key("sha256:aa", ["a", "b"], "median")}
    assert base not in others and len(others) == 3


# --- store: basics ----------------------------------------------------------------------------


def test_put_get_round_trip_is_exact(store: CacheStore) -> None:
    tensors = sample_tensors()
    path = store.put(KIND, KEY, tensors, RECORD, metadata={"model": "tiny"})
    assert path == store.root / KIND / KEY[:2] / KEY
    assert sorted(p.name for p in path.iterdir()) == [MANIFEST_FILE, TENSORS_FILE]
    assert_same(store.get(KIND, KEY), tensors)
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    assert manifest["kind"] == KIND and manifest["key"] == KEY
    assert manifest["record"] == RECORD and manifest["metadata"] == {"model": "tiny"}
    assert manifest["tensor_count"] == len(tensors)
    assert manifest["bytes"] == (path / TENSORS_FILE).stat().st_size
    assert len(manifest["sha256"]) == 64 and manifest["format"] == 1
    assert datetime.fromisoformat(manifest["created"]).tzinfo is not None


def test_round_trip_of_activation_statistics(store: CacheStore) -> None:
    from wanda_export.calibrate.stats import ChannelStats, stats_from_tensors, stats_to_tensors

    stats = {"model.layers.0.mlp.up_proj": ChannelStats(torch.rand(8), tokens=300)}
    store.put(KIND, KEY, stats_to_tensors(stats), RECORD)
    loaded = stats_from_tensors(store.get(KIND, KEY))
    assert loaded.keys() == stats.keys()
    entry = loaded["model.layers.0.mlp.up_proj"]
    assert entry.tokens == 300 and torch.equal(
        entry.sumsq, stats["model.layers.0.mlp.up_proj"].sumsq
    )


def test_miss_returns_none(store: CacheStore) -> None:
    assert store.get(KIND, KEY) is None
    assert store.entries() == []


def test_get_or_compute_computes_once_then_hits(store: CacheStore) -> None:
    compute = Counter()
    first, hit = store.get_or_compute(KIND, KEY, compute, RECORD)
    assert not hit and compute.calls == 1
    second, hit = store.get_or_compute(KIND, KEY, compute, RECORD)
    assert hit and compute.calls == 1
    assert_same(first, second)


def test_put_keeps_an_existing_valid_entry(store: CacheStore) -> None:
    store.put(KIND, KEY, sample_tensors(), RECORD)
    store.put(KIND, KEY, {"other": torch.zeros(2)}, RECORD)
    assert_same(store.get(KIND, KEY), sample_tensors())
    assert [p.name for p in (store.root / KIND / KEY[:2]).iterdir()] == [KEY]


def test_failing_compute_leaves_nothing_and_releases_the_lock(store: CacheStore) -> None:
    def boom() -> dict[str, torch.Tensor]:
        raise RuntimeError("compute failed")

    with pytest.raises(RuntimeError, match="compute failed"):
        store.get_or_compute(KIND, KEY, boom, RECORD)
    assert store.get(KIND, KEY) is None
    _, hit = store.get_or_compute(KIND, KEY, Counter(), RECORD)
    assert not hit


def test_invalid_kind_or_key_is_rejected(store: CacheStore) -> None:
    with pytest.raises(ValueError, match="kind"):
        store.get("../etc", KEY)
    with pytest.raises(ValueError, match="key"):
        store.get(KIND, "not-a-digest")


def test_cache_env_var_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDA_EXPORT_CACHE", str(tmp_path / "env-cache"))
    store = CacheStore()
    assert store.root == tmp_path / "env-cache"
    assert store.put(KIND, KEY, sample_tensors(), RECORD).is_relative_to(tmp_path / "env-cache")


def test_lock_timeout_is_an_environment_problem(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "cache", lock_timeout=0.05)
    store.lock_path(KIND, KEY).parent.mkdir(parents=True)
    lock = FileLock(str(store.lock_path(KIND, KEY)))
    with lock, pytest.raises(EnvironmentProblem, match="cache lock"):
        store.get_or_compute(KIND, KEY, Counter(), RECORD)


# --- store: corruption ------------------------------------------------------------------------


def test_corrupt_tensors_file_is_reported_removed_and_recomputed(
    store: CacheStore, caplog: pytest.LogCaptureFixture
) -> None:
    path = store.put(KIND, KEY, sample_tensors(), RECORD)
    tensors_file = path / TENSORS_FILE
    data = bytearray(tensors_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tensors_file.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="wanda_export.cache"):
        assert store.get(KIND, KEY) is None
    assert any(KEY in r.getMessage() and "sha256" in r.getMessage() for r in caplog.records)
    assert not path.exists()
    compute = Counter()
    _, hit = store.get_or_compute(KIND, KEY, compute, RECORD)
    assert not hit and compute.calls == 1
    assert_same(store.get(KIND, KEY), sample_tensors())


def _wrong_sha(manifest_file: Path) -> None:
    manifest = json.loads(manifest_file.read_text())
    manifest["sha256"] = "0" * 64
    manifest_file.write_text(json.dumps(manifest))


def _truncated(manifest_file: Path) -> None:
    text = manifest_file.read_text()
    manifest_file.write_text(text[: len(text) // 2])


def _other_key(manifest_file: Path) -> None:
    manifest = json.loads(manifest_file.read_text())
    manifest["key"] = OTHER_KEY
    manifest_file.write_text(json.dumps(manifest))


def _future_format(manifest_file: Path) -> None:
    manifest = json.loads(manifest_file.read_text())
    manifest["format"] = 99
    manifest_file.write_text(json.dumps(manifest))


def _no_manifest(manifest_file: Path) -> None:
    manifest_file.unlink()


def _no_tensors(manifest_file: Path) -> None:
    (manifest_file.parent / TENSORS_FILE).unlink()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_wrong_sha, "sha256"),
        (_truncated, "not valid JSON"),
        (_other_key, "manifest is for"),
        (_future_format, "format"),
        (_no_manifest, "missing file"),
        (_no_tensors, "missing file"),
    ],
)
def test_bad_manifest_is_reported_removed_and_recomputed(
    store: CacheStore, caplog: pytest.LogCaptureFixture, damage, reason: str
) -> None:
    path = store.put(KIND, KEY, sample_tensors(), RECORD)
    damage(path / MANIFEST_FILE)
    with caplog.at_level(logging.WARNING, logger="wanda_export.cache"):
        assert store.get(KIND, KEY) is None
    messages = [r.getMessage() for r in caplog.records if r.name == "wanda_export.cache"]
    assert any(KEY in m and reason in m for m in messages), messages
    assert not path.exists()
    compute = Counter()
    _, hit = store.get_or_compute(KIND, KEY, compute, RECORD)
    assert not hit and compute.calls == 1


# --- store: temp dirs and killed writers ------------------------------------------------------


def _fake_temp_dir(store: CacheStore, key: str, age_s: float = 0.0) -> Path:
    """A temp dir like the one a killed writer leaves: tensors written, manifest half-written."""
    temp = store.root / KIND / key[:2] / f".{key}.tmp-dead"
    temp.mkdir(parents=True)
    (temp / TENSORS_FILE).write_bytes(b"partial")
    (temp / MANIFEST_FILE).write_text('{"kind": "st')
    if age_s:
        past = time.time() - age_s
        os.utime(temp, (past, past))
    return temp


def _assert_recomputed_and_swept(store: CacheStore, temp: Path) -> None:
    """A miss computes once, publishes a valid entry, and removes the leftover temp dir."""
    compute = Counter()
    _, hit = store.get_or_compute(KIND, KEY, compute, RECORD)
    assert not hit and compute.calls == 1
    assert not temp.exists()
    assert_same(store.get(KIND, KEY), sample_tensors())


def test_stale_temp_dir_is_invisible_and_cleaned(store: CacheStore) -> None:
    temp = _fake_temp_dir(store, KEY)
    assert store.get(KIND, KEY) is None
    assert store.entries() == []
    _assert_recomputed_and_swept(store, temp)


def test_old_temp_dirs_of_other_keys_are_swept(store: CacheStore) -> None:
    old = _fake_temp_dir(store, KEY[:2] + "0" * 62, age_s=2 * 3600)  # same bucket as KEY
    young = _fake_temp_dir(store, KEY[:2] + "f" * 62)
    store.put(KIND, KEY, sample_tensors(), RECORD)
    assert not old.exists()
    assert young.exists()  # might belong to a live writer of another key


def test_sigkill_during_put_leaves_no_entry(store: CacheStore, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    args = [sys.executable, "-c", CHILD, "put-slow", str(store.root), KEY, str(work)]
    child = subprocess.Popen(args, env=child_env(), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (work / "writing").exists():
            assert child.poll() is None, child.stderr.read()
            assert time.monotonic() < deadline, "child never reached the manifest write"
            time.sleep(0.02)
        temp = Path((work / "writing").read_text())
        assert temp.name.startswith(f".{KEY}.tmp-") and (temp / TENSORS_FILE).exists()
        assert not store.entry_dir(KIND, KEY).exists()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    assert not store.entry_dir(KIND, KEY).exists()
    assert store.get(KIND, KEY) is None
    assert store.entries() == []
    _assert_recomputed_and_swept(store, temp)


def test_two_processes_compute_once(store: CacheStore, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, "compete", str(store.root), KEY, str(work), name],
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    outputs = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        outputs.append(out.strip())
    assert sorted(outputs) == ["hit", "miss"]
    assert (work / "computed.log").read_text().splitlines() == ["computed"]
    assert_same(load_file(work / "out-a.safetensors"), load_file(work / "out-b.safetensors"))
    assert_same(store.get(KIND, KEY), load_file(work / "out-a.safetensors"))


# --- store: listing and clearing --------------------------------------------------------------


def test_entries_lists_valid_entries_and_skips_corrupt_ones(
    store: CacheStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.put(KIND, KEY, sample_tensors(), RECORD, metadata={"model": "tiny"})
    store.put("other", OTHER_KEY, {"x": torch.ones(3)}, {"r": 2})
    broken = store.put(KIND, OTHER_KEY, {"x": torch.ones(3)}, {"r": 3})
    (broken / MANIFEST_FILE).write_text("{")
    _fake_temp_dir(store, KEY)
    with caplog.at_level(logging.WARNING, logger="wanda_export.cache"):
        listed = store.entries()
    assert [(info.kind, info.key) for info in listed] == [("other", OTHER_KEY), (KIND, KEY)]
    info = listed[1]
    assert info.path == store.entry_dir(KIND, KEY) and info.metadata == {"model": "tiny"}
    assert info.bytes == sum(p.stat().st_size for p in info.path.iterdir())
    assert abs(datetime.now(UTC) - info.created) < timedelta(minutes=5)
    assert any(OTHER_KEY in r.getMessage() for r in caplog.records)


def test_clear_by_kind_and_all(store: CacheStore) -> None:
    assert store.clear() == 0  # no root yet
    store.put(KIND, KEY, sample_tensors(), RECORD)
    broken = store.put(KIND, OTHER_KEY, {"x": torch.ones(3)}, {"r": 3})
    (broken / TENSORS_FILE).write_bytes(b"junk")
    store.put("other", KEY, {"x": torch.ones(3)}, {"r": 2})
    stray = _fake_temp_dir(store, KEY)
    assert store.clear(KIND) == 2
    assert not stray.exists()
    assert [(info.kind, info.key) for info in store.entries()] == [("other", KEY)]
    assert store.clear() == 1
    assert store.entries() == []
    assert store.get("other", KEY) is None


def test_clear_refuses_a_kind_it_does_not_know(store: CacheStore) -> None:
    store.put(KIND, KEY, sample_tensors(), RECORD)
    assert store.kinds() == sorted({*PIPELINE_KINDS, KIND})
    assert store.clear("alphas") == 0  # a pipeline kind with no entry yet is fine
    with pytest.raises(ConfigError, match="'stat' is unknown.*did you mean 'stats'"):
        store.clear("stat")
    with pytest.raises(ConfigError, match="not a kind name"):
        store.clear("../../etc")
    assert store.get(KIND, KEY) is not None


def test_clear_spares_the_temp_dir_of_a_live_writer(store: CacheStore) -> None:
    live = _fake_temp_dir(store, KEY)
    dead = _fake_temp_dir(store, OTHER_KEY)
    with FileLock(str(store.lock_path(KIND, KEY))):
        assert store.clear() == 0
        assert live.exists()
    assert not dead.exists()
    store.clear()
    assert not live.exists()
