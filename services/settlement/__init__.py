"""The settlement consumer: ``python -m services.settlement`` (see brokercore.settlement)."""
