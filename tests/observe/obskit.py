"""Reading ``GET /metrics`` the way Prometheus does, and what a label may never hold.

A scrape is parsed with ``prometheus_client.parser.text_string_to_metric_families``
(the reference parser) into ``{(sample name, labels): value}``. The registry is one per
process and the test servers share the test process, so tests compare two scrapes
(``delta``) instead of absolute values.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import httpx
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["ALLOWED_LABELS", "Samples", "by_label", "check_labels", "delta", "scrape", "value"]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

#: every label name tether uses; each names a bounded set (``le`` is the histogram bucket; ``tool`` a pinned
#: MCP tool, else `-`; ``peer`` a configured ``[[federation]]`` peer's name)
ALLOWED_LABELS = frozenset({"kind", "endpoint", "error", "route", "status", "detector", "tool", "outcome", "le", "peer"})
_BOUNDED = re.compile(r"^[a-z0-9_.+-]{1,40}$|^[0-9.e+-]+$|^\+Inf$")


def scrape(base_url: str) -> Samples:
    """The ``tether_*`` samples of one scrape (``_created`` timestamps left out)."""
    response = httpx.get(base_url + "/metrics", timeout=10.0, trust_env=False)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name.startswith("tether_") and not sample.name.endswith("_created"):
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample (0 when the labelled child does not exist yet, as Prometheus would read it)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def check_labels(samples: Samples, forbidden: Iterable[str]) -> None:
    """Label names are tether's bounded set; no value holds a principal, id, URL, token or ``forbidden`` text."""
    needles = [n for n in forbidden if n]
    for (name, labels), _ in samples.items():
        for key, val in labels:
            assert key in ALLOWED_LABELS, f"{name} has an unexpected label `{key}`"
            assert _BOUNDED.match(val), f"{name}{{{key}={val!r}}} is not a bounded label value"
            assert not any(n in val for n in needles), f"{name}{{{key}={val!r}}} carries a principal or id"


def by_label(samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str, key: str) -> set[str]:
    return {dict(labels)[key] for (n, labels) in samples if n == name and key in dict(labels)}
