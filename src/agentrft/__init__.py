"""agentrft: self-hosted agentic reinforcement fine-tuning of open-weight models."""

__version__ = "0.1.0"
