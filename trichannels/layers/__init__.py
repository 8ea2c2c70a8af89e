"""Channel layers: the contract, the in-memory layer and the registry of configured layers."""

from __future__ import annotations

from trichannels.layers.base import (
    BaseChannelLayer as BaseChannelLayer,
    LayerStatistics as LayerStatistics,
)

__all__ = ["BaseChannelLayer", "LayerStatistics"]
