"""The distributed engine: rows loaded once into barrier tasks, algorithms as commands on them.

Knows nothing of any algorithm. An algorithm brings a :class:`Worker` subclass (its commands,
executed by every task against its resident block) and a driver (plain Python on the driver that
calls those commands through a :class:`BarrierStage` and reduces the replies):

* :mod:`~clusterlake.engine.blocks` -- the resident data: :class:`BlockSource` (which columns,
  which preprocessing), packing Arrow batches into float32 blocks, :class:`Block`;
* :mod:`~clusterlake.engine.worker` -- :class:`Worker` and the :func:`command` registry;
* :mod:`~clusterlake.engine.stage` -- :class:`BarrierStage`: the barrier stage, ``call``, and the
  recovery from lost tasks (relaunch, journal replay) in one place;
* :mod:`~clusterlake.engine.collective` -- the driver <-> task socket protocol;
* :mod:`~clusterlake.engine.task` -- what each barrier task runs.

K-means (Lloyd, k-means||, bisecting) is such an algorithm:
:mod:`clusterlake.algorithms.kmeans_engine`.
"""

from clusterlake.engine.blocks import Block, BlockSource
from clusterlake.engine.collective import CollectiveError, TaskLost
from clusterlake.engine.stage import BarrierStage, task_slots
from clusterlake.engine.worker import UnknownCommand, Worker, command

__all__ = ["Block", "BlockSource", "BarrierStage", "CollectiveError", "TaskLost", "UnknownCommand",
           "Worker", "command", "task_slots"]
