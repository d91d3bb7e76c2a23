"""SPEED's Prometheus metrics."""
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from storage.models import Deployment

PHASE_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class Metrics:
    """This app's Prometheus metrics, in a registry of its own (several apps may share a process)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.finished = Counter("speed_deployments_finished_total",
                                "Deployments that reached a final status", ["status"],
                                registry=self.registry)
        self.queued = Gauge("speed_deployments_queued", "Deployments waiting in the queue",
                            registry=self.registry)
        self.running = Gauge("speed_deployments_running", "Deployments this process is running",
                             registry=self.registry)
        self.cluster_running = Gauge("speed_cluster_deployments_running",
                                     "Deployments running on all replicas",
                                     registry=self.registry)
        self.replicas = Gauge("speed_replicas", "Replicas whose lease runs (this one included)",
                              registry=self.registry)
        self.phase = Histogram("speed_phase_duration_seconds", "Duration of deployment phases",
                               ["phase"], buckets=PHASE_BUCKETS, registry=self.registry)
        self.deliveries = Counter("speed_webhook_deliveries_total", "Webhook deliveries received",
                                  ["event", "outcome"], registry=self.registry)
        self.environment_healthy = Gauge(
            "speed_environment_healthy", "1 when the environment's live release answers its "
            "health check, 0 when not (or nothing is live)", ["repository", "environment"],
            registry=self.registry)
        self.reports_unsent = Gauge("speed_github_reports_unsent",
                                    "States waiting in GitHub's outbox, of every replica",
                                    registry=self.registry)
        self.report_failures = Counter("speed_github_report_failures_total",
                                       "Failed attempts to report to GitHub",
                                       registry=self.registry)

    def observe(self, deployment: Deployment) -> None:
        """Count a finished deployment and its phase durations (a Store listener)."""
        if not deployment.state.finished:
            return
        self.finished.labels(deployment.status).inc()
        d = deployment
        for phase, start, end in (("clone", d.started_at, d.cloned_at),
                                  ("build", d.cloned_at, d.built_at),
                                  ("run", d.container_started_at, d.finished_at)):
            if start and end:
                self.phase.labels(phase).observe((end - start).total_seconds())
