"""Training stage: the model-input cache, the slice bank, the networks, training and inference.

Modules: cache (each patient's lungs at the model's spacing), slice_bank (every lung slice of a
cohort in one memmap), models (the networks), training (one fold or the final model) and
inference (model files and patient predictions).
"""

from lungcam.core.interface import lazy_interface

# Interface name -> the module that defines it.
INTERFACE = {
    "CacheSettings": "cache",
    "CacheTransform": "cache",
    "build_cache": "cache",
    "load_cache": "cache",
    "to_source_grid": "cache",
    "SliceBank": "slice_bank",
    "build_slice_bank": "slice_bank",
    "resize_slices": "slice_bank",
    "zscore": "slice_bank",
    "AttentionMIL": "models",
    "Hu2020Net": "models",
    "TrainSettings": "training",
    "train_fold": "training",
    "check_preprocessing": "inference",
    "load_model": "inference",
    "out_of_fold_slice_predictions": "inference",
    "predict_patients": "inference",
    "read_model_metadata": "inference",
    "with_decisions": "inference",
}
__getattr__, __all__ = lazy_interface(__name__, INTERFACE)
