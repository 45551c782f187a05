# One job per budget: each recomputes the pool's seeded stratified order and takes its
# prefix, so budgets stay nested and adding a budget touches no other budget's files.


rule subsample_budget:
    input:
        manifest=budget_pool,
    output:
        ids="results/budgets/{corpus}/{lang}/{split}/seed{seed}/{budget}.txt",
        coverage="results/budgets/{corpus}/{lang}/{split}/seed{seed}/{budget}.json",
    log:
        "logs/subsample_budget/{corpus}/{lang}/{split}/seed{seed}/{budget}.log",
    # Seconds of CPU work: run on the submit host, not as a cluster job of its own.
    localrule: True
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("light", "threads")
    resources:
        mem_mb=resource("light", "mem_mb"),
        runtime=resource("light", "runtime"),
    params:
        out_dir=parent_dir,
        code=code_version("subsample_budget"),
    shell:
        "python -m lalm_slu subsample-budget --manifest {input.manifest:q}"
        " --budgets {wildcards.budget:q} --seed {wildcards.seed:q}"
        " --out-dir {params.out_dir:q} > {log:q} 2>&1"
