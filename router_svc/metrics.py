"""The router's Prometheus metrics (names follow the conventions: base units, `_total`, `_seconds`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from spiral_common.pattern_set import PatternSet

TIER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "spiral_router_requests_total",
            "Requests by the tier that answered them (none: refused or failed).",
            ["tier"],
            registry=registry,
        )
        self.tier_latency = Histogram(
            "spiral_router_tier_duration_seconds",
            "Time spent in each tier tried, seconds.",
            ["tier", "outcome"],
            buckets=TIER_BUCKETS,
            registry=registry,
        )
        self.request_latency = Histogram(
            "spiral_router_request_duration_seconds",
            "Time from request to whole answer, by answering tier, seconds.",
            ["tier"],
            buckets=TIER_BUCKETS,
            registry=registry,
        )
        self.first_token = Histogram(
            "spiral_router_time_to_first_token_seconds",
            "Time from request to the first answer text, seconds.",
            buckets=TIER_BUCKETS,
            registry=registry,
        )
        self.traffic_log = Counter(
            "spiral_traffic_log_exchanges_total",
            "Exchanges given to the traffic log, by what became of them: written, stripped (over the entry cap: "
            "written without their texts), dropped (the queue was full), lost (Redis refused the write).",
            ["event"],
            registry=registry,
        )
        self.cache_lookups = Counter(
            "spiral_cache_lookups_total", "Cache lookups by result (hit, miss).", ["result"], registry=registry
        )
        self.cloud_calls = Counter(
            "spiral_cloud_calls_total",
            "Cloud provider calls by outcome (answered, failed, refused).",
            ["provider", "outcome"],
            registry=registry,
        )
        self.cloud_spend = Counter(
            "spiral_cloud_spend_usd_total", "Settled cloud spend of this router, US dollars.", registry=registry
        )
        self.budget_refusals = Counter(
            "spiral_budget_refusals_total",
            "Requests refused by the cost guard, by limit.",
            ["limit"],
            registry=registry,
        )
        self.council_agreement = Histogram(
            "spiral_council_agreement",
            "The council winner's agreement with the other candidates, in [0, 1].",
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=registry,
        )
        self.feedback = Counter(
            "spiral_feedback_total",
            "User ratings, by rating and by the track (main or canary) that gave the rated answer.",
            ["rating", "track"],
            registry=registry,
        )
        # Per client API key ("local": calls without a key). The label is the key's name, never its secret; keys
        # are created by the operator, so the label's values stay few.
        self.key_requests = Counter(
            "spiral_api_key_requests_total",
            "Client requests admitted, by API key name.",
            ["api_key"],
            registry=registry,
        )
        self.key_refusals = Counter(
            "spiral_api_key_refusals_total",
            "Client requests refused by their key's limits, by API key name and reason "
            "(KEY_RATE_LIMITED, MODEL_NOT_ALLOWED, KEY_BUDGET_EXCEEDED).",
            ["api_key", "reason"],
            registry=registry,
        )
        self.key_spend = Counter(
            "spiral_api_key_spend_usd_total",
            "Settled cloud spend of this router, by API key name, US dollars.",
            ["api_key"],
            registry=registry,
        )
        self.budget_spent = Gauge(
            "spiral_budget_spent_usd", "Today's settled spend of the shared pool, US dollars.", registry=registry
        )
        self.budget_reserved = Gauge(
            "spiral_budget_reserved_usd", "Today's outstanding reservations on the pool, US dollars.", registry=registry
        )
        self.budget_pool = Gauge("spiral_budget_pool_usd", "The daily pool, US dollars.", registry=registry)
        self.budget_expired_charged = Gauge(
            "spiral_budget_expired_charged_usd",
            "Today's reservations charged at their worst case because their caller never settled them, US dollars.",
            registry=registry,
        )
        self.budget_over_reservation = Gauge(
            "spiral_budget_over_reservation_usd",
            "Today's settled costs past their reservations (the worst-case bound was wrong), US dollars.",
            registry=registry,
        )
        self.pattern_set_version = Gauge(
            "spiral_pattern_set_version",
            "The mined pattern set this router matches against (0: none).",
            registry=registry,
        )
        self.pattern_set_estimate = Gauge(
            "spiral_pattern_set_estimate_ratio",
            "The loaded pattern set's published, cross-fitted estimates at its max_error, in [0, 1] (0: not"
            " estimated): known_precision, known_coverage, unknown_answered (share of prompts of never-mined"
            " intents answered), precision_with_unknown, max_error.",
            ["estimate"],
            registry=registry,
        )

        self.embedding_batch_size = Histogram(
            "spiral_pattern_embedding_batch_size",
            "Prompts per encoder call of the pattern tier (distinct prompts that arrived together).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=registry,
        )
        self.encoder_latency = Histogram(
            "spiral_pattern_encoder_duration_seconds",
            "Time of one encoder call of the pattern tier (a whole batch), seconds.",
            buckets=TIER_BUCKETS,
            registry=registry,
        )
        self.embedding_cache_lookups = Counter(
            "spiral_pattern_embedding_cache_lookups_total",
            "Lookups of a prompt's embedding in the pattern tier's cache of recent prompts, by result (hit, miss).",
            ["result"],
            registry=registry,
        )
        self.embedding_refusals = Counter(
            "spiral_pattern_embeddings_refused_total",
            "Prompts the pattern tier did not embed because its queue was full or it was stopping (a miss).",
            registry=registry,
        )

    # The embedding batcher's observer (router_svc.embedding_batcher.EmbeddingObserver).
    def embedding_batch(self, size: int, seconds: float) -> None:
        self.embedding_batch_size.observe(size)
        self.encoder_latency.observe(seconds)

    def embedding_cache(self, hit: bool) -> None:
        self.embedding_cache_lookups.labels("hit" if hit else "miss").inc()

    def embedding_refused(self) -> None:
        self.embedding_refusals.inc()

    def pattern_set_loaded(self, patterns: PatternSet) -> None:
        calibration = patterns.calibration
        self.pattern_set_version.set(patterns.version)
        for name, value in (
            ("known_precision", calibration.precision_at_threshold),
            ("known_coverage", calibration.coverage_at_threshold),
            ("unknown_answered", calibration.unknown_answered),
            ("precision_with_unknown", calibration.precision_with_unknown),
            ("max_error", calibration.max_error),
        ):
            self.pattern_set_estimate.labels(name).set(value)
