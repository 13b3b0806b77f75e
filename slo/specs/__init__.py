"""Bundled SLO specs (``default.yaml``), shipped as package data."""
