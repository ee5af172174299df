"""The service's one metrics registry, and the one place histogram buckets are defined.

Names follow ``<namespace>_<name>_<unit>`` and every series carries ``model_name``. SEE buckets
come from the bundle's calibration statistics so that both the clean and the noisy range of the
served model are resolved; they can be set explicitly instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from seen import __version__
from seen.bundle import NoiseBundle, SeeStats

NAMESPACE = "seen"

REQUEST_LATENCY_BUCKETS = (
    *(0.01, 0.025, 0.05, 0.1, 0.2),
    # vLLM's end-to-end request latency buckets
    *(0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0),
)
STAGE_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
AUDIO_DURATION_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DEFAULT_SEE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)
"""Used when the bundle has no calibration statistics (imported bases) or they span no range."""
EDGES_PER_RANGE = 6


def _range_edges(stats: SeeStats) -> list[float]:
    low, high = stats.quantiles["p05"], stats.quantiles["p99"]
    return [low + (high - low) * i / (EDGES_PER_RANGE - 1) for i in range(EDGES_PER_RANGE)]


def see_buckets(bundle: NoiseBundle, configured: Sequence[float] = ()) -> list[float]:
    """Edges spread over the clean and over the noisy SEE range of the bundle's default profile."""
    if configured:
        return list(configured)
    profile = bundle.profiles[bundle.default_profile]
    edges: set[float] = set()
    for stats in (profile.see_clean, profile.see_noise):
        if stats is not None:
            edges.update(float(f"{edge:.4g}") for edge in _range_edges(stats) if 0 < edge < 1)
    if len(edges) < EDGES_PER_RANGE:
        return list(DEFAULT_SEE_BUCKETS)
    return sorted(edges | {1.0})


