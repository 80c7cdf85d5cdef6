"""Price schedules, the usage ledger, budgets and cost reports.

``price_of(deployment, input_tokens, output_tokens)`` is what routing's `cost` strategy asks.
"""
from proxy.pricing.catalogue import price_of

__all__ = ["price_of"]
