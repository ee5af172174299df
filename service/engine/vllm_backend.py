"""The vLLM backend: the audio half in transformers under the SEEN patch, the language model in vLLM.

Per batch, on the engine's device thread:

1. the jobs' prompts and clips become one transformers batch (the adapter's own chat template, escaping and
   feature extraction, exactly as the transformers backend builds it);
2. when the report needs the paper's SEE (``exact``, or lambda/profile depend on it), a score-only encoder
   pass runs first; each clip gets its lambda and profile (the same :class:`NoisePolicy` rules);
3. the audio tower and projector run once for the whole batch inside ``PatchedModel.neutralizing``
   (:meth:`AudioLM.audio_embeddings`): the rows the language model reads, already neutralized per clip, and
   the inline SEE/residual of that pass;
4. each job goes to vLLM as its own request: the prompt's token ids with one ``<|AUDIO|>`` per clip (vLLM
   expands it to the clip's rows) and the clip rows as precomputed audio embeddings; vLLM's scheduler
   batches the requests, each with its own ``max_tokens``, stop strings, seed;
5. the backend steps vLLM's engine until every request of the batch has finished, streaming each job's
   new text to its sink and aborting a job's request as soon as ``job.cancelled`` is set.

vLLM is built with ``limit_mm_per_prompt={"audio": 0}`` and ``enable_mm_embeds=True``: it never builds or
loads its own audio tower, only the language model; the transformers side releases its language model and
LM head (moved to the meta device) once the patch is built, so the language model's weights are held once
(at load time both are briefly present: transformers loads the whole checkpoint before releasing them).

Trade-off: ``generate(jobs)`` is synchronous, like the transformers backend's. vLLM batches the requests of
one micro-batch (different lengths and limits, paged KV cache), but a micro-batch runs to its end before the
engine hands over the next one, so a request arriving meanwhile waits for the longest answer of the running
batch instead of joining it at the next step (continuous batching across micro-batches). That would need
the engine to submit jobs to a long-running vLLM loop (``AsyncLLM``) instead of calling ``generate`` per
batch; the backend protocol allows it (outcomes are per job) but the engine's loop does not yet.

Every vLLM call runs on one thread owned by the backend (its engine client talks to the engine-core process
over ZMQ sockets, which must not be shared between threads).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import torch

from seen.adapters import AudioLM, Message, ModelBatch
from seen.bundle import NoiseBundle
from seen.policy import NoisePolicy
from service.engine.backend import GenerateJob, GenerateOutcome, Timing
from service.engine.streaming import IncrementalDecoder
from service.engine.transformers_backend import ModelBackend

VLLM_ARCHITECTURES = ("Qwen2AudioForConditionalGeneration",)
"""Architectures whose language model vLLM serves from our audio embeddings (tested: tests/test_vllm_engine.py).

