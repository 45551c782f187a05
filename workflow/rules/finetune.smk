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
    params:
        launcher=finetune_launcher,
        settings=finetune_settings,
        work_dir=work_dir,
        code=code_version("finetune"),
    shell:
        "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 {params.launcher} -m lalm_slu finetune --mixture {input.mixture}"
        " --settings {params.settings:q} --out-dir {output}"
        " --work-dir {params.work_dir} --audio-frames {input.audio_frames} --threads {threads}"
        " > {log} 2>&1"
