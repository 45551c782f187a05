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
        code=code_version("finetune"),
    shell:
        "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 {params.launcher} -m lalm_slu finetune"
        " --mixture {input.mixture:q} --settings {params.settings:q} --out-dir {output:q}"
        " --work-dir {params.work_dir:q} --audio-frames {input.audio_frames:q}"
        " --threads {params.threads_per_process} > {log:q} 2>&1"
