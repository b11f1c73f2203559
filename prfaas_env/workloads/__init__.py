"""Workload data derived from public sources (see PROVENANCE.md here), and the scripts
that derive it."""
