"""The remote sampler: assistant turns from an OpenAI/vLLM-compatible server, token in and token out.

Each trajectory's turn is one ``POST {base_url}/completions`` request::

    {"model": <served model: the base, or the adapter of the current policy version>,
     "prompt": [token ids of the whole prefix], "max_tokens": min(max_new_tokens, context left),
     "temperature": T, "top_p": p, "logprobs": 0, "return_token_ids": true, "return_tokens_as_token_ids": true,
     "stop_token_ids": [the renderer's stop ids], "skip_special_tokens": false,
     "seed": s, "seed_offset": k}                                    # agentrft serve; vLLM gets "seed" only

and the answer's sampled ids (``choices[0].token_ids``; vLLM without it: ``logprobs.tokens`` as
``"token_id:N"``) and their log-probs (``logprobs.token_logprobs``) become the :class:`Generation` — never
re-tokenized text, so the learner trains on exactly the ids that were sampled, with the behaviour policy's log-probs.

Seeds (:mod:`agentrft.policy.seeding`): the agent loop gives each trajectory a ``torch.Generator`` seeded with the
rollout's seed, and the in-process samplers draw one uniform from it per sampled token. This sampler sends
``seed = gen.initial_seed()`` and ``seed_offset`` = the tokens sampled so far in that trajectory, then advances the
local generator by the same number of draws — so against ``agentrft serve`` a trajectory is token-identical to the
in-process sampler's for the same seed and weights. ``seed_mode: mixed`` (for vLLM, which has no offset) sends one
seed mixed from both instead: reproducible, not identical to the in-process tokens.

The turns of one batch go out as concurrent requests (``max_concurrency``), which a continuous-batching server
decodes together. Transport failures and 5xx answers are retried (``retries``, exponential backoff); anything else
is a :class:`RemoteSamplerError` naming the server and its error message.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import torch

from agentrft.policy.sampling import Generation, SamplingParams
from agentrft.policy.seeding import mixed_seed

SEED_MODES = ("offset", "mixed")


class RemoteEngineError(RuntimeError):
    """A remote engine failed (sampling, weight sync, start): the message names it and what it answered — a user
    error the CLI prints as such, not a traceback."""


class RemoteSamplerError(RemoteEngineError):
    """The server could not sample a turn; the message names the URL and what it answered."""


def _state_digest(gen: torch.Generator) -> bytes:
    return hashlib.blake2b(gen.get_state().numpy().tobytes(), digest_size=16).digest()


class RemoteSampler:
    """A :class:`~agentrft.policy.sampler.Sampler` over a server's ``/v1/completions`` (token-id prompts).

    ``model``: the name requests use (the base model's id on the server; a weight sync switches it to the new
    adapter's name). ``version``: the policy version label the agent loop stamps on trajectories (the trainer sets
    it). ``stop_ids``: the ids that end a turn (the server is told them too, as vLLM's ``stop_token_ids``)."""

    def __init__(self, base_url: str, *, model: str, stop_ids: set[int], api_key: str | None = None,
                 timeout_s: float = 300.0, max_concurrency: int = 64, retries: int = 3, seed_mode: str = "offset"):
        if seed_mode not in SEED_MODES:
            raise ValueError(f"seed_mode must be one of {', '.join(SEED_MODES)}, got {seed_mode!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.stop_ids = set(int(i) for i in stop_ids)
        self.seed_mode = seed_mode
        self.retries = int(retries)
        self.max_concurrency = int(max_concurrency)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
        self.client = httpx.Client(headers=headers, timeout=timeout_s, limits=limits)
        self.pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="agentrft-remote")
        self.version: str | None = None
        self.tokens_generated = 0
        self.requests = 0
        self.retried = 0
        # generator → (digest of its state after our last turn, tokens drawn so far): where its stream stands
        self._pos: OrderedDict[int, tuple[bytes, int]] = OrderedDict()
        self._pos_cap = 1 << 16

    # ---- the Sampler protocol --------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams, generators: list[torch.Generator],
                 limits: list[int] | None = None) -> list[Generation]:
        if not prompts:
            return []
        limits = [min(params.max_new_tokens, n) for n in (limits or [params.max_new_tokens] * len(prompts))]
        offsets = [self._offset(g) for g in generators]
        futs = [self.pool.submit(self._one, p, params, g.initial_seed(), off, lim)
                for p, g, off, lim in zip(prompts, generators, offsets, limits)]
        gens = [f.result() for f in futs]
        for g, off, out in zip(generators, offsets, gens):
            for _ in out.ids:  # the draws the server made for this turn, so the local stream stays in step
                torch.rand(1, generator=g)
            self._remember(g, off + len(out.ids))
        return gens

    def pinned(self, model: str, version: str | None) -> "RemoteSampler":
        """A view of this sampler fixed to one served model and version label, sharing its connections, threads
        and stream positions (each rollout of a worker, or each async batch, keeps the weights it started with
        while the trainer moves the original on)."""
        import copy

        view = copy.copy(self)
        view.model, view.version = model, version
        return view

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    # ---- one request -----------------------------------------------------------------------------
    def _body(self, prompt: list[int], params: SamplingParams, seed: int, offset: int, max_tokens: int) -> dict:
        body: dict[str, Any] = {
            "model": self.model, "prompt": list(prompt), "max_tokens": max_tokens,
            "temperature": params.temperature, "top_p": params.top_p, "n": 1,
            "logprobs": 0, "return_token_ids": True, "return_tokens_as_token_ids": True,
            "stop_token_ids": sorted(self.stop_ids), "skip_special_tokens": False,
        }
        if self.seed_mode == "offset":
            body["seed"], body["seed_offset"] = int(seed), int(offset)
        else:
            body["seed"] = mixed_seed(seed, offset)
        return body

    def _one(self, prompt: list[int], params: SamplingParams, seed: int, offset: int, max_tokens: int) -> Generation:
        if max_tokens <= 0:
            return Generation([], [], "length", 0.0)
        t0 = time.perf_counter()
        body = self._body(prompt, params, seed, offset, max_tokens)
        data = self._post("/completions", body)
        ids, lps, finish = self._parse(data)
        self.tokens_generated += len(ids)
        return Generation(ids, lps, finish, time.perf_counter() - t0)

    def _post(self, path: str, body: dict) -> dict:
        url = self.base_url + path
        delay = 0.5
        for attempt in range(self.retries + 1):
            self.requests += 1
            try:
                r = self.client.post(url, json=body)
            except httpx.TransportError as e:
                if attempt == self.retries:
                    raise RemoteSamplerError(f"sampler: {url}: {type(e).__name__}: {e} (after {attempt + 1} "
                                             "tries)") from None
            else:
                if r.status_code < 400:
                    try:
                        return r.json()
                    except ValueError:
                        raise RemoteSamplerError(f"sampler: {url}: the answer is not JSON: {r.text[:200]!r}") from None
                if r.status_code < 500 and r.status_code != 429 or attempt == self.retries:
                    raise RemoteSamplerError(f"sampler: {url}: HTTP {r.status_code}: {_error_message(r)}")
            self.retried += 1
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def _parse(self, data: dict) -> tuple[list[int], list[float], str]:
        try:
            c = data["choices"][0]
            lp = c.get("logprobs") or {}
            ids = c.get("token_ids")
            if ids is None:  # vLLM's return_tokens_as_token_ids: "token_id:N" strings
                ids = [int(str(t).rsplit(":", 1)[1]) for t in lp["tokens"]]
            ids = [int(i) for i in ids]
            lps = [float(x) for x in lp["token_logprobs"]]
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise RemoteSamplerError(f"sampler: {self.base_url}/completions: the answer has no sampled token ids "
                                     f"and log-probs ({type(e).__name__}: {e}); the server must support token-id "
                                     "completions with logprobs and return_token_ids (or return_tokens_as_token_ids)"
                                     ) from None
        if len(ids) != len(lps):
            raise RemoteSamplerError(f"sampler: {self.base_url}/completions: {len(ids)} token ids but {len(lps)} "
                                     "log-probs in one choice")
        # "stop" here means: ended with one of our stop tokens (the agent loop strips it from the text); a server
        # that stopped on anything else (a stop string) is treated as cut, keeping every token it sampled
        finish = "stop" if ids and ids[-1] in self.stop_ids else "length"
        return ids, lps, finish

    # ---- where each trajectory's random stream stands ---------------------------------------------
    def _offset(self, gen: torch.Generator) -> int:
        known = self._pos.get(id(gen))
        digest = _state_digest(gen)
        if known is not None and known[0] == digest:
            return known[1]
        fresh = torch.Generator().manual_seed(gen.initial_seed())
        if digest == _state_digest(fresh):
            return 0
        raise RemoteSamplerError("sampler: a generator at a position this sampler did not leave it in: the remote "
                                 "sampler continues a trajectory's stream as (seed, tokens sampled so far), so each "
                                 "trajectory's generator must start at manual_seed(seed) and be drawn from only by "
                                 "this sampler")

    def _remember(self, gen: torch.Generator, offset: int) -> None:
        key = id(gen)
        self._pos[key] = (_state_digest(gen), offset)
        self._pos.move_to_end(key)
        while len(self._pos) > self._pos_cap:
            self._pos.popitem(last=False)


def _error_message(r: httpx.Response) -> str:
    try:
        err = r.json().get("error")
        if isinstance(err, dict):
            return str(err.get("message") or err)
        if err:
            return str(err)
        return str(r.json().get("message") or r.text[:300])
    except (ValueError, AttributeError):
        return r.text[:300] or r.reason_phrase


__all__ = ["RemoteEngineError", "RemoteSampler", "RemoteSamplerError", "SEED_MODES"]
