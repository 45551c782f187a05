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
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("light", "threads")
    resources:
        mem_mb=resource("light", "mem_mb"),
        runtime=resource("light", "runtime"),
    params:
        code=code_version("aggregate"),
    shell:
        "python -m lalm_slu aggregate --metrics {input} --out {output} > {log} 2>&1"


rule make_tables:
    input:
        "results/metrics.csv",
    output:
        report(
            directory("results/tables"),
            patterns=["{name}.csv", "{name}.md", "{name}.tex"],
            caption="../report/tables.rst",
            category="Tables",
        ),
    log:
        "logs/make_tables.log",
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("light", "threads")
    resources:
        mem_mb=resource("light", "mem_mb"),
        runtime=resource("light", "runtime"),
    params:
        code=code_version("tables"),
    shell:
        "python -m lalm_slu tables --metrics {input} --out-dir {output} > {log} 2>&1"


rule make_figures:
    input:
        "results/metrics.csv",
    output:
        report(
            directory("results/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    log:
        "logs/make_figures.log",
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("light", "threads")
    resources:
        mem_mb=resource("light", "mem_mb"),
        runtime=resource("light", "runtime"),
    params:
        code=code_version("figures"),
    shell:
        "python -m lalm_slu figures --metrics {input} --out-dir {output} > {log} 2>&1"
