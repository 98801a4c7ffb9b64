"""Report stage: metrics, figures, per-patient QC records, audit reports, the cohort summary
and provenance. No other stage uses it.

Modules: metrics and evaluation (metrics.json), nuisance_baseline, figures, patient_qc
(qc/{patient_id}.json), pages (the HTML reports) and provenance.
"""
