"""Shared state: the limiter's stores (Redis, standalone or Cluster, and an in-memory twin behind one
interface), the usage ledger's storage (usage.py), and the one module that opens Redis connections
(connect.py)."""
from proxy.store.base import AdmitResult, Bucket, ProviderWindowState, Store, StoreError
from proxy.store.memory import MemoryStore

__all__ = ["AdmitResult", "Bucket", "MemoryStore", "ProviderWindowState", "Store", "StoreError"]
