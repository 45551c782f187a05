# The model, fetched from the hub into model.path when the config names its repository (model.hub_id).
# A local model (the demo's shipped one) has no rule. Fine-tuning jobs take model.path as an input.
# A local model that is missing stops planning at the first job that needs it, saying why (locate_model).


if config["model"]["hub_id"]:

    rule download_model:
        output:
            model=directory(config["model"]["path"]),
            stamp=model_download_stamp(),
        log:
            "logs/download_model.log",
        localrule: True
        conda:
            "../../envs/lalm-slu.yaml"
        params:
            hub_id=config["model"]["hub_id"],
            revision=model_revision(),
            pinning=model_revision_pinning(),
        shell:
            "python -m lalm_slu download-model --hub-id {params.hub_id:q} --revision {params.revision:q}"
            " --out-dir {output.model:q} --stamp {output.stamp:q} {params.pinning:q} > {log:q} 2>&1"

elif not Path(config["model"]["path"]).exists():

    rule locate_model:
        input:
            missing_model,
        output:
            model=directory(config["model"]["path"]),
        log:
            "logs/locate_model.log",
        localrule: True
