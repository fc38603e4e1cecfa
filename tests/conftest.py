"""Puts the repository root on sys.path so the tests import models, lsp_kd, data, ..."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one); "
                                       "run them with `python -m pytest -m cuda`")
