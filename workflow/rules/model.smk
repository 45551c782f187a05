# The model, fetched from the hub into model.path when the config names its repository (model.hub_id).
# A local model (the demo's shipped one) has no rule. Fine-tuning jobs take model.path as an input.


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
