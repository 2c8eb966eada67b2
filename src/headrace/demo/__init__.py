"""The embedded demo: a real anomaly model on synthetic sensor events, no broker needed."""

from headrace.demo.model import build_demo_model
from headrace.demo.run import demo_config, demo_model, run_demo

__all__ = ["build_demo_model", "demo_config", "demo_model", "run_demo"]
