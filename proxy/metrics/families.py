"""Every Prometheus family Laneway exports: names, labels, help text and buckets in one place.

Label values are configured names only (routes, deployments, hardware tags, teams) or
members of small fixed sets (status, transport, endpoint, kind, reason); nothing a client
types ever becomes a label value. Families live in their own registry so a library that
registers its own metrics in the default registry cannot collide with ours.

Gauges say how several worker processes combine (prometheus-client multiprocess mode):
``livesum`` adds what live workers hold, ``livemax`` keeps the worst live view,
``livemostrecent`` the latest write of any live worker, ``sum`` adds every worker's running
total, including workers that have exited.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()  # *_created samples double the series count and no panel uses them
REGISTRY = CollectorRegistry(auto_describe=True)

# Buckets cover both lanes: a wafer lane (~1500 tok/s, TTFT ~50-60 ms, a 500-token answer in
# ~0.4 s) and a GPU lane (~80 tok/s, TTFT ~400 ms, long completions of minutes). The TTFT
# edges bracket each lane's typical value in the middle of a bucket (40-60 ms, 350-450 ms):
# histogram_quantile interpolates linearly inside a bucket, so a lane sitting just past an
# edge (0.404 s against an edge at 0.4) would read as the next bucket's midpoint (0.45).
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.01, 0.02, 0.03, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.45, 0.55, 0.7, 1, 1.5, 2,
                3, 5, 10, 30)
TOKENS_PER_S_BUCKETS = (5, 10, 20, 40, 60, 80, 100, 150, 200, 300, 500, 750, 1000, 1250, 1500, 2000, 3000, 5000)
# The proxy's own work is sub-millisecond; anything past 25 ms is queueing or a stall.
ADDED_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)

REQUEST_LABELS = ("route", "deployment", "lane", "transport")
RATELIMIT_LABELS = ("deployment", "window", "unit", "source")  # unit: requests | tokens, one per series

# --- requests (from each finished request's Outcome) ---------------------------------------
requests = Counter(
    "laneway_requests", "Finished client requests (HTTP requests and WebSocket turns) by where they went and how they ended.",
    ("route", "deployment", "lane", "status", "transport", "endpoint"), registry=REGISTRY)
request_duration = Histogram(
    "laneway_request_duration_seconds", "Arrival to last byte sent to the client, for requests an upstream answered.",
    REQUEST_LABELS, buckets=DURATION_BUCKETS, registry=REGISTRY)
ttft = Histogram(
    "laneway_time_to_first_token_seconds", "Arrival to the first output token relayed to the client (streamed requests).",
    REQUEST_LABELS, buckets=TTFT_BUCKETS, registry=REGISTRY)
decode_rate = Histogram(
    "laneway_decode_tokens_per_second", "Output tokens per second after the first token (streamed requests with 2+ output tokens).",
    ("route", "deployment", "lane"), buckets=TOKENS_PER_S_BUCKETS, registry=REGISTRY)
added_latency = Histogram(
    "laneway_added_latency_seconds",
    "Laneway's own time before the chosen upstream request is sent (auth, body read, routing, limits); "
    "attempt=fallback also holds the failed attempts before it, attempt=hedge the hedge delay.",
    ("transport", "attempt"), buckets=ADDED_LATENCY_BUCKETS, registry=REGISTRY)
tokens = Counter(
    "laneway_tokens", "Tokens by kind (input, output, cached, reasoning); estimated when the upstream reported no usage.",
    ("route", "deployment", "lane", "team", "kind"), registry=REGISTRY)
fallbacks = Counter(
    "laneway_fallbacks", "Upstream attempts abandoned for the next candidate before the first byte, by the abandoned deployment and why.",
    ("route", "deployment", "reason"), registry=REGISTRY)
spills = Counter(
    "laneway_spills",
    "Requests routed past a candidate short of quota (provider-reported headroom, or our limiter refused it), "
    "by the passed-over deployment and why.",
    ("route", "deployment", "reason"), registry=REGISTRY)
upstream_rate_limited = Counter(
    "laneway_upstream_rate_limited",
    "Upstream attempts the provider refused with 429 (its quota), by deployment: the one sign of a window its "
    "headers do not state (a Cerebras per-minute request limit).",
    ("deployment",), registry=REGISTRY)
breaker_skips = Counter(
    "laneway_breaker_skips", "Requests routed past a candidate whose circuit breaker was open.",
    ("route", "deployment"), registry=REGISTRY)
hedges = Counter(
    "laneway_hedges", "Hedged requests (a second candidate started because the first was slow), by which attempt won: hedge or primary.",
    ("route", "winner"), registry=REGISTRY)

# --- routing state (sampled from the router's snapshots) -----------------------------------
breaker_state = Gauge(
    "laneway_breaker_state", "Circuit breaker per deployment: 0 closed, 1 half-open, 2 open (worst across workers).",
    ("deployment",), registry=REGISTRY, multiprocess_mode="livemax")
ratelimit_remaining = Gauge(
    "laneway_ratelimit_remaining",
    "Quota left in a deployment's window, in the series' unit (requests or tokens): source=provider as its last "
    "response headers said, source=laneway as our limiter counts.",
    RATELIMIT_LABELS, registry=REGISTRY, multiprocess_mode="livemostrecent")
ratelimit_limit = Gauge(
    "laneway_ratelimit_limit", "Size of a deployment's window (same labels and unit as laneway_ratelimit_remaining).",
    RATELIMIT_LABELS, registry=REGISTRY, multiprocess_mode="livemostrecent")

# --- rate limiter -----------------------------------------------------------------------------
ratelimit_rejections = Counter(
    "laneway_ratelimit_rejections",
    "Admissions refused by Laneway's own limiter: scope=client (the key's limits; the client gets 429) or "
    "scope=deployment (that candidate is skipped), by the key or deployment name.",
    ("scope", "name"), registry=REGISTRY)
reservation_error = Gauge(
    "laneway_reservation_error_tokens",
    "Running sum of reserved minus actual tokens over settled requests (positive: estimates reserve too much).",
    ("deployment",), registry=REGISTRY, multiprocess_mode="sum")
reservations_settled = Counter(
    "laneway_reservations_settled", "Requests whose token reservation was settled against real usage.",
    ("deployment",), registry=REGISTRY)

# --- cost and budgets ----------------------------------------------------------------------------
cost = Counter(
    "laneway_cost_usd",
    "Spend in USD by team and deployment at the price in force when it was used; pricing_status is "
    "provisional, announced or free_preview (usage of a model with no known price is not counted).",
    ("team", "deployment", "pricing_status"), registry=REGISTRY)
budget_spent = Gauge(
    "laneway_budget_spent_usd", "Spend counted against a key or team budget in the current day or month (highest worker view).",
    ("scope", "name", "period"), registry=REGISTRY, multiprocess_mode="livemax")
budget_limit = Gauge(
    "laneway_budget_limit_usd", "A key or team budget: kind=soft re-routes to cheaper candidates, kind=hard refuses with 429.",
    ("scope", "name", "period", "kind"), registry=REGISTRY, multiprocess_mode="livemax")
budget_actions = Counter(
    "laneway_budget_actions", "Budget decisions: action=refused (hard limit, 429) or rerouted (soft limit, cheaper candidate).",
    ("action",), registry=REGISTRY)

# --- WebSocket mode -------------------------------------------------------------------------
ws_connections = Counter(
    "laneway_websocket_connections", "Client WebSocket upgrades on /v1/responses: result=accepted or refused.",
    ("result",), registry=REGISTRY)
ws_open = Gauge(
    "laneway_websocket_connections_open", "Client WebSocket connections open now (summed over workers).",
    (), registry=REGISTRY, multiprocess_mode="livesum")
ws_events = Counter(
    "laneway_websocket_events",
    "WebSocket events by kind: turn, warmup, error, client_drop, connection_limit.",
    ("kind",), registry=REGISTRY)

upstream_ws_events = Counter(
    "laneway_upstream_websocket_events",
    "Laneway's own WebSocket connections to providers that speak Responses WebSocket mode, by kind: connect, "
    "connect_failure, turn (ran over a socket), http_fallback (no socket could take it), drop (died under a turn), "
    "continuation (sent as previous_response_id + new items: a client socket's turn on its pinned socket, or an HTTP "
    "client's resent conversation on the socket that served its last turn), continuation_miss (refused by the provider: "
    "re-sent in full).",
    ("kind",), registry=REGISTRY)
upstream_ws_open = Gauge(
    "laneway_upstream_websockets_open", "WebSocket connections to providers open now (summed over workers).",
    (), registry=REGISTRY, multiprocess_mode="livesum")
ratelimit_leases = Counter(
    "laneway_ratelimit_leases",
    "Quota leases borrowed from the shared limit store (store.leases): one store call each, for many admissions.",
    (), registry=REGISTRY)
ratelimit_leased_admissions = Counter(
    "laneway_ratelimit_leased_admissions",
    "Requests admitted from quota leases (store.leases); per lease borrowed, the requests one store call served.",
    (), registry=REGISTRY)
ratelimit_local_admissions = Counter(
    "laneway_ratelimit_local_admissions",
    "Requests admitted by this replica's own limits while the shared limit store (Redis) was unreachable (fail-open).",
    (), registry=REGISTRY)

# --- policy and store -------------------------------------------------------------------------
policy_reloads = Counter(
    "laneway_policy_reloads", "Policy reloads (file change or SIGHUP): result=ok or failed (the old policy keeps running).",
    ("result",), registry=REGISTRY)
redis_ping = Histogram(
    "laneway_redis_ping_seconds", "Round trip of a PING to each Redis the policy uses (limits, ledger), once per sample interval per worker.",
    ("component",), buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5), registry=REGISTRY)
redis_ping_failures = Counter(
    "laneway_redis_ping_failures", "PINGs to a Redis the policy uses that failed or took longer than 0.5 s.",
    ("component",), registry=REGISTRY)
redis_errors = Counter(
    "laneway_redis_errors",
    "Redis operations that failed or timed out, by component: limits (admit/settle; the policy's fail-open/closed "
    "choice then applies) or ledger (usage writes, retried from the buffer).",
    ("component",), registry=REGISTRY)
