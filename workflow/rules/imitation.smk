# Behaviour imitation's targets: the phase-1 (text_only) model, or for transcript-level tasks the base model,
# reads each transcript of the run's paired-speech pool and answers every configured instruction; phase 2 trains
# the speech to give the same answers. Remade only when an answering model, the pool or the instructions change.


rule imitation_targets:
    input:
        unpack(imitation_pool_inputs),
    output:
        paths.imitation_pool_path("{pool}"),
    log:
        "logs/imitation_targets/{pool}.log",
    benchmark:
        paths.benchmark_path("imitation_targets/{pool}")
    wildcard_constraints:
        pool=alternatives(IMITATION_POOLS),
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("decode", "threads")
    resources:
        **job_resources("decode", planned_as="imitation_targets"),
    params:
        pool=imitation_pool_arguments,
        tasks=imitation_tasks,
        settings=imitation_decode_settings,
        code=code_version("imitation_targets"),
    shell:
        "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python -m lalm_slu imitation-targets --model {input.model:q}"
        " {params.pool:q} --tasks {params.tasks:q} --settings {params.settings:q}"
        " --out {output:q} --threads {threads} > {log:q} 2>&1"
