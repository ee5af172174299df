"""Run every (noise, SNR, method) condition through the service's model backend and record one row per clip.

Per condition the noisy inputs are mixed once, each denoiser runs once, and the raw-audio measures of
every distinct input are computed once; the methods then share them. Generation goes through
:class:`service.engine.transformers_backend.ModelBackend`, the batched backend the service runs, so the SEE, SEEN and
answers measured here are the ones a deployment gets. Finished conditions are stored one file each, so
an interrupted run resumes where it stopped.

Besides success against the ground truth, each row carries the paper's own success measure: agreement with
the model's answer (method "none") on the clean clip. The clean condition therefore runs first, and its
answers are stored in the rows, so a resumed run recovers them from the store.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jiwer
import numpy as np
from numpy.typing import NDArray

from evaluation.audio_measures import dnsmos, stoi, wada_snr
from evaluation.dataset import Dataset, Item, NoiseSource, Task, normalize
from evaluation.denoisers import DENOISERS, make_denoiser
from evaluation.rows import RequestRow, ResultStore
from seen.adapters import AudioLM, SpeechTask
from seen.audio import split_into_windows
from seen.bundle import NoiseBundle
from seen.noise import achieved_snr_db, mix_components
from seen.policy import AUTO_PROFILE, Control, NoisePolicy
from service.engine.backend import Backend, GenerateJob, Sampling
from service.engine.transformers_backend import ModelBackend

SEEN_PREFIX = "seen-"
ADAPTIVE = "seen-adaptive"
DEFAULT_SNRS_DB = (-10.0, -5.0, 0.0, 5.0, 10.0, 20.0, 30.0)
DEFAULT_METHODS = ("none", "seen-0.25", "seen-0.5", "seen-1", ADAPTIVE, *DENOISERS)
CLEAN = "clean"
NONE = "none"


@dataclass(frozen=True)
class Method:
    """How a condition's audio reaches the model: as is, through SEEN at some lambda, or through a denoiser."""

    name: str
    strength: float = 0.0
    denoiser: str | None = None

    @property
    def uses_seen(self) -> bool:
        return self.name.startswith(SEEN_PREFIX)


def parse_method(name: str) -> Method:
    if name == NONE:
        return Method(name)
    if name == ADAPTIVE:
        return Method(name, strength=1.0)
    if name.startswith(SEEN_PREFIX):
        try:
            strength = float(name.removeprefix(SEEN_PREFIX))
        except ValueError:
            strength = math.nan
        if not 0.0 < strength <= 2.0:
            raise ValueError(f"method {name!r}: SEEN methods are seen-<lambda> with 0 < lambda <= 2, or {ADAPTIVE}")
        return Method(name, strength=strength)
    if name in DENOISERS:
        return Method(name, denoiser=name)
    raise ValueError(f"unknown method {name!r}; allowed: none, seen-<lambda>, {ADAPTIVE}, {', '.join(DENOISERS)}")


@dataclass(frozen=True)
class Condition:
    noise: NoiseSource | None  # None: the clean clips
    snr_db: float | None

    @property
    def label(self) -> str:
        return CLEAN if self.noise is None else f"{self.noise.name}@{self.snr_db:g}dB"


@dataclass(frozen=True)
class _Input:
    """Audio as the model receives it, with its raw-audio measures against the clean clip."""

    audio: NDArray[np.float32]
    true_snr_db: float | None
    wada_snr_db: float
    stoi: float
    dnsmos_bak: float
    dnsmos_ovrl: float


def score_answer(task: Task, answer: str, reference: str) -> tuple[float, float | None]:
    """(success, WER) of ``answer`` against ``reference``: exact match for QA, max(0, 1 - WER) otherwise.

    The reference may be another answer of the model (for agreement); an empty one (after normalising) is
    matched only by an empty answer, as WER against nothing is undefined.
    """
    if task == "qa":
        return float(normalize(answer) == normalize(reference)), None
    truth, hypothesis = normalize(reference), normalize(answer)
    if not truth:
        return float(not hypothesis), None
    wer = float(jiwer.wer(truth, hypothesis or "<empty>"))
    return max(0.0, 1.0 - wer), wer


