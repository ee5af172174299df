"""The vLLM backend: the audio half in transformers under the SEEN patch, the language model in vLLM.

Per batch, on the engine's device thread (:meth:`VllmBackend.start_generate`):

1. the jobs' prompts and clips become one transformers batch (the adapter's own chat template, escaping and
   feature extraction, exactly as the transformers backend builds it);
2. when lambda or profile depend on the paper's SEE (adaptive lambda, ``auto`` profile), a score-only pass runs
   first; each clip gets its lambda and profile (the same :class:`NoisePolicy` rules);
3. the audio tower and projector run once for the whole batch inside ``PatchedModel.neutralizing``
   (:meth:`AudioLM.audio_embeddings`): the rows the language model reads, already neutralized per clip;
4. each job goes to vLLM as its own request at once: the prompt's token ids with one ``<|AUDIO|>`` per clip
   (vLLM expands it to the clip's rows) and the clip rows as precomputed audio embeddings;
5. only then, when the report needs the paper's SEE of an edited clip (``exact``), are the critical layers
   replayed unedited: while vLLM already decodes, so the replay is off the requests' critical path unless
   it outlasts their answers. Each job's noise report follows (its answer waits for it).

The device thread is then free for the next batch. One backend thread owns vLLM's engine for its whole life
(its client talks to the engine-core process over ZMQ sockets, which must not be shared between threads):
it adds arriving requests, steps the engine, streams each job's new text to its sink, aborts a job's request
as soon as ``job.cancelled`` is set, and completes the job's future when vLLM finishes it. Requests of later
batches join the running ones at the next step: continuous batching, each request with its own
``max_tokens``, stop strings and seed, in vLLM's paged KV cache.

vLLM is built with ``limit_mm_per_prompt={"audio": 0}`` and ``enable_mm_embeds=True``: it never builds or
loads its own audio tower, only the language model; the transformers side releases its language model and
LM head (moved to the meta device) once the patch is built, so the language model's weights are held once
(at load time both are briefly present: transformers loads the whole checkpoint before releasing them).
Prefix caching stays correct under per-request lambdas because vLLM keys cached blocks on the embeddings
passed in (their hash), not on the placeholder tokens: a clip neutralized with another lambda is another key.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch

from seen.adapters import AudioLM, Message, ModelBatch
from seen.bundle import NoiseBundle
from seen.policy import NoiseAssessment, NoisePolicy
from service.engine.backend import GenerateJob, GenerateOutcome, Timing
from service.engine.streaming import IncrementalDecoder
from service.engine.transformers_backend import ModelBackend

logger = logging.getLogger(__name__)

VLLM_ARCHITECTURES = ("Qwen2AudioForConditionalGeneration",)
"""Architectures whose language model vLLM serves from our audio embeddings (tested: tests/test_vllm_engine.py)."""

NOT_SERVED = {
    "Qwen2_5OmniThinkerForConditionalGeneration": (
        "vLLM 0.32's Qwen2.5-Omni takes mel features only, not precomputed audio embeddings (it declares no "
        "audio_embeds input and needs audio_feature_lengths for its M-RoPE positions), and loads the full Omni "
        "checkpoint rather than a thinker"
    ),
    "VoxtralForConditionalGeneration": (
        "vLLM 0.32's Voxtral takes raw audio only, not precomputed audio embeddings, and needs the Mistral-format "
        "checkpoint with tokenizer_mode=mistral"
    ),
    "WhisperForConditionalGeneration": (
        "in vLLM Whisper is an encoder-decoder whose decoder reads the encoder output by cross-attention, and vLLM "
        "accepts neither a precomputed encoder output nor prompt embeddings for encoder-decoder models"
    ),
}
"""Why the others are refused (read from vLLM 0.32's model code: ``qwen2_5_omni_thinker.py``, ``voxtral.py``,
``whisper.py``). Qwen2.5-Omni might be served through vLLM's prompt-embeddings input instead (a prompt's rows
given whole, the audio rows among them), which was not built or verified here."""


def check_vllm_support(bundle: NoiseBundle) -> None:
    """Raise ValueError, naming the reason, for a model (the bundle's) or bundle the vLLM engine cannot serve.

    Needs only the bundle, which names its model's architecture, so the server refuses before loading anything.
    """
    architecture = bundle.model.architecture
    if architecture not in VLLM_ARCHITECTURES:
        reason = NOT_SERVED.get(architecture, "not supported by this project's vllm engine")
        raise ValueError(
            f"the vllm engine serves {', '.join(VLLM_ARCHITECTURES)} only, not {architecture}: {reason}; "
            "use engine=transformers for this model"
        )
    if not bundle.site.in_encoder:
        raise ValueError(
            f"the vllm engine applies SEEN in the audio encoder only; this bundle's site is {bundle.site.value} "
            "(inside the language model, which vLLM runs): use engine=transformers or an encoder-site bundle"
        )


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as error:
        raise ValueError(
            f"engine=vllm needs vLLM, which cannot be imported here ({error}); install the project's vllm extra"
        ) from error
    return vllm


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class _Request:
    """A job handed to vLLM's loop: what it needs to run, and what its answer carries besides the text."""

    job: GenerateJob
    prompt: dict[str, Any]
    prompt_tokens: int
    batch_size: int
    decoder: IncrementalDecoder
    reported: Future[tuple[NoiseAssessment | None, float]] = field(default_factory=Future)
    """The job's noise report and its batch's encoder seconds: set by the device thread, after vLLM has the
    request (the exact SEE's replay runs while vLLM decodes)."""
    future: Future[GenerateOutcome] = field(default_factory=Future)
    submitted: float = field(default_factory=time.perf_counter)
    tokens: list[int] = field(default_factory=list)


class VllmBackend(ModelBackend):
    """Audio tower and projector patched with the bundle (transformers); the language model in vLLM.

    ``score`` is the transformers backend's (the encoder alone); ``start_generate`` hands the neutralized audio
    rows to vLLM's loop. ``engine_options`` go to ``vllm.EngineArgs`` (e.g. ``max_num_seqs``).
    """

    def __init__(
        self,
        lm: AudioLM,
        bundle: NoiseBundle,
        policy: NoisePolicy,
        *,
        model_name: str,
        see_method: str,
        **engine_options: Any,
    ) -> None:
        check_vllm_support(bundle)
        bundle.check_model(lm.identity())
        vllm = _import_vllm()
        super().__init__(lm, bundle, policy, model_name=model_name, see_method=see_method)
        self._release_language_model()
        self._audio_token = lm.audio_token_id
        tokenizer = copy.deepcopy(lm.tokenizer)  # the loop thread's own: the device thread tokenizes meanwhile
        self._decode = lambda ids: str(tokenizer.decode(list(ids), skip_special_tokens=True))
        options = {
            "model": lm.source,
            "served_model_name": model_name,  # vLLM's metrics carry it as model_name, as the service's do
            "dtype": _dtype_name(lm.dtype),
            "enable_mm_embeds": True,
            "limit_mm_per_prompt": {"audio": 0},  # no vLLM audio tower: embeddings only
            "max_model_len": lm.context_tokens,
            "enforce_eager": True,
            "seed": 0,
            **engine_options,
        }
        self._inbox: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        started: Future[Any] = Future()
        self._thread = threading.Thread(target=self._serve, args=(vllm, options, started), name="seen-vllm")
        self._thread.start()
        self._engine: Any = started.result()

    def _release_language_model(self) -> None:
        """Free the transformers language model and LM head: vLLM holds the language model."""
        model: Any = self.model.lm.model
        model.model.language_model.to("meta")
        model.lm_head.to("meta")

    def close(self) -> None:
        super().close()
        if self._thread.is_alive():
            self._inbox.put(None)
            self._thread.join()

    # -- the device thread's half -------------------------------------------------------------------

    def _prompt_ids(self, batch: ModelBatch, row: int) -> list[int]:
        """A row's prompt as vLLM takes it: padding removed, each clip's run of audio tokens one token again."""
        ids = batch.inputs["input_ids"][row][batch.inputs["attention_mask"][row].bool()].tolist()
        return [t for i, t in enumerate(ids) if t != self._audio_token or i == 0 or ids[i - 1] != self._audio_token]

    def generate(self, jobs: Sequence[GenerateJob]) -> list[GenerateOutcome]:
        return [future.result() for future in self.start_generate(jobs)]

    @torch.inference_mode()
    def start_generate(self, jobs: Sequence[GenerateJob]) -> list[Future[GenerateOutcome]]:
        clips, rows = self._flatten(jobs)
        conversations: list[Sequence[Message]] = [job.conversation for job in jobs]
        batch = self.model.chat_batch(conversations, clips)
        exact_see = self._exact_see(jobs) if clips else None
        exact, encoder_seconds = self._score_pass(batch) if exact_see == "before" else (None, 0.0)
        controls = self._controls(jobs, rows, exact)

        embeddings: list[torch.Tensor] = []
        readout = calls = None
        if clips:
            with ExitStack() as stack:
                calls = stack.enter_context(self.model.recording_critical_layers()) if exact_see == "replay" else None
                encoder = stack.enter_context(self.clock.measuring())
                readout = stack.enter_context(
                    self.model.neutralizing(batch, controls.clip_strength, controls.clip_profile)
                )
                embeddings = [rows_.cpu() for rows_ in self.model.lm.audio_embeddings(batch)]
            encoder_seconds += encoder.seconds

        prompt_tokens = self.model.prompt_tokens(batch)
        requests = []
        for index in range(len(jobs)):
            prompt: dict[str, Any] = {"prompt_token_ids": self._prompt_ids(batch, index)}
            if rows[index]:
                prompt["multi_modal_data"] = {"audio": [embeddings[clip] for clip in rows[index]]}
            decoder = IncrementalDecoder(self._decode)
            requests.append(_Request(jobs[index], prompt, int(prompt_tokens[index]), len(jobs), decoder))
        for request in requests:
            self._inbox.put(request)

        try:
            if calls is not None:
                replay_started = time.perf_counter()
                exact = self.model.replay(batch, calls)
                encoder_seconds += time.perf_counter() - replay_started
            inline = readout.report() if readout is not None else None
            for index, request in enumerate(requests):
                report = self._report(jobs[index], rows[index], controls, index, exact, inline)
                request.reported.set_result((report, encoder_seconds))
        except Exception as error:  # the requests fail with it, as they would have before reaching vLLM
            for request in requests:
                if not request.reported.done():
                    request.reported.set_exception(error)
        return [request.future for request in requests]

    # -- vLLM's loop (its own thread) ------------------------------------------------------------------

    def _serve(self, vllm: Any, options: dict[str, Any], started: Future[Any]) -> None:
        from vllm.v1.engine.llm_engine import LLMEngine

        try:
            engine = LLMEngine.from_engine_args(vllm.EngineArgs(**options))
        except BaseException as error:
            started.set_exception(error)
            return
        started.set_result(engine)
        try:
            self._loop(engine)
        finally:
            _shutdown(engine)

    def _loop(self, engine: Any) -> None:
        """Add arrivals, abort the cancelled, step; block only when nothing runs. Ends at the ``None`` sentinel."""
        running: dict[str, _Request] = {}
        ids = itertools.count()
        while True:
            arrivals: list[_Request | None] = [self._inbox.get()] if not running else []
            while not self._inbox.empty():
                arrivals.append(self._inbox.get_nowait())
            for request in arrivals:
                if request is None:
                    self._fail(engine, running, RuntimeError("the vllm engine was closed"))
                    return
                if request.job.cancelled.is_set():
                    self._complete(request)
                    continue
                request_id = f"seen-{next(ids)}"
                try:
                    engine.add_request(request_id, request.prompt, self._sampling_params(request.job))
                except Exception as error:  # e.g. vLLM's own validation: this request fails, not the loop
                    request.future.set_exception(error)
                    continue
                running[request_id] = request
            cancelled = [request_id for request_id, request in running.items() if request.job.cancelled.is_set()]
            if cancelled:
                engine.abort_request(cancelled)
                for request_id in cancelled:
                    self._complete(running.pop(request_id))
            if not running:
                continue
            try:
                outputs = engine.step()
            except Exception as error:  # fail what ran, keep serving
                logger.exception("a vLLM step failed with %d requests running", len(running))
                self._fail(engine, running, error)
                continue
            for output in outputs:
                request = running.get(output.request_id)
                if request is None:
                    continue
                tokens = list(output.outputs[0].token_ids)
                self._stream(request, tokens[len(request.tokens) :])
                request.tokens = tokens
                if output.finished:
                    self._complete(running.pop(output.request_id))

    def _fail(self, engine: Any, running: dict[str, _Request], error: BaseException) -> None:
        if running:
            with contextlib.suppress(Exception):
                engine.abort_request(list(running))
        for request in running.values():
            request.future.set_exception(error)
        running.clear()

    def _complete(self, request: _Request) -> None:
        """Settle the job's future once vLLM has finished it and its noise report is ready (whichever is last)."""
        job = request.job
        try:
            text, finish, count = self._finish(request.tokens, job.sampling.max_tokens, job.sampling.stop)
        except Exception as error:
            request.future.set_exception(error)
            return
        if job.cancelled.is_set():
            finish = "cancelled"
        generation_seconds = time.perf_counter() - request.submitted

        def settle(reported: Future[tuple[NoiseAssessment | None, float]]) -> None:
            error = reported.exception()
            if error is not None:
                request.future.set_exception(error)
                return
            report, encoder_seconds = reported.result()
            timing = Timing(encoder_seconds, generation_seconds, request.batch_size)
            request.future.set_result(GenerateOutcome(text, finish, request.prompt_tokens, count, report, timing))

        request.reported.add_done_callback(settle)

    def _sampling_params(self, job: GenerateJob) -> Any:
        from vllm import SamplingParams

        sampling = job.sampling
        greedy = sampling.greedy
        return SamplingParams(
            max_tokens=sampling.max_tokens,
            temperature=0.0 if greedy else sampling.temperature,
            top_p=1.0 if greedy else sampling.top_p,
            seed=sampling.seed,
            stop=list(sampling.stop) or None,
            stop_token_ids=sorted(self._end_ids),
            skip_special_tokens=True,
        )

    def _stream(self, request: _Request, new: Sequence[int]) -> None:
        sink = request.job.sink
        if sink is None:
            return
        kept = []
        for token in new:
            if token in self._end_ids:
                break
            kept.append(int(token))
        if kept:
            delta = request.decoder.push(kept)
            if delta:
                sink(delta)


def _shutdown(engine: Any) -> None:
    shutdown = getattr(engine, "shutdown", None) or getattr(engine.engine_core, "shutdown", None)
    if shutdown is not None:
        shutdown()
