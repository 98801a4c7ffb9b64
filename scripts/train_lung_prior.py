"""Rule `train_lung_prior`: make the training phantoms and fit the learned lung prior (lungcam.lungs.prior_training)."""

import torch

from lungcam.core.joblog import job_log
from lungcam.ingest import IngestSettings
from lungcam.lungs.prior_training import PriorTraining, build_prior

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    build_prior(
        PriorTraining.from_config(snakemake.params.train),
        IngestSettings.from_config(snakemake.params.ingest),
        tuple(snakemake.params.classes),
        snakemake.output[0],
        jobs=snakemake.threads,
    )
