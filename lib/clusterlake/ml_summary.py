"""What every ``clusterlake.ml`` training summary shares with Spark's ``ClusteringSummary``: the
``cluster`` column of the training predictions and ``clusterSizes``, rows per cluster counted
from them on first use (as Spark does)."""

from __future__ import annotations

from typing import Optional


class PredictionsSummary:
    """Needs ``predictions`` (the model's ``transform`` of the training data), ``predictionCol``
    and ``k`` set by the subclass."""

    _sizes: Optional[list] = None

    @property
    def cluster(self):
        """DataFrame of predicted cluster centers for each training data point."""
        return self.predictions.select(self.predictionCol)

    @property
    def clusterSizes(self) -> list:
        """Size of (number of data points in) each cluster."""
        if self._sizes is None:
            counts = dict(self.predictions.groupBy(self.predictionCol).count().collect())
            self._sizes = [int(counts.get(j, 0)) for j in range(self.k)]
        return self._sizes
