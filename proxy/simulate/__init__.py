"""Simulated LLM providers (OpenAI and Anthropic shapes) for the demo, tests and benchmarks."""

from .profiles import PROFILES, Profile, get_profile
from .provider import SimulatorApp, Stats, build_app, parse_fault
from .server import RunningSimulator, serve_in_thread
from .text import count_input_tokens, output_text

__all__ = [
    "PROFILES",
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
