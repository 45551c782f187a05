rule aggregate_metrics:
    input:
        metrics_paths(),
    output:
        report(
            paths.METRICS_TABLE,
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
        **job_resources("light"),
    params:
        code=code_version("aggregate_metrics"),
    shell:
        "python -m lalm_slu aggregate --metrics {input:q} --out {output:q} > {log:q} 2>&1"


rule compare_schemes:
    input:
        unpack(comparison_inputs),
    output:
        report(
            paths.COMPARISONS_TABLE,
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
        **job_resources("light"),
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
        metrics=paths.METRICS_TABLE,
        comparisons=paths.COMPARISONS_TABLE,
        cascade_wer=cascade_wer_paths(),
    output:
        report(
            directory(paths.TABLES_DIR),
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
        **job_resources("light"),
    params:
        code=code_version("make_tables"),
    shell:
        "python -m lalm_slu tables --metrics {input.metrics:q} --comparisons {input.comparisons:q}"
        " --cascade-wer {input.cascade_wer:q} --out-dir {output:q} > {log:q} 2>&1"


rule make_figures:
    input:
        metrics=paths.METRICS_TABLE,
        runs=evaluated_model_dirs(),
    output:
        report(
            directory(paths.FIGURES_DIR),
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
        **job_resources("light"),
    params:
        code=code_version("make_figures"),
    shell:
        "python -m lalm_slu figures --metrics {input.metrics:q} --runs {input.runs:q} --out-dir {output:q}"
        " > {log:q} 2>&1"


# The cost plan of a GPU grid (`lalm-slu plan`): every GPU job's GPUs, time and GPU-hours, as the jobs ask them.
rule plan_gpu_hours:
    output:
        figure=report(
            paths.GPU_HOURS_FIGURE,
            caption="../report/plan.rst",
            category="Cost plan",
        ),
        plan=paths.COST_PLAN,
    log:
        "logs/plan_gpu_hours.log",
    localrule: True
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("light", "threads")
    resources:
        **job_resources("light"),
    params:
        config=config_json,
        code=code_version("plan"),
    shell:
        "python -m lalm_slu plan --config-data {params.config:q} --out {output.plan:q} --figure {output.figure:q}"
        " > {log:q} 2>&1"
