"""prfaas-env."""
