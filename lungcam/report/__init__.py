"""Report stage: metrics, figures, per-patient QC records, audit reports, the cohort summary
and provenance. No other stage uses it; the workflow's patient_qc rule calls
`write_patient_qc` in Snakemake's own process.

Modules: metrics and evaluation (metrics.json), nuisance_baseline, figures, patient_qc
(qc/{patient_id}.json), pages (the HTML reports) and provenance.
"""

from lungcam.core.interface import lazy_interface

# Interface name -> the module that defines it.
INTERFACE = {
    "write_patient_qc": "patient_qc",
}
__getattr__, __all__ = lazy_interface(__name__, INTERFACE)
