"""Production traces back into training data (``agentrft traces export``; docs/flywheel.md): served requests
regrouped into conversations (conversations.py), selected and written as RFT rows and warm-start demonstrations
(export.py), PII redacted on the way (pii.py)."""
