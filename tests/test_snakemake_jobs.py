"""Snakemake's pipe/service lookup at job start is skipped only where no rule has such outputs."""

import pytest
from snakemake.io import pipe, service
from snakemake.jobs import Job

from lungcam.core.snakemake_jobs import skip_pipe_lookups


@pytest.fixture
def job_class(monkeypatch):
    """Job with its own lookup restored after the test."""
    monkeypatch.setattr(Job, "is_pipe_or_service_input", Job.is_pipe_or_service_input)
    return Job


def test_without_pipe_or_service_outputs_the_lookup_answers_no_at_once(job_class):
    own = job_class.is_pipe_or_service_input
    assert skip_pipe_lookups(["results/qc", "work/status/ingest.tsv"])
    assert job_class.is_pipe_or_service_input is not own
    assert job_class.is_pipe_or_service_input(object(), "results/qc") is False


@pytest.mark.parametrize("flagged", [pipe, service])
def test_a_pipe_or_service_output_keeps_snakemakes_own_lookup(job_class, flagged):
    own = job_class.is_pipe_or_service_input
    assert not skip_pipe_lookups(["results/qc", flagged("work/stream")])
    assert job_class.is_pipe_or_service_input is own
