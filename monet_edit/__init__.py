"""monet-edit: knowledge editing of Monet (Mixture of Monosemantic Experts) language models.

Library entry points are imported lazily so that `import monet_edit` (and the CLI's --help)
does not import torch.
"""

from ._version import __version__

__all__ = ["__version__", "load_model", "load_tokenizer"]


def __getattr__(name: str):
    if name in ("load_model", "load_tokenizer"):
        from .model import loading

        return getattr(loading, name)
    raise AttributeError(f"module 'monet_edit' has no attribute {name!r}")
