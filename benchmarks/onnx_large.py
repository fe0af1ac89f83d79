"""The ONNX export of a checkpoint larger than the memory limit: onnxruntime-genai's builder
reads the safetensors shards memory-mapped, and the in-file verification reads one initializer
and one checkpoint tensor at a time (issue 12). Run it inside a memory cgroup:

    python benchmarks/cgroup_run.py 1932735283 -- python benchmarks/onnx_large.py \\
        /tmp/random-llama-5g /tmp/random-llama-5g-onnx

(the checkpoint from `python benchmarks/make_random_checkpoint.py /tmp/random-llama-5g`; it is
unpruned, so the check is that every linear is found in the file with its zeros, here none).
Prints the export and verification seconds, the linears verified and the peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

from wanda_export.export.onnx_genai import export_genai
from wanda_export.export.onnx_verify import verify_onnx
from wanda_export.model.layers import find_targets
from wanda_export.model.streaming import StreamedCheckpoint
from wanda_export.sparsity.pattern import Pattern


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    exported = export_genai(args.checkpoint, args.out)
    checkpoint = StreamedCheckpoint(args.checkpoint)

    def reference(target):
        source = checkpoint.source_name(f"{target.name}.weight")
        return checkpoint.read([source])[source]

    start = time.perf_counter()
    verification = verify_onnx(exported.path, find_targets(checkpoint.model), Pattern(),
                               reference)
    print(json.dumps({
        "export_seconds": exported.seconds, "verify_seconds": time.perf_counter() - start,
        "linears": len(verification.layers), "valid": verification.valid,
        "onnx_data_bytes": (args.out / "model.onnx.data").stat().st_size,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


if __name__ == "__main__":
    main()
