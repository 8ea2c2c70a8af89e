"""trichannels: Channels-style consumers and channel layers on structured concurrency."""

from trichannels._version import __version__ as __version__

__all__ = ["__version__"]
