# The demo model is built and pretrained only on request (`snakemake pretrain_demo_model`);
# runs start from config model.path, the shipped copy, so `rule all` never rebuilds it.


include: "demo_model_inputs.smk"


use rule prepare_corpus as prepare_demo_model_text with:
    output:
        train=paths.demo_model_manifest_path("{corpus}", "{lang}", "train"),
        dev=paths.demo_model_manifest_path("{corpus}", "{lang}", "dev"),
        test=paths.demo_model_manifest_path("{corpus}", "{lang}", "test"),
    log:
        "logs/prepare_demo_model_text/{corpus}/{lang}.log",
    params:
        max_utterances=demo_max_utterance_arguments,


rule build_demo_model:
    input:
        train=data_manifests("train_data"),
    output:
        directory(paths.demo_model_dir("initial")),
    log:
        "logs/build_demo_model.log",
    benchmark:
        paths.benchmark_path("build_demo_model")
    conda:
        "../../envs/demo-model.yaml"
    threads: resource("build_demo_model", "threads")
    resources:
        **job_resources("build_demo_model"),
    params:
        architecture=settings_json("demo_model", "architecture"),
        seed=config["demo_model"]["seed"],
        code=code_version("build_demo_model"),
    shell:
        "python -m lalm_slu build-demo-model --train-manifests {input.train:q}"
        " --architecture-json {params.architecture:q} --seed {params.seed:q}"
        " --out-dir {output:q} > {log:q} 2>&1"


rule pretrain_demo_model:
    input:
        model=paths.demo_model_dir("initial"),
        train=data_manifests("train_data"),
        eval=data_manifests("eval_data"),
    output:
        directory(paths.demo_model_dir("pretrained")),
    log:
        "logs/pretrain_demo_model.log",
    benchmark:
        paths.benchmark_path("pretrain_demo_model")
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("pretrain_demo_model", "threads")
    resources:
        **job_resources("pretrain_demo_model", gpu=True),
    params:
        voices=pretrain_voices_json,
        options=pretrain_options,
        settings=settings_json("demo_model", "pretrain"),
        work_dir="work/demo_model_pretrain",
        code=code_version("pretrain_demo_model"),
    shell:
        "python -m lalm_slu pretrain-demo-model --model-dir {input.model:q}"
        " --train-manifests {input.train:q} --eval-manifests {input.eval:q}"
        " --voices-json {params.voices:q} {params.options:q}"
        " --settings {params.settings:q} --work-dir {params.work_dir:q}"
        " --out-dir {output:q} > {log:q} 2>&1"


# One more pretraining stage from `continue_from` (settings: demo_model.continue_pretrain).
use rule pretrain_demo_model as continue_demo_model with:
    input:
        model=config["demo_model"]["continue_from"],
        train=data_manifests("train_data"),
        eval=data_manifests("eval_data"),
    output:
        directory(paths.demo_model_dir("continued")),
    log:
        "logs/continue_demo_model.log",
    benchmark:
        paths.benchmark_path("continue_demo_model")
    threads: resource("continue_demo_model", "threads")
    resources:
        **job_resources("continue_demo_model", gpu=True),
    params:
        settings=settings_json("demo_model", "continue_pretrain"),
        work_dir="work/demo_model_continue",