Not (yet) the others: Whisper is an encoder-decoder (cross-attention, no audio rows in a prompt); Qwen2.5-Omni's
thinker needs M-RoPE positions for its audio tokens and Voxtral its own embedding layout in vLLM, neither
verified against the transformers backend."""


def check_vllm_support(bundle: NoiseBundle) -> None:
    """Raise ValueError, naming the reason, for a model (the bundle's) or bundle the vLLM engine cannot serve.

    Needs only the bundle, which names its model's architecture, so the server refuses before loading anything.
    """
    architecture = bundle.model.architecture
    if architecture not in VLLM_ARCHITECTURES:
        raise ValueError(
            f"the vllm engine serves {', '.join(VLLM_ARCHITECTURES)} only, not {architecture}; "
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


class VllmBackend(ModelBackend):
    """Audio tower and projector patched with the bundle (transformers); the language model in vLLM.

    ``score`` is the transformers backend's (the encoder alone); ``generate`` hands the neutralized audio rows
    to vLLM. ``engine_options`` go to ``vllm.EngineArgs`` (e.g. ``max_num_seqs``, ``enable_prefix_caching``).
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
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seen-vllm")
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
        self._engine: Any = self._thread.submit(self._start, vllm, options).result()

    @staticmethod
    def _start(vllm: Any, options: dict[str, Any]) -> Any:
        from vllm.v1.engine.llm_engine import LLMEngine

        return LLMEngine.from_engine_args(vllm.EngineArgs(**options))

    def _release_language_model(self) -> None:
        """Free the transformers language model and LM head: vLLM holds the language model."""
        model: Any = self.model.lm.model
        model.model.language_model.to("meta")
        model.lm_head.to("meta")

    def close(self) -> None:
        super().close()
        engine, self._engine = self._engine, None
        if engine is not None:
            self._thread.submit(_shutdown, engine).result()
        self._thread.shutdown(wait=True)

    # -- generate -----------------------------------------------------------------------------------

    def _prompt_ids(self, batch: ModelBatch, row: int) -> list[int]:
        """A row's prompt as vLLM takes it: padding removed, each clip's run of audio tokens one token again."""
        ids = batch.inputs["input_ids"][row][batch.inputs["attention_mask"][row].bool()].tolist()
        return [t for i, t in enumerate(ids) if t != self._audio_token or i == 0 or ids[i - 1] != self._audio_token]

    @torch.inference_mode()
    def generate(self, jobs: Sequence[GenerateJob]) -> list[GenerateOutcome]:
        clips, rows = self._flatten(jobs)
        conversations: list[Sequence[Message]] = [job.conversation for job in jobs]
        batch = self.model.chat_batch(conversations, clips)
        exact_see = self._exact_see(jobs) if clips else None
        exact, encoder_seconds = self._score_pass(batch) if exact_see == "before" else (None, 0.0)
        controls = self._controls(jobs, rows, exact)

        embeddings: list[torch.Tensor] = []
        readout = None
        if clips:
            with ExitStack() as stack:
                calls = stack.enter_context(self.model.recording_critical_layers()) if exact_see == "replay" else None
                encoder = stack.enter_context(self.clock.measuring())
                readout = stack.enter_context(
                    self.model.neutralizing(batch, controls.clip_strength, controls.clip_profile)
                )
                embeddings = [rows_.cpu() for rows_ in self.model.lm.audio_embeddings(batch)]
            encoder_seconds += encoder.seconds
            if calls is not None:
                replay_started = time.perf_counter()
                exact = self.model.replay(batch, calls)
                encoder_seconds += time.perf_counter() - replay_started
        inline = readout.report() if readout is not None else None

        requests = []
        for index in range(len(jobs)):
            prompt: dict[str, Any] = {"prompt_token_ids": self._prompt_ids(batch, index)}
            if rows[index]:
                prompt["multi_modal_data"] = {"audio": [embeddings[clip] for clip in rows[index]]}
            requests.append(prompt)
        start = time.perf_counter()
        tokens = self._thread.submit(self._run, jobs, requests).result()
        timing = Timing(encoder_seconds, time.perf_counter() - start, len(jobs))

        outcomes = []
        prompt_tokens = self.model.prompt_tokens(batch)
        for index, job in enumerate(jobs):
            text, finish, count = self._finish(tokens[index], job.sampling.max_tokens, job.sampling.stop)
            if job.cancelled.is_set():
                finish = "cancelled"
            noise = self._report(job, rows[index], controls, index, exact, inline)
            outcomes.append(GenerateOutcome(text, finish, int(prompt_tokens[index]), count, noise, timing))
        return outcomes

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

    def _run(self, jobs: Sequence[GenerateJob], requests: Sequence[dict[str, Any]]) -> list[list[int]]:
        """Every job's generated token ids (on the vLLM thread): step until all finished or were aborted."""
        engine = self._engine
        batch_id = uuid.uuid4().hex[:12]
        pending: dict[str, int] = {}
        tokens: list[list[int]] = [[] for _ in jobs]
        decoders = [IncrementalDecoder(self.model.decode) for _ in jobs]
        try:
            for index, (job, prompt) in enumerate(zip(jobs, requests, strict=True)):
                if job.cancelled.is_set():
                    continue
                request_id = f"seen-{batch_id}-{index}"
                engine.add_request(request_id, prompt, self._sampling_params(job))
                pending[request_id] = index
            while pending:
                cancelled = [request_id for request_id, index in pending.items() if jobs[index].cancelled.is_set()]
                if cancelled:
                    engine.abort_request(cancelled)
                    for request_id in cancelled:
                        del pending[request_id]
                    continue
                for output in engine.step():
                    row = pending.get(output.request_id)
                    if row is None:
                        continue
                    ids = list(output.outputs[0].token_ids)
                    self._stream(jobs[row], decoders[row], ids[len(tokens[row]) :])
                    tokens[row] = ids
                    if output.finished:
                        del pending[output.request_id]
        finally:
            if pending:  # a failure mid-batch: leave nothing running in the engine
                engine.abort_request(list(pending))
        return tokens

    def _stream(self, job: GenerateJob, decoder: IncrementalDecoder, new: Sequence[int]) -> None:
        if job.sink is None:
            return
        kept = []
        for token in new:
            if token in self._end_ids:
                break
            kept.append(int(token))
        if kept:
            delta = decoder.push(kept)
            if delta:
                job.sink(delta)


def _shutdown(engine: Any) -> None:
    shutdown = getattr(engine, "shutdown", None) or getattr(engine.engine_core, "shutdown", None)
    if shutdown is not None:
        shutdown()
