rule download_corpus:
    output:
        paths.corpus_download_stamp("{corpus}"),
    log:
        "logs/download_corpus/{corpus}.log",
    localrule: True
    conda:
        "../../envs/lalm-slu.yaml"
    params:
        arguments=download_arguments,
    shell:
        "python -m lalm_slu download {params.arguments:q} --stamp {output:q} > {log:q} 2>&1"


rule download_slurp_release:
    output:
        paths.release_download_stamp("{corpus}"),
    log:
        "logs/download_slurp_release/{corpus}.log",
    localrule: True
    conda:
        "../../envs/lalm-slu.yaml"
    params:
        out_dir=release_text_dir,
    shell:
        "python -m lalm_slu download-slurp-release --out-dir {params.out_dir:q}"
        " --stamp {output:q} > {log:q} 2>&1"


rule prepare_corpus:
    input:
        corpus_input,
    output:
        train=paths.manifest_path("{corpus}", "{lang}", "train"),
        dev=paths.manifest_path("{corpus}", "{lang}", "dev"),
        test=paths.manifest_path("{corpus}", "{lang}", "test"),
    log:
        "logs/prepare_corpus/{corpus}/{lang}.log",
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("prepare_corpus", "threads")
    resources:
        **job_resources("prepare_corpus"),
    params:
        reader=corpus_setting("reader"),
        source=corpus_source,
        options=reader_option_arguments,
        max_utterances=max_utterance_arguments,
        seed=corpus_setting("subset_seed"),
        on_bad_record=corpus_setting("on_bad_record"),
        out_dir=parent_dir,
        code=code_version("prepare_corpus"),
    shell:
        # Compute jobs read only the caches the download stage (a localrule) filled.
        "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python -m lalm_slu prepare-corpus --reader {params.reader:q} --source {params.source:q}"
        " --corpus {wildcards.corpus:q} --lang {wildcards.lang:q} --out-dir {params.out_dir:q}"
        " {params.max_utterances:q} --seed {params.seed:q}"
        " --on-bad-record {params.on_bad_record:q} {params.options:q} > {log:q} 2>&1"
