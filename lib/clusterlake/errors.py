"""Exception types for user-facing errors.

Every error a user can cause (a bad config, bad input data, a failed quality gate) raises a
subclass of :class:`ClusterlakeError`. The CLI prints its message on one line and exits non-zero;
anything else is a bug and keeps its traceback.
"""


class ClusterlakeError(Exception):
    """Base class of errors caused by the job's input or configuration, not by a bug."""

    exit_code = 2


class ConfigError(ClusterlakeError):
    """The job config is malformed: unknown key, wrong type or bad value (names the dotted key)."""


class InputDataError(ClusterlakeError):
    """The input table cannot be clustered as configured (names the column/row and the fix)."""


class OutputError(ClusterlakeError):
    """The output location is not usable (e.g. an existing table with an incompatible layout)."""


class QualityGateError(ClusterlakeError):
    """A quality gate failed with ``quality.on_gate_failure: fail``: nothing was committed."""

    exit_code = 3
