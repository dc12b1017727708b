"""Rebuilds a Hugging Face ``tokenizer.json`` and ``tokenizer_config.json`` from GGUF metadata.

llama.cpp keeps a byte-level BPE vocabulary as ``tokenizer.ggml.tokens`` (ids in order),
``tokenizer.ggml.merges`` ("a b" pairs by rank), ``tokenizer.ggml.token_type`` (1 normal,
3 control, 4 user defined, …) and names the pre-tokenizer (how text is split before BPE) in
``tokenizer.ggml.pre``: the same splitting must be rebuilt here, or digits and contractions
come out as other tokens than the model was trained on. Each name maps to the pre-tokenizer
of the Hugging Face tokenizer that llama.cpp's converter recognised under it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from agentmesh_common import FailedPrecondition

__all__ = ["ROUND_TRIP_SAMPLES", "GgufVocabulary", "build_tokenizer", "check_round_trip"]

_CONTROL, _USER_DEFINED = 3, 4

# Llama 3's split (llama.cpp LLAMA_VOCAB_PRE_TYPE_LLAMA3), as in its tokenizer.json.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _gpt2() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _digits_then_gpt2() -> pre_tokenizers.PreTokenizer:
    # StarCoder-family tokenizers (SmolLM, SmolLM2) give every digit its own token.
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _gpt2()])


def _llama3() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


_PRE_TOKENIZERS: Mapping[str, Callable[[], pre_tokenizers.PreTokenizer]] = {
    "default": _gpt2,
    "gpt2": _gpt2,
    "gpt-2": _gpt2,
    "smollm": _digits_then_gpt2,
    "starcoder": _digits_then_gpt2,
    "refact": _digits_then_gpt2,
    "llama-bpe": _llama3,
    "llama3": _llama3,
}

# Text a tokenizer must give back unchanged: unicode, emoji, code, digits, whitespace.
ROUND_TRIP_SAMPLES = (
    "The quick brown fox jumps over the lazy dog.",
    "Größe, naïve café, Ελληνικά, русский, 日本語のテキスト, 한국어, עברית, العربية",
    "Emoji: 🙂🚀👩‍💻🇫🇷 and symbols ©®™ ½ ≠ ∑ →",
    "def add(a: int, b: int) -> int:\n\treturn a + b  # sum\n\n{'k': [1, 2]}",
    "Numbers 0 7 42 2026 3.14159 -1e10 1,000,000 and 0x1F",
    "  leading spaces, trailing   \n\n\t tabs\r\nwindows lines   ",
    "I'm sure they'll say it's theirs; we've done what you'd do.",
)


@dataclass(frozen=True)
class GgufVocabulary:
    """The tokenizer part of a GGUF's metadata."""

    model: str
    pre: str
    tokens: Sequence[str]
    token_types: Sequence[int]
    merges: Sequence[str]
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    unk_id: int | None
    add_bos: bool
    chat_template: str | None

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> GgufVocabulary:
        def token_id(key: str) -> int | None:
            value = meta.get(f"tokenizer.ggml.{key}")
            return None if value is None else int(_scalar(value))

        tokens = list(meta.get("tokenizer.ggml.tokens") or [])
        types = meta.get("tokenizer.ggml.token_type")
        add_bos = meta.get("tokenizer.ggml.add_bos_token")
        return cls(
            model=str(meta.get("tokenizer.ggml.model", "")),
            pre=str(meta.get("tokenizer.ggml.pre", "default")),
            tokens=tokens,
            token_types=[1] * len(tokens) if types is None else [int(t) for t in types.tolist()],
            merges=list(meta.get("tokenizer.ggml.merges") or []),
            bos_id=token_id("bos_token_id"),
            eos_id=token_id("eos_token_id"),
            pad_id=token_id("padding_token_id"),
            unk_id=token_id("unknown_token_id"),
            add_bos=bool(_scalar(add_bos)) if add_bos is not None else False,
            chat_template=meta.get("tokenizer.chat_template"),
        )

    def token(self, token_id: int | None) -> str | None:
        if token_id is None or not 0 <= token_id < len(self.tokens):
            return None
        return self.tokens[token_id]


