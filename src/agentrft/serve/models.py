"""Which models the server can answer with, and loading them.

Ids (``GET /v1/models``):

* the base model: ``model_name`` (default: the model directory's name);
* each run in the store trained from this base, by its best kept checkpoint: ``ft:<base>:<suffix>:<run>``
  (``suffix``: the run's name, lowercased, ``[a-z0-9-]``), and each kept checkpoint:
  ``ft:<base>:<suffix>:<run>:ckpt-step-<N>``. The store is read on every listing and lookup, so a checkpoint a
  running ``agentrft train`` just wrote is servable at once; the run's best id follows its best checkpoint;
* adapters named in the config or loaded with ``POST /v1/load_lora_adapter``: their name;
* registry aliases: ``production`` (the newest ``promoted`` registry entry, see ``agentrft promote``) and
  ``candidate`` (the newest ``candidate`` entry), when their checkpoint is kept and of this base.

A LoRA checkpoint (``adapter_config.json``) is an adapter over the loaded base: loaded on first use into the base's
worker, kept in an LRU of ``max_loras``. A full fine-tuned checkpoint is a separate model with its own worker, loaded
when its weights fit in ``max_model_memory_mb`` beside what is loaded (idle full models are evicted first, least
recently used; otherwise 503 naming the budget).
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentrft.rollout.render import ChatRenderer
from agentrft.serve.config import ServeConfig
from agentrft.serve.errors import APIError
from agentrft.serve.worker import Worker

_FT = re.compile(r"^ft:(?P<base>.+):(?P<suffix>[a-z0-9-]*):(?P<run>run-[A-Za-z0-9-]+)(?::ckpt-step-(?P<step>\d+))?$")


def slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", (name or "").lower()).strip("-")
    return s[:40] or "run"


@dataclass
class Target:
    """What answers a request: a worker and the variant (adapter) within it."""

    model_id: str  # as the client named it
    checkpoint: str  # which weights answer (reported in responses)
    worker: Worker
    variant: str
    tokenizer: Any
    renderer: ChatRenderer
    release: Any = None  # call when the request is over: unpins its adapter / model

    def done(self) -> None:
        if self.release is not None:
            self.release()
            self.release = None


class ModelManager:
    def __init__(self, cfg: ServeConfig, *, metrics: Any = None, store: Any = None):
        from agentrft.rollout.stack import load_policy

        self.cfg = cfg
        self.metrics = metrics
        self.store = store
        self.base_path = cfg.model
        self.base_id = cfg.model_name or Path(cfg.model.rstrip("/")).name
        pol = load_policy(cfg.model)  # the rollout stack's loader: the same model, tokenizer and renderer
        self.base = self._worker(pol.model, pol.tokenizer, checkpoint=f"base:{self.base_id}", name="base")
        self.lock = threading.RLock()
        self.adapter_paths: dict[str, tuple[str, str]] = {}  # adapter model id → (path, checkpoint id)
        self.lru: OrderedDict[str, str] = OrderedDict()  # loaded adapter checkpoint id → variant name, oldest first
        self.full: OrderedDict[str, tuple[Worker, float]] = OrderedDict()  # checkpoint id → (worker, last use)
        # requests resolved to an adapter variant / a full model and not yet over: never evicted under them
        self.pins: dict[str, int] = {}
        for name, path in cfg.loras.items():
            self.register_adapter(name, path)

    # ---- workers -----------------------------------------------------------------------------------------
    def _worker(self, model: Any, tok: Any, *, checkpoint: str, name: str) -> Worker:
        renderer = ChatRenderer(tok, dialect=self.cfg.tool_call_dialect)
        pad = tok.pad_token_id if tok.pad_token_id is not None else renderer.eos_id
        w = Worker(model, tok, stop_ids=renderer.stop_ids, pad_id=pad, slots=self.cfg.slots, checkpoint=checkpoint,
                   name=name, metrics=self.metrics)
        w.renderer = renderer  # type: ignore[attr-defined]
        return w

    def workers(self) -> list[Worker]:
        return [self.base] + [w for w, _ in self.full.values()]

    def close(self) -> None:
        for w in self.workers():
            w.close()

    def loaded_bytes(self) -> int:
        return sum(w.param_bytes for w in self.workers())

    # ---- listing -----------------------------------------------------------------------------------------
    def _runs(self) -> list[dict]:
        if self.store is None:
            return []
        out = []
        for run in self.store.list_runs():
            if self._same_base(run):
                out.append(run)
        return out

    def _same_base(self, run: dict) -> bool:
        bm = str(run.get("base_model") or "")
        if not bm:
            return False
        if bm == self.base_path:
            return True
        here = Path(self.base_path).expanduser()
        cands = [Path(bm).expanduser()]
        base_dir = (run.get("config") or {}).get("base_dir")
        if base_dir:
            cands.append(Path(base_dir) / bm)
        try:
            return here.exists() and any(c.exists() and c.resolve() == here.resolve() for c in cands)
        except OSError:
            return False

    def _kept(self, run_id: str) -> list[dict]:
        return [c for c in self.store.checkpoints(run_id) if c["kept"] and c["path"] and Path(c["path"]).is_dir()]

    @staticmethod
    def _best(ckpts: list[dict]) -> dict | None:
        scored = [c for c in ckpts if c["val_reward"] is not None]
        if not scored:
            return None
        return sorted(scored, key=lambda c: (-c["val_reward"], c["step"]))[0]

    def list_models(self) -> list[dict]:
        created = int(time.time())
        out = [{"id": self.base_id, "object": "model", "created": created, "owned_by": "agentrft",
                "root": self.base_path, "parent": None}]
        for run in self._runs():
            ckpts = self._kept(run["id"])
            if not ckpts:
                continue
            stem = f"ft:{self.base_id}:{slug(run.get('name', ''))}:{run['id']}"
            best = self._best(ckpts)
            if best is not None:
                out.append({"id": stem, "object": "model", "created": created, "owned_by": "agentrft",
                            "root": best["path"], "parent": self.base_id, "checkpoint": best["id"]})
            for c in ckpts:
                out.append({"id": f"{stem}:ckpt-step-{c['step']}", "object": "model", "created": created,
                            "owned_by": "agentrft", "root": c["path"], "parent": self.base_id, "checkpoint": c["id"]})
        for alias, (ckpt, path) in self._aliases().items():
            out.append({"id": alias, "object": "model", "created": created, "owned_by": "agentrft", "root": path,
                        "parent": self.base_id, "checkpoint": ckpt})
        with self.lock:
            for name, (path, _) in self.adapter_paths.items():
                out.append({"id": name, "object": "model", "created": created, "owned_by": "agentrft", "root": path,
                            "parent": self.base_id})
        return out

    ALIASES = {"production": "promoted", "candidate": "candidate"}

    def _aliases(self) -> dict[str, tuple[str, str]]:
        """alias → (checkpoint id, path) from the registry (newest entry of each status)."""
        if self.store is None:
            return {}
        out: dict[str, tuple[str, str]] = {}
        for alias, status in self.ALIASES.items():
            for e in self.store.registry(status):  # newest first
                run = self.store.get_run(e["run_id"])
                if run is None or not self._same_base(run):
                    continue
                c = next((c for c in self._kept(run["id"]) if c["id"] == e["checkpoint_id"]), None)
                if c is not None:
                    out[alias] = (c["id"], c["path"])
                break
        return out

    # ---- resolving ---------------------------------------------------------------------------------------
    def _checkpoint_for(self, model_id: str) -> tuple[str, str] | None:
        """``(checkpoint id, path)`` for an ``ft:`` id, None when it names nothing."""
        m = _FT.match(model_id)
        if m is None or m["base"] != self.base_id or self.store is None:
            return None
        run = self.store.get_run(m["run"])
        if run is None or run["id"] != m["run"] or not self._same_base(run) or slug(run.get("name", "")) != m["suffix"]:
            return None
        ckpts = self._kept(run["id"])
        if m["step"] is not None:
            c = next((c for c in ckpts if c["step"] == int(m["step"])), None)
        else:
            c = self._best(ckpts)
        return None if c is None else (c["id"], c["path"])

    def _checkpoint_by_id(self, checkpoint_id: str) -> tuple[str, str] | None:
        """``(checkpoint id, path)`` for a kept checkpoint of this base named by its store id (what deployments name
        as production and candidate), None otherwise."""
        if self.store is None or checkpoint_id.startswith("ft:"):
            return None
        c = self.store.get_checkpoint(checkpoint_id)
        if c is None or not c["kept"] or not c["path"] or not Path(c["path"]).is_dir():
            return None
        run = self.store.get_run(c["run_id"])
        return (c["id"], c["path"]) if run is not None and self._same_base(run) else None

    def resolve(self, model_id: str) -> Target:
        if model_id == self.base_id:
            return self._target(model_id, self.base, "")
        with self.lock:
            known = self.adapter_paths.get(model_id)
        if known is not None:
            path, ckpt = known
        elif model_id in self.ALIASES:
            found = self._aliases().get(model_id)
            if found is None:
                raise APIError(404, f"The model '{model_id}' does not exist: no {self.ALIASES[model_id]} registry "
                               "entry with a kept checkpoint of this base", param="model", code="model_not_found")
            ckpt, path = found
        else:
            found = self._checkpoint_for(model_id) or self._checkpoint_by_id(model_id)
            if found is None:
                raise APIError(404, f"The model '{model_id}' does not exist", param="model", code="model_not_found")
            ckpt, path = found
        if (Path(path) / "adapter_config.json").exists():
            return self._target(model_id, self.base, self._ensure_adapter(ckpt, path))
        return self._target(model_id, self._ensure_full(ckpt, path), "")

    def _target(self, model_id: str, w: Worker, variant: str) -> Target:
        """(Called with the variant pinned, see ``_pin``.)"""
        ckpt = w.adapters.get(variant, w.checkpoint) if variant else w.checkpoint
        key = self._pin_key(w, variant)
        return Target(model_id, ckpt, w, variant, w.tok, w.renderer,  # type: ignore[attr-defined]
                      release=(lambda: self._unpin(key)) if key else None)

    def _pin_key(self, w: Worker, variant: str) -> str | None:
        if variant:
            return variant
        if w is not self.base:
            return "full:" + w.checkpoint
        return None

    def _pin(self, key: str) -> None:
        with self.lock:
            self.pins[key] = self.pins.get(key, 0) + 1

    def _unpin(self, key: str) -> None:
        with self.lock:
            n = self.pins.get(key, 0) - 1
            if n > 0:
                self.pins[key] = n
            else:
                self.pins.pop(key, None)

    # ---- adapters ----------------------------------------------------------------------------------------
    @staticmethod
    def _variant(key: str) -> str:
        return "a" + hashlib.sha1(key.encode()).hexdigest()[:12]

    def register_adapter(self, name: str, path: str) -> None:
        p = Path(path)
        if not (p / "adapter_config.json").exists():
            raise APIError(400, f"{path}: not a LoRA adapter directory (no adapter_config.json)", param="lora_path")
        if name == self.base_id or _FT.match(name) or name in self.ALIASES:
            raise APIError(400, f"the adapter name {name!r} is taken by a model id", param="lora_name")
        with self.lock:
            self.adapter_paths[name] = (str(p), f"lora:{name}")

    def unregister_adapter(self, name: str, drain_s: float = 120.0) -> bool:
        """Forget adapter ``name``: new requests for it get 404 at once; requests already admitted finish on its
        weights (waiting up to ``drain_s``), then it is unloaded."""
        with self.lock:
            if name not in self.adapter_paths:
                return False
            del self.adapter_paths[name]
            variant = self.lru.pop(f"lora:{name}", None)
        if variant is not None:
            deadline = time.monotonic() + drain_s
            while time.monotonic() < deadline:
                with self.lock:
                    if not self.pins.get(variant) and self.base.variant_idle(variant):
                        break
                time.sleep(0.02)
            self.base.call(lambda: self.base.unload_adapter(variant))
        return True

    ADAPTER_WAIT_S = 30.0  # how long a request waits for an adapter slot when every loaded adapter is busy

    def _ensure_adapter(self, ckpt: str, path: str) -> str:
        """Load ``path`` as an adapter of the base worker (if not loaded) and return its variant name. With
        ``max_loras`` adapters loaded, the least recently used idle one is unloaded first; when all are serving
        requests this waits for one to go idle (503 after ``ADAPTER_WAIT_S``)."""
        key = ckpt  # the LRU is keyed by the weights (a run's "best" id moves from checkpoint to checkpoint)
        deadline = time.monotonic() + self.ADAPTER_WAIT_S
        while True:
            with self.lock:
                variant = self.lru.get(key)
                if variant is not None:
                    self.lru.move_to_end(key)
                    self._pin(variant)
                    return variant
                if len(self.lru) < self.cfg.max_loras:
                    return self._load_adapter(key, path, ckpt)
                victim = next((k for k, v in self.lru.items()
                               if not self.pins.get(v) and self.base.variant_idle(v)), None)
                if victim is not None:
                    v = self.lru.pop(victim)
                    self.base.call(lambda v=v: self.base.unload_adapter(v))
                    return self._load_adapter(key, path, ckpt)
            if time.monotonic() > deadline:
                raise APIError(503, f"all {self.cfg.max_loras} loaded adapters (max_loras) are serving requests; "
                               "retry shortly", code="adapters_busy")
            time.sleep(0.02)

    def _load_adapter(self, key: str, path: str, ckpt: str) -> str:
        with self.lock:
            variant = self._variant(f"{key}|{path}")
            try:
                self.base.call(lambda: self.base.load_adapter(variant, path, ckpt))
            except Exception as e:  # noqa: BLE001 - a broken checkpoint is the client's answer, not a crash
                raise APIError(503, f"could not load adapter {key!r} from {path}: {e}", code="model_load_failed") from None
            self.lru[key] = variant
            self._pin(variant)
            return variant

    # ---- full fine-tuned checkpoints -----------------------------------------------------------------------
    def _ensure_full(self, ckpt: str, path: str) -> Worker:
        from agentrft.rollout.stack import load_policy

        with self.lock:
            if ckpt in self.full:
                w, _ = self.full.pop(ckpt)
                self.full[ckpt] = (w, time.time())
                self._pin("full:" + ckpt)
                return w
            need = _weights_bytes(Path(path))
            budget = self.cfg.max_model_memory_mb
            if budget is not None:
                cap = int(budget * (1 << 20))
                while self.loaded_bytes() + need > cap:
                    victim = next((k for k, (w, _) in self.full.items()
                                   if w.idle() and not self.pins.get("full:" + k)), None)
                    if victim is None:
                        raise APIError(
                            503, f"loading {ckpt} needs {need / 2**20:.1f} MB of weights; the memory budget "
                            f"max_model_memory_mb={budget:g} has {self.loaded_bytes() / 2**20:.1f} MB in use by "
                            f"{1 + len(self.full)} loaded model(s) that are serving requests", code="memory_budget")
                    w, _ = self.full.pop(victim)
                    w.close()
            try:
                pol = load_policy(path)
            except Exception as e:  # noqa: BLE001
                raise APIError(503, f"could not load checkpoint {ckpt} from {path}: {e}", code="model_load_failed") from None
            w = self._worker(pol.model, pol.tokenizer, checkpoint=ckpt, name=ckpt[-24:])
            self.full[ckpt] = (w, time.time())
            self._pin("full:" + ckpt)
            return w


def _weights_bytes(path: Path) -> int:
    files = list(path.glob("*.safetensors")) or list(path.glob("*.bin"))
    return sum(f.stat().st_size for f in files)
