"""Fake py-spinnaker2 for tests: ``from spinnaker2 import snn, hardware``."""

from spinnaker2 import hardware, snn

__all__ = ["hardware", "snn"]
FAKE = True
