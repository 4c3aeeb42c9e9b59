"""Mask endpoints: list and describe (public); upload, delete, (re)load (admin, bearer token)."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from router_core.errors import AdminDisabledError, AuthenticationError
from router_core.mask_file import RoutingMask, check_compatible, decode_mask, validate_mask_name
from router_core.registry import MaskRegistry
from service.api.docs import ADMIN_ERRORS, MASK_FILE_BODY, READ_ERRORS, MaskNamePath, error_responses
from service.api.uploads import read_body
from service.pipeline.state import AppState, state_of

api = APIRouter(tags=["masks"])


def describe(mask: RoutingMask, resident: bool, size: int | None = None) -> dict[str, Any]:
    ratios = list(mask.keep_ratios.values())
    return {
        "name": mask.name,
        "kind": mask.kind,
        "resident": resident,
        "outputs": mask.head.num_outputs,
        "vocabulary_size": len(mask.head.vocab),
        "labels": mask.head.labels,
        "masked_layers": len(mask.layer_bits),
        "keep_ratio": round(sum(ratios) / len(ratios), 6) if ratios else 1.0,
        "bytes": size if size is not None else mask.nbytes,
        "fingerprint": mask.fingerprint,
        "created_at": mask.created_at,
        "metrics": mask.metrics,
    }


def require_admin(request: Request, state: AppState) -> None:
    token = state.settings.admin_token
    if token is None:
        raise AdminDisabledError("admin endpoints are disabled: no admin token is configured (S3R_ADMIN_TOKEN)")
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        raise AuthenticationError("missing or wrong admin bearer token")


def _read_described(registry: MaskRegistry, name: str) -> dict[str, Any]:
    data = registry.store.read(validate_mask_name(name))
    mask = decode_mask(data)
    check_compatible(mask, registry.spec)
    resident = registry.is_resident(name)
    return describe(mask, resident, len(data))


@api.get("/masks", summary="Masks available in the registry and which are resident",
         responses=error_responses(503))
async def list_masks(request: Request) -> dict:
    engine, _ = state_of(request).ready_engine()
    resident = {m.name: m for m in engine.registry.resident()}
    names = await run_in_threadpool(engine.registry.available)
    return {
        "masks": [describe(resident[n].mask, True) if n in resident else {"name": n, "resident": False} for n in names],
        "resident_bytes": sum(m.nbytes for m in resident.values()),
        "budget_bytes": engine.registry.budget_bytes,
    }


@api.get("/masks/{name}", summary="One mask's metadata (validated against the live backbone)",
         responses=READ_ERRORS)
async def get_mask(request: Request, name: MaskNamePath) -> dict:
    engine, _ = state_of(request).ready_engine()
    return await run_in_threadpool(_read_described, engine.registry, name)


@api.put("/masks/{name}", status_code=201, summary="Upload a mask file (admin)", responses=ADMIN_ERRORS,
         openapi_extra=MASK_FILE_BODY)
async def put_mask(request: Request, name: MaskNamePath) -> dict:
    state = state_of(request)
    require_admin(request, state)
    engine, _ = state.ready_engine()
    data = await read_body(request, state.settings.max_mask_bytes)
    loaded = await run_in_threadpool(engine.registry.put, data, validate_mask_name(name))
    return describe(loaded.mask, True, len(data))


@api.delete("/masks/{name}", status_code=204, summary="Delete a mask (admin)", responses=ADMIN_ERRORS)
async def delete_mask(request: Request, name: MaskNamePath) -> Response:
    state = state_of(request)
    require_admin(request, state)
    engine, _ = state.ready_engine()
    await run_in_threadpool(engine.registry.delete, name)
    return Response(status_code=204)


@api.post("/masks/{name}/load", summary="(Re)load a mask from the store onto the device (admin)",
          responses=ADMIN_ERRORS)
async def load_mask(request: Request, name: MaskNamePath) -> dict:
    state = state_of(request)
    require_admin(request, state)
    engine, _ = state.ready_engine()
    loaded = await run_in_threadpool(engine.registry.reload, validate_mask_name(name))
    return describe(loaded.mask, True)
