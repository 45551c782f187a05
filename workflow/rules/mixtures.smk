rule mix_training_set:
    input:
        unpack(mixture_inputs),
    output:
        "results/mixtures/{run}.parquet",
    log:
        "logs/mix_training_set/{run}.log",
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("light", "threads")
    resources:
        mem_mb=resource("light", "mem_mb"),
        runtime=resource("light", "runtime"),
    params:
        scheme=run_scheme,
        seed=run_seed,
        target=mixture_target_arguments,
        code=code_version("mix_training_set"),
    shell:
        "python -m lalm_slu mix-training-set --scheme {params.scheme:q}"
        " --text-manifest {input.text:q} --speech-manifest {input.speech:q}"
        " --speech-ids {input.speech_ids:q} {params.target:q} --seed {params.seed:q}"
        " --out {output:q} > {log:q} 2>&1"
