rule aggregate_metrics:
    input:
        metrics_paths(),
    output:
        report(
            "results/metrics.csv",
            caption="../report/metrics.rst",
            category="Metrics",
        ),
    log:
        "logs/aggregate_metrics.log",
    # Seconds of CPU work: run on the submit host, not as a cluster job of its own.
    localrule: True
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("light", "threads")
    resources:
        mem_mb=resource("light", "mem_mb"),
        runtime=resource("light", "runtime"),
    params:
        code=code_version("aggregate_metrics"),
    shell:
        "python -m lalm_slu aggregate --metrics {input:q} --out {output:q} > {log:q} 2>&1"


rule compare_schemes:
    input:
        unpack(comparison_inputs),
    output:
        report(
            "results/comparisons.csv",
            caption="../report/comparisons.rst",
            category="Comparisons",
        ),
    log:
        "logs/compare_schemes.log",
    # Seconds of CPU work: run on the submit host, not as a cluster job of its own.
    localrule: True
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("light", "threads")
    resources:
        mem_mb=resource("light", "mem_mb"),
        runtime=resource("light", "runtime"),
    params:
        gold=gold_arguments,
        pairs=comparison_pair_arguments,
        bootstrap=config["comparisons"]["bootstrap"],
        seed=config["comparisons"]["seed"],
        code=code_version("compare_schemes"),
    shell:
        "python -m lalm_slu compare-schemes --metrics {input.metrics:q} --predictions {input.predictions:q}"
        " --gold {params.gold:q} {params.pairs:q} --bootstrap {params.bootstrap:q} --seed {params.seed:q}"
        " --out {output:q} > {log:q} 2>&1"


rule make_tables:
    input:
        metrics="results/metrics.csv",
        comparisons="results/comparisons.csv",
        cascade_wer=cascade_wer_paths(),
    output:
        report(
            directory("results/tables"),
            patterns=["{name}.csv", "{name}.md", "{name}.tex"],
            caption="../report/tables.rst",
            category="Tables",
        ),
    log:
        "logs/make_tables.log",
    # Seconds of CPU work: run on the submit host, not as a cluster job of its own.
    localrule: True
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("light", "threads")
    resources:
        mem_mb=resource("light", "mem_mb"),
        runtime=resource("light", "runtime"),
    params:
        code=code_version("make_tables"),
    shell:
        "python -m lalm_slu tables --metrics {input.metrics:q} --comparisons {input.comparisons:q}"
        " --cascade-wer {input.cascade_wer:q} --out-dir {output:q} > {log:q} 2>&1"


rule make_figures:
    input:
        metrics="results/metrics.csv",
        runs=evaluated_model_dirs(),
    output:
        report(
            directory("results/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    log:
        "logs/make_figures.log",
    # Seconds of CPU work: run on the submit host, not as a cluster job of its own.
    localrule: True
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("light", "threads")
    resources:
        mem_mb=resource("light", "mem_mb"),
        runtime=resource("light", "runtime"),
    params:
        code=code_version("make_figures"),
    shell:
        "python -m lalm_slu figures --metrics {input.metrics:q} --runs {input.runs:q} --out-dir {output:q}"
        " > {log:q} 2>&1"


# The cost plan of a GPU grid (`lalm-slu plan`): every GPU job's GPUs, time and GPU-hours, as the jobs ask them.
rule plan_gpu_hours:
    output:
        figure=report(
            "results/plan/gpu_hours.png",
            caption="../report/plan.rst",
            category="Cost plan",
        ),
        plan="results/plan/plan.json",
    log:
        "logs/plan_gpu_hours.log",
    localrule: True
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("light", "threads")
    resources:
        mem_mb=resource("light", "mem_mb"),
        runtime=resource("light", "runtime"),
    params:
        config=config_json,
        code=code_version("plan"),
    shell:
        "python -m lalm_slu plan --config-data {params.config:q} --out {output.plan:q} --figure {output.figure:q}"
        " > {log:q} 2>&1"
