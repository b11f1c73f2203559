"""Vectorised cluster simulator: topology, workloads, engine and reference simulator."""
