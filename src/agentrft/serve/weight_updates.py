"""Full-weight updates of the served base model, for a trainer that samples from this server (``weight_sync: full``):
vLLM-style ``POST /pause`` / ``POST /resume`` (``GET /is_paused``) around ``POST /update_weights``.

* ``/pause``: no new sequence is admitted (requests queue); sequences in flight finish on the current weights.
* ``/update_weights {"path": dir, "version": name?}``: needs a pause; waits until nothing is decoding, then loads the
  ``*.safetensors`` files of ``dir`` (a ``save_pretrained`` of the same architecture) into the base model in place,
  drops the engines (their packed weights are rebuilt from the new ones) and reports ``version`` as the base's
  checkpoint id from then on (``system_fingerprint``, ``X-Agentrft-Checkpoint``). A key the model does not have, or
  a parameter the files miss (tied weights excepted), is a 400 naming it, and nothing is changed.
* ``/resume``: admission resumes; queued requests run on the new weights.

vLLM's own ``/update_weights`` takes its weight-transfer engine's metadata (NCCL/IPC), not a directory: only
``/pause`` and ``/resume`` are shared with it. Refused while LoRA adapters are loaded over the base (their layers
wrap the base's, so the checkpoint's keys no longer match): unload them first.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from fastapi import Request
from pydantic import Field

from agentrft.serve.errors import APIError
from agentrft.serve.protocol import _Body


class UpdateWeightsRequest(_Body):
    path: str = Field(..., min_length=1)
    version: str | None = Field(None, max_length=200)


def reload_base(worker: Any, path: str, checkpoint: str | None) -> int:
    """On the worker thread: the files' tensors into ``worker.model``; returns the number of tensors loaded."""
    import torch
    from safetensors.torch import load_file

    if worker.adapters:
        raise ValueError(f"LoRA adapters are loaded over the base ({', '.join(sorted(worker.adapters))}): unload "
                         "them before a full-weight update")
    if any(worker.slot_req.get(v) for v in worker.slot_req):
        raise RuntimeError("sequences are still decoding")
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise ValueError(f"{path}: no *.safetensors files")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_file(str(f)))
    own = worker.model.state_dict()
    unknown = sorted(set(sd) - set(own))
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} tensors this model does not have, e.g. {unknown[0]!r}")
    loaded_ptrs = {own[k].data_ptr() for k in sd}
    missing = [k for k in own if k not in sd and own[k].data_ptr() not in loaded_ptrs]  # tied weights are fine
    if missing:
        raise ValueError(f"{path}: {len(missing)} parameters missing, e.g. {missing[0]!r}")
    bad = [k for k in sd if sd[k].shape != own[k].shape]
    if bad:
        raise ValueError(f"{path}: {bad[0]!r} has shape {tuple(sd[bad[0]].shape)}, the model {tuple(own[bad[0]].shape)}")
    with torch.no_grad():
        for k, t in sd.items():
            own[k].copy_(t.to(own[k].dtype))
    for eng in worker.engines.values():
        eng.close()
    worker.engines.clear()
    worker.slot_req.clear()
    worker.sampler.spare_packed = None
    worker._active = None
    if checkpoint:
        worker.checkpoint = checkpoint
    return len(sd)


def mount_weight_updates(app: Any, st: Any, body_as: Any) -> None:
    @app.post("/pause")
    async def pause() -> dict:
        st.manager.base.set_paused(True)
        return {"is_paused": True}

    @app.post("/resume")
    async def resume() -> dict:
        st.manager.base.set_paused(False)
        return {"is_paused": False}

    @app.get("/is_paused")
    async def is_paused() -> dict:
        return {"is_paused": st.manager.base.paused}

    @app.post("/update_weights")
    async def update_weights(request: Request) -> dict:
        req: UpdateWeightsRequest = await body_as(request, UpdateWeightsRequest)
        w = st.manager.base
        if not w.paused:
            raise APIError(400, "pause generation first (POST /pause); in-flight sequences finish, new ones wait",
                           code="not_paused")
        deadline = time.monotonic() + 600
        while w.active() > 0:
            if time.monotonic() > deadline:
                raise APIError(503, "sequences still decoding after 600 s; weights not updated", code="busy")
            await asyncio.sleep(0.02)
        try:
            n = await asyncio.to_thread(w.call, lambda: reload_base(w, req.path, req.version), 600)
        except (OSError, ValueError) as e:
            raise APIError(400, f"update_weights: {e}", param="path") from None
        return {"status": "ok", "tensors": n, "checkpoint": w.checkpoint}


__all__ = ["UpdateWeightsRequest", "mount_weight_updates", "reload_base"]
