"""Shared limiter state: Redis (standalone or Cluster) and an in-memory twin behind one interface."""
from proxy.store.base import AdmitResult, Bucket, ProviderWindowState, Store, StoreError
from proxy.store.memory import MemoryStore

__all__ = ["AdmitResult", "Bucket", "MemoryStore", "ProviderWindowState", "Store", "StoreError"]
