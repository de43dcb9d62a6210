"""oprun's Python SDK: workers that run task kinds for an oprun server
(:mod:`oprun.worker`)."""

from .worker import Context, Failure, Worker

__all__ = ["Context", "Failure", "Worker"]
__version__ = "0.1.0"
