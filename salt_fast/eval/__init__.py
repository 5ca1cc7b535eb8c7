"""Evaluation: frozen attentive probe, RankMe, intuitive-physics surprise, loss vs accuracy.

Each tool is a module with a Python API and a CLI (``python -m salt_fast.eval.<tool> --help``).
"""
