"""Import llama-architecture GGUF files (llama.cpp, Ollama) as mlx-lm model directories.

``import_gguf(FILE, models_dir)`` writes ``config.json`` (with a ``quantization`` entry),
``model.safetensors`` (Q4_0/Q4_1/Q8_0 kept quantized in MLX's layout), ``tokenizer.json`` and
``tokenizer_config.json`` (chat template, special tokens), which ``mlx_lm.load`` and the
runner's ``cpu`` backend both read. ``agentmesh-runner import-gguf FILE`` is the command line.
"""

from .importer import IMPORTER_VERSION, ImportResult, ensure_imported, import_gguf, model_name_for

__all__ = ["IMPORTER_VERSION", "ImportResult", "ensure_imported", "import_gguf", "model_name_for"]
