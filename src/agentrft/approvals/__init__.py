"""``agentrft approvals``: the production approval queue from the command line (approvals/cli.py). The hold itself
is in serve/approvals.py; the queue is the store's ``approvals`` table."""
