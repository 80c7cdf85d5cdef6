"""Rate limits shared by every replica: admission, reservations, provider-header learning."""
from proxy.limits.limiter import Headroom, Limiter, LimitStats, Ticket

__all__ = ["Headroom", "LimitStats", "Limiter", "Ticket"]
