"""The learned router where LLM traffic is routed: a Gateway API Inference Extension
endpoint picker (Envoy ext_proc), emulated model servers, Envoy's configuration and a load
generator. See docs/gateway.md.
"""
