"""harrison-knn: hashtag suggestions for photos by nearest-neighbour voting.

The public names are imported on first use, so ``harrison-knn --help`` answers
without loading torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "TagSuggester": "suggester",
    "Suggestion": "suggester",
    "TagScore": "suggester",
    "Neighbour": "suggester",
    "TagIndex": "index",
    "IndexFormatError": "index",
    "build_index": "build",
    "BuildError": "build",
    "read_collection": "dataset",
    "AnnotationError": "dataset",
    "load_photo": "images",
    "PhotoError": "images",
    "create_encoder": "encoders",
    "available_encoders": "encoders",
}

__all__ = [
    "AnnotationError",
    "BuildError",
    "IndexFormatError",
    "Neighbour",
    "PhotoError",
    "Suggestion",
    "TagIndex",
    "TagScore",
    "TagSuggester",
    "__version__",
    "available_encoders",
    "build_index",
    "create_encoder",
    "load_photo",
    "read_collection",
]


def __getattr__(name: str):
    if name in _PUBLIC:
        module = importlib.import_module(f".{_PUBLIC[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
