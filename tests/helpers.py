"""Test helpers: tiny random checkpoints of several families, built offline, a tiny GGUF writer,
an onnxruntime-genai folder built from a checkpoint, and the CLI run in-process.

Nothing here downloads: configs come from transformers' config classes, the tokenizer from the
``tokenizers`` library, the GGUF file from the ``gguf`` package's writer.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from click.testing import Result

TINY_FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "phi3", "gpt2", "opt"]

VOCAB_SIZE = 256
HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
INTERMEDIATE = 128
MAX_POSITIONS = 256
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]


def invoke(*args: str) -> Result:
    """Run the wanda-export CLI in-process with `args`; exceptions propagate (a traceback fails
    the test instead of passing as exit code 1)."""
    from typer.testing import CliRunner

    from wanda_export.cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def tiny_config(family: str) -> Any:
    """Build a tiny but valid config of ``family`` with in-vocab special token ids."""
    from transformers import AutoConfig

    ids = {"pad_token_id": PAD_ID, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID}
    if family == "gpt2":
        return AutoConfig.for_model(
            "gpt2",
            n_embd=HIDDEN,
            n_layer=LAYERS,
            n_head=HEADS,
            n_inner=INTERMEDIATE,
            vocab_size=VOCAB_SIZE,
            n_positions=MAX_POSITIONS,
            **ids,
        )
    if family == "opt":
        return AutoConfig.for_model(
            "opt",
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            ffn_dim=INTERMEDIATE,
            vocab_size=VOCAB_SIZE,
            max_position_embeddings=MAX_POSITIONS,
            word_embed_proj_dim=HIDDEN,
            **ids,
        )
    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; known: {TINY_FAMILIES}")
    extra = {"head_dim": HIDDEN // HEADS} if family == "qwen3" else {}
    return AutoConfig.for_model(
        family,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=MAX_POSITIONS,
        **ids,
        **extra,
    )


def byte_vocab() -> list[str]:
    """The tiny vocabulary: 4 specials, then byte-level symbols for bytes 0..251.

    Bytes 0xFC..0xFF never occur in UTF-8, so every text still encodes without <unk>.
    """
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet(), key=_byte_of)
    return SPECIAL_TOKENS + alphabet[: VOCAB_SIZE - len(SPECIAL_TOKENS)]


def _byte_of(symbol: str) -> int:
    """Invert GPT-2's bytes_to_unicode for one symbol."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    code = ord(symbol)
    if code in printable:
        return code
    others = [b for b in range(256) if b not in printable]
    return others[code - 256]


def tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer (no merges) over :func:`byte_vocab`, with pad/bos/eos/unk."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(byte_vocab())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=MAX_POSITIONS,
    )


def build_tiny_model_dir(family: str, out: Path) -> Path:
    """Save a seeded tiny random ``family`` model (safetensors) plus tokenizer into ``out``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(family), dtype=torch.float32)
    model.save_pretrained(out)
    tiny_tokenizer().save_pretrained(out)
    return out


def _permute_for_gguf(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's q/k row permutation (the inverse of what transformers undoes on load)."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_tiny_llama_gguf(model_dir: Path, out: Path) -> Path:
    """Write the tiny llama checkpoint in ``model_dir`` as an F32 GGUF file at ``out``."""
    import gguf
    from safetensors.torch import load_file
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    state = load_file(str(model_dir / "model.safetensors"))
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    vocab = byte_vocab()
    writer.add_token_list(vocab)
    writer.add_token_types(
        [gguf.TokenType.CONTROL] * len(SPECIAL_TOKENS)
        + [gguf.TokenType.NORMAL] * (len(vocab) - len(SPECIAL_TOKENS))
    )
    writer.add_token_scores([0.0] * len(vocab))
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_pad_token_id(PAD_ID)
    writer.add_unk_token_id(UNK_ID)
    for name, tensor in _llama_gguf_tensors(state, config).items():
        writer.add_tensor(name, tensor.float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _llama_gguf_tensors(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """Rename (and permute q/k of) a llama state dict to llama.cpp tensor names."""
    names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    tensors = {
        "token_embd.weight": state["model.embed_tokens.weight"],
        "output_norm.weight": state["model.norm.weight"],
    }
    if "lm_head.weight" in state and not config.tie_word_embeddings:
        tensors["output.weight"] = state["lm_head.weight"]
    for layer in range(config.num_hidden_layers):
        for hf_name, gguf_name in names.items():
            weight = state[f"model.layers.{layer}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                weight = _permute_for_gguf(weight, config.num_attention_heads)
            elif gguf_name == "attn_k":
                weight = _permute_for_gguf(weight, config.num_key_value_heads)
            tensors[f"blk.{layer}.{gguf_name}.weight"] = weight
    return tensors


def wait_for_marker(child, marker: Path, timeout: float, what: str) -> None:
    """Wait until the child process writes `marker` (it reached the point a test interrupts);
    fail if it ends first or `timeout` seconds pass."""
    import time

    deadline = time.time() + timeout
    while not marker.exists():
        assert child.poll() is None, f"the run ended before {what}"
        assert time.time() < deadline, f"the run never reached {what}"
        time.sleep(0.1)


def build_genai_folder(checkpoint: Path, out: Path) -> Path:
    """Run onnxruntime-genai's model builder on a local checkpoint (fp32, CPU) into `out`: the
    folder (genai_config.json, model.onnx + external data, tokenizer) the genai runtime reads.
    In-process, as its command line does it, with the hub switched off."""
    import os
    from unittest import mock

    from onnxruntime_genai.models.builder import create_model, parse_extra_options

    args = (None, str(checkpoint), str(out), "fp32", "cpu", str(out.parent / "builder-cache"))
    with mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}):
        create_model(*args, **parse_extra_options(*args, None))
    return out
