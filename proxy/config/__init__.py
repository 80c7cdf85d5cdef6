"""Policy configuration: load a YAML policy file into frozen dataclasses.

The rest of the proxy imports only from here and never sees YAML.
"""

from .errors import FieldError, PolicyError
from .loader import load_policy, parse_policy
from .schema import (
    AUTH_MODES,
    LITELLM_PROVIDERS,
    OPENAI_COMPATIBLE,
    PROVIDERS,
    SIMULATOR_DIALECTS,
    SIMULATOR_PROFILES,
    STRATEGIES,
    ApiKey,
    Deployment,
    Policy,
    Route,
    ServerSettings,
    Simulator,
    Timeouts,
    hash_key,
)

__all__ = [
    "AUTH_MODES",
    "LITELLM_PROVIDERS",
    "OPENAI_COMPATIBLE",
    "PROVIDERS",
    "SIMULATOR_DIALECTS",
    "SIMULATOR_PROFILES",
    "STRATEGIES",
    "ApiKey",
    "Deployment",
    "FieldError",
    "Policy",
    "PolicyError",
    "Route",
    "ServerSettings",
    "Simulator",
    "Timeouts",
    "hash_key",
    "load_policy",
    "parse_policy",
]
