"""The ``agentrft worker`` command (``cli.py``); the workers themselves are ``agentrft.serve.job_worker``. A command
module lives in a ``cli`` module so the import-layer rules place it with the other commands."""
