"""Media files of an item (``/media/{item_id}/{index}``): its source video and the payloads
its record points to in the run's artifact store, for the caller who may see the item."""

from __future__ import annotations

from typing import Annotated, Any

import fsspec
from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

from any2capins.workflows.review.api import ERRORS, ErrorOut
from any2capins.workflows.review.deps import Bearer, ItemId, principal, run_of, store_of
from any2capins.workflows.review.views import resolve_media

router = APIRouter()


@router.get(
    "/media/{item_id}/{index}", tags=["media"], responses={404: {"model": ErrorOut}, **ERRORS}
)
def media(
    item_id: ItemId,
    index: Annotated[int, PathParam(ge=0, le=10_000)],
    request: Request,
    creds: Bearer,
) -> Response:
    """A media file of an item: its source video or a payload in the artifact store."""
    user, _ = principal(request, creds)
    if user is None:
        return JSONResponse({"detail": "log in first"}, status_code=401)
    view = store_of(request).item(user, item_id)
    target, local, media_type = resolve_media(view.record, index, run_of(request).artifacts_root)
    disposition = (
        {} if media_type != "application/octet-stream" else {"content-disposition": "attachment"}
    )
    headers = {"cache-control": "private, max-age=3600", **disposition}
    if local:
        return FileResponse(target, media_type=media_type, headers=headers)

    def chunks() -> Any:
        with fsspec.open(target, "rb") as f:
            while block := f.read(1 << 16):
                yield block

    return StreamingResponse(chunks(), media_type=media_type, headers=headers)
