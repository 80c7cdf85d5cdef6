"""Simulated LLM providers (OpenAI and Anthropic shapes) for the demo, tests and benchmarks."""

from .answer import MARKER as TOOL_MARKER
from .profiles import PROFILES, Profile, get_profile
from .provider import SimulatorApp, build_app
from .server import RunningSimulator, serve_in_thread
from .state import Stats, parse_fault
from .text import count_input_tokens, output_text

__all__ = [
    "PROFILES",
    "TOOL_MARKER",
    "Profile",
    "RunningSimulator",
    "SimulatorApp",
    "Stats",
    "build_app",
    "count_input_tokens",
    "get_profile",
    "output_text",
    "parse_fault",
    "serve_in_thread",
]
