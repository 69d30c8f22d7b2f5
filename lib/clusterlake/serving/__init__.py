"""In-process assignment of new points with an exported model artifact."""

from clusterlake.serving.assigner import Assigner, Assignment, RowError
from clusterlake.serving.query import ClusterCatalog

__all__ = ["Assigner", "Assignment", "ClusterCatalog", "RowError"]
