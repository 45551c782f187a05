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
    threads: finetune_threads("finetune_model")
    # GPUs and time limit from the cost plan; the Slurm geometry (one task per node) from the launch it runs.
    resources:
        mem_mb=resource("finetune", "mem_mb"),
        runtime=planned_resource("finetune_model", "finetune", "runtime"),
        gpu=finetune_resource("finetune_model", "gpu"),
        gres=finetune_resource("finetune_model", "gres"),
        nodes=finetune_resource("finetune_model", "nodes"),
        tasks=finetune_resource("finetune_model", "tasks"),
        tasks_per_gpu=finetune_resource("finetune_model", "tasks_per_gpu"),
        mpi=finetune_resource("finetune_model", "mpi"),
    params:
        launcher=finetune_launcher("finetune_model"),
        threads_per_process=threads_per_process("finetune_model"),
        settings=finetune_settings,
        work_dir=work_dir,
        start_from=start_from_argument,
        dev_manifests=dev_manifests_argument,
        code=code_version("finetune_model"),
    shell:
        "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True {params.launcher} -m lalm_slu finetune"
        " --mixture {input.mixture:q} --settings {params.settings:q} --out-dir {output:q}"
        " --work-dir {params.work_dir:q} --audio-frames {input.audio_frames:q} {params.start_from:q}"
        " {params.dev_manifests:q}"
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
    threads: finetune_threads("finetune_prefix")
    # GPUs and time limit from the cost plan; the Slurm geometry (one task per node) from the launch it runs.
    resources:
        mem_mb=resource("finetune", "mem_mb"),
        runtime=planned_resource("finetune_prefix", "finetune", "runtime"),
        gpu=finetune_resource("finetune_prefix", "gpu"),
        gres=finetune_resource("finetune_prefix", "gres"),
        nodes=finetune_resource("finetune_prefix", "nodes"),
        tasks=finetune_resource("finetune_prefix", "tasks"),
        tasks_per_gpu=finetune_resource("finetune_prefix", "tasks_per_gpu"),
        mpi=finetune_resource("finetune_prefix", "mpi"),
    params:
        launcher=finetune_launcher("finetune_prefix"),
        threads_per_process=threads_per_process("finetune_prefix"),
        settings=finetune_settings,
        work_dir=work_dir,
        dev_manifests=dev_manifests_argument,
        code=code_version("finetune_model"),
    shell:
        "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True {params.launcher} -m lalm_slu finetune"
        " --mixture {input.mixture:q} --settings {params.settings:q} --out-dir {output:q} --output checkpoint"
        " --work-dir {params.work_dir:q} --audio-frames {input.audio_frames:q} {params.dev_manifests:q}"
        " --threads {params.threads_per_process} > {log:q} 2>&1"
