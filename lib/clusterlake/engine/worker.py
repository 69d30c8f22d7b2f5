"""The task side of an algorithm: a :class:`Worker` holds one barrier task's resident block and
executes the driver's commands against it.

An algorithm plugs into the engine with a worker class and a driver, and edits neither the stage
nor the collective::

    class ColumnSums(Worker):
        def __init__(self, block):
            super().__init__(block)
            self.offset = 0.0

        @command("colsum")
        def colsum(self):
            return {"sums": self.weights() @ (self.X.astype(np.float64) + self.offset)}

        @command("shift", stateful=True)      # changes the task's state: replayed after a lost task
        def shift(self, by):
            self.offset = self.offset + by

    with BarrierStage(spark, df, source, ColumnSums) as stage:
        stage.call("shift", {"by": np.ones(d)})
        total = sum(a["sums"] for _, a in stage.call("colsum"))

A command is a method registered under a name with :func:`command`. The driver's
``stage.call(name, arrays, **params)`` reaches it as keyword arguments (the params from the JSON
header, the arrays by name); it returns a dict whose numpy arrays travel as raw arrays and whose
other values (numbers, strings, lists) in the JSON header, or None. The driver gets
``(header, arrays)`` per task, in partition order.

State that outlives a command (k-means||' distances, bisecting's row leaves) lives on the worker.
Commands that build it are declared ``stateful``: the stage journals them and replays them, in
order, on a new set of tasks after a lost task, so the driver's algorithm continues as if nothing
happened. A command that frees such state pairs with ``stage.forget(name)`` on the driver.

Worker classes must be importable on the executors (a module of an installed package), or
registered with ``cloudpickle.register_pickle_by_value``: the stage sends the class by reference.
"""

from __future__ import annotations

from typing import Callable, ClassVar, Optional

import numpy as np

from clusterlake.engine.blocks import Block

_RESERVED = frozenset({"stop"})  # the collective's own: ends the task


class UnknownCommand(ValueError):
    """The driver sent a command the task's worker class does not define."""


def command(name: Optional[str] = None, *, stateful: bool = False) -> Callable:
    """Register a :class:`Worker` method as the command ``name`` (default: the method's name).

    ``stateful=True``: the command changes the task's state, so the stage replays it after a lost
    task. Usable bare (``@command``) or called (``@command("stats")``).
    """
    if callable(name):  # bare @command
        return command()(name)

    def mark(fn: Callable) -> Callable:
        fn.__engine_command__ = (name or fn.__name__, bool(stateful))
        return fn

    return mark


class Worker:
    """Base class of an algorithm's task side: one instance per barrier task, built on its
    resident :class:`~clusterlake.engine.blocks.Block`, dispatching commands by name.

    Subclasses get ``commands`` (command name -> method name) and ``stateful`` (names to replay
    after a lost task) from their :func:`command` methods, their bases' included. Override
    ``__init__`` (calling ``super().__init__(block)``) to derive per-task data once, e.g. squared
    row norms.
    """

    commands: ClassVar[dict[str, str]] = {}
    stateful: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kw) -> None:
        super().__init_subclass__(**kw)
        table: dict[str, str] = {}
        stateful: set[str] = set()
        for klass in reversed(cls.__mro__):  # a subclass's command overrides its base's
            mine: dict[str, str] = {}
            for attr, fn in vars(klass).items():
                spec = getattr(fn, "__engine_command__", None)
                if spec is None:
                    continue
                name, is_stateful = spec
                if name in _RESERVED:
                    raise TypeError(f"{cls.__qualname__}.{attr}: the command name {name!r} is reserved")
                if name in mine:
                    raise TypeError(f"{cls.__qualname__}: two methods register the command {name!r} "
                                    f"({mine[name]} and {attr})")
                mine[name] = attr
                stateful.discard(name)
                if is_stateful:
                    stateful.add(name)
            table.update(mine)
        cls.commands = table
        cls.stateful = frozenset(stateful)

    def __init__(self, block: Block):
        self.block = block

    # -- the resident data
    @property
    def X(self) -> np.ndarray:
        return self.block.X

    @property
    def w(self) -> Optional[np.ndarray]:
        return self.block.w

    @property
    def partition(self) -> int:
        return self.block.partition

    def weights(self, idx=None) -> np.ndarray:
        """The weights of all rows (or of rows ``idx``): ones where the input has no weight column."""
        if self.w is None:
            return np.ones(len(self.X) if idx is None else len(idx))
        return self.w if idx is None else self.w[idx]

    def rng(self, seed: int) -> np.random.Generator:
        """A generator seeded from the driver's ``seed`` and this task's partition: draws differ
        between tasks and repeat for a fixed seed and partitioning."""
        return np.random.default_rng([int(seed), self.partition])

    # -- dispatch
    @classmethod
    def describe(cls) -> str:
        return f"{cls.__module__}.{cls.__qualname__}"

    def handle(self, head: dict, arrays: dict) -> tuple[dict, dict]:
        """Run the command ``head["op"]`` with the header's other values and the arrays as
        keyword arguments; its reply split into (JSON header, arrays)."""
        op = head["op"]
        attr = self.commands.get(op)
        if attr is None:
            known = ", ".join(sorted(self.commands)) or "none"
            raise UnknownCommand(f"unknown command {op!r} for worker {self.describe()} (its commands: {known})")
        params = {k: v for k, v in head.items() if k != "op"}
        clash = params.keys() & arrays.keys()
        if clash:
            raise TypeError(f"command {op!r}: {sorted(clash)} sent both as a parameter and as an array")
        return split_reply(getattr(self, attr)(**params, **arrays))


def split_reply(reply: Optional[dict]) -> tuple[dict, dict]:
    """A command's reply as the collective sends it: numpy arrays raw, everything else (numpy
    scalars as Python numbers) in the JSON header."""
    head, arrays = {}, {}
    for key, value in (reply or {}).items():
        if isinstance(value, np.ndarray):
            arrays[key] = value
        else:
            head[key] = value.item() if isinstance(value, np.generic) else value
    return head, arrays
