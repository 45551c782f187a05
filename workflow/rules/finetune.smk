rule finetune_model:
    input:
        unpack(finetune_inputs),
    output:
        directory("results/runs/{run}/model"),
    log:
        "logs/finetune_model/{run}.log",
    benchmark:
        "results/benchmarks/finetune_model/{run}.tsv"
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("finetune", "threads")
    resources:
        mem_mb=resource("finetune", "mem_mb"),
        runtime=resource("finetune", "runtime"),
        gpu=resource("finetune", "gpu"),
        nodes=resource("finetune", "nodes"),
        tasks=resource("finetune", "nodes"),
    params:
        launcher=finetune_launcher,
        threads_per_process=threads_per_process,
        settings=finetune_settings,
        work_dir=work_dir,
        start_from=start_from_argument,
        code=code_version("finetune"),
    shell:
        "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 {params.launcher} -m lalm_slu finetune"
        " --mixture {input.mixture:q} --settings {params.settings:q} --out-dir {output:q}"
        " --work-dir {params.work_dir:q} --audio-frames {input.audio_frames:q} {params.start_from:q}"
        " --threads {params.threads_per_process} > {log:q} 2>&1"


# The first phases every budget's run of a scheme shares, trained once; the output is the checkpoint at their end
# (weights, AdamW state, RNG, position), from which each run trains the rest.
rule finetune_prefix:
    input:
        unpack(finetune_inputs),
    output:
        directory("results/prefixes/{prefix}/checkpoint"),
    log:
        "logs/finetune_prefix/{prefix}.log",
    benchmark:
        "results/benchmarks/finetune_prefix/{prefix}.tsv"
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("finetune", "threads")
    resources:
        mem_mb=resource("finetune", "mem_mb"),
        runtime=resource("finetune", "runtime"),
        gpu=resource("finetune", "gpu"),
        nodes=resource("finetune", "nodes"),
        tasks=resource("finetune", "nodes"),
    params:
        launcher=finetune_launcher,
        threads_per_process=threads_per_process,
        settings=finetune_settings,
        work_dir=work_dir,
        code=code_version("finetune"),
    shell:
        "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 {params.launcher} -m lalm_slu finetune"
        " --mixture {input.mixture:q} --settings {params.settings:q} --out-dir {output:q} --output checkpoint"
        " --work-dir {params.work_dir:q} --audio-frames {input.audio_frames:q}"
        " --threads {params.threads_per_process} > {log:q} 2>&1"
