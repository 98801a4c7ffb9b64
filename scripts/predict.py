"""Rule `predict` (mode predict): apply a trained model file to the cohort (lungcam.train.inference)."""

from lungcam.core.device import pick_device
from lungcam.core.joblog import job_log
from lungcam.core.records import write_predictions
from lungcam.train.inference import check_preprocessing, load_model, predict_patients, with_decisions
from lungcam.train.slice_bank import SliceBank

snakemake = globals()["snakemake"]

with job_log(snakemake.log[0]) as log:
    device = pick_device(snakemake.params.device)
    model, metadata = load_model(snakemake.input.model, device)
    bank = SliceBank.load(snakemake.input.bank)
    check_preprocessing(metadata["preprocessing"], bank.preprocessing)
    patients = sorted(bank.patient_rows())
    table = with_decisions(predict_patients(model, metadata, bank, patients, device), metadata["classes"])
    labels = snakemake.params.labels
    table.insert(1, "label", [labels.get(p, "") for p in table["patient_id"]])
    table.insert(2, "fold", "predict")
    # Patients the model was trained on: their prediction is no independent test (reports say so).
    table.insert(3, "trained_on", table["patient_id"].isin(metadata.get("trained_on", [])))
    write_predictions(table, snakemake.output[0])
    log.info(
        "predicted %d patients with %s (%s); %d of them in its training set",
        len(table),
        snakemake.input.model,
        metadata["model"],
        int(table["trained_on"].sum()),
    )
