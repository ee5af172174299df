"""The service's one settings object: environment (``SEEN_*``), an optional TOML file, then defaults.

``seen serve`` options are passed as init arguments and win over both. Lists may be given in the
environment as JSON (``["a","b"]``) or comma-separated (``a,b``).
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from demo import DEMO_BUNDLE_DIR, DEMO_MODEL_DIR

CONFIG_FILE_VARIABLE = "SEEN_CONFIG_FILE"


class Settings(BaseSettings):
    """Everything an operator can set; every field is also ``SEEN_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix="SEEN_", extra="forbid", validate_default=True, use_attribute_docstrings=True
    )

    model: str = ""
    """Model folder or hub id of the audio-language model to serve; empty (with ``bundle`` empty too) serves the
    embedded demo model."""
    bundle: str = ""
    """Folder of the noise-basis bundle made for that model by ``seen calibrate``; empty only with ``model`` empty."""
    served_model_name: str = ""
    """Name clients pass as ``model`` and the ``model_name`` metric label (default: the model folder's name)."""
    device: str = "auto"
    """Torch device: ``auto`` (the first GPU when there is one, else the CPU), ``cpu``, ``cuda``, ``cuda:1``..."""
    dtype: Literal["auto", "checkpoint", "float32", "bfloat16", "float16"] = "auto"
    """Weight dtype; ``auto`` is bfloat16 on a GPU and float32 on the CPU, ``checkpoint`` the stored dtype."""
    engine: Literal["transformers", "vllm"] = "transformers"
    """What runs the language model: ``transformers`` (its ``generate``; every architecture) or ``vllm`` (vLLM's
    engine and paged KV cache, fed the SEEN-neutralized audio rows; Qwen2-Audio with an encoder-site bundle only;
    needs the ``vllm`` extra). The audio encoder and SEEN run in transformers either way."""

    max_batch_size: int = Field(8, ge=1, le=256)
    """Most requests run together in one forward/generate."""
    batch_wait_seconds: float = Field(0.005, ge=0.0, le=1.0)
    """How long the first request of a batch waits for others to join it."""
    max_running_requests: int = Field(64, ge=1, le=1024)
    """Generate requests the ``vllm`` engine runs at once (vLLM's ``max_num_seqs``; later batches join running ones
    at its next step); more wait in the queue. The transformers engine runs one batch at a time."""
    max_queue_size: int = Field(64, ge=1)
    """Requests that may wait for the device; beyond it requests get 503 with ``Retry-After``."""
    request_timeout_seconds: float = Field(120.0, gt=0.0)
    """A request not answered in this time gets 504 (a stream that already started ends with an error event)."""
    retry_after_seconds: int = Field(1, ge=1)
    """``Retry-After`` sent with 503 answers (queue full, model loading)."""
    shutdown_grace_seconds: float = Field(30.0, ge=0.0)
    """On SIGTERM, how long in-flight requests may take to finish; those cut off get 503 and the exit code is 1."""
    body_read_timeout_seconds: float = Field(30.0, gt=0.0)
    """A request body that sends nothing for this long is answered 408 and its connection closed."""
    header_read_timeout_seconds: float = Field(10.0, gt=0.0)
    """A connection whose request headers are not complete within this time is closed (slow clients)."""

    max_audio_seconds: float = Field(120.0, gt=0.0)
    """Longest audio accepted per request part (chunked into the model's windows; without chunking the window caps
    it). Each 30 s window costs a chat model about 750 prompt tokens, so 120 s stays well inside an 8k context."""
    max_audio_bytes: int = Field(25 * 1024 * 1024, ge=1)
    """Largest encoded audio accepted per part, and the limit on a request body's size (plus JSON overhead)."""
    chunk_long_audio: bool = True
    """Split audio longer than the model's window into consecutive window-long parts (SEE per part, averaged in
    the report; a speech recognizer transcribes each part and joins the texts); false refuses it with 413."""
    audio_url_allowlist: Annotated[list[str], NoDecode] = []
    """Hosts from which ``audio_url`` parts may be fetched; empty means remote audio is never fetched."""
    audio_url_timeout_seconds: float = Field(10.0, gt=0.0)
    """Deadline of one ``audio_url`` fetch, whole body included (never more than the request timeout)."""

    max_tokens_default: int = Field(256, ge=1)
    """Completion length when a request sets neither ``max_tokens`` nor ``max_completion_tokens``."""
    max_prompt_tokens: int = Field(8192, ge=1)
    """Most tokens the text of a chat request may take (the model's context caps it too); longer prompts
    get 400 before they are queued, since prefill time grows with the square of their length."""
    max_tokens_limit: int = Field(4096, ge=1)
    """Longest completion a request may ask for."""

    seen_enabled: bool = False
    """Neutralize (SEEN) every request. Off by default: score and flag, do not edit, because the SEEN study on
    real Whisper (docs/evaluation.md) found no configuration that lowers WER under noise; a request may still
    switch it on with ``seen.enabled`` (its noise report says what was applied either way)."""
    default_strength: float | None = Field(None, ge=0.0, le=2.0)
    """Default lambda; unset means the bundle's own default."""
    default_profile: str = ""
    """Default noise profile (a bundle profile or ``auto`` for the dominant one); empty means the bundle's."""
    adaptive: bool = False
    """Scale lambda with the measured SEE: 0 up to the clean range's top, full strength from the noisy range."""
    see_method: Literal["exact", "inline"] = "exact"
    """``exact``: the reported SEE is the paper's (a score-only encoder pass precedes a SEEN-on generate);
    ``inline``: measured inside the SEEN pass, so layers after the first see upstream-cleaned activations."""
    on_noisy: Literal["answer", "mark", "refuse"] = "answer"
    """Audio the report calls noisy is answered as usual, answered with ``noisy_input: true`` beside the noise
    report (mark), or refused with 422 ``noisy_audio`` (refuse); requests may override it (``seen.on_noisy``)."""
    noisy_threshold: float | None = Field(None, ge=0.0, le=1.0)
    """SEE above which a request is flagged noisy; unset derives it from the bundle's calibration statistics."""
    see_buckets: Annotated[list[float], NoDecode] = []
    """Histogram edges for SEE metrics; empty derives them from the bundle's calibration statistics."""

    api_keys: Annotated[list[str], NoDecode] = []
    """Accepted bearer tokens for ``/v1/*``; empty means no authentication."""
    host: str = "127.0.0.1"
    """Interface to listen on: this machine only by default; the image and the compose stack set ``0.0.0.0``."""
    port: int = Field(8000, ge=0, le=65535)
    """TCP port to listen on."""
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    """Server log level."""
    warmup: bool = True
    """Run one synthetic request after loading; ``/ready`` stays 503 until it passed."""

    @field_validator("audio_url_allowlist", "api_keys", "see_buckets", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    @field_validator("see_buckets")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        if any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError("see_buckets must be strictly increasing")
        return value

    @model_validator(mode="after")
    def _model_and_bundle(self) -> Settings:
        if not self.model and not self.bundle:
            self.model, self.bundle = str(DEMO_MODEL_DIR), str(DEMO_BUNDLE_DIR)
        elif not self.bundle:
            raise ValueError(f"model {self.model!r} needs its bundle: set bundle (seen calibrate makes one)")
        elif not self.model:
            raise ValueError(f"bundle {self.bundle!r} needs the model it was made for: set model")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = [init_settings, env_settings]
        config_file = settings_cls.model_config.get("toml_file") or os.environ.get(CONFIG_FILE_VARIABLE)
        if config_file:
            if not os.path.isfile(str(config_file)):
                raise FileNotFoundError(f"the settings file {config_file} is not a file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=str(config_file)))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: str | None = None, **overrides: Any) -> Settings:
        """Settings from ``overrides``, then the environment, then the TOML file (argument or SEEN_CONFIG_FILE).

        The file is bound to a subclass for this one construction, so nothing global is changed.
        """
        if config_file is None:
            return cls(**overrides)
        bound = type(cls.__name__, (cls,), {"model_config": {**cls.model_config, "toml_file": config_file}})
        return bound(**overrides)

    @property
    def model_name(self) -> str:
        return self.served_model_name or os.path.basename(self.model.rstrip("/")) or "unnamed"
