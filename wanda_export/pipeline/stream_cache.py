"""The per-layer cache of a streamed prune: each decoder layer's pruned tensors and
verification are cached as the layer is done, with the hidden states that feed the next layer
(only the latest such entry is kept), so a run killed at layer k starts again at layer k and
writes the same checkpoint as a run that was never interrupted.
"""

from __future__ import annotations

import torch

from wanda_export.cache.keys import digest_of
from wanda_export.cache.store import STREAM_HIDDEN, STREAM_LAYER, CacheStore
from wanda_export.sparsity.verify import LayerSparsity
from wanda_export.stream.prune import LayerOutput

# Bump when what a cached layer holds, or how it is computed, changes.
LAYER_CACHE_VERSION = 1
_REPORT = "report."
_HIDDEN = "hidden."


class LayerCache:
    """The cached layers of one streamed prune, all keyed from one record (`base`: the weights,
    the pruning settings, the calibration tokens, the targets and their ratios)."""

    def __init__(self, cache: CacheStore, base: dict) -> None:
        self.cache = cache
        self.base = {**base, "version": LAYER_CACHE_VERSION}

    def key(self, kind: str, index: int) -> str:
        """The key of layer `index`'s entry of `kind`."""
        return digest_of({**self.base, "kind": kind, "layer": index})

    def resume_point(self, layers: int, needs_hidden: bool
                     ) -> tuple[int, list[torch.Tensor] | None]:
        """How many leading layers are cached, and the hidden states that feed the next one;
        (0, None) when there is nothing to resume from."""
        done = 0
        while done < layers and self.cache.contains(STREAM_LAYER, self.key(STREAM_LAYER, done)):
            done += 1
        if done in (0, layers) or not needs_hidden:
            return done, None
        tensors = self.cache.get(STREAM_HIDDEN, self.key(STREAM_HIDDEN, done - 1))
        if tensors is None:
            return 0, None
        return done, [tensors[f"{_HIDDEN}{i}"] for i in range(len(tensors))]

    def load(self, index: int) -> tuple[dict[str, torch.Tensor], dict[str, LayerSparsity]]:
        """Layer `index`'s pruned tensors (checkpoint names) and its targets' verification."""
        key = self.key(STREAM_LAYER, index)
        tensors = self.cache.get(STREAM_LAYER, key)
        if tensors is None:
            raise FileNotFoundError(f"cached layer {index} vanished from the cache")
        weights = {name: value for name, value in tensors.items()
                   if not name.startswith(_REPORT)}
        report = {}
        for name, value in tensors.items():
            if name.startswith(_REPORT):
                zeros, numel, valid, violating = (int(v) for v in value[:4])
                report[name[len(_REPORT):]] = LayerSparsity(
                    zeros=zeros, numel=numel, pattern=self.base["pattern"], valid=bool(valid),
                    violating_groups=violating)
        return weights, report

    def store(self, output: LayerOutput) -> None:
        """Cache one finished layer; its hidden states replace the previous layer's."""
        report = {f"{_REPORT}{name}": torch.tensor([layer.zeros, layer.numel, int(layer.valid),
                                                    layer.violating_groups])
                  for name, layer in output.report.layers.items()}
        key = self.key(STREAM_LAYER, output.index)
        self.cache.put(STREAM_LAYER, key, {**output.tensors, **report},
                       {"schema": STREAM_LAYER, "key": key})
        if output.hidden is not None:
            hidden_key = self.key(STREAM_HIDDEN, output.index)
            self.cache.put(STREAM_HIDDEN, hidden_key,
                           {f"{_HIDDEN}{i}": h for i, h in enumerate(output.hidden)},
                           {"schema": STREAM_HIDDEN, "key": hidden_key})
        if output.index > 0:
            self.cache.remove(STREAM_HIDDEN, self.key(STREAM_HIDDEN, output.index - 1))
