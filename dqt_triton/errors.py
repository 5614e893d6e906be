"""Exceptions raised by dqt_triton; each also derives from the builtin a caller would expect."""


class DQTError(Exception):
    """Base class of every error raised on purpose by dqt_triton."""


class AccumulatorOverflowError(DQTError, ValueError):
    """A layer's worst-case int32 accumulator (products plus bias) could overflow."""


class BackendUnavailableError(DQTError, RuntimeError):
    """The requested backend cannot run here (missing package, wrong device, not built)."""


class UnsupportedLayerError(DQTError, TypeError):
    """The float model contains an operation DQTModel cannot convert (named in the message)."""


class CheckpointError(DQTError, ValueError):
    """A DQT checkpoint is truncated, corrupt, or not a dqt-triton file."""


class DiskFullError(DQTError, OSError):
    """A save ran out of disk space (the message names the directory); nothing was overwritten."""