class Evaluator:
    """One model and bundle, one dataset: turns a condition and its methods into request rows."""

    def __init__(
        self,
        backend: Backend,
        dataset: Dataset,
        *,
        batch_size: int = 16,
        max_tokens: int = 128,
        profile: str | None = None,
        seed: int = 0,
        language: str | None = None,
    ) -> None:
        capabilities = backend.capabilities
        self.backend, self.dataset = backend, dataset
        self.sample_rate, self.window_seconds = capabilities.sample_rate, capabilities.window_seconds
        self.batch_size, self.seed = batch_size, seed
        self.speech = SpeechTask("transcribe", language) if language else None
        if self.speech is not None:
            capabilities.check_task(self.speech)
        self.profile = profile or capabilities.default_profile
        if self.profile != AUTO_PROFILE and self.profile not in capabilities.profiles:
            allowed = ", ".join([*capabilities.profiles, AUTO_PROFILE])
            raise ValueError(f"unknown noise profile {self.profile!r}; this bundle has: {allowed}")
        self.sampling = Sampling(max_tokens=max_tokens, temperature=0.0)
        self.clean_answers: list[str] | None = None
        """Each clip's answer with method "none" on clean audio: the reference of ``agreement``."""

    @staticmethod
    def for_model(lm: AudioLM, bundle: NoiseBundle, dataset: Dataset, **options: Any) -> Evaluator:
        """An evaluator on the transformers backend the service runs (SEE measured the paper's way)."""
        backend = ModelBackend(lm, bundle, NoisePolicy(bundle), model_name="eval", see_method="exact")
        try:
            return Evaluator(backend, dataset, **options)
        except BaseException:
            backend.close()  # the patch is on the model: take it off before reporting the problem
            raise

    def recover_clean_answers(self, rows: Sequence[RequestRow]) -> bool:
        """Take the clean answers from stored clean "none" rows; False if they do not cover this dataset."""
        ids = [item.clip_id for item in self.dataset.items]
        if [r.clip for r in rows] != ids or any(r.answer is None for r in rows):
            return False
        self.clean_answers = [r.answer or "" for r in rows]
        return True

    def close(self) -> None:
        self.backend.close()

    def _mixtures(self, condition: Condition) -> tuple[list[NDArray[np.float32]], list[NDArray[np.float32]]]:
        """(clean reference as it sits in each input, model input) per clip."""
        rate = self.sample_rate
        if condition.noise is None or condition.snr_db is None:
            clips = [item.audio for item in self.dataset.items]
            return clips, clips
        references, inputs = [], []
        for index, item in enumerate(self.dataset.items):
            noise = condition.noise.for_clip(index, item.audio.size, rate, self.seed, clip_id=item.clip_id)
            mix = mix_components(item.audio, noise, condition.snr_db)
            references.append(mix.clean)
            inputs.append(mix.mixture)
        return references, inputs

    def _measure(
        self, references: Sequence[NDArray[np.float32]], audio: Sequence[NDArray[np.float32]], noisy: bool
    ) -> list[_Input]:
        rate = self.sample_rate
        return [
            _Input(clip, achieved_snr_db(ref, clip) if noisy else None, wada_snr(clip), stoi(ref, clip, rate), *quality)
            for ref, clip, quality in zip(references, audio, dnsmos(audio, rate), strict=True)
        ]

    def _answers(self, inputs: Sequence[_Input], method: Method) -> list[tuple[str, float, float | None]]:
        """(answer, SEE, residual SEE) per clip, in batches through the backend."""
        adaptive = method.name == ADAPTIVE
        control = Control(enabled=method.uses_seen, strength=method.strength, profile=self.profile, adaptive=adaptive)
        window = self.window_seconds
        jobs = []
        for item, model_input in zip(self.dataset.items, inputs, strict=True):
            windows = split_into_windows(model_input.audio, self.sample_rate, window)
            content = [{"type": "audio"} for _ in windows] + [{"type": "text", "text": item.question}]
            conversation = [{"role": "user", "content": content}]
            jobs.append(GenerateJob(conversation, windows, control, self.sampling, speech=self.speech))
        results = []
        for start in range(0, len(jobs), self.batch_size):
            for outcome in self.backend.generate(jobs[start : start + self.batch_size]):
                report = outcome.report
                assert report is not None  # every job has audio
                residual = report.residual_see if method.uses_seen else None
                results.append((outcome.text, report.see, residual))
        return results

    def _agreement(self, index: int, answer: str) -> float | None:
        if self.clean_answers is None:
            return None
        return score_answer(self.dataset.task, answer, self.clean_answers[index])[0]

    def run(self, condition: Condition, methods: Sequence[Method]) -> dict[str, list[RequestRow]]:
        """Rows per method for one condition; noisy inputs and denoised audio computed once and shared.

        On the clean condition method "none" runs first and its answers become :attr:`clean_answers`.
        """
        references, mixed = self._mixtures(condition)
        noisy = condition.noise is not None
        raw: list[_Input] | None = None
        rows: dict[str, list[RequestRow]] = {}
        for method in sorted(methods, key=lambda m: m.name != NONE):
            if method.denoiser is not None:
                denoiser = make_denoiser(method.denoiser)
                denoised = [denoiser(clip, self.sample_rate) for clip in mixed]
                inputs = self._measure(references, denoised, noisy)
            else:
                raw = raw or self._measure(references, mixed, noisy)
                inputs = raw
            answers = self._answers(inputs, method)
            if not noisy and method.name == NONE:
                self.clean_answers = [answer for answer, _, _ in answers]
            rows[method.name] = [
                self._row(condition, method, index, item, model_input, *answer)
                for index, (item, model_input, answer) in enumerate(
                    zip(self.dataset.items, inputs, answers, strict=True)
                )
            ]
        return {method.name: rows[method.name] for method in methods}

    def _row(
        self,
        condition: Condition,
        method: Method,
        index: int,
        item: Item,
        model_input: _Input,
        answer: str,
        see: float,
        residual: float | None,
    ) -> RequestRow:
        success, wer = score_answer(self.dataset.task, answer, item.reference)
        return RequestRow(
            noise=CLEAN if condition.noise is None else condition.noise.name,
            snr_db=condition.snr_db,
            method=method.name,
            clip=item.clip_id,
            success=success,
            wer=wer,
            see=see,
            residual_see=residual,
            true_snr_db=model_input.true_snr_db,
            wada_snr_db=model_input.wada_snr_db,
            stoi=model_input.stoi,
            dnsmos_bak=model_input.dnsmos_bak,
            dnsmos_ovrl=model_input.dnsmos_ovrl,
            answer=answer,
            agreement=self._agreement(index, answer),
        )


def run_all(
    evaluator: Evaluator,
    store: ResultStore,
    conditions: Sequence[Condition],
    methods: Sequence[Method],
    on_condition: Callable[[Condition], None] = lambda _: None,
) -> list[RequestRow]:
    """Every condition not already in the store, then every stored row.

    The clean condition runs first, so its "none" answers are there to score the noisy ones' agreement; when
    it is already stored they are read back from the store. Without method "none" (or from a store written
    before answers were kept) agreement stays empty.
    """
    clean = Condition(None, None)
    for condition in sorted(conditions, key=lambda c: c.noise is not None):  # stable: clean first
        missing = [m for m in methods if not store.has(condition, m.name)]
        if missing:
            if evaluator.clean_answers is None and (stored := store.load(clean, NONE)) is not None:
                evaluator.recover_clean_answers(stored)
            for name, rows in evaluator.run(condition, missing).items():
                store.save(condition, name, rows)
        on_condition(condition)
    return store.load_all()
