"""The transformers backend: one batch of jobs through the patched model (transformers ``generate``), on its device.

The SEEN patch is installed once, when the backend is built, and stays on for the process; every
batch carries its own frame layout, per-clip lambda and profile through :meth:`SeenPatch.scope`.
Only this module touches the model, and only from the engine's single device thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from seen.adapters import AudioLM, Clip, Message, ModelBatch
from seen.audio import is_digital_silence
from seen.bundle import NoiseBundle
from seen.patch import SeeMeasurement
from seen.policy import AUTO_PROFILE, NoiseAssessment, NoisePolicy
from seen.scoring import PatchedModel
from service.engine.backend import Capabilities, GenerateJob, GenerateOutcome, ScoreJob, ScoreOutcome, Timing
from service.engine.clock import EncoderClock
from service.engine.streaming import BatchStreamer


class _PerRequestLimit(StoppingCriteria):
    """Ends each row at its own ``max_tokens``, or at the next token once its job is cancelled, so requests
    with different limits share one generate and a departed client's row costs nothing more."""

    def __init__(self, prompt_length: int, limits: torch.Tensor, jobs: Sequence[ScoreJob]) -> None:
        self.prompt_length = prompt_length
        self.limits = limits
        self.jobs = jobs

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        done = (input_ids.shape[1] - self.prompt_length) >= self.limits
        cancelled = [job.cancelled.is_set() for job in self.jobs]  # host flags: no device sync
        if any(cancelled):
            done = done | torch.tensor(cancelled, device=done.device)
        return done


@dataclass(frozen=True)
class Controls:
    """A batch's SEEN controls: per job (profile index, lambda) and per clip (the tensors the patch takes)."""

    profiles: list[int]
    strengths: list[float]
    clip_profile: torch.Tensor
    clip_strength: torch.Tensor


def _silent_clips(job: ScoreJob) -> int:
    return sum(is_digital_silence(clip) for clip in job.clips)


