"""Latency measurement for the benchmark stage: timing, runtimes, shapes, ONNX and torch runs."""