def _scalar(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def build_tokenizer(vocab: GgufVocabulary) -> tuple[Tokenizer, dict[str, Any]]:
    """The Hugging Face tokenizer and the ``tokenizer_config.json`` content for ``vocab``."""
    if vocab.model != "gpt2":
        raise FailedPrecondition(
            f"tokenizer model {vocab.model!r} is not supported (only byte-level BPE, 'gpt2')",
            reason="UNSUPPORTED_TOKENIZER",
            metadata={"tokenizer_model": vocab.model},
        )
    make_pre = _PRE_TOKENIZERS.get(vocab.pre)
    if make_pre is None:
        raise FailedPrecondition(
            f"pre-tokenizer {vocab.pre!r} is not supported "
            f"(known: {', '.join(sorted(_PRE_TOKENIZERS))})",
            reason="UNSUPPORTED_TOKENIZER",
            metadata={"pre_tokenizer": vocab.pre},
        )
    if not vocab.tokens or not vocab.merges:
        raise FailedPrecondition(
            "the GGUF has no tokenizer.ggml.tokens or tokenizer.ggml.merges",
            reason="UNSUPPORTED_TOKENIZER",
        )
    ids = {token: index for index, token in enumerate(vocab.tokens)}
    merges = []
    for merge in vocab.merges:
        left, _, right = merge.partition(" ")
        merges.append((left, right))
    tokenizer = Tokenizer(models.BPE(vocab=ids, merges=merges, ignore_merges=False))
    tokenizer.pre_tokenizer = make_pre()
    tokenizer.decoder = decoders.ByteLevel()
    special = [
        AddedToken(token, special=kind == _CONTROL, normalized=False)
        for token, kind in zip(vocab.tokens, vocab.token_types, strict=True)
        if kind in (_CONTROL, _USER_DEFINED)
    ]
    tokenizer.add_tokens(special)
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": vocab.add_bos,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1 << 20,
    }
    for role, token_id in (
        ("bos_token", vocab.bos_id),
        ("eos_token", vocab.eos_id),
        ("pad_token", vocab.pad_id),
        ("unk_token", vocab.unk_id),
    ):
        if (token := vocab.token(token_id)) is not None:
            config[role] = token
    if vocab.chat_template:
        config["chat_template"] = vocab.chat_template
    return tokenizer, config


def check_round_trip(tokenizer: Tokenizer, vocab: GgufVocabulary) -> int:
    """Encode and decode :data:`ROUND_TRIP_SAMPLES`; FailedPrecondition on any difference.

    Every id must name the GGUF's own token at that id, and the text must come back exactly.
    Returns the number of tokens checked.
    """
    checked = 0
    for sample in ROUND_TRIP_SAMPLES:
        encoding = tokenizer.encode(sample, add_special_tokens=False)
        for token_id, token in zip(encoding.ids, encoding.tokens, strict=True):
            if vocab.token(token_id) != token:
                raise FailedPrecondition(
                    f"the rebuilt tokenizer maps {token!r} to id {token_id}, which the GGUF "
                    f"names {vocab.token(token_id)!r}",
                    reason="TOKENIZER_MISMATCH",
                )
        decoded = tokenizer.decode(encoding.ids, skip_special_tokens=False)
        if decoded != sample:
            raise FailedPrecondition(
                f"the rebuilt tokenizer does not round-trip {sample[:40]!r}: got {decoded[:40]!r}",
                reason="TOKENIZER_MISMATCH",
            )
        checked += len(encoding.ids)
    for token_id, (token, kind) in enumerate(zip(vocab.tokens, vocab.token_types, strict=True)):
        if kind == _CONTROL and tokenizer.token_to_id(token) != token_id:
            raise FailedPrecondition(
                f"special token {token!r} does not map to its id {token_id}",
                reason="TOKENIZER_MISMATCH",
            )
    return checked