class ServiceMetrics:
    """Every metric the service exports, registered on one registry per app."""

    def __init__(self, model_name: str, see_bucket_edges: Sequence[float]) -> None:
        self.registry = CollectorRegistry()
        self.model_name = model_name
        r, ns = self.registry, NAMESPACE
        model = ["model_name"]
        self.input_see = Histogram(
            "input_see_ratio", "SEE of request audio (share of activation energy in noise directions).",
            [*model, "profile"], namespace=ns, registry=r, buckets=see_bucket_edges,
        )  # fmt: skip
        self.residual_see = Histogram(
            "residual_see_ratio", "SEE left after SEEN neutralization.",
            [*model, "profile"], namespace=ns, registry=r, buckets=see_bucket_edges,
        )  # fmt: skip
        self.noisy_requests = Counter(
            "noisy_requests", "Requests whose SEE was above the noisy threshold, by dominant noise type.",
            [*model, "noise_type"], namespace=ns, registry=r,
        )  # fmt: skip
        self.requests = Counter(
            "requests", "HTTP requests answered, by endpoint and status code.",
            [*model, "endpoint", "status"], namespace=ns, registry=r,
        )  # fmt: skip
        self.rejected = Counter(
            "rejected_requests", "Requests refused, by reason (the error code).",
            [*model, "reason"], namespace=ns, registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "request_duration_seconds", "End-to-end request latency, until the last byte is sent.",
            [*model, "endpoint"], namespace=ns, registry=r, buckets=REQUEST_LATENCY_BUCKETS,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "queue_wait_seconds", "Time a request waited for the device.",
            model, namespace=ns, registry=r, buckets=STAGE_LATENCY_BUCKETS,
        )  # fmt: skip
        self.encoder_time = Histogram(
            "encoder_duration_seconds", "Audio-encoder time of each batch (score pass and SEEN pass).",
            model, namespace=ns, registry=r, buckets=STAGE_LATENCY_BUCKETS,
        )  # fmt: skip
        self.generation_time = Histogram(
            "generation_duration_seconds", "Decoder time of each generate batch (prefill and decoding).",
            model, namespace=ns, registry=r, buckets=STAGE_LATENCY_BUCKETS,
        )  # fmt: skip
        self.batch_size = Histogram(
            "batch_size_requests", "Requests per device batch, by kind of work.",
            [*model, "kind"], namespace=ns, registry=r, buckets=BATCH_SIZE_BUCKETS,
        )  # fmt: skip
        self.generated_tokens = Counter(
            "generated_tokens", "Completion tokens generated.", model, namespace=ns, registry=r
        )
        self.prompt_tokens = Counter("prompt_tokens", "Prompt tokens processed.", model, namespace=ns, registry=r)
        self.in_flight = Gauge("requests_in_flight", "HTTP requests being handled.", model, namespace=ns, registry=r)
        self.queue_depth = Gauge(
            "queue_depth_requests", "Requests waiting for the device.", model, namespace=ns, registry=r
        )
        self.audio_duration = Histogram(
            "audio_duration_seconds", "Duration of the audio in each answered request.",
            [*model, "endpoint"], namespace=ns, registry=r, buckets=AUDIO_DURATION_BUCKETS,
        )  # fmt: skip
        self.ready = Gauge(
            "ready", "1 while the server answers requests; 0 while the model loads, after a load failure, or draining.",
            model, namespace=ns, registry=r,
        )  # fmt: skip
        self.queue_capacity = Gauge(
            "queue_capacity_requests", "Most requests that may wait for the device (beyond it: 503 queue_full).",
            model, namespace=ns, registry=r,
        )  # fmt: skip
        self.calibrated_see = Gauge(
            "calibrated_see_ratio", "Quantiles of clip SEE on the bundle's calibration clips, clean speech and noise.",
            [*model, "profile", "condition", "percentile"], namespace=ns, registry=r,
        )  # fmt: skip
        self.noisy_threshold = Gauge(
            "noisy_threshold_ratio", "SEE above which a request counts as noisy, per profile.",
            [*model, "profile"], namespace=ns, registry=r,
        )  # fmt: skip
        self.info = Gauge(
            "build_info", "Always 1; the labels identify the software, the model and the noise bundle.",
            [*model, "version", "architecture", "bundle_sha256", "site", "profiles"], namespace=ns, registry=r,
        )  # fmt: skip

    def describe_model(self, architecture: str, bundle_sha256: str, site: str, profiles: Sequence[str]) -> None:
        self.info.labels(self.model_name, __version__, architecture, bundle_sha256, site, ",".join(profiles)).set(1)

    def describe_bundle(self, bundle: NoiseBundle, thresholds: Mapping[str, float | None]) -> None:
        """Export the calibrated SEE ranges and noisy thresholds, which alerts and dashboards compare against."""
        for name, profile in bundle.profiles.items():
            threshold = thresholds[name]
            if threshold is not None:  # None: imported bases without statistics, nothing is flagged
                self.noisy_threshold.labels(self.model_name, name).set(threshold)
                # At 0 from the start, so that rate() and alerts see the series before the first noisy request.
                self.noisy_requests.labels(self.model_name, name)
            for condition, stats in (("clean", profile.see_clean), ("noise", profile.see_noise)):
                for percentile, value in (stats.quantiles if stats is not None else {}).items():
                    self.calibrated_see.labels(self.model_name, name, condition, percentile).set(value)

    def track_readiness(self, is_ready: Callable[[], bool]) -> None:
        self.ready.labels(self.model_name).set_function(lambda: float(is_ready()))

    def track_queue(self, depth: Callable[[], int], capacity: int) -> None:
        self.queue_depth.labels(self.model_name).set_function(depth)
        self.queue_capacity.labels(self.model_name).set(capacity)

    def include_engine_metrics(self, prefix: str) -> None:
        """Also export the families an engine registers on prometheus_client's global registry (vLLM's
        ``vllm:*``), so that one scrape of ``/metrics`` has both; each family once, read at scrape time."""
        self.registry.register(_Forwarded(REGISTRY, prefix))


class _Forwarded(Collector):
    """The families of another registry whose names start with a prefix."""

    def __init__(self, source: CollectorRegistry, prefix: str) -> None:
        self.source = source
        self.prefix = prefix

    def collect(self) -> Iterator[Metric]:
        return (family for family in self.source.collect() if family.name.startswith(self.prefix))

    def describe(self) -> list[Metric]:
        return []  # families come and go with the engine: nothing to reserve at registration
