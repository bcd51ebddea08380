"""replyloop: keep a customer-service LLM consistent with what its supervisors approve."""

__version__ = "0.1.0"
