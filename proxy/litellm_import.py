"""The one place litellm is imported: lazily, and never reaching for the network.

litellm's import costs seconds and fetches a remote price map unless told not to; the
proxy needs it only for non-OpenAI providers and for the bundled price catalogue.
"""
from __future__ import annotations

import logging
import os
from types import ModuleType


def litellm() -> ModuleType:
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    import litellm as module

    module.telemetry = False
    module.suppress_debug_info = True
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
        logging.getLogger(name).setLevel(logging.WARNING)  # it logs every call at INFO
    return module
