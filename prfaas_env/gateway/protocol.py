"""The Endpoint Picker Protocol's messages, built from and read into Envoy's own types.

The Gateway API Inference Extension's Endpoint Picker Protocol
(kubernetes-sigs/gateway-api-inference-extension, ``docs/proposals/004-endpoint-picker-protocol``)
runs over Envoy's external processing service (``envoy.service.ext_proc.v3``). This module
builds the picker's answers and reads the proxy's hints with Envoy's own message types:

- read: the request headers (``:path``), the subset hint
  (``metadata_context.filter_metadata["envoy.lb.subset_hint"]``, key
  ``x-gateway-destination-endpoint-subset``) and, on the response path, the endpoint that
  served (``envoy.lb`` / ``x-gateway-destination-endpoint-served``);
- written: the ``x-gateway-destination-endpoint`` header and the same value in
  ``dynamic_metadata["envoy.lb"]``, fallbacks under ``x-gateway-destination-endpoint-fallback``
  (or appended to the value), llm-d's ``x-prefiller-host-port`` header naming the prefill
  endpoint, ``x-prfaas-route`` / ``x-prfaas-decision`` for logs, and ImmediateResponses
  (400, 404, 413, 429, 503) with an OpenAI-style error body.

docs/gateway.md has the full table and the status codes.

The destination goes on the response to the request headers (full-duplex streaming, or a
request without a body) or on the response to the body (buffered mode, where Envoy still
holds the headers), with ``clear_route_cache`` so that Envoy picks the route again: a
route that matches on the destination header forwards to the ORIGINAL_DST cluster, and the
default route takes requests that have none (the picker was down and ``failure_mode_allow``
let them through).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2

__all__ = [
    "DESTINATION",
    "FALLBACK",
    "LB_NAMESPACE",
    "PREFILL",
    "SERVED",
    "SUBSET",
    "SUBSET_NAMESPACE",
    "body_chunks",
    "continue_body",
    "continue_headers",
    "continue_trailers",
    "destination_mutation",
    "header_value",
    "immediate",
    "served_endpoint",
    "subset_hint",
]

DESTINATION = "x-gateway-destination-endpoint"
FALLBACK = "x-gateway-destination-endpoint-fallback"
SUBSET = "x-gateway-destination-endpoint-subset"
SERVED = "x-gateway-destination-endpoint-served"
PREFILL = "x-prefiller-host-port"
ROUTE = "x-prfaas-route"
DECISION = "x-prfaas-decision"
LB_NAMESPACE = "envoy.lb"
SUBSET_NAMESPACE = "envoy.lb.subset_hint"
MAX_CHUNK_BYTES = 1 << 20  # streamed body pieces sent back to Envoy


def header_value(headers: ep.HttpHeaders, name: str) -> str | None:
    """Value of header ``name`` (lower-case) in an ext_proc ``HttpHeaders``; Envoy sends
    ``raw_value`` (bytes) or ``value``."""
    for h in headers.headers.headers:
        if h.key == name:
            return h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
    return None


def subset_hint(req: ep.ProcessingRequest) -> list[str] | None:
    """The endpoint subset the proxy allows (``envoy.lb.subset_hint``), or None when the
    proxy sets none."""
    fm = req.metadata_context.filter_metadata
    if SUBSET_NAMESPACE not in fm:
        return None
    fields = fm[SUBSET_NAMESPACE].fields
    if SUBSET not in fields:
        return None
    value = fields[SUBSET]
    if value.HasField("list_value"):
        return [v.string_value for v in value.list_value.values if v.HasField("string_value")]
    if value.HasField("string_value"):  # tolerate a comma-separated string
        return [s.strip() for s in value.string_value.split(",") if s.strip()]
    return []


def served_endpoint(req: ep.ProcessingRequest) -> str | None:
    """The endpoint the proxy says served the request (response-path metadata), if any."""
    fm = req.metadata_context.filter_metadata
    if LB_NAMESPACE in fm and SERVED in fm[LB_NAMESPACE].fields:
        return fm[LB_NAMESPACE].fields[SERVED].string_value or None
    return None


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value.encode()),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def destination_mutation(
    destination: str,
    fallbacks: Sequence[str],
    prefill: str | None,
    fallback_format: str,
    extra: Iterable[tuple[str, str]] = (),
) -> tuple[ep.CommonResponse, struct_pb2.Struct]:
    """The common response (header mutation, ``clear_route_cache``) and the dynamic
    metadata that tell the proxy to forward to ``destination``.

    ``fallback_format`` ``key``: the header and ``envoy.lb`` metadata carry the destination
    alone and the fallbacks go under ``x-gateway-destination-endpoint-fallback``;
    ``list``: header and metadata both carry ``destination,fallback,...``. The prefill
    header is set when ``prefill`` is given and removed otherwise (a client cannot steer it).
    """
    value = ",".join([destination, *fallbacks]) if fallback_format == "list" else destination
    sets = [_header(DESTINATION, value)]
    if prefill is not None:
        sets.append(_header(PREFILL, prefill))
    sets += [_header(k, v) for k, v in extra]
    common = ep.CommonResponse(
        header_mutation=ep.HeaderMutation(
            set_headers=sets, remove_headers=[] if prefill is not None else [PREFILL]
        ),
        clear_route_cache=True,
    )
    meta = struct_pb2.Struct()
    lb = meta.fields[LB_NAMESPACE].struct_value
    lb.fields[DESTINATION].string_value = value
    if fallback_format == "key" and fallbacks:
        lb.fields[FALLBACK].string_value = ",".join(fallbacks)
    return common, meta


def continue_headers(
    common: ep.CommonResponse | None = None,
    meta: struct_pb2.Struct | None = None,
    response: bool = False,
) -> ep.ProcessingResponse:
    """The answer to a request (or response, ``response=True``) headers message."""
    hr = ep.HeadersResponse(response=common) if common is not None else ep.HeadersResponse()
    return _answer("headers", hr, meta, response)


def continue_body(
    common: ep.CommonResponse | None = None,
    meta: struct_pb2.Struct | None = None,
    response: bool = False,
) -> ep.ProcessingResponse:
    """The answer to a body message: continue, optionally with mutations and metadata."""
    br = ep.BodyResponse(response=common) if common is not None else ep.BodyResponse()
    return _answer("body", br, meta, response)


def _answer(
    part: str,
    inner: ep.HeadersResponse | ep.BodyResponse,
    meta: struct_pb2.Struct | None,
    response: bool,
) -> ep.ProcessingResponse:
    """``inner`` in the ProcessingResponse field of ``part`` (``headers`` or ``body``) of
    the request or the response, with ``meta`` as dynamic metadata."""
    side = "response" if response else "request"
    out = ep.ProcessingResponse(**{f"{side}_{part}": inner})
    if meta is not None:
        out.dynamic_metadata.CopyFrom(meta)
    return out


def continue_trailers(response: bool = False) -> ep.ProcessingResponse:
    tr = ep.TrailersResponse()
    return (
        ep.ProcessingResponse(response_trailers=tr)
        if response
        else ep.ProcessingResponse(request_trailers=tr)
    )


def body_chunks(
    body: bytes, end_of_stream: bool, response: bool = False
) -> list[ep.ProcessingResponse]:
    """Full-duplex streaming: the body handed back to Envoy as streamed pieces of at most
    1 MiB, the last one carrying ``end_of_stream``."""
    pieces = [body[i : i + MAX_CHUNK_BYTES] for i in range(0, len(body), MAX_CHUNK_BYTES)] or [b""]
    out = []
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        common = ep.CommonResponse(
            body_mutation=ep.BodyMutation(
                streamed_response=ep.StreamedBodyResponse(
                    body=piece, end_of_stream=end_of_stream and last
                )
            )
        )
        out.append(continue_body(common, response=response))
    return out


def immediate(
    status: int, message: str, kind: str = "invalid_request_error"
) -> ep.ProcessingResponse:
    """An ``ImmediateResponse``: the proxy answers the client with ``status`` and an
    OpenAI-style JSON error body, and does not forward the request."""
    import json

    body = json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()
    return ep.ProcessingResponse(
        immediate_response=ep.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),
            headers=ep.HeaderMutation(set_headers=[_header("content-type", "application/json")]),
            body=body,
            details=f"prfaas_picker_{status}",
        )
    )
