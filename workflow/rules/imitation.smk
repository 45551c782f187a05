# Behaviour imitation's targets: the phase-1 (text_only) model, or for transcript-level tasks the base model,
# reads each transcript of the run's paired-speech pool and answers every configured instruction; phase 2 trains
# the speech to give the same answers. Remade only when an answering model, the pool or the instructions change.


rule imitation_targets:
    input:
        unpack(imitation_pool_inputs),
    output:
        "results/imitation_targets/{pool}.parquet",
    log:
        "logs/imitation_targets/{pool}.log",
    benchmark:
        "results/benchmarks/imitation_targets/{pool}.tsv"
    wildcard_constraints:
        pool=alternatives(IMITATION_POOLS),
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("decode", "threads")
    resources:
        mem_mb=resource("decode", "mem_mb"),
        runtime=planned_resource("imitation_targets", "decode", "runtime"),
        gpu=planned_resource("imitation_targets", "decode", "gpu"),
    params:
        pool=imitation_pool_arguments,
        tasks=imitation_tasks,
        settings=imitation_decode_settings,
        code=code_version("imitation_targets"),
    shell:
        "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python -m lalm_slu imitation-targets --model {input.model:q}"
        " {params.pool:q} --tasks {params.tasks:q} --settings {params.settings:q}"
        " --out {output:q} --threads {threads} > {log:q} 2>&1"
