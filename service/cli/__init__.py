"""The ``s3router`` command line."""

from service.cli.main import main

__all__ = ["main"]
