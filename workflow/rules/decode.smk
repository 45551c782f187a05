rule decode_test_set:
    input:
        unpack(decode_inputs),
    output:
        "results/runs/{run}/predictions/{testset}.{modality}.jsonl",
    log:
        "logs/decode_test_set/{run}/{testset}.{modality}.log",
    benchmark:
        "results/benchmarks/decode_test_set/{run}/{testset}.{modality}.tsv"
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("decode", "threads")
    resources:
        mem_mb=resource("decode", "mem_mb"),
        runtime=resource("decode", "runtime"),
        gpu=resource("decode", "gpu"),
    params:
        settings=decode_settings,
        audio_frames=audio_frames_argument,
        code=code_version("decode"),
    shell:
        "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python -m lalm_slu decode --model {input.model:q} --manifest {input.manifest:q}"
        " --modality {wildcards.modality:q} --settings {params.settings:q}"
        " --out {output:q} {params.audio_frames:q} --threads {threads} > {log:q} 2>&1"


# The cascade baseline's first step: the base model transcribes each test set once, for every run.
rule transcribe_test_set:
    input:
        manifest=cascade_speech_manifest,
        model=config["model"]["path"],
    output:
        manifest="results/cascade/{testset}.parquet",
        wer=report(
            "results/cascade/{testset}.wer.json",
            caption="../report/cascade.rst",
            category="Cascade",
        ),
    log:
        "logs/transcribe_test_set/{testset}.log",
    benchmark:
        "results/benchmarks/transcribe_test_set/{testset}.tsv"
    conda:
        "../../envs/lalm-slu.yaml"
    threads: resource("decode", "threads")
    resources:
        mem_mb=resource("decode", "mem_mb"),
        runtime=resource("decode", "runtime"),
        gpu=resource("decode", "gpu"),
    params:
        settings=cascade_settings,
        code=code_version("transcribe_test_set"),
    shell:
        "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python -m lalm_slu transcribe-test-set --model {input.model:q}"
        " --manifest {input.manifest:q} --settings {params.settings:q} --out {output.manifest:q}"
        " --wer {output.wer:q} --threads {threads} > {log:q} 2>&1"