class ModelBackend:
    """A loaded audio LM patched with its bundle: scores and generates batches of jobs."""

    def __init__(self, lm: AudioLM, bundle: NoiseBundle, policy: NoisePolicy, *, model_name: str, see_method: str):
        self.model = PatchedModel(lm, bundle)  # checks the bundle against the model and builds the patch
        self.bundle = bundle
        self.policy = policy
        self.see_method = see_method
        self._model_name = model_name
        self.clock = EncoderClock(self.model.encoder)
        self._stack = ExitStack()
        self._stack.enter_context(self.model.patch.installed())
        self._stack.enter_context(self.clock.installed())
        self._end_ids = self.model.end_token_ids()
        self._pad_id = self.model.pad_token_id()
        self._decode: Callable[[Sequence[int]], str] = self.model.decode
        """Token ids to answer text; a backend that finishes answers on another thread gives it its own tokenizer."""

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def device(self) -> torch.device:
        return self.model.lm.device

    def close(self) -> None:
        """Remove the hooks: the model is the original again."""
        self._stack.close()

    @property
    def capabilities(self) -> Capabilities:
        lm = self.model.lm
        return Capabilities(
            answers_chat=lm.answers_chat,
            check_task=lm.check_task,
            sample_rate=lm.sample_rate,
            window_seconds=lm.max_clip_seconds,
            profiles=self.policy.profiles,
            default_profile=self.policy.default_profile,
            context_tokens=lm.context_tokens,
            count_text_tokens=lm.count_text_tokens,
        )

    # -- batches ------------------------------------------------------------------------------------

    @staticmethod
    def _flatten(jobs: Sequence[ScoreJob]) -> tuple[list[Clip], list[list[int]]]:
        clips: list[Clip] = []
        rows: list[list[int]] = []
        for job in jobs:
            rows.append(list(range(len(clips), len(clips) + len(job.clips))))
            clips.extend(job.clips)
        return clips, rows

    def _chat_batch(self, jobs: Sequence[ScoreJob], clips: Sequence[Clip]) -> ModelBatch:
        conversations: list[Sequence[Message]] = [job.conversation for job in jobs]
        return self.model.chat_batch(conversations, clips)

    def _score_pass(self, batch: ModelBatch) -> tuple[SeeMeasurement, float]:
        """The paper's SEE: no edit, stopping after the last critical layer."""
        with self.clock.measuring() as encoder:
            report = self.model.score_batch(batch)
        return report, encoder.seconds

    # -- score only ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def score(self, jobs: Sequence[ScoreJob]) -> list[ScoreOutcome]:
        clips, rows = self._flatten(jobs)
        if not clips:
            raise ValueError("scoring needs audio: none of the requests has any")
        # The encoder site needs the features alone; a decoder site needs the request's own prompt.
        encoder_site = self.bundle.site.in_encoder
        batch = self.model.batch(clips) if encoder_site else self._chat_batch(jobs, clips)
        report, encoder_seconds = self._score_pass(batch)
        timing = Timing(encoder_seconds, 0.0, len(jobs))
        outcomes = []
        for job, job_rows in zip(jobs, rows, strict=True):
            if not job_rows:
                outcomes.append(ScoreOutcome(None, timing))
                continue
            silent = _silent_clips(job)
            outcomes.append(
                ScoreOutcome(self.policy.assess_scored(report, job_rows, job.control, silent_clips=silent), timing)
            )
        return outcomes

    # -- generate -----------------------------------------------------------------------------------

    def _exact_see(self, jobs: Sequence[GenerateJob]) -> str | None:
        """How a batch gets the paper's SEE: 'before' (a score pass first: lambda or profile depend on it),
        'replay' (the critical encoder layers again after the edited forward), or None (not needed)."""
        if any(job.control.adaptive or job.control.profile == AUTO_PROFILE for job in jobs):
            return "before"
        if self.see_method != "exact" or not any(job.control.applied_strength > 0 for job in jobs):
            return None
        return "replay" if self.model.replays_critical_layers else "before"

    def start_generate(self, jobs: Sequence[GenerateJob]) -> list[Future[GenerateOutcome]]:
        """The whole generation, on the calling thread: the futures are done when this returns."""
        futures = []
        for outcome in self.generate(jobs):
            future: Future[GenerateOutcome] = Future()
            future.set_result(outcome)
            futures.append(future)
        return futures

    @torch.inference_mode()
    def generate(self, jobs: Sequence[GenerateJob]) -> list[GenerateOutcome]:
        clips, rows = self._flatten(jobs)
        # A chat model answers each job in one row; a speech recognizer transcribes each of a job's windows in
        # a row of its own (long audio), and the job's text is its rows' texts in order.
        recognizer = not self.model.lm.answers_chat
        outputs = rows if recognizer else [[index] for index in range(len(jobs))]
        row_jobs = [job for job, job_outputs in zip(jobs, outputs, strict=True) for _ in job_outputs]
        conversations: list[Sequence[Message]] = [job.conversation for job in row_jobs]
        batch = self.model.chat_batch(conversations, clips, jobs[0].speech)  # the engine batches equal tasks
        exact_see = self._exact_see(jobs) if clips else None
        exact, encoder_seconds = self._score_pass(batch) if exact_see == "before" else (None, 0.0)

        controls = self._controls(jobs, rows, exact)

        prompt_length = self.model.prompt_length(batch)
        limits = [job.sampling.max_tokens for job in row_jobs]
        kwargs = self._generation_kwargs(row_jobs, prompt_length, limits)
        if any(job.sink is not None for job in jobs) and not recognizer:
            kwargs["streamer"] = BatchStreamer([job.sink for job in jobs], limits, self._end_ids, self.model.decode)
        seed = jobs[0].sampling.seed
        start = time.perf_counter()
        with ExitStack() as stack:
            calls = stack.enter_context(self.model.recording_critical_layers()) if exact_see == "replay" else None
            encoder = stack.enter_context(self.clock.measuring())
            readout = stack.enter_context(self.model.neutralizing(batch, controls.clip_strength, controls.clip_profile))
            if seed is not None:
                torch.manual_seed(seed)
            tokens = self.model.generate(batch, stop=jobs[0].sampling.stop, **kwargs).cpu()
        generation_seconds = time.perf_counter() - start - encoder.seconds  # the replay below is encoder time
        encoder_seconds += encoder.seconds
        if calls is not None:
            replay_started = time.perf_counter()
            exact = self.model.replay(batch, calls)
            encoder_seconds += time.perf_counter() - replay_started
        timing = Timing(encoder_seconds, generation_seconds, len(jobs))
        inline = readout.report() if readout is not None else None

        outcomes = []
        prompt_tokens = self.model.prompt_tokens(batch)
        for index, job in enumerate(jobs):
            finished = [
                self._finish(tokens[row].tolist(), job.sampling.max_tokens, job.sampling.stop) for row in outputs[index]
            ]
            text = " ".join(part.strip() for part, _, _ in finished) if recognizer else finished[0][0]
            finish = "length" if any(reason == "length" for _, reason, _ in finished) else "stop"
            if job.cancelled.is_set():
                finish = "cancelled"
            count = sum(tokens_used for _, _, tokens_used in finished)
            noise = self._report(job, rows[index], controls, index, exact, inline)
            used_prompt = sum(int(prompt_tokens[row]) for row in outputs[index])
            outcomes.append(GenerateOutcome(text, finish, used_prompt, count, noise, timing))
        return outcomes

    def _controls(
        self, jobs: Sequence[GenerateJob], rows: Sequence[Sequence[int]], exact: SeeMeasurement | None
    ) -> Controls:
        """Each job's profile and lambda (from its SEE when the policy needs it), spread over its clips."""
        profiles, strengths = [], []
        for job, job_rows in zip(jobs, rows, strict=True):
            see = exact.see[list(job_rows)].mean(dim=0) if exact is not None and job_rows else None
            profile = self.policy.profile_index(job.control, see) if job_rows else 0
            profiles.append(profile)
            strengths.append(self.policy.strength(job.control, profile, None if see is None else float(see[profile])))
        clip_profile = torch.tensor([profiles[j] for j, job_rows in enumerate(rows) for _ in job_rows])
        clip_strength = torch.tensor([strengths[j] for j, job_rows in enumerate(rows) for _ in job_rows])
        return Controls(profiles, strengths, clip_profile, clip_strength)

    def _report(
        self,
        job: ScoreJob,
        rows: Sequence[int],
        controls: Controls,
        index: int,
        exact: SeeMeasurement | None,
        inline: SeeMeasurement | None,
    ) -> NoiseAssessment | None:
        """A generated job's noise report: the paper's SEE when there is one, the SEEN pass's residual."""
        if not rows or inline is None:
            return None
        strength = controls.strengths[index]
        return self.policy.assess(
            exact or inline,
            inline,
            rows,
            profile=controls.profiles[index],
            control=job.control,
            strength=strength,
            method="exact" if exact is not None or strength == 0 else "inline",
            silent_clips=_silent_clips(job),
        )

    def _generation_kwargs(self, jobs: Sequence[GenerateJob], prompt_length: int, limits: list[int]) -> dict[str, Any]:
        """``jobs`` and ``limits``: one per output row."""
        sampling = jobs[0].sampling  # the engine batches only jobs with the same batch_key
        kwargs: dict[str, Any] = {
            "max_new_tokens": max(limits),
            "pad_token_id": self._pad_id,
            "stopping_criteria": StoppingCriteriaList(
                [_PerRequestLimit(prompt_length, torch.tensor(limits, device=self.device), jobs)]
            ),
        }
        if not sampling.greedy:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def _finish(self, row: list[int], limit: int, stop: Sequence[str]) -> tuple[str, str, int]:
        """A row's text, finish reason and completion-token count, cut at its end token, limit or stop."""
        # Past its own limit a row holds only padding (another row of the batch went on): not an end token.
        end = next((i for i, token in enumerate(row[:limit]) if token in self._end_ids), None)
        if end is not None:
            kept, count, finish = row[:end], end + 1, "stop"
        else:
            kept = row[:limit]
            count = len(kept)
            finish = "length" if count >= limit else "stop"
        text = self._decode(kept)
        cuts = [position for position in (text.find(s) for s in stop) if position >= 0]
        if cuts:
            text, finish = text[: min(cuts)], "stop"
        return text, finish, count
