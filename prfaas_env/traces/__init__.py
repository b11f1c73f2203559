"""Shipped request traces (compressed copies of public traces; see PROVENANCE.md here)."""
