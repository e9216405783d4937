"""The opmix operator catalog: every searchable block as a plain ``nn.Module``, one family per file.

``create_op(name, in_chs, out_chs, stride=1, **kwargs)`` builds a whole residual unit mapping
(N, in_chs, H, W) to (N, out_chs, ceil(H/stride), ceil(W/stride)) at any H, W >= 1; ``list_ops()`` names the
catalog; ``reparameterize_model(model)`` turns a trained network into its deploy form. Stems and stage
downsamplers have registries of their own (``register_stem``, ``register_downsampler``). Importing a family
module registers what it defines; this package imports every module of its folder whose name does not start
with an underscore, in alphabetical order, so adding a family is adding its file. Bad input raises the
catalog's ``OpmixError`` (a ``ValueError``; ``UnknownNameError`` for a name not registered, also a ``KeyError``),
the base class that ``nas.errors`` re-exports: the catalog imports nothing of the framework.
"""

from __future__ import annotations

import importlib
import pkgutil

from ._errors import OpmixError, UnknownNameError
from ._layers import reparameterize_model
from ._registry import (DownsamplerSpec, OpSpec, StemSpec, create_op, get_downsampler, get_spec, get_stem,
                        list_downsamplers, list_ops, list_stems, register_downsampler, register_op, register_stem)

__all__ = ["create_op", "list_ops", "get_spec", "register_op", "reparameterize_model", "OpSpec",
           "register_stem", "get_stem", "list_stems", "StemSpec",
           "register_downsampler", "get_downsampler", "list_downsamplers", "DownsamplerSpec",
           "OpmixError", "UnknownNameError"]

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")
