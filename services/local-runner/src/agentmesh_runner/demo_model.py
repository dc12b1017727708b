"""Writes a small Llama-architecture model that mlx-lm can load, deterministically.

``python -m agentmesh_runner.demo_model DIR [--size tiny|small]`` (or ``agentmesh-demo-model``)
writes ``config.json``, ``model.safetensors`` (mlx-lm's Llama weight names, random weights from
a fixed seed), a byte-level BPE ``tokenizer.json`` trained with ``tokenizers`` on a built-in
corpus, and ``tokenizer_config.json`` with a chat template. The same bytes every time.

The weights are random: the model's output text is meaningless by design. It exists so that
tests, the embedded default and benchmarks exercise the real mlx-lm code path with no download.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

__all__ = ["DEMO_NOTICE", "SIZES", "DemoSize", "write_demo_model"]

DEMO_NOTICE = "demo model with random weights: its output text is meaningless by design"

BOS_TOKEN = "<|begin|>"
EOS_TOKEN = "<|end|>"
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>")

# Role markers are special tokens so the template's structure tokenizes the same way always.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}{{ eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_CORPUS = """\
Agents in a mesh talk to one another through a shared service. Each agent has a name, a role
and a model. The orchestrator runs sessions; the gateway routes requests to providers; the
memory service remembers facts, and the local runner serves small models on this machine.
A request carries messages from the system, the user, the assistant and tools. The model reads
the conversation and writes the next turn one token at a time, streaming text as it goes.
Tokens are counted exactly: prompt tokens, completion tokens, and cached tokens that a follow-up
turn does not process again. When a queue is full the runner asks the caller to retry later.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
Numbers 0 1 2 3 4 5 6 7 8 9 10 42 100 2026; punctuation , . ; : ! ? ( ) [ ] { } " ' - _ / = +
"""


@dataclass(frozen=True)
class DemoSize:
    """Shape of one demo model size."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int


SIZES: dict[str, DemoSize] = {
    "tiny": DemoSize(512, 64, 2, 4, 2, 128),
    "small": DemoSize(1024, 576, 8, 9, 3, 1536),
}

_SEED = 20260101


def _train_tokenizer(vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = _CORPUS.splitlines()
    tokenizer.train_from_iterator([lines[i % len(lines)] for i in range(len(lines) * 4)], trainer)
    return tokenizer


def _weights(size: DemoSize, vocab: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    hidden, inter = size.hidden_size, size.intermediate_size
    head_dim = hidden // size.num_attention_heads
    kv = size.num_key_value_heads * head_dim

    def dense(rows: int, cols: int) -> np.ndarray:
        return rng.standard_normal((rows, cols), dtype=np.float32) * 0.05

    weights: dict[str, np.ndarray] = {"model.embed_tokens.weight": dense(vocab, hidden)}
    for i in range(size.num_hidden_layers):
        prefix = f"model.layers.{i}."
        weights[prefix + "self_attn.q_proj.weight"] = dense(hidden, hidden)
        weights[prefix + "self_attn.k_proj.weight"] = dense(kv, hidden)
        weights[prefix + "self_attn.v_proj.weight"] = dense(kv, hidden)
        weights[prefix + "self_attn.o_proj.weight"] = dense(hidden, hidden)
        weights[prefix + "mlp.gate_proj.weight"] = dense(inter, hidden)
        weights[prefix + "mlp.up_proj.weight"] = dense(inter, hidden)
        weights[prefix + "mlp.down_proj.weight"] = dense(hidden, inter)
        weights[prefix + "input_layernorm.weight"] = np.ones(hidden, dtype=np.float32)
        weights[prefix + "post_attention_layernorm.weight"] = np.ones(hidden, dtype=np.float32)
    weights["model.norm.weight"] = np.ones(hidden, dtype=np.float32)
    weights["lm_head.weight"] = dense(vocab, hidden)
    return weights


def write_demo_model(directory: Path, size: str = "tiny") -> Path:
    """Write the demo model of ``size`` into ``directory`` (created if missing)."""
    shape = SIZES[size]
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(shape.vocab_size)
    vocab = tokenizer.get_vocab_size()
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": shape.hidden_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "intermediate_size": shape.intermediate_size,
        "vocab_size": vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "bos_token_id": tokenizer.token_to_id(BOS_TOKEN),
        "eos_token_id": tokenizer.token_to_id(EOS_TOKEN),
        "agentmesh_note": DEMO_NOTICE,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "add_bos_token": False,
        "model_max_length": 2048,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (directory / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config, indent=2, sort_keys=True) + "\n"
    )
    save_file(
        _weights(shape, vocab, _SEED),
        str(directory / "model.safetensors"),
        metadata={"format": "mlx"},
    )
    return directory


def main(argv: list[str] | None = None) -> int:
    """Command line: ``agentmesh-demo-model DIR [--size tiny|small]``."""
    parser = argparse.ArgumentParser(description=f"Write the agentmesh {DEMO_NOTICE}.")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    args = parser.parse_args(argv)
    path = write_demo_model(args.directory, args.size)
    print(f"wrote {args.size} {DEMO_NOTICE} to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
