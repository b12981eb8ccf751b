"""Weight sync: after each update, the remote sampling engine gets the learner's new weights under a new name.

The transport is one small interface, :class:`WeightSync`: ``push(model, version) -> served name``. The trainer
calls it after every optimizer update and points the remote sampler at the name it returns; the version label
(``run:policy-N``) goes on every trajectory the new weights sample.

:class:`LoraSync` (what LoRA training uses): the adapter alone is written to ``<sync_dir>/<name>`` (a temporary
directory renamed into place, so the server never reads a half-written adapter), then hot-loaded with
vLLM's ``POST /v1/load_lora_adapter {"lora_name", "lora_path"}`` — which ``agentrft serve`` implements with the same
body — under a fresh name per version (engines cache adapters by name: reloading one name is exactly the silent
"still sampling from the old adapter" failure). Adapters older than the last ``keep`` are unloaded
(``/v1/unload_lora_adapter``) and their directories removed; ``keep >= 2`` lets requests still in flight on the
previous version finish (async training).

:class:`FullSync` (full fine-tuning): the whole model is saved and loaded between ``/pause`` and ``/resume`` with
``agentrft serve``'s ``/update_weights`` (a directory); vLLM's update path (NCCL/IPC transfer) is not driven by it.
"""

from __future__ import annotations

import shutil
import time
from collections import deque
from pathlib import Path
from typing import Any, Protocol

import httpx

from agentrft.policy.remote_sampler import RemoteEngineError


class WeightSyncError(RemoteEngineError):
    """The engine did not take the new weights; the message names the endpoint and its answer."""


class WeightSync(Protocol):
    def push(self, model: Any, version: str) -> str:
        """Hand ``model``'s current weights to the engine as ``version``; returns the name requests must use."""

    def close(self) -> None: ...


def lora_name(version: str) -> str:
    """An adapter name for a version label (``run-x:policy-3`` → ``run-x-policy-3``): names are model ids in URLs
    and in ``ft:`` ids, where ``:`` already means something."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in version)


class LoraSync:
    def __init__(self, base_url: str, sync_dir: str | Path, *, api_key: str | None = None, keep: int = 2,
                 timeout_s: float = 120.0):
        self.base_url = base_url.rstrip("/")
        self.dir = Path(sync_dir)
        self.keep = max(1, int(keep))
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(headers=headers, timeout=timeout_s)
        self.loaded: deque[str] = deque()
        self.pushes = 0
        self.push_s = 0.0

    def push(self, model: Any, version: str) -> str:
        if not hasattr(model, "peft_config"):
            raise WeightSyncError("weight_sync: lora needs a LoRA learner (hyperparameters.lora is null: full "
                                  "fine-tuning has no adapter to hot-load)")
        t0 = time.perf_counter()
        name = lora_name(version)
        path = self.dir / name
        tmp = self.dir / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(tmp, safe_serialization=True)
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
        body = {"lora_name": name, "lora_path": str(path.resolve())}
        if self._post("/v1/load_lora_adapter", body, loaded_ok=True) == "loaded":
            # the name is taken on the engine (a resumed run pushing the version it stopped at): the name must mean
            # these weights, so the old ones go first
            self._post("/v1/unload_lora_adapter", {"lora_name": name}, missing_ok=True)
            self._post("/v1/load_lora_adapter", body)
        self.loaded.append(name)
        while len(self.loaded) > self.keep:
            old = self.loaded.popleft()
            self._post("/v1/unload_lora_adapter", {"lora_name": old}, missing_ok=True)
            shutil.rmtree(self.dir / old, ignore_errors=True)
        self.pushes += 1
        self.push_s += time.perf_counter() - t0
        return name

    def _post(self, path: str, body: dict, missing_ok: bool = False, loaded_ok: bool = False) -> str:
        url = self.base_url + path
        try:
            r = self.client.post(url, json=body)
        except httpx.TransportError as e:
            raise WeightSyncError(f"weight sync: {url}: {type(e).__name__}: {e}") from None
        if r.status_code == 404 and missing_ok:
            return "missing"
        if r.status_code == 400 and loaded_ok and "already been loaded" in r.text:  # vLLM's and our wording
            return "loaded"
        if r.status_code >= 400:
            raise WeightSyncError(f"weight sync: {url}: HTTP {r.status_code}: {r.text[:300]}")
        return "ok"

    def close(self) -> None:
        self.client.close()


class FullSync:
    """Full fine-tuning: the whole model is written to ``<sync_dir>/<name>`` (safetensors, atomically) and the engine
    loads it between ``POST /pause`` and ``POST /resume`` with ``POST /update_weights {"path", "version"}`` — the
    endpoints ``agentrft serve`` implements (serve/weight_updates.py). The served name does not change (the
    engine reports ``version`` as its checkpoint). vLLM's ``/update_weights`` takes its NCCL/IPC transfer
    metadata instead of a directory: this transport does not drive vLLM."""

    def __init__(self, base_url: str, sync_dir: str | Path, *, model: str, api_key: str | None = None,
                 timeout_s: float = 600.0):
        self.lora = LoraSync(base_url, sync_dir, api_key=api_key, keep=1, timeout_s=timeout_s)  # its HTTP + dir
        self.model = model
        self.last: Path | None = None
        self.pushes = 0
        self.push_s = 0.0

    def push(self, model: Any, version: str) -> str:
        if hasattr(model, "peft_config"):
            raise WeightSyncError("weight_sync: full needs full fine-tuning (hyperparameters.lora: null); a LoRA "
                                  "learner uses weight_sync: lora")
        t0 = time.perf_counter()
        d = self.lora.dir
        path, tmp = d / lora_name(version), d / f".{lora_name(version)}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(tmp, safe_serialization=True)
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
        self.lora._post("/pause", {})
        try:
            self.lora._post("/update_weights", {"path": str(path.resolve()), "version": version})
        finally:
            self.lora._post("/resume", {})
        if self.last is not None and self.last != path:
            shutil.rmtree(self.last, ignore_errors=True)
        self.last = path
        self.pushes += 1
        self.push_s += time.perf_counter() - t0
        return self.model

    def close(self) -> None:
        self.lora.close()


__all__ = ["FullSync", "LoraSync", "WeightSync", "WeightSyncError", "lora_name"]
