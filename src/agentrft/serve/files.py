"""OpenAI's files API: ``POST /v1/files`` (multipart ``file`` + ``purpose``), ``GET /v1/files``, ``GET
/v1/files/{id}``, ``GET /v1/files/{id}/content``, ``DELETE /v1/files/{id}``.

Bytes go to ``<data_dir>/files/<id>`` (written to a temp name, then renamed), metadata (name, purpose, size, sha256)
to the store. A ``fine-tune`` upload is validated as ``agentrft.data.load_dataset`` validates a dataset; its
problems come back as a 400 whose message names the uploaded file's line (``train.jsonl:3: …``). Nothing of a
rejected upload is kept.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse

from agentrft.serve.errors import APIError, query_limit

PURPOSES = ("fine-tune", "fine-tune-results", "batch", "assistants", "user_data", "evals")


def file_object(f: dict) -> dict[str, Any]:
    return {"id": f["id"], "object": "file", "bytes": f["bytes"], "created_at": int(f["created_at"]),
            "filename": f["filename"], "purpose": f["purpose"], "status": f["status"], "status_details": None,
            "expires_at": None, "sha256": f["sha256"]}


def dataset_problems(path: Path, shown_as: str, *, allow_demos: bool, known_tools: set[str] | None = None,
                     max_problems: int = 5) -> tuple[str | None, int]:
    """``(message naming the lines, row count)``; the message is None when the file is a valid dataset."""
    from agentrft.data import DatasetError, load_dataset

    try:
        rows = load_dataset(path, allow_demos=allow_demos, known_tools=known_tools)
    except DatasetError as e:
        probs = [p.replace(str(path), shown_as) for p in e.problems]
        more = f" (and {len(probs) - max_problems} more)" if len(probs) > max_problems else ""
        return "; ".join(probs[:max_problems]) + more, 0
    return None, len(rows)


def save_upload(store: Any, files_dir: Path, data: bytes, filename: str, purpose: str) -> dict:
    files_dir.mkdir(parents=True, exist_ok=True)
    file_id = f"file-{secrets.token_hex(12)}"
    path = files_dir / file_id
    tmp = files_dir / f".{file_id}.tmp"
    tmp.write_bytes(data)
    rows = None
    if purpose == "fine-tune":
        problem, rows = dataset_problems(tmp, filename, allow_demos=True)
        if problem is not None:
            tmp.unlink(missing_ok=True)
            raise APIError(400, f"invalid training data in {filename}: {problem}", param="file", code="invalid_file")
    os.replace(tmp, path)
    try:
        return store.add_file(file_id, filename=filename, purpose=purpose, nbytes=len(data),
                              sha256=hashlib.sha256(data).hexdigest(), path=str(path), rows=rows,
                              created_at=time.time())
    except Exception:
        path.unlink(missing_ok=True)
        raise


def mount_files(app: FastAPI, state: Any, files_dir: Path) -> None:
    def store() -> Any:
        if state.store is None:
            raise APIError(400, "this server has no store (start it with --store) so it keeps no files",
                           code="no_store")
        return state.store

    def get(file_id: str) -> dict:
        f = store().get_file(file_id)
        if f is None:
            raise APIError(404, f"No such File object: {file_id}", param="id", code="file_not_found")
        return f

    @app.post("/v1/files")
    async def upload(request: Request) -> dict:
        st = store()
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise APIError(400, "upload a file as multipart/form-data with fields 'file' and 'purpose'", param="file")
        try:
            form = await request.form()
        except Exception as e:  # noqa: BLE001 - a malformed multipart body is the client's
            raise APIError(400, f"could not read the multipart body: {e}", param="file") from None
        purpose = form.get("purpose")
        if not isinstance(purpose, str) or not purpose:
            raise APIError(400, "Missing required parameter: 'purpose'", param="purpose")
        if purpose not in PURPOSES:
            raise APIError(400, f"Invalid value for 'purpose': {purpose!r} (allowed: {', '.join(PURPOSES)})",
                           param="purpose")
        up = form.get("file")
        if up is None or isinstance(up, str):
            raise APIError(400, "Missing required parameter: 'file' (a file part)", param="file")
        data = await up.read()
        name = Path(up.filename or "upload.jsonl").name
        if not data:
            raise APIError(400, f"{name}: the file is empty", param="file", code="invalid_file")
        import asyncio

        f = await asyncio.to_thread(save_upload, st, files_dir, data, name, purpose)
        return file_object(f)

    @app.get("/v1/files")
    async def list_files(request: Request) -> dict:
        purpose = request.query_params.get("purpose")
        files = store().list_files(purpose)
        after = request.query_params.get("after")
        if after:
            ids = [f["id"] for f in files]
            files = files[ids.index(after) + 1:] if after in ids else []
        limit = query_limit(request, 10000)
        page = files[:limit]
        return {"object": "list", "data": [file_object(f) for f in page], "has_more": len(files) > limit,
                "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None}

    @app.get("/v1/files/{file_id}")
    async def retrieve(file_id: str) -> dict:
        return file_object(get(file_id))

    @app.get("/v1/files/{file_id}/content")
    async def content(file_id: str) -> FileResponse:
        f = get(file_id)
        if not Path(f["path"]).is_file():
            raise APIError(404, f"the content of {file_id} is gone from the data directory", param="id",
                           code="file_not_found")
        return FileResponse(f["path"], media_type="application/octet-stream", filename=f["filename"])

    @app.delete("/v1/files/{file_id}")
    async def delete(file_id: str) -> dict:
        get(file_id)
        busy = [j["id"] for j in store().list_jobs(limit=10**6)[0]
                if j["status"] not in ("succeeded", "failed", "cancelled")
                and file_id in (j["training_file"], j["validation_file"])]
        if busy:
            raise APIError(409, f"file {file_id} is used by job {busy[0]}, which has not finished; cancel it or wait",
                           param="id", code="file_in_use")
        f = store().delete_file(file_id)
        if f is not None:
            Path(f["path"]).unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": f is not None}
