"""In-process assignment of new points with an exported model artifact."""

from clusterlake.serving.assigner import Assigner

__all__ = ["Assigner"]
