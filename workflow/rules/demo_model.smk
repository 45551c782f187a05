# The demo model is built and pretrained only on request (`snakemake pretrain_demo_model`);
# runs start from config model.path, the shipped copy, so `rule all` never rebuilds it.


rule build_demo_model:
    output:
        directory("results/demo_model/initial"),
    log:
        "logs/build_demo_model.log",
    benchmark:
        "results/benchmarks/build_demo_model.tsv"
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("build_demo_model", "threads")
    resources:
        mem_mb=resource("build_demo_model", "mem_mb"),
        runtime=resource("build_demo_model", "runtime"),
    params:
        settings=settings_json("demo_model", "build"),
        code=code_version("build_demo_model"),
    shell:
        "python -m lalm_slu build-demo-model --settings {params.settings:q}"
        " --out-dir {output} > {log} 2>&1"


rule pretrain_demo_model:
    input:
        model="results/demo_model/initial",
        manifests=pretrain_manifests,
    output:
        directory("results/demo_model/pretrained"),
    log:
        "logs/pretrain_demo_model.log",
    benchmark:
        "results/benchmarks/pretrain_demo_model.tsv"
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("pretrain_demo_model", "threads")
    resources:
        mem_mb=resource("pretrain_demo_model", "mem_mb"),
        runtime=resource("pretrain_demo_model", "runtime"),
        gpu=resource("pretrain_demo_model", "gpu"),
    params:
        settings=settings_json("demo_model", "pretrain"),
        work_dir="work/demo_model_pretrain",
        code=code_version("pretrain_demo_model"),
    shell:
        "python -m lalm_slu pretrain-demo-model --model {input.model}"
        " --manifests {input.manifests} --settings {params.settings:q}"
        " --out-dir {output} --work-dir {params.work_dir} > {log} 2>&1"
