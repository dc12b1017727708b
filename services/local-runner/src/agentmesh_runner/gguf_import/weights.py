"""Maps a llama GGUF's tensors to mlx-lm's Llama weights and writes its ``config.json``.

``mlx.core.load`` returns Q4_0, Q4_1 and Q8_0 tensors already in MLX's affine layout (packed
``uint32`` weight, ``scales`` and ``biases``, groups of 32), so they stay quantized: the
bits of each module follow from its shapes (packed words per group). llama.cpp's converter
permutes the rows of the Q and K projections (to interleave rotary halves); the permutation
moves whole rows, so undoing it applies to packed weights, scales and biases alike.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import mlx.core as mx

from agentmesh_common import FailedPrecondition

__all__ = ["GROUP_SIZE", "SUPPORTED_TYPES", "llama_config", "map_weights"]

GROUP_SIZE = 32  # every GGUF block type MLX keeps quantized has 32 values per block
SUPPORTED_TYPES = frozenset({"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0"})

_LAYER_PARTS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_LEVEL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _unpermute(array: mx.array, heads: int) -> mx.array:
    """Undo llama.cpp's ``permute``: rows (head, pair, half) back to (head, half, pair)."""
    rows = array.shape[0]
    if rows % (2 * heads):
        raise FailedPrecondition(
            f"a Q/K projection of {rows} rows does not split into {heads} heads",
            reason="MODEL_INVALID",
        )
    shaped = array.reshape(heads, rows // heads // 2, 2, *array.shape[1:])
    return shaped.swapaxes(1, 2).reshape(array.shape)


def _module_name(gguf_name: str) -> tuple[str, str]:
    """(mlx-lm module path, part) for a GGUF tensor name such as ``blk.3.attn_q.scales``."""
    base, _, part = gguf_name.rpartition(".")
    if base.startswith("blk."):
        _, layer, kind = base.split(".", 2)
        if kind in _LAYER_PARTS and layer.isdigit():
            return f"model.layers.{layer}.{_LAYER_PARTS[kind]}", part
    elif base in _TOP_LEVEL:
        return _TOP_LEVEL[base], part
    raise FailedPrecondition(
        f"tensor {gguf_name!r} has no place in a llama model", reason="UNSUPPORTED_TENSOR"
    )


def map_weights(
    tensors: Mapping[str, mx.array], *, heads: int, kv_heads: int, float32: bool
) -> tuple[dict[str, mx.array], dict[str, Any]]:
    """mlx-lm weights and the ``quantization`` entry of ``config.json`` (empty if none).

    ``float32`` stores scales, biases, norms and float weights as float32 (MLX's CPU
    backend runs quantized matmuls with float16 scales ~80x slower); otherwise float16.
    """
    target = mx.float32 if float32 else mx.float16
    weights: dict[str, mx.array] = {}
    for gguf_name, array in tensors.items():
        module, part = _module_name(gguf_name)
        if module.endswith("self_attn.q_proj"):
            array = _unpermute(array, heads)
        elif module.endswith("self_attn.k_proj"):
            array = _unpermute(array, kv_heads)
        if array.dtype != mx.uint32 and array.dtype != target:
            array = array.astype(target)
        weights[f"{module}.{part}"] = array
    return weights, _quantization(weights)


def _quantization(weights: Mapping[str, mx.array]) -> dict[str, Any]:
    bits_by_module: dict[str, int] = {}
    for name, scales in weights.items():
        if not name.endswith(".scales"):
            continue
        module = name.removesuffix(".scales")
        packed = weights[f"{module}.weight"]
        # Each group of 32 values takes bits uint32 words: words per group == bits.
        bits_by_module[module] = packed.shape[-1] // scales.shape[-1]
    if not bits_by_module:
        return {}
    common = Counter(bits_by_module.values()).most_common(1)[0][0]
    quantization: dict[str, Any] = {"group_size": GROUP_SIZE, "bits": common}
    for module, bits in sorted(bits_by_module.items()):
        if bits != common:
            quantization[module] = {"group_size": GROUP_SIZE, "bits": bits}
    return quantization


def _number(meta: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = meta.get(key, default)
    if value is None:
        raise FailedPrecondition(f"the GGUF has no {key}", reason="MODEL_INVALID")
    return value.item() if hasattr(value, "item") else value


def llama_config(
    meta: Mapping[str, Any], *, vocab_size: int, tied: bool, quantization: Mapping[str, Any]
) -> dict[str, Any]:
    """mlx-lm's ``config.json`` for a llama GGUF's ``llama.*`` metadata."""
    heads = int(_number(meta, "llama.attention.head_count"))
    hidden = int(_number(meta, "llama.embedding_length"))
    config: dict[str, Any] = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": int(_number(meta, "llama.block_count")),
        "intermediate_size": int(_number(meta, "llama.feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_number(meta, "llama.attention.head_count_kv", heads)),
        "head_dim": int(_number(meta, "llama.attention.key_length", hidden // heads)),
        "rms_norm_eps": float(_number(meta, "llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": float(_number(meta, "llama.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(_number(meta, "llama.context_length", 2048)),
        "vocab_size": vocab_size,
        "tie_word_embeddings": tied,
    }
    scaling = meta.get("llama.rope.scaling.type")
    if scaling is not None and str(scaling) not in ("none", ""):
        if str(scaling) != "linear":
            raise FailedPrecondition(
                f"rope scaling {scaling!r} is not supported (linear is)",
                reason="UNSUPPORTED_ARCHITECTURE",
                metadata={"rope_scaling": str(scaling)},
            )
        factor = float(_number(meta, "llama.rope.scaling.factor"))
        config["rope_scaling"] = {"type": "linear", "factor": factor}
    for key, token in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id")):
        if (value := meta.get(f"tokenizer.ggml.{token}")) is not None:
            config[key] = int(value.item() if hasattr(value, "item") else value)
    if quantization:
        config["quantization"] = dict(quantization)
    return config
