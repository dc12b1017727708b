"""Writes GGUF files the way llama.cpp's converter does, from an mlx-lm model directory.

The converter permutes the rows of the Q and K projections and stores the tokenizer as
token list, merges and token types; this does the same with the ``gguf`` package, so the
importer is tested against the layout it will meet in real files.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

_PARTS = {
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


def permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute`` (convert_hf_to_gguf.py)."""
    rows = weights.shape[0]
    return (
        weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def gguf_name(hf_name: str) -> str:
    module, _, part = hf_name.rpartition(".")
    if module == "model.embed_tokens":
        return f"token_embd.{part}"
    if module == "model.norm":
        return f"output_norm.{part}"
    if module == "lm_head":
        return f"output.{part}"
    _, _, layer, rest = module.split(".", 3)
    return f"blk.{layer}.{_PARTS[rest]}.{part}"


def write_gguf(
    model_dir: Path,
    path: Path,
    *,
    quant: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.F32,
    architecture: str = "llama",
    pre: str = "default",
    permute_qk: bool = True,
) -> Path:
    """Convert ``model_dir`` (float weights) to a GGUF at ``path``; matrices in ``quant``."""
    config = json.loads((model_dir / "config.json").read_text())
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_vocab_size(config["vocab_size"])

    vocab: dict[str, int] = tokenizer["model"]["vocab"]
    added = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    tokens = [""] * len({**vocab, **added})
    for token, index in {**vocab, **added}.items():
        tokens[index] = token
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    types = [
        gguf.TokenType.CONTROL if token in added else gguf.TokenType.NORMAL for token in tokens
    ]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(tokenizer_config["chat_template"])

    for name, weights in sorted(load_file(str(model_dir / "model.safetensors")).items()):
        if permute_qk and name.endswith("q_proj.weight"):
            weights = permute(weights, heads)
        elif permute_qk and name.endswith("k_proj.weight"):
            weights = permute(weights, kv_heads)
        if weights.ndim == 2 and quant != gguf.GGMLQuantizationType.F32:
            data = gguf.quants.quantize(weights, quant)
            writer.add_tensor(gguf_name(name), data, raw_dtype=quant)
        else:
            writer.add_tensor(gguf_name(name), weights.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def dequantized_copy(model_dir: Path, gguf_path: Path, destination: Path) -> Path:
    """``model_dir`` with the weights as the GGUF holds them (quantized, then dequantized):
    the float reference a quantized import must agree with."""
    from safetensors.numpy import save_file

    destination.mkdir(parents=True)
    for file in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (destination / file).write_bytes((model_dir / file).read_bytes())
    originals = load_file(str(model_dir / "model.safetensors"))
    by_gguf = {gguf_name(name): name for name in originals}
    reader = gguf.GGUFReader(str(gguf_path))
    config = json.loads((model_dir / "config.json").read_text())
    weights = {}
    for tensor in reader.tensors:
        name = by_gguf[tensor.name]
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        values = values.reshape(originals[name].shape).astype(np.float32)
        if name.endswith("q_proj.weight"):
            values = unpermute(values, config["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            values = unpermute(values, config["num_key_value_heads"])
        weights[name] = values
    save_file(weights, str(destination / "model.safetensors"), metadata={"format": "mlx"})
    return destination


def unpermute(weights: np.ndarray, heads: int) -> np.ndarray:
    rows = weights.shape[0]
    return (
        weights.reshape(heads, rows // heads // 2, 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )
