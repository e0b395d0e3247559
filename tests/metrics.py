"""Read ``/metrics`` answers as Prometheus does, so tests compare samples, not text layout
(label order and ``1`` vs ``1.0`` are the exposition library's business)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``{(sample name, frozenset of labels): value}`` for every sample in ``text``."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample, or None when ``text`` has no such sample."""
    return samples(text).get((name, frozenset(labels.items())))


def families(text: str) -> dict[str, str]:
    """``{family name: type}`` as declared by the ``# TYPE`` lines."""
    return {family.name: family.type for family in text_string_to_metric_families(text)}
