# One job per budget: each recomputes the pool's seeded stratified order and takes its
# prefix, so budgets stay nested and adding a budget touches no other budget's files.


rule subsample_budget:
    input:
        manifest=budget_pool,
    output:
        ids=paths.budget_path("{corpus}", "{lang}", "{split}", "{seed}", "{budget}"),
        coverage=paths.budget_coverage_path(
            "{corpus}", "{lang}", "{split}", "{seed}", "{budget}"
        ),
    log:
        "logs/subsample_budget/{corpus}/{lang}/{split}/seed{seed}/{budget}.log",
    # Seconds of CPU work: run on the submit host, not as a cluster job of its own.
    localrule: True
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("light", "threads")
    resources:
        **job_resources("light"),
    params:
        out_dir=parent_dir,
        code=code_version("subsample_budget"),
    shell:
        "python -m lalm_slu subsample-budget --manifest {input.manifest:q}"
        " --budgets {wildcards.budget:q} --seed {wildcards.seed:q}"
        " --out-dir {params.out_dir:q} > {log:q} 2>&1"
