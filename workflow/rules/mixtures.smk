rule mix_training_set:
    input:
        unpack(mixture_scheme_inputs),
    output:
        paths.mixture_path("{run}"),
    log:
        "logs/mix_training_set/{run}.log",
    # Seconds of CPU work: run on the submit host, not as a cluster job of its own.
    localrule: True
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("light", "threads")
    resources:
        **job_resources("light"),
    params:
        scheme=run_scheme,
        seed=run_seed,
        target=mixture_target_arguments,
        scheme_arguments=mixture_scheme_arguments,
        code=code_version("mix_training_set"),
    shell:
        "python -m lalm_slu mix-training-set --scheme {params.scheme:q}"
        " --text-manifest {input.text:q} --speech-manifest {input.speech:q}"
        " --speech-ids {input.speech_ids:q} {params.target:q} {params.scheme_arguments:q}"
        " --seed {params.seed:q} --out {output:q} > {log:q} 2>&1"


# The items of the first phases that every budget's run of a scheme shares (schemes.BUDGET_FREE_PHASES): the same
# rows as in each run's mixture, written without the budgeted speech.
rule mix_prefix_set:
    input:
        unpack(mixture_inputs),
    output:
        paths.prefix_mixture_path("{prefix}"),
    log:
        "logs/mix_prefix_set/{prefix}.log",
    # Seconds of CPU work: run on the submit host, not as a cluster job of its own.
    localrule: True
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("light", "threads")
    resources:
        **job_resources("light"),
    params:
        scheme=run_scheme,
        seed=run_seed,
        phases=prefix_phases,
        target=mixture_target_arguments,
        code=code_version("mix_training_set"),
    shell:
        "python -m lalm_slu mix-training-set --scheme {params.scheme:q}"
        " --text-manifest {input.text:q} --speech-manifest {input.speech:q}"
        " --speech-ids {input.speech_ids:q} {params.target:q} --seed {params.seed:q}"
        " --phases {params.phases:q} --out {output:q} > {log:q} 2>&1"
