rule score_predictions:
    input:
        gold=gold_manifest,
        predictions=paths.prediction_path("{run}", "{testset}", "{modality}"),
    output:
        paths.run_metrics_path("{run}", "{testset}", "{modality}"),
    log:
        "logs/score_predictions/{run}/{testset}.{modality}.log",
    # Seconds of CPU work: run on the submit host, not as a cluster job of its own.
    localrule: True
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("light", "threads")
    resources:
        **job_resources("light"),
    params:
        meta=score_meta,
        bootstrap=config["scoring"]["bootstrap"],
        code=code_version("score"),
    shell:
        "python -m lalm_slu score --gold {input.gold:q} --pred {input.predictions:q}"
        " --meta {params.meta:q} --bootstrap {params.bootstrap:q}"
        " --json --out {output:q} > {log:q} 2>&1"
