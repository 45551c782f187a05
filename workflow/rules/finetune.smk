rule finetune_model:
    input:
        unpack(finetune_inputs),
    output:
        directory(paths.run_model_dir("{run}")),
    log:
        "logs/finetune_model/{run}.log",
    benchmark:
        paths.benchmark_path("finetune_model/{run}")
    conda:
        "../../envs/lalm-slu.yaml"
    threads: finetune_threads
    # GPUs and time limit from the cost plan; the Slurm geometry (one task per node) from the launch it runs.
    resources:
        **finetune_resources(),
    params:
        launcher=finetune_launcher,
        threads_per_process=threads_per_process,
        settings=finetune_settings,
        work_dir=work_dir,
        # Quoted shell text, which a prefix's job replaces: it keeps only its checkpoint and starts from none.
        output_option=arguments.finetune_output_option(prefix=False),
        start_from=start_from_option,
        dev_manifests=dev_manifests_argument,
        code=code_version("finetune_model"),
    shell:
        "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True {params.launcher} -m lalm_slu finetune"
        " --mixture {input.mixture:q} --settings {params.settings:q} --out-dir {output:q}{params.output_option}"
        " --work-dir {params.work_dir:q} --audio-frames {input.audio_frames:q}{params.start_from}"
        " {params.dev_manifests:q}"
        " --threads {params.threads_per_process} > {log:q} 2>&1"


# The first phases every budget's run of a scheme shares, trained once; the output is the checkpoint at their end
# (weights, AdamW state, RNG, position), from which each run trains the rest.
use rule finetune_model as finetune_prefix with:
    output:
        directory(paths.prefix_checkpoint_path("{prefix}")),
    log:
        "logs/finetune_prefix/{prefix}.log",
    benchmark:
        paths.benchmark_path("finetune_prefix/{prefix}")
    params:
        output_option=arguments.finetune_output_option(prefix=True),
        start_from="",
